"""MySqlSink against a real MariaDB 10.11: rows, ledger rows, the exactly-once guards, values and names."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pymysql
import pytest
from cdc_testing import Event, batch_of, item

from airflow_provider_cdc.connectors.base import ApplyResult, Sink
from airflow_provider_cdc.connectors.ledger import LEDGER_COLUMN_NAMES
from airflow_provider_cdc.connectors.mysql import sink as sink_module
from airflow_provider_cdc.connectors.mysql.connection import connect, database_of, quote_name
from airflow_provider_cdc.connectors.mysql.sink import MySqlSink
from airflow_provider_cdc.connectors.mysql.sink_storage import lock_name
from airflow_provider_cdc.connectors.mysql.sink_types import (
    canonical_type,
    is_safe_widening,
    key_text_length,
    sink_column_type,
    table_column_types,
)
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.schema import SchemaPolicy
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema

SOURCE = "shop"
D = decimal.Decimal
LENIENT = SchemaPolicy(mode="lenient")

ITEMS = TableSchema("public", "items", (
    Column("id", "integer", "integer", nullable=False, primary_key=True),
    Column("name", "text", "text"),
    Column("amount", "numeric(12,2)", "decimal", precision=12, scale=2),
    Column("seen_at", "timestamp with time zone", "timestamptz"),
    Column("payload", "bytea", "binary"),
    Column("tags", "text[]", "other"),
), dialect="postgresql")


def make_batch(events: Sequence[Event], schema: TableSchema = ITEMS, **kwargs: Any) -> ChangeBatch:
    return batch_of(events, schema, **kwargs)


@pytest.fixture
def url(mariadb_database_factory) -> str:
    return mariadb_database_factory("sink")


@pytest.fixture
def db(url: str) -> str:
    return database_of(url)


@pytest.fixture
def sink(mariadb_server, db: str) -> Iterator[MySqlSink]:
    # A URL without a database: no statement may lean on the session's default database.
    with MySqlSink(mariadb_server.url(""), sink_id="warehouse", target_schema=db) as sink:
        yield sink


@pytest.fixture
def soft_sink(mariadb_server, db: str) -> Iterator[MySqlSink]:
    with MySqlSink(mariadb_server.url(""), sink_id="warehouse", target_schema=db, delete_mode="soft") as sink:
        yield sink


def query(url: str, statement: str, params: Sequence[Any] | None = None) -> list[tuple]:
    conn = connect(url, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return [tuple(row) for row in cur.fetchall()] if cur.description else []
    finally:
        conn.close()


def rows(url: str, table: str = "items", columns: str = "id, name, amount, seen_at, payload, tags",
         database: str | None = None) -> list[tuple]:
    """The sink table's rows as Python values, ordered by the first column."""
    database = database or database_of(url)
    return query(url, f"SELECT {columns} FROM {quote_name(database)}.{quote_name(table)} ORDER BY 1")


def column_types(url: str, table: str, database: str | None = None) -> dict[str, str]:
    """Column name -> canonical type, in column order (names compared exactly)."""
    found = query(url, "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE"
                       " TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
                  (database or database_of(url), table))
    return {name: canonical_type(type_) for found_table, name, type_ in found if found_table == table}


def ledger(url: str, database: str | None = None) -> list[tuple]:
    return query(url, f"SELECT batch_id, source_id, seq_from, seq_to, rows_upserted, rows_deleted FROM"
                      f" {quote_name(database or database_of(url))}._cdc_ledger ORDER BY seq_to, batch_id")


def at(text: str) -> dt.datetime:
    """A DATETIME as the sink stores it (UTC, naive)."""
    return dt.datetime.fromisoformat(text)


# --- types ----------------------------------------------------------------------------------------------------


def test_mysql_source_types_are_kept_verbatim():
    for type_ in ("decimal(65,30)", "enum('a','b''c')", "set('x','y')", "bit(3)", "datetime(6)", "json", "blob",
                  "bigint(20) unsigned", "varchar(20)", "timestamp(3)", "year(4)", "point", "double", "float"):
        assert sink_column_type(Column("a", type_, "other"), "mysql") == type_
    # A text or blob key needs a bounded length: MySQL indexes no unbounded column.
    assert sink_column_type(Column("k", "text", "text", primary_key=True), "mysql") == "varchar(255)"
    assert sink_column_type(Column("k", "blob", "binary", primary_key=True), "mysql") == "varbinary(255)"
    assert sink_column_type(Column("k", "varchar(20)", "text", primary_key=True), "mysql") == "varchar(20)"


def test_other_sources_map_logical_types():
    expected = {
        "integer": "bigint", "decimal": "longtext", "float": "double", "boolean": "tinyint(1)", "text": "longtext",
        "timestamptz": "datetime(6)", "timestamp": "datetime(6)", "date": "date", "time": "time(6)",
        "json": "json", "binary": "longblob", "uuid": "char(36)", "other": "longtext",
    }
    for logical, sink_type in expected.items():
        assert sink_column_type(Column("a", "whatever(1)", logical), "postgresql") == sink_type
    assert sink_column_type(Column("a", "numeric(12,2)", "decimal", precision=12, scale=2), "") == "decimal(12,2)"
    # Beyond DECIMAL's 65 digits or 30 decimals: exact text.
    assert sink_column_type(Column("a", "numeric(70,2)", "decimal", precision=70, scale=2), "") == "longtext"
    assert sink_column_type(Column("a", "numeric(40,35)", "decimal", precision=40, scale=35), "") == "longtext"
    key = {"key_length": 255}
    assert sink_column_type(Column("k", "text", "text", primary_key=True), "", **key) == "varchar(255)"
    assert sink_column_type(Column("k", "bytea", "binary", primary_key=True), "", **key) == "varbinary(255)"
    assert sink_column_type(Column("k", "numeric", "decimal", primary_key=True), "", **key) == "varchar(255)"
    assert sink_column_type(Column("k", "uuid", "uuid", primary_key=True), "", **key) == "char(36)"


def test_key_columns_share_the_index_limit():
    wide = TableSchema("s", "t", tuple(Column(f"k{i}", "text", "text", primary_key=True) for i in range(4)))
    assert key_text_length(wide) == 192  # 4 x 192 x 4 bytes = 3072
    assert set(table_column_types(wide).values()) == {"varchar(192)"}
    mixed = TableSchema("s", "t", (Column("a", "bigint", "integer", primary_key=True),
                                   Column("b", "text", "text", primary_key=True),
                                   Column("c", "bytea", "binary", primary_key=True)))
    assert key_text_length(mixed) == 255


def test_type_text_that_is_not_a_type_name_never_reaches_sql():
    for bad in ("int); DROP TABLE x; --", "int /* x */", "enum('a') default 'x'", "varchar(10); select 1"):
        assert sink_column_type(Column("a", bad, "integer"), "mysql") == "bigint"


def test_type_widening_helpers():
    assert canonical_type("bigint(20)") == "bigint" and canonical_type("INT(11) UNSIGNED") == "int unsigned"
    assert canonical_type("tinyint(1)") == "tinyint(1)" and canonical_type("boolean") == "tinyint(1)"
    assert canonical_type("numeric(12, 2)") == "decimal(12,2)" and canonical_type("json") == "longtext"
    assert canonical_type("datetime(0)") == "datetime" and canonical_type("integer") == "int"
    safe = [("int", "bigint"), ("int unsigned", "bigint"), ("smallint", "decimal(10,2)"),
            ("decimal(6,2)", "decimal(12,4)"), ("float", "double"), ("varchar(5)", "varchar(9)"),
            ("varchar(100)", "text"), ("char(3)", "longtext"), ("text", "mediumtext"), ("varbinary(4)", "blob"),
            ("blob", "longblob"), ("datetime(3)", "datetime(6)"), ("bit(3)", "bit(8)"),
            ("enum('a','b')", "enum('a','b','c')"), ("tinyint(1)", "tinyint")]
    unsafe = [("bigint", "int"), ("int", "int unsigned"), ("decimal(12,4)", "decimal(6,2)"),
              ("decimal(6,2)", "decimal(6,3)"), ("double", "float"), ("varchar(9)", "varchar(5)"),
              ("varchar(20000)", "text"), ("text", "varchar(10)"), ("text", "int"), ("int", "text"),
              ("datetime(6)", "datetime(3)"), ("enum('a','b')", "enum('b','a')"), ("date", "datetime"),
              ("tinyint(1)", "bigint"), ("int", "decimal(9,0)")]
    assert [pair for pair in safe if not is_safe_widening(*pair)] == []
    assert [pair for pair in unsafe if is_safe_widening(*pair)] == []


def test_sink_satisfies_the_protocol_and_declares_its_capabilities(sink):
    assert isinstance(sink, Sink)
    capabilities = sink.capabilities
    assert capabilities is sink_module.CAPABILITIES and capabilities.dialect == "mysql"
    assert capabilities.transactional and capabilities.merge_by_key and capabilities.soft_delete
    assert capabilities.stores_other_exactly
    assert "uuid" not in capabilities.native_types and "decimal" in capabilities.native_types


# --- tables ---------------------------------------------------------------------------------------------------


def test_ensure_tables_creates_table_and_ledger(sink, url, db):
    sink.ensure_tables([ITEMS])
    assert column_types(url, "items") == {
        "id": "bigint", "name": "longtext", "amount": "decimal(12,2)", "seen_at": "datetime(6)",
        "payload": "longblob", "tags": "longtext", "_cdc_op": "varchar(1)", "_cdc_position": "bigint",
        "_cdc_ts": "datetime(6)",
    }
    assert query(url, "SELECT COLUMN_NAME, IS_NULLABLE, COLUMN_KEY FROM information_schema.COLUMNS"
                      " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = 'items' AND COLUMN_KEY = 'PRI'", (db,)) == [
        ("id", "NO", "PRI")]
    assert query(url, "SELECT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
                      " AND TABLE_NAME = 'items'", (db,)) == [("InnoDB",)]
    assert list(column_types(url, "_cdc_ledger")) == list(LEDGER_COLUMN_NAMES)
    assert query(url, "SELECT GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX) FROM information_schema.STATISTICS"
                      " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = '_cdc_ledger' GROUP BY INDEX_NAME"
                      " ORDER BY INDEX_NAME", (db,)) == [("batch_id",), ("source_id,seq_to",)]
    sink.ensure_tables([ITEMS])  # idempotent


def test_the_target_database_is_created_and_the_ledger_may_live_elsewhere(mariadb_server, url, db):
    target, ledger_db = f"{db} Sales Data", f"{db}_cdc"
    try:
        # A URL without a database: every statement names its database.
        with MySqlSink(mariadb_server.url(""), sink_id="w", target_schema=target, ledger_schema=ledger_db,
                       delete_mode="soft") as sink:
            assert sink.high_water(SOURCE) == 0
            sink.apply(make_batch([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]))
            sink.apply(make_batch([("d", 3, item(1)), ("u", 4, item(2, name="b2"))]))
        assert rows(url, columns="id, name, _cdc_deleted_at IS NULL", database=target) == [
            (1, "a", 0), (2, "b2", 1)]
        assert [row[0] for row in ledger(url, ledger_db)] == ["shop:1-2", "shop:3-4"]
        assert query(url, "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
                     (target,)) == [("utf8mb4",)]
    finally:
        query(url, f"DROP DATABASE IF EXISTS {quote_name(target)}")
        query(url, f"DROP DATABASE IF EXISTS {quote_name(ledger_db)}")


def test_ledger_reads_before_any_ledger_exists(sink, url, db):
    assert sink.has_batch("shop:1-2") is False
    assert sink.high_water(SOURCE) == 0
    assert sink.last_committed(SOURCE) is None
    assert sink.held_tables(SOURCE) == {} and sink.schema_versions(SOURCE) == []
    assert query(url, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (db,)) == [(0,)]


def test_table_without_primary_key_is_refused(sink):
    keyless = TableSchema("public", "events", (Column("id", "integer", "integer"), Column("v", "text")))
    with pytest.raises(SinkError, match="add a primary key at the source") as info:
        sink.ensure_tables([keyless])
    assert info.value.table.endswith(".events") and info.value.terminal


def test_constructor_checks_its_arguments(url):
    with pytest.raises(ValueError, match="delete_mode must be 'hard' or 'soft'"):
        MySqlSink(url, sink_id="w", target_schema="x", delete_mode="gone")
    with pytest.raises(ValueError, match="target_schema .* at most 64"):
        MySqlSink(url, sink_id="w", target_schema="d" * 65)
    with pytest.raises(SinkError, match="cannot connect to the sink database") as info:
        MySqlSink("mysql://nobody:wrong@127.0.0.1:1/x?connect_timeout=2", sink_id="w", target_schema="x")
    assert not info.value.terminal  # a refused connection is worth a retry


# --- values ---------------------------------------------------------------------------------------------------


def test_insert_update_delete_keep_values_exactly(sink, url):
    tricky = ('tab\there, new\nline, cr\r, back\\slash, "quoted", \'single\', \\N, NULL, 100% and %s, emoji 😀, '
              'nul \x00 and ctrl-z \x1a, \\0 \\Z \\t')
    result = sink.apply(make_batch([
        ("c", 1, item(1, name="plain", amount="12.30", seen_at="2024-05-01T08:00:00Z", payload="00ff0a5c09",
                      tags='{a,"b c",NULL}')),
        ("c", 2, item(2, name="", amount="0.00", seen_at=None, payload="")),
        ("c", 3, item(3, name=None, amount="-9999999999.99", seen_at="2024-05-01T08:00:00.25Z")),
        ("c", 4, item(4, name=tricky)),
        ("c", 5, item(5, name="\\N")),
        ("c", 6, item(6, name="NULL")),
    ]))
    assert result.applied and (result.upserted, result.deleted) == (6, 0)
    assert rows(url) == [
        (1, "plain", D("12.30"), at("2024-05-01 08:00:00"), b"\x00\xff\n\\\t", '{a,"b c",NULL}'),
        (2, "", D("0.00"), None, b"", None),
        (3, None, D("-9999999999.99"), at("2024-05-01 08:00:00.250000"), None, None),
        (4, tricky, None, None, None, None),
        (5, "\\N", None, None, None, None),
        (6, "NULL", None, None, None, None),
    ]
    result = sink.apply(make_batch([
        ("u", 7, item(1, name="renamed", amount="7.5", seen_at="2024-05-02T05:00:00.000001Z", payload="ff")),
        ("u", 8, item(2, name=None, amount="1")),
        ("d", 9, item(3)),
        ("d", 10, item(42)),  # a delete of a row the sink never had: nothing
    ]))
    assert (result.upserted, result.deleted) == (2, 1)
    assert rows(url)[:2] == [
        (1, "renamed", D("7.50"), at("2024-05-02 05:00:00.000001"), b"\xff", None),
        (2, None, D("1.00"), None, None, None),
    ]
    assert [row[0] for row in rows(url)] == [1, 2, 4, 5, 6]


def test_bookkeeping_columns_are_set(sink, url):
    sink.apply(make_batch([("r", 1, item(1, name="a")), ("c", 2, item(2, name="b")), ("u", 3, item(1, name="c"))]))
    assert rows(url, columns="id, _cdc_op, _cdc_position, _cdc_ts") == [
        (1, "u", 3, at("2024-05-01 08:00:03")),
        (2, "c", 2, at("2024-05-01 08:00:02")),
    ]


def test_ledger_row_is_written_with_the_data(sink, url):
    batch = make_batch([("c", 1, item(1)), ("c", 2, item(2)), ("d", 3, item(1))])
    versions = {"rule_versions": {"mask": 2}, "schema_versions": {"public.items": 1},
                "stage_versions": {"transform": {"rules": 1}}}
    before = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=5)
    assert sink.apply(batch, run_id="manual__1", versions=versions).applied
    [row] = query(url, "SELECT batch_id, source_id, position_from, position_to, seq_from, seq_to, counts,"
                       " rule_versions, schema_versions, stage_versions, run_id, rows_upserted, rows_deleted,"
                       " committed_at FROM _cdc_ledger")
    import json
    assert row[:2] == ("shop:1-3", "shop") and row[4:6] == (1, 3) and row[10:13] == ("manual__1", 1, 0)
    assert [json.loads(text) for text in (row[2], row[3], row[6], row[7], row[8], row[9])] == [
        {"lsn": "0/0"}, {"lsn": "0/3"}, {"public.items": {"c": 2, "d": 1}}, {"mask": 2},
        # schema_versions is the schema gate's (the version each subject follows), not the caller's.
        {"versions": {"shop.public.items": 1}, "changes": [], "held": {}}, {"transform": {"rules": 1}}]
    assert before < row[13] < before + dt.timedelta(seconds=60)  # UTC
    assert sink.has_batch("shop:1-3") and not sink.has_batch("shop:4-5")
    assert sink.high_water(SOURCE) == 3 and sink.high_water("other") == 0
    assert sink.last_committed(SOURCE) == {"lsn": "0/3"} and sink.last_committed("other") is None


# --- exactly once ---------------------------------------------------------------------------------------------


def test_replaying_a_batch_is_a_no_op(sink, url):
    batch = make_batch([("c", 1, item(1, name="a")), ("u", 2, item(1, name="b"))])
    assert sink.apply(batch).applied
    query(url, "UPDATE items SET name = 'changed in the sink'")
    again = sink.apply(batch)
    assert again == ApplyResult(batch_id="shop:1-2", applied=False, seconds=again.seconds)
    assert rows(url, columns="id, name") == [(1, "changed in the sink")]
    assert ledger(url) == [("shop:1-2", "shop", 1, 2, 1, 0)]


def test_overlapping_batch_applies_only_new_events(sink, url):
    first = [("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]
    sink.apply(make_batch(first))
    query(url, "UPDATE items SET name = 'sink edit' WHERE id = 1")
    result = sink.apply(make_batch([*first, ("c", 3, item(3, name="c")), ("u", 4, item(2, name="b2"))]))
    assert result.applied and result.skipped_replayed == 2 and result.upserted == 2
    assert rows(url, columns="id, name") == [(1, "sink edit"), (2, "b2"), (3, "c")]
    assert ledger(url) == [("shop:1-2", "shop", 1, 2, 2, 0), ("shop:1-4", "shop", 3, 4, 2, 0)]


def test_a_batch_of_only_replayed_events_is_recorded_and_changes_nothing(sink, url):
    sink.apply(make_batch([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]))
    result = sink.apply(make_batch([("d", 2, item(2))], batch_id="shop:2-2"))
    assert result.applied and result.skipped_replayed == 1 and result.deleted == 0
    assert rows(url, columns="id, name") == [(1, "a"), (2, "b")]
    assert sink.high_water(SOURCE) == 2


def test_older_change_never_overwrites_a_newer_one(sink, url, db):
    sink.apply(make_batch([("c", 10, item(1, name="new")), ("c", 11, item(2, name="kept"))]))
    # A second ledger (another database) has no high water for this source: only the row guard stands.
    with MySqlSink(url, sink_id="warehouse", target_schema=db, ledger_schema=f"{db}_other") as stale:
        try:
            result = stale.apply(make_batch([
                ("u", 5, item(1, name="old")),
                ("d", 6, item(2)),
                ("c", 7, item(3, name="fresh key")),
                ("u", 11, item(2, name="same seq again")),  # re-applying the row's own change is harmless
            ]))
        finally:
            query(url, f"DROP DATABASE IF EXISTS {quote_name(db + '_other')}")
    assert result.applied and (result.upserted, result.deleted) == (2, 0)
    assert rows(url, columns="id, name, _cdc_position") == [(1, "new", 10), (2, "same seq again", 11),
                                                            (3, "fresh key", 7)]


def test_soft_deletes_are_guarded_too(soft_sink, url, db):
    soft_sink.apply(make_batch([("c", 10, item(1, name="new"))]))
    with MySqlSink(url, sink_id="warehouse", target_schema=db, ledger_schema=f"{db}_other",
                   delete_mode="soft") as stale:
        try:
            assert stale.apply(make_batch([("d", 5, item(1))])).deleted == 0
        finally:
            query(url, f"DROP DATABASE IF EXISTS {quote_name(db + '_other')}")
    assert rows(url, columns="id, name, _cdc_op, _cdc_deleted_at") == [(1, "new", "c", None)]


def test_concurrent_applies_of_one_batch_commit_once(url, db):
    batch = make_batch([("c", seq, item(seq, name=str(seq))) for seq in range(1, 2001)])
    with MySqlSink(url, sink_id="w", target_schema=db) as sink:
        sink.ensure_tables([ITEMS])
    results: list[ApplyResult] = []

    def run() -> None:
        with MySqlSink(url, sink_id="w", target_schema=db) as sink:
            results.append(sink.apply(batch))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.applied for r in results) == [False, False, True]
    assert query(url, "SELECT COUNT(*) FROM items") == [(2000,)]
    assert len(ledger(url)) == 1


def test_a_concurrent_ledger_commit_of_the_same_batch_rolls_this_copy_back(sink, url):
    sink.ensure_tables([ITEMS])
    batch = make_batch([("c", 1, item(1, name="a"))])
    other = connect(url, autocommit=False)  # a writer that bypasses the sink's lock, mid-transaction
    try:
        with other.cursor() as cur:
            cur.execute("INSERT INTO _cdc_ledger (batch_id, source_id, seq_to) VALUES (%s, %s, 1)",
                        (batch.batch_id, SOURCE))
        results: list[ApplyResult] = []
        thread = threading.Thread(target=lambda: results.append(sink.apply(batch)))
        thread.start()
        thread.join(timeout=1.5)
        assert thread.is_alive()  # waiting for the other transaction's ledger row
        other.commit()
        thread.join()
    finally:
        other.close()
    assert [r.applied for r in results] == [False]
    assert query(url, "SELECT COUNT(*) FROM items") == [(0,)]
    assert query(url, "SELECT batch_id, rows_upserted FROM _cdc_ledger") == [(batch.batch_id, None)]


def test_appliers_of_one_source_queue_and_a_long_wait_is_transient(sink, url, db):
    holder = connect(url, autocommit=True)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, 0)", (lock_name(db, SOURCE),))
            assert cur.fetchone() == (1,)
        sink.lock_timeout = 0.5
        with pytest.raises(SinkError, match="held its lock for more than 0.5 s; nothing was written") as info:
            sink.apply(make_batch([("c", 1, item(1))]))
        assert not info.value.terminal
        # Another source's appliers do not wait.
        assert sink.apply(make_batch([("c", 1, item(1))], source_id="other")).applied
    finally:
        holder.close()
    sink.lock_timeout = 5
    assert sink.apply(make_batch([("c", 1, item(1))])).applied  # the lock went with the session


# --- folding --------------------------------------------------------------------------------------------------


def test_changes_to_one_key_are_folded_in_order(sink, url):
    sink.apply(make_batch([("c", 1, item(9, name="existing"))]))
    result = sink.apply(make_batch([
        ("c", 2, item(1, name="v1", amount="1")),
        ("u", 3, item(1, name="v2", amount="2")),
        ("c", 4, item(2, name="short-lived")),
        ("u", 5, item(1, name="v3", amount=None)),
        ("d", 6, item(2)),
        ("d", 7, item(3)),  # never existed
        ("d", 8, item(9)),
        ("c", 9, item(9, name="reborn")),
    ]))
    assert result.tables["public.items"]["staged"] == 4
    assert (result.upserted, result.deleted) == (2, 0)
    assert rows(url, columns="id, name, amount, _cdc_position") == [(1, "v3", None, 5), (9, "reborn", None, 9)]


def test_fold_with_a_composite_key(sink, url):
    lines = TableSchema("public", "order_lines", (
        Column("order_id", "bigint", "integer", primary_key=True),
        Column("line", "text", "text", primary_key=True),
        Column("qty", "integer", "integer"),
    ), dialect="postgresql")
    sink.apply(make_batch([
        ("c", 1, {"order_id": "1", "line": "a", "qty": "1"}),
        ("c", 2, {"order_id": "1", "line": "b", "qty": "1"}),
        ("u", 3, {"order_id": "1", "line": "a", "qty": "5"}),
        ("c", 4, {"order_id": "2", "line": "a", "qty": "7"}),
        ("d", 5, {"order_id": "1", "line": "b"}),
    ], lines))
    sink.apply(make_batch([("u", 6, {"order_id": "2", "line": "a", "qty": "8"}),
                           ("c", 7, {"order_id": "2", "line": "A", "qty": "9"})], lines))
    assert rows(url, "order_lines", "order_id, line, qty") == [(1, "a", 5), (2, "A", 9), (2, "a", 8)]


def test_truncate_in_the_middle_of_a_batch(sink, url):
    sink.apply(make_batch([("c", 1, item(1, name="old")), ("c", 2, item(2, name="old"))]))
    result = sink.apply(make_batch([
        ("u", 3, item(1, name="updated before truncate")),
        ("c", 4, item(3, name="inserted before truncate")),
        ("t", 5, {}),
        ("c", 6, item(4, name="after")),
        ("c", 7, item(1, name="re-inserted after")),
    ]))
    assert result.truncated_tables == 1 and result.tables["public.items"]["truncated_rows"] == 3
    assert rows(url, columns="id, name") == [(1, "re-inserted after"), (4, "after")]


def test_soft_truncate_marks_rows(soft_sink, url):
    soft_sink.apply(make_batch([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]))
    soft_sink.apply(make_batch([("t", 3, {}), ("c", 4, item(2, name="b again"))]))
    assert rows(url, columns="id, name, _cdc_op, _cdc_position, _cdc_deleted_at") == [
        (1, "a", "t", 3, at("2024-05-01 08:00:03")), (2, "b again", "c", 4, None)]


def test_soft_delete_marks_the_row_and_a_reinsert_clears_it(soft_sink, url):
    soft_sink.apply(make_batch([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]))
    result = soft_sink.apply(make_batch([("d", 3, item(1)), ("d", 4, item(7))]))
    assert result.deleted == 1
    assert rows(url, columns="id, name, _cdc_op, _cdc_position, _cdc_deleted_at") == [
        (1, "a", "d", 3, at("2024-05-01 08:00:03")), (2, "b", "c", 2, None)]
    soft_sink.apply(make_batch([("c", 5, item(1, name="back"))]))
    assert rows(url, columns="id, name, _cdc_op, _cdc_position, _cdc_deleted_at") == [
        (1, "back", "c", 5, None), (2, "b", "c", 2, None)]


# --- values the source did not send ---------------------------------------------------------------------------


def test_unchanged_values_keep_the_sink_value(sink, url):
    big = "x" * 10_000
    sink.apply(make_batch([("c", 1, item(1, name=big, amount="1.00")), ("c", 2, item(2, name="small"))]))
    sink.apply(make_batch([
        ("u", 3, item(1, amount="2.00"), ["name"]),
        ("u", 4, item(2, name="changed", amount="3.00")),
    ]))
    assert rows(url, columns="id, LENGTH(name), amount") == [(1, 10000, D("2.00")), (2, 7, D("3.00"))]


def test_unchanged_values_are_filled_from_an_earlier_event_of_the_batch(sink, url):
    sink.apply(make_batch([("c", 1, item(1, name="sink value", payload="01"))]))
    sink.apply(make_batch([
        ("u", 2, item(1, name="sent in this batch", amount="1.00"), ["payload"]),
        ("u", 3, item(1, amount="2.00"), ["name", "payload"]),
        ("c", 4, item(2, name="inserted", payload="02")),
        ("u", 5, item(2, amount="5.00"), ["name", "payload"]),
    ]))
    assert rows(url, columns="id, name, amount, payload") == [
        (1, "sent in this batch", D("2.00"), b"\x01"), (2, "inserted", D("5.00"), b"\x02")]


BLOBS = TableSchema("public", "blobs", (
    Column("id", "integer", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("name", "text", "text", ordinal=2),
    Column("doc", "text", "text", ordinal=3),
), dialect="postgresql")


def test_a_key_update_moves_the_row(sink, url):
    sink.apply(make_batch([("c", 1, {"id": "1", "name": "a", "doc": "d"}), ("c", 2, {"id": "5", "name": "e"})],
                          BLOBS))
    # The source's key update: a delete of the old key and a create of the new one (with the old key before).
    result = sink.apply(make_batch([("d", 3, {"id": "1"}), ("c", 4, {"id": "2", "name": "a", "doc": "d"}, None,
                                                               {"id": "1"}),
                                    ("d", 5, {"id": "5"}), ("c", 6, {"id": "1", "name": "e"}, None, {"id": "5"})],
                                   BLOBS))
    assert (result.upserted, result.deleted) == (2, 1)  # key 1 is deleted and then taken by row 5: an update
    assert rows(url, "blobs", "id, name, doc, _cdc_position") == [(1, "e", None, 6), (2, "a", "d", 4)]


def test_key_change_takes_unchanged_values_from_the_sink_row_of_the_old_key(sink, url):
    sink.apply(make_batch([("c", 1, {"id": "1", "name": "a", "doc": "big A"})], BLOBS))
    sink.apply(make_batch([("d", 2, {"id": "1"}), ("c", 3, {"id": "2", "name": "a moved"}, ["doc"], {"id": "1"})],
                          BLOBS))
    assert rows(url, "blobs", "id, name, doc") == [(2, "a moved", "big A")]


def test_key_change_chain_within_the_batch(sink, url):
    sink.apply(make_batch([("c", 1, {"id": "1", "name": "a", "doc": "big A"}),
                           ("c", 2, {"id": "7", "name": "z", "doc": "big Z"})], BLOBS))
    sink.apply(make_batch([
        ("d", 3, {"id": "1"}),
        ("c", 4, {"id": "2", "name": "a"}, ["doc"], {"id": "1"}),
        ("d", 5, {"id": "2"}),
        ("c", 6, {"id": "3", "name": "a"}, ["doc"], {"id": "2"}),
        ("u", 7, {"id": "7", "name": "z", "doc": "sent Z"}),
        ("d", 8, {"id": "7"}),
        ("c", 9, {"id": "8", "name": "z"}, ["doc"], {"id": "7"}),
    ], BLOBS))
    assert rows(url, "blobs", "id, name, doc") == [(3, "a", "big A"), (8, "z", "sent Z")]


def test_key_change_onto_a_key_with_a_sink_row_never_keeps_that_rows_value(sink, url):
    sink.apply(make_batch([("c", 1, {"id": "1", "name": "a", "doc": "doc of 1"}),
                           ("c", 2, {"id": "2", "name": "b", "doc": "doc of 2"})], BLOBS))
    sink.apply(make_batch([
        ("d", 3, {"id": "2"}),
        ("d", 4, {"id": "1"}),
        ("c", 5, {"id": "2", "name": "a"}, ["doc"], {"id": "1"}),
    ], BLOBS))
    assert rows(url, "blobs", "id, name, doc") == [(2, "a", "doc of 1")]


def test_key_change_whose_values_nobody_has_is_refused(sink, url):
    sink.apply(make_batch([("c", 1, {"id": "5", "name": "other", "doc": "x"})], BLOBS))
    with pytest.raises(SinkError) as info:
        sink.apply(make_batch([
            ("u", 2, {"id": "5", "name": "other2", "doc": "y"}),
            ("d", 3, {"id": "1"}),
            ("c", 4, {"id": "2", "name": "a"}, ["doc"], {"id": "1"}),  # the sink never had key 1
        ], BLOBS))
    message = str(info.value)
    assert info.value.table.endswith(".blobs") and "(id=2)" in message and "['doc']" in message
    assert "nothing was written" in message and info.value.terminal
    assert rows(url, "blobs", "id, name, doc") == [(5, "other", "x")]
    # An update with unchanged values of a row the sink lacks is no better: it would be inserted with a gap.
    with pytest.raises(SinkError, match=r"\(id=9\).*\['doc'\]"):
        sink.apply(make_batch([("u", 5, {"id": "9", "name": "n"}, ["doc"])], BLOBS))


# --- keys -----------------------------------------------------------------------------------------------------


def test_numeric_keys_equal_by_value_fold_as_one(sink, url):
    prices = TableSchema("public", "prices", (Column("k", "numeric(10,2)", "decimal", primary_key=True, precision=10,
                                                     scale=2), Column("v", "text", "text")), dialect="postgresql")
    sink.apply(make_batch([("c", 1, {"k": "1", "v": "first"})], prices))
    result = sink.apply(make_batch([("u", 2, {"k": "1.0", "v": "second"}), ("u", 3, {"k": "1.00", "v": "third"}),
                                    ("c", 4, {"k": "-0.0", "v": "zero"}), ("u", 5, {"k": "0", "v": "zero2"})], prices))
    assert result.tables["public.prices"]["staged"] == 2
    assert rows(url, "prices", "k, v") == [(D("0.00"), "zero2"), (D("1.00"), "third")]
    # An unconstrained numeric key is kept as text, in one spelling: 1.0 and 1.00 stay one row across batches.
    loose = TableSchema("public", "loose", (Column("k", "numeric", "decimal", primary_key=True),
                                            Column("v", "text", "text")), dialect="postgresql")
    sink.apply(make_batch([("c", 6, {"k": "1.50", "v": "a"})], loose))
    sink.apply(make_batch([("u", 7, {"k": "1.5", "v": "b"})], loose))
    assert rows(url, "loose", "k, v") == [("1.5", "b")]


def test_text_keys_that_differ_only_in_case_accents_or_trailing_spaces_are_distinct_rows(sink, url, db):
    names = TableSchema("public", "names", (Column("k", "text", "text", primary_key=True), Column("v", "text")),
                        dialect="postgresql")
    keys = ["a", "A", "á", "a ", "ß", "ss"]
    sink.apply(make_batch([("c", i + 1, {"k": key, "v": str(i)}) for i, key in enumerate(keys)], names))
    sink.apply(make_batch([("u", 10, {"k": "a ", "v": "trailing"}), ("d", 11, {"k": "A"})], names))
    assert sorted(rows(url, "names", "k, v")) == sorted(
        [("a", "0"), ("á", "2"), ("a ", "trailing"), ("ß", "4"), ("ss", "5")])
    assert query(url, "SELECT COLLATION_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND"
                      " TABLE_NAME = 'names' AND COLUMN_NAME = 'k'", (db,)) == [("utf8mb4_nopad_bin",)]


def test_a_key_longer_than_its_column_is_refused_before_anything_is_written(sink, url):
    names = TableSchema("public", "names", (Column("k", "text", "text", primary_key=True), Column("v", "text")),
                        dialect="postgresql")
    sink.apply(make_batch([("c", 1, {"k": "fine", "v": "1"})], names))
    with pytest.raises(SinkError) as info:
        sink.apply(make_batch([("c", 2, {"k": "short", "v": "2"}), ("c", 3, {"k": "x" * 256, "v": "3"})], names))
    message = str(info.value)
    assert "key column 'k' has a value of 256 characters" in message and "varchar(255)" in message
    assert "nothing of this batch was written" in message and info.value.terminal
    assert rows(url, "names", "k, v") == [("fine", "1")] and len(ledger(url)) == 1
    keys = TableSchema("public", "bin_keys", (Column("k", "bytea", "binary", primary_key=True),), dialect="")
    assert sink.apply(make_batch([("c", 4, {"k": "ab" * 255})], keys)).applied
    with pytest.raises(SinkError, match="varbinary\\(255\\)"):
        sink.apply(make_batch([("c", 5, {"k": "ab" * 256})], keys))


# --- every logical type ---------------------------------------------------------------------------------------

KINDS = TableSchema("public", "kinds", (
    Column("id", "integer", "integer", nullable=False, primary_key=True),
    Column("i", "bigint", "integer"),
    Column("n", "numeric(38,10)", "decimal", precision=38, scale=10),
    Column("wide", "numeric(70,5)", "decimal", precision=70, scale=5),
    Column("loose", "numeric", "decimal"),
    Column("f", "double precision", "float"),
    Column("b", "boolean", "boolean"),
    Column("t", "text", "text"),
    Column("tz", "timestamp with time zone", "timestamptz"),
    Column("ts", "timestamp without time zone", "timestamp"),
    Column("d", "date", "date"),
    Column("tm", "time without time zone", "time"),
    Column("j", "jsonb", "json"),
    Column("bin", "bytea", "binary"),
    Column("u", "uuid", "uuid"),
    Column("o", "int4range", "other"),
), dialect="postgresql")
KIND_VALUES = {
    "i": "-9223372036854775808", "n": "-1234567890123456789012345678.0123456789",
    "wide": "123456789012345678901234567890123456789012345678901234567890.12345", "loose": "NaN", "f": "1e+300",
    "b": "true", "t": "naïve \\ 'text'", "tz": "2024-05-01T12:00:00.123456Z", "ts": "0001-01-01T00:00:00",
    "d": "9999-12-31", "tm": "23:59:59.999999", "j": '{"a": [1, 2.5, "x"], "b": null}', "bin": "00010203fffe",
    "u": "123e4567-e89b-12d3-a456-426614174000", "o": "[1,5)",
}


@pytest.mark.parametrize("dialect", ["", "postgresql"])
def test_every_logical_type_round_trips(sink, url, dialect):
    kinds = dataclasses.replace(KINDS, dialect=dialect)
    other_row = {"i": "0", "f": "-0.5", "b": "false", "tz": "1970-01-01T00:00:00Z", "d": "1900-01-01",
                 "tm": "00:00:00", "bin": ""}
    sink.apply(make_batch([("c", 1, {"id": "1", **KIND_VALUES}), ("c", 2, {"id": "2", **other_row}),
                           ("c", 3, {"id": "3"})], kinds))
    assert column_types(url, "kinds") == {
        "id": "bigint", "i": "bigint", "n": "decimal(38,10)", "wide": "longtext", "loose": "longtext",
        "f": "double", "b": "tinyint(1)", "t": "longtext", "tz": "datetime(6)", "ts": "datetime(6)", "d": "date",
        "tm": "time(6)", "j": "longtext", "bin": "longblob", "u": "char(36)", "o": "longtext",
        "_cdc_op": "varchar(1)", "_cdc_position": "bigint", "_cdc_ts": "datetime(6)",
    }
    names = ", ".join(name for name in KINDS.column_names)
    got = rows(url, "kinds", names)
    assert got[0] == (
        1, -9223372036854775808, D("-1234567890123456789012345678.0123456789"), KIND_VALUES["wide"], "NaN", 1e300,
        1, "naïve \\ 'text'", at("2024-05-01 12:00:00.123456"), at("0001-01-01 00:00:00"), dt.date(9999, 12, 31),
        dt.timedelta(hours=23, minutes=59, seconds=59, microseconds=999999), KIND_VALUES["j"],
        bytes.fromhex("00010203fffe"), KIND_VALUES["u"], "[1,5)")
    assert got[1] == (2, 0, None, None, None, -0.5, 0, None, at("1970-01-01 00:00:00"), None, dt.date(1900, 1, 1),
                      dt.timedelta(0), None, b"", None, None)
    assert got[2] == (3, *([None] * 15))


MYSQL_KINDS = TableSchema("shop", "mkinds", (
    Column("id", "int(11)", "integer", nullable=False, primary_key=True),
    Column("big", "bigint(20) unsigned", "decimal", precision=20, scale=0),
    Column("flag", "tinyint(1)", "integer"),
    Column("bits", "bit(3)", "integer"),
    Column("bits64", "bit(64)", "decimal", precision=20, scale=0),
    Column("dec", "decimal(65,30)", "decimal", precision=65, scale=30),
    Column("fl", "float", "float"),
    Column("dbl", "double", "float"),
    Column("e", "enum('a','b''c','%s')", "text"),
    Column("st", "set('x','y','z')", "text"),
    Column("vc", "varchar(10)", "text"),
    Column("js", "longtext", "json"),
    Column("bl", "blob", "binary"),
    Column("fixed", "binary(4)", "binary"),
    Column("dtm", "datetime(6)", "timestamp"),
    Column("tsp", "timestamp(3)", "timestamptz"),
    Column("dte", "date", "date"),
    Column("tme", "time(3)", "time"),
    Column("yr", "year(4)", "integer"),
    Column("geo", "point", "other"),
    Column("uid", "uuid", "uuid"),
    Column("ip", "inet6", "text"),
), dialect="mysql")
POINT_HEX = "000000000101000000000000000000f03f0000000000000040"  # SRID 0, POINT(1 2)


def test_a_mysql_source_keeps_its_own_types_and_values(sink, url):
    values = {
        "big": "18446744073709551615", "flag": "2", "bits": "5", "bits64": "18446744073709551615",
        "dec": "12345678901234567890123456789012345.123456789012345678901234567890", "fl": "1.2345679",
        "dbl": "0.1", "e": "b'c", "st": "x,z", "vc": "ten chars!", "js": '{"k":  [1, 2]}', "bl": "00ff",
        "fixed": "01000000", "dtm": "2024-05-01T12:00:00.000001", "tsp": "2038-01-19T03:14:07.999Z",
        "dte": "1000-01-01", "tme": "-838:59:59", "yr": "0", "geo": POINT_HEX,
        "uid": "123e4567-e89b-12d3-a456-426614174000", "ip": "::ffff:1.2.3.4",
    }
    sink.apply(make_batch([("c", 1, {"id": "1", **values}), ("c", 2, {"id": "2", "yr": "2024", "e": "%s"}),
                           ("c", 3, {"id": "3"})], MYSQL_KINDS))
    types = column_types(url, "mkinds")
    assert {name: types[name] for name in MYSQL_KINDS.column_names} == {
        col.name: canonical_type(col.source_type) for col in MYSQL_KINDS.columns}
    text = ("id, CAST(big AS CHAR), flag, bits + 0, CAST(bits64 + 0 AS CHAR), CAST(`dec` AS CHAR), fl + 0e0, dbl, e,"
            " st, vc, js, HEX(bl), HEX(fixed), CAST(dtm AS CHAR), CAST(tsp AS CHAR), CAST(dte AS CHAR),"
            " CAST(tme AS CHAR), CAST(yr AS CHAR), HEX(geo), ST_AsText(geo), CAST(uid AS CHAR), CAST(ip AS CHAR)")
    first, second, third = rows(url, "mkinds", text)
    assert first == (
        1, "18446744073709551615", 2, 5, "18446744073709551615",
        "12345678901234567890123456789012345.123456789012345678901234567890", 1.2345678806304932, 0.1, "b'c",
        "x,z", "ten chars!", '{"k":  [1, 2]}', "00FF", "01000000", "2024-05-01 12:00:00.000001",
        "2038-01-19 03:14:07.999", "1000-01-01", "-838:59:59.000", "0000", POINT_HEX.upper(), "POINT(1 2)",
        "123e4567-e89b-12d3-a456-426614174000", "::ffff:1.2.3.4")
    assert (second[0], second[8], second[18]) == (2, "%s", "2024")
    assert third == (3, *([None] * 22))


@pytest.mark.parametrize(("column", "value", "reason"), [
    ("f", "NaN", "holds no NaN or infinity"),
    ("f", "-Infinity", "holds no NaN or infinity"),
    ("n", "NaN", "holds numbers only"),
    ("n", "1.00000000001", "more than 10 decimal places, and a MySQL DECIMAL\\(38,10\\) would round it"),
    ("n", "1" * 29, "more than 28 digits before the decimal point"),
    ("tz", "infinity", "no timestamptz value MySQL can hold"),
    ("ts", "-infinity", "no timestamp value MySQL can hold"),
    ("d", "10000-01-01", "no date value MySQL can hold"),
    ("d", "0044-03-15 BC", "no date value MySQL can hold"),
    ("b", "yes", "no boolean value"),
    ("i", "12.5", "no integer value"),
    ("bin", "xyz", "it is not hex"),
])
def test_values_mysql_cannot_hold_stop_the_batch_before_any_damage(sink, url, column, value, reason):
    sink.apply(make_batch([("c", 1, {"id": "1", "t": "kept"})], KINDS))
    with pytest.raises(SinkError, match=rf"column '{column}'.*'{value}'.*{reason}.*nothing of this batch") as info:
        sink.apply(make_batch([("u", 2, {"id": "1", "t": "changed"}), ("c", 3, {"id": "7", column: value})], KINDS))
    assert info.value.terminal and "(id=7)" in str(info.value) and info.value.table.endswith(".kinds")
    assert rows(url, "kinds", "id, t") == [(1, "kept")] and len(ledger(url)) == 1


def test_a_value_the_server_would_change_stops_the_batch(sink, url):
    """What no Arrow check knows (a MySQL source's own column types) is the server's: a value stored with a
    warning is a value changed, and stops the batch."""
    narrow = TableSchema("shop", "narrow", (Column("id", "int", "integer", primary_key=True),
                                            Column("vc", "varchar(3)", "text"), Column("e", "enum('a','b')", "text")),
                         dialect="mysql")
    sink.apply(make_batch([("c", 1, {"id": "1", "vc": "abc", "e": "a"})], narrow))
    for column, value in (("vc", "abcd"), ("e", "z")):
        with pytest.raises(SinkError, match=rf"would not store a value exactly .*'{column}'.*\(id=2\).*nothing of"
                                            rf" this batch was written") as info:
            sink.apply(make_batch([("u", 2, {"id": "1", "vc": "x"}), ("c", 3, {"id": "2", column: value})], narrow))
        assert info.value.terminal
    assert rows(url, "narrow", "id, vc, e") == [(1, "abc", "a")]


def test_the_insert_fallback_stages_the_same_values(url, db):
    with MySqlSink(url, sink_id="w", target_schema=db) as sink:
        sink.stage_method = "insert"
        sink.apply(make_batch([("c", 1, {"id": "1", **KIND_VALUES}), ("c", 2, {"id": "2", "t": "\\N\t\n%s"})],
                              KINDS))
        narrow = TableSchema("shop", "narrow", (Column("id", "int", "integer", primary_key=True),
                                                Column("vc", "varchar(3)", "text")), dialect="mysql")
        with pytest.raises(SinkError, match=r"would not store a value exactly .*'vc'.*\(id=1502\)"):
            sink.apply(make_batch([("c", n, {"id": str(n), "vc": "abcd" if n == 1502 else "ok"})
                                   for n in range(3, 2000)], narrow))
    got = rows(url, "kinds", ", ".join(KINDS.column_names))
    assert got[0][1:6] == (-9223372036854775808, D("-1234567890123456789012345678.0123456789"),
                           KIND_VALUES["wide"], "NaN", 1e300)
    assert got[0][13] == bytes.fromhex("00010203fffe") and got[1][7] == "\\N\t\n%s"


def test_a_server_that_refuses_local_files_gets_insert_statements(sink, url, caplog):
    conn = connect(url, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SET GLOBAL local_infile = 0")
        with caplog.at_level("WARNING", logger="airflow_provider_cdc.sink.mysql"):
            sink.apply(make_batch([("c", 1, item(1, name="a\tb", payload="00ff")), ("c", 2, item(2))]))
        assert sink.stage_method == "insert" and "refuses LOAD DATA LOCAL INFILE" in caplog.text
        sink.apply(make_batch([("u", 3, item(2, name="b"))]))
    finally:
        with conn.cursor() as cur:
            cur.execute("SET GLOBAL local_infile = 1")
        conn.close()
    assert rows(url, columns="id, name, payload") == [(1, "a\tb", b"\x00\xff"), (2, "b", None)]


# --- failures -------------------------------------------------------------------------------------------------


def test_a_failure_mid_apply_leaves_no_data_and_no_ledger_row(sink, url):
    sink.apply(make_batch([("c", 1, item(1, name="before"))]))
    checks = TableSchema("shop", "checks", (Column("id", "int", "integer", primary_key=True),
                                            Column("code", "char(2)", "text")), dialect="mysql")
    batch = make_batch([("u", 2, item(1, name="changed")), ("c", 3, item(2, name="new"))],
                       extra={checks: [("c", 4, {"id": "1", "code": "ab"}), ("c", 5, {"id": "2", "code": "abc"})]})
    with pytest.raises(SinkError) as info:
        sink.apply(batch)
    error = info.value
    assert (error.sink_id, error.batch_id) == ("warehouse", "shop:2-5") and error.table.endswith(".checks")
    assert "(id=2)" in str(error) and error.terminal
    assert rows(url, columns="id, name") == [(1, "before")]
    assert rows(url, "checks", "id") == []  # created by the DDL phase, but no data
    assert ledger(url) == [("shop:1-1", "shop", 1, 1, 1, 0)]
    # The sink is usable afterwards, and the fixed batch goes through.
    fixed = make_batch([("u", 2, item(1, name="changed")), ("c", 3, item(2, name="new"))],
                       extra={checks: [("c", 4, {"id": "1", "code": "ab"}), ("c", 5, {"id": "2", "code": "cd"})]})
    assert sink.apply(fixed).applied
    assert rows(url, "checks", "id, code") == [(1, "ab"), (2, "cd")]


DOCS = TableSchema("public", "docs", (
    Column("id", "integer", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("title", "text", "text", ordinal=2),
    Column("price", "numeric(6,2)", "decimal", ordinal=3, precision=6, scale=2),
    Column("gone", "text", "text", ordinal=4),
), dialect="postgresql")


def with_columns(schema: TableSchema, *columns: Column, drop: Sequence[str] = (),
                 retype: dict[str, tuple[str, int, int]] | None = None,
                 rename: dict[str, str] | None = None) -> TableSchema:
    """``schema`` after an ALTER TABLE at the source: columns added, dropped, renamed (same ordinal) or given a
    new decimal precision and scale."""
    kept = []
    for col in schema.columns:
        if col.name in drop:
            continue
        if retype and col.name in retype:
            type_, precision, scale = retype[col.name]
            col = dataclasses.replace(col, source_type=type_, precision=precision, scale=scale)
        if rename and col.name in rename:
            col = dataclasses.replace(col, name=rename[col.name])
        kept.append(col)
    return dataclasses.replace(schema, columns=(*kept, *columns))


def ddl_then_data_batch() -> tuple[ChangeBatch, ChangeBatch]:
    """A first batch, and one whose schema change needs DDL: a column renamed, one widened, one dropped, one added
    with a backfill, and a new table."""
    first = make_batch([("c", 1, {"id": "1", "title": "a", "price": "1.50", "gone": "g1"}),
                        ("c", 2, {"id": "2", "title": "b", "price": "2.50", "gone": "g2"})], DOCS)
    after = with_columns(DOCS, Column("status", "varchar(10)", "text", ordinal=5, backfill="new"), drop=["gone"],
                         rename={"title": "headline"}, retype={"price": ("numeric(12,4)", 12, 4)})
    fresh = TableSchema("public", "fresh", (Column("id", "integer", "integer", primary_key=True),
                                            Column("v", "text", "text")), dialect="postgresql")
    change = SchemaChange("public.docs", 3, after=after, before=DOCS)
    second = make_batch([("u", 4, {"id": "2", "headline": "b2", "price": "2.1234", "status": "open"}),
                         ("c", 5, {"id": "3", "headline": "c", "price": "3.0001"})], after,
                        extra={fresh: [("c", 6, {"id": "1", "v": "x"})]}, schema_changes=[change])
    return first, second


def snapshot(url: str, db: str) -> dict[str, Any]:
    """Everything a batch leaves in the sink database, for comparison."""
    return {
        "docs": rows(url, "docs", "*", db), "docs types": column_types(url, "docs", db),
        "fresh": rows(url, "fresh", "*", db), "ledger": [row[:4] for row in ledger(url, db)],
        "defaults": defaults(url, db, "docs"),
    }


def defaults(url: str, db: str, table: str) -> list[tuple]:
    """Columns of ``table`` with a default other than NULL."""
    return query(url, "SELECT COLUMN_NAME, COLUMN_DEFAULT FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s"
                      " AND TABLE_NAME = %s AND COLUMN_DEFAULT <> 'NULL'", (db, table))


def test_a_crash_between_the_ddl_and_the_data_commit_converges_on_replay(sink, url, db, monkeypatch,
                                                                       mariadb_database_factory):
    first, second = ddl_then_data_batch()
    # The reference: the same batches into another database, without a crash.
    reference_url = mariadb_database_factory("ref")
    reference_db = database_of(reference_url)
    with MySqlSink(reference_url, sink_id="ref", target_schema=reference_db) as reference:
        reference.apply(first)
        reference.apply(second)
    expected = snapshot(reference_url, reference_db)
    assert expected["docs types"]["price"] == "decimal(12,4)" and "gone" not in expected["docs types"]
    assert rows(reference_url, "docs", "id, headline, price, status, _cdc_op") == [
        (1, "a", D("1.5000"), "new", "c"), (2, "b2", D("2.1234"), "open", "u"), (3, "c", D("3.0001"), None, "c")]

    sink.apply(first)
    original = MySqlSink._insert_ledger

    def crash(self, cur, row):
        raise pymysql.err.OperationalError(2013, "Lost connection to server during query (simulated)")

    monkeypatch.setattr(MySqlSink, "_insert_ledger", crash)
    with pytest.raises(SinkError, match="Lost connection") as info:
        sink.apply(second)
    assert not info.value.terminal
    # The DDL committed; no data, no ledger row, no schema version of the batch.
    assert column_types(url, "docs")["headline"] == "longtext" and "status" in column_types(url, "docs")
    assert rows(url, "docs", "id, headline, price, status") == [(1, "a", D("1.5000"), "new"),
                                                                 (2, "b", D("2.5000"), "new")]
    assert rows(url, "fresh", "*") == [] and [row[0] for row in ledger(url)] == ["shop:1-2"]
    assert [version.version for version in sink.schema_versions(SOURCE) if version.subject == "shop.public.docs"] == [1]

    # A crash between ADD COLUMN ... DEFAULT and DROP DEFAULT leaves a default behind: the replay drops it.
    query(url, "ALTER TABLE docs ALTER COLUMN status SET DEFAULT 'new'")
    monkeypatch.setattr(MySqlSink, "_insert_ledger", original)
    with MySqlSink(url, sink_id="warehouse", target_schema=db) as fresh_process:
        assert fresh_process.apply(second).applied
        assert not fresh_process.apply(second).applied
    assert snapshot(url, db) == {**expected, "ledger": [row[:4] for row in ledger(url, db)]}
    assert [row[:4] for row in ledger(url, db)] == expected["ledger"]


# --- names ----------------------------------------------------------------------------------------------------


def test_unusual_names_load(sink, url, db):
    names = ["_op", "_seq", "_position", "_unchanged", "before.x", "c" * 64, "naïve größe", 'say "hi"', "it's",
             "back`quote", "two words", "select", "order", "100%", "%s", "a%%b", "t", "s", "cdc_op", "Ünïcödé"]
    odd = TableSchema("public", "odd `names` %s", (Column("id", "integer", "integer", primary_key=True),
                                                   *(Column(name, "text", "text") for name in names)),
                      dialect="postgresql")
    values = {name: f"v{i}" for i, name in enumerate(names)}
    sink.apply(make_batch([("c", 1, {"id": "1", **values}),
                           ("u", 2, {"id": "1", **values, "_op": "changed"}, ["before.x"])], odd))
    assert list(column_types(url, "odd `names` %s"))[:len(names) + 1] == ["id", *names]
    [row] = rows(url, "odd `names` %s", "*")
    assert row[:len(names) + 1] == (1, *[values[name] if name != "_op" else "changed" for name in names])
    sink.apply(make_batch([("d", 3, {"id": "1"})], odd))
    assert rows(url, "odd `names` %s", "id") == []


def test_table_names_that_differ_only_in_case_are_two_tables(sink, url):
    upper = TableSchema("public", "Mixed", (Column("id", "integer", "integer", primary_key=True),
                                            Column("v", "text", "text")), dialect="postgresql")
    lower = dataclasses.replace(upper, name="mixed")
    sink.apply(make_batch([("c", 1, {"id": "1", "v": "upper"})], upper, extra={lower: [("c", 2, {"id": "1",
                                                                                                   "v": "lower"})]}))
    assert rows(url, "Mixed", "id, v") == [(1, "upper")] and rows(url, "mixed", "id, v") == [(1, "lower")]
    assert sink.reset_table("public.Mixed") and rows(url, "mixed", "id, v") == [(1, "lower")]


@pytest.mark.parametrize(("columns", "message"), [
    (["Name", "name"], r"differ only in case \('Name' and 'name'\)"),
    (["_CDC_note"], r"\['_CDC_note'\] in the reserved bookkeeping namespace"),
    (["_cdc_note"], r"\['_cdc_note'\] in the reserved bookkeeping namespace"),
    (["x" * 65], "cannot be a MySQL column: it has 65 characters, and MySQL allows at most 64"),
    (["trailing "], "cannot be a MySQL column: it ends with a space"),
])
def test_column_names_mysql_cannot_hold_are_refused(sink, columns, message):
    bad = TableSchema("public", "bad", (Column("id", "integer", "integer", primary_key=True),
                                        *(Column(name, "text", "text") for name in columns)), dialect="postgresql")
    with pytest.raises(SinkError, match=message) as info:
        sink.apply(make_batch([("c", 1, {"id": "1"})], bad))
    assert info.value.terminal and info.value.table.endswith(".bad")


def test_a_table_name_longer_than_64_characters_is_refused(sink):
    long = TableSchema("public", "t" * 65, (Column("id", "integer", "integer", primary_key=True),))
    with pytest.raises(SinkError, match="cannot be a MySQL table: it has 65 characters"):
        sink.apply(make_batch([("c", 1, {"id": "1"})], long))


# --- ledger and re-snapshot -----------------------------------------------------------------------------------


def test_forget_source_and_reset_table(sink, url):
    assert sink.forget_source(SOURCE) == 0  # no ledger yet
    assert sink.reset_table(ITEMS) is False
    sink.apply(make_batch([("c", 1, item(1)), ("c", 2, item(2))]))
    sink.apply(make_batch([("c", 3, item(3))]))
    sink.apply(make_batch([("c", 4, item(4))], source_id="other"))
    assert sink.last_committed(SOURCE) == {"lsn": "0/3"}
    assert sink.forget_source(SOURCE) == 2
    assert sink.high_water(SOURCE) == 0 and sink.high_water("other") == 4 and sink.last_committed(SOURCE) is None
    assert sink.reset_table("public.items") is True
    assert query(url, "SELECT COUNT(*) FROM items") == [(0,)]
    sink.apply(make_batch([("c", 5, item(5))]))
    assert sink.reset_table(ITEMS) is True and sink.reset_table("nothing_here") is False
    assert query(url, "SELECT COUNT(*) FROM items") == [(0,)]
    assert sink.forget_source(SOURCE) == 1
    assert sink.apply(make_batch([("c", 1, item(1)), ("c", 2, item(2))])).applied
    assert query(url, "SELECT COUNT(*) FROM items") == [(2,)]


def test_added_column_gets_the_backfill_for_existing_rows(sink, url):
    sink.apply(make_batch([("c", 1, {"id": "1", "title": "old"}), ("c", 2, {"id": "2", "title": "old too"})], DOCS))
    after = with_columns(DOCS, Column("status", "character varying(10)", "text", ordinal=5, backfill="new"),
                         Column("qty", "integer", "integer", ordinal=6, backfill="0"),
                         Column("flag", "boolean", "boolean", ordinal=7, backfill="true"),
                         Column("at", "timestamptz", "timestamptz", ordinal=8, backfill="2024-05-01T12:00:00.5Z"),
                         Column("raw", "bytea", "binary", ordinal=9, backfill="00ff"),
                         Column("note", "text", "text", ordinal=10))
    change = SchemaChange("public.docs", 3, after=after, before=DOCS)
    sink.apply(make_batch([("u", 4, {"id": "2", "title": "changed", "status": "open", "qty": "5"}),
                           ("c", 5, {"id": "3", "title": "fresh"})], after, schema_changes=[change]))
    assert rows(url, "docs", "id, title, status, qty, flag, at, raw, note") == [
        (1, "old", "new", 0, 1, at("2024-05-01 12:00:00.5"), b"\x00\xff", None),
        (2, "changed", "open", 5, None, None, None, None),
        (3, "fresh", None, None, None, None, None, None)]
    # The defaults served the existing rows only: they are gone again.
    assert defaults(url, database_of(url), "docs") == []


def test_a_lossy_type_change_holds_the_table_and_the_others_flow(sink, url):
    wide = with_columns(DOCS, retype={"price": ("numeric(12,4)", 12, 4)})
    sink.apply(make_batch([("c", 1, {"id": "1", "price": "1.2345"})], wide))
    narrow = with_columns(wide, retype={"price": ("numeric(6,2)", 6, 2)})
    change = SchemaChange("public.docs", 2, after=narrow, before=wide)
    other = TableSchema("public", "others", (Column("id", "integer", "integer", False, True, 1),
                                              Column("v", "text", "text", ordinal=2)), dialect="postgresql")
    result = sink.apply(make_batch([("u", 3, {"id": "1", "title": "x", "price": "1.23"})], narrow,
                                   extra={other: [("c", 3, {"id": "7", "v": "kept flowing"})]},
                                   schema_changes=[change]))
    message = result.held_tables["public.docs"]
    assert "'price'" in message and "decimal(12,4) -> decimal(6,2)" in message
    assert "nothing of it was written" in message and "resnapshot shop --table public.docs" in message
    assert rows(url, "docs", "id, title, price") == [(1, None, D("1.2345"))]
    assert rows(url, "others", "id, v") == [(7, "kept flowing")]


def test_dropped_column_is_kept_and_nulled_under_lenient(sink, url):
    sink.apply(make_batch([("c", 1, {"id": "1", "title": "a", "price": "1.00"}),
                           ("c", 2, {"id": "2", "title": "b", "price": "2.00"})], DOCS), policy=LENIENT)
    dropped = with_columns(DOCS, drop=["price"])
    change = SchemaChange("public.docs", 3, after=dropped, before=DOCS)
    sink.apply(make_batch([("u", 4, {"id": "2", "title": "b2"}), ("c", 5, {"id": "3", "title": "c"})], dropped,
                          schema_changes=[change]), policy=LENIENT)
    assert rows(url, "docs", "id, title, price") == [(1, "a", D("1.00")), (2, "b2", None), (3, "c", None)]


def test_dropped_within_the_batch_keeps_earlier_values(sink, url):
    sink.apply(make_batch([("c", 1, {"id": "1", "title": "a", "price": "1.00"})], DOCS), policy=LENIENT)
    dropped = with_columns(DOCS, drop=["price"])
    change = SchemaChange("public.docs", 3, after=dropped, before=DOCS)
    batch = make_batch([("c", 2, {"id": "2", "title": "b", "price": "2.00"}), ("u", 4, {"id": "1", "title": "a2"})],
                       DOCS, schema_changes=[change])
    batch.schemas["public.docs"] = dropped  # the Arrow table still has price (NULL after the drop)
    sink.apply(batch, policy=LENIENT)
    assert rows(url, "docs", "id, title, price") == [(1, "a2", None), (2, "b", D("2.00"))]


# --- speed ------------------------------------------------------------------------------------------------------


def test_upserts_into_an_existing_table_measured(sink, url, capsys):
    """50,000 upserts into a table of 50,000 rows (half updates, half inserts): the rows/s figure is printed."""
    n = 50_000
    first = make_batch([("r", seq, item(seq, name=f"name {seq}", amount=f"{seq}.25", seen_at="2024-05-01T08:00:00Z",
                                        payload="00ff")) for seq in range(1, n + 1)])
    started = time.perf_counter()
    sink.apply(first)
    loaded = time.perf_counter() - started
    second = make_batch([("u", n + seq,
                          item(seq + n // 2, name=f"new {seq}", amount="1.50", seen_at="2024-05-02T08:00:00.5Z",
                               payload="ab")) for seq in range(1, n + 1)])
    started = time.perf_counter()
    result = sink.apply(second)
    merged = time.perf_counter() - started
    assert (result.upserted, result.deleted) == (n, 0)
    assert query(url, "SELECT COUNT(*), SUM(name LIKE 'new %') FROM items") == [(n + n // 2, D(n))]
    with capsys.disabled():
        print(f"\nMySqlSink on MariaDB: {n} inserts into an empty table in {loaded:.2f} s ({n / loaded:,.0f} rows/s); "
              f"{n} upserts ({n // 2} updates, {n // 2} inserts) into a {n}-row table in {merged:.2f} s "
              f"({n / merged:,.0f} rows/s)")
