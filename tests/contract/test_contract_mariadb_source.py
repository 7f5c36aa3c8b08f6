"""The contract suite with MariaDB as the source: MariaDB -> PostgreSQL (15 and 18) and MariaDB -> MariaDB.

The scenarios of ``test_contract.py``, written in MariaDB SQL against a fresh source database on the private MariaDB
(``mariadb_database_factory``), plus the MySQL/MariaDB rows of EDGE_CASES.md: column reorders, renames, a column
dropped and added again, zero dates, latin1 and emoji, a transaction larger than the batch, keys from a unique index,
an online schema change in gh-ost's shape, and a purged binlog. Each scenario changes the source, runs the pipeline's
own functions (:class:`~test_contract.Pair`, in-memory positions) and compares the sink with the source row for row
as Python values.

What a MariaDB column is expected to become, and how values are compared, is in
:func:`contract.pairs.mysql_logical_type` and :func:`contract.pairs.normalise_mysql`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pymysql
import pytest
from pymysql.constants import CLIENT

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.connectors.mysql.connection import connect_kwargs, database_of
from airflow_provider_cdc.errors import CdcError, PositionLostError, TableRefusedError
from airflow_provider_cdc.pipeline import TablesHeldError
from airflow_provider_cdc.tables import Column
from contract.pairs import SinkUnderTest, mariadb_sink, mysql_columns, mysql_quote, mysql_rows, postgres_sink
from contract.test_contract import Pair

DDL = """
CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, price decimal(12,2), note text);
CREATE TABLE pairs (region varchar(10), num int, label text, PRIMARY KEY (region, num));
CREATE TABLE kinds (
    id bigint PRIMARY KEY, i int, big bigint, n decimal(38,10), f double, b tinyint(1), t text,
    tz timestamp(6) NULL DEFAULT NULL, ts datetime(6), d date, tm time(6), j json, `by` varbinary(64), u uuid
);
"""
TABLES = ["items", "pairs", "kinds"]

# Every test runs into each sink: PostgreSQL on both servers, MariaDB once (on the source's server, in a database of
# its own). ``pg_server`` is parametrized here, directly, so that the MariaDB sink does not run twice.
pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.parametrize(("sink_kind", "pg_server"), [("postgresql", "pg15"), ("postgresql", "pg18"),
                                                         ("mariadb", "pg15")],
                            indirect=["pg_server"], ids=["postgresql-pg15", "postgresql-pg18", "mariadb"]),
]


# ------------------------------------------------------------------------------------ the MariaDB side of a pair


def source_connect(url: str) -> pymysql.Connection:
    """A session on the source database for the test's own SQL: UTC, utf8mb4, several statements per call."""
    return pymysql.connect(**connect_kwargs(url), database=database_of(url), charset="utf8mb4", autocommit=True,
                           client_flag=CLIENT.MULTI_STATEMENTS, init_command="SET time_zone = '+00:00'")


class MariaPair(Pair):
    """A MariaDB source database and one sink (:class:`Pair` with MariaDB's SQL and catalog)."""

    source_type = "mysql"

    def __init__(self, source_url: str, sink: SinkUnderTest, **kwargs: Any) -> None:
        self.source_schema = database_of(source_url)  # unqualified names in ``tables`` are in the URL's database
        super().__init__(source_url, sink, **kwargs)

    def sql(self, statement: str, params: Any = None) -> None:
        """Run ``statement`` (several, separated by ``;``, when there are no ``params``), autocommit."""
        with source_connect(self.url) as conn, conn.cursor() as cur:
            cur.execute(statement, params)
            while cur.nextset():
                pass

    def columns(self, table: str) -> list[Column]:
        return mysql_columns(self.url, self.source_schema, table)

    def source_rows(self, table: str, columns: list[Column]) -> list[dict[str, Any]]:
        return mysql_rows(self.url, self.source_schema, table, columns)

    def sink_rows(self, table: str, columns: list[Column] | None = None) -> list[dict[str, Any]]:
        return self.under_test.read(self.target_schema, table, columns or self.columns(table), True)

    def load_and_commit(self, batch) -> dict[str, Any]:
        loaded = pipeline.load_batch(batch, self.sink)
        pipeline.commit_position(self.source, self.sink, self.positions, batch_id=batch.batch_id,
                                 position_to=batch.position_to, needs_ledger=not batch.is_empty)
        return loaded


@pytest.fixture
def sink_under_test(request, sink_kind, pg_database_factory) -> SinkUnderTest:
    if sink_kind == "postgresql":
        return postgres_sink(pg_database_factory("contract_sink"))
    return mariadb_sink(request.getfixturevalue("mariadb_database_factory")("contract_sink"))


@pytest.fixture
def pair_factory(mariadb_database_factory, sink_under_test) -> Iterator[Callable[..., MariaPair]]:
    made: list[MariaPair] = []

    def make(*, ddl: str = DDL, tables: list[str] = TABLES, **kwargs: Any) -> MariaPair:
        url = mariadb_database_factory("contract_src")
        with source_connect(url) as conn, conn.cursor() as cur:
            cur.execute(ddl)
            while cur.nextset():
                pass
        pair = MariaPair(url, sink_under_test, tables=tables, **kwargs)
        made.append(pair)
        return pair

    yield make
    for pair in made:
        pair.close()


@pytest.fixture
def pair(pair_factory) -> MariaPair:
    return pair_factory()


# ----------------------------------------------------------------------------------------------------- scenarios


def test_snapshot_then_stream_reaches_the_sink(pair):
    pair.sql("INSERT INTO items SELECT seq, concat('item ', seq), seq, seq * 1.5, NULL FROM seq_1_to_50")
    assert pair.run() == 50
    pair.sql("UPDATE items SET qty = qty + 1 WHERE id <= 10; DELETE FROM items WHERE id > 45;"
             "INSERT INTO items VALUES (100, 'new', 1, 9.99, NULL)")
    assert pair.run() == 16
    assert pair.assert_same("items") == 46


def test_replaying_a_batch_is_a_no_op(pair):
    pair.run()
    pair.sql("INSERT INTO items SELECT seq, 'x', seq, 1, NULL FROM seq_1_to_5")
    batch = pair.capture()
    first = pipeline.load_batch(batch, pair.sink)
    again = pipeline.load_batch(batch, pair.sink)
    assert first["applied"] is True and again["applied"] is False
    assert pair.sink.has_batch(batch.batch_id) and pair.sink.high_water(pair.source_id) == batch.seq_to
    pipeline.commit_position(pair.source, pair.sink, pair.positions, batch_id=batch.batch_id,
                             position_to=batch.position_to, needs_ledger=True)
    assert pair.assert_same("items") == 5
    assert pair.run() == 0


def test_the_same_position_captures_the_same_batch(pair):
    """Deterministic capture: a re-captured range has the same batch id and seq numbers (what a replay relies on)."""
    pair.run()
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1, NULL); UPDATE items SET qty = 2 WHERE id = 1;"
             "INSERT INTO pairs VALUES ('eu', 1, 'x')")
    first = pair.capture()
    again = pair.capture()
    assert (again.batch_id, again.seq_from, again.seq_to) == (first.batch_id, first.seq_from, first.seq_to)
    assert again.tables[pair.table("items")].equals(first.tables[pair.table("items")])


def test_an_older_change_never_overwrites_a_newer_one(pair):
    pair.run()
    pair.sql("INSERT INTO items VALUES (1, 'old', 1, 1, NULL)")
    old = pair.capture()
    pair.load_and_commit(old)
    pair.sql("UPDATE items SET name = 'new', qty = 2 WHERE id = 1")
    pair.run()
    # The ledger forgets the old batch (as after a lost ledger), so only the per-row guard stands in the way.
    pair.sink.forget_source(pair.source_id)
    result = pipeline.load_batch(old, pair.sink)
    assert result["applied"] is True
    assert pair.assert_same("items") == 1


def test_changes_to_one_key_fold_in_order(pair):
    pair.run()
    pair.sql("""
        START TRANSACTION;
        INSERT INTO items VALUES (1, 'a', 1, 1, NULL), (2, 'b', 2, 2, NULL), (3, 'c', 3, 3, NULL);
        UPDATE items SET name = 'a2' WHERE id = 1;
        UPDATE items SET name = 'a3', qty = 10 WHERE id = 1;
        DELETE FROM items WHERE id = 2;
        DELETE FROM items WHERE id = 3;
        INSERT INTO items VALUES (3, 'c again', 30, 3.5, NULL);
        UPDATE items SET id = 4 WHERE id = 3;
        COMMIT;
    """)
    pair.run()
    assert pair.assert_same("items") == 2


def test_composite_keys_including_a_change_of_one_part(pair):
    pair.sql("INSERT INTO pairs VALUES ('eu', 1, 'a'), ('eu', 2, 'b'), ('us', 1, 'c')")
    pair.run()
    pair.sql("UPDATE pairs SET num = 3 WHERE region = 'eu' AND num = 1; UPDATE pairs SET label = 'z' "
             "WHERE region = 'us'; DELETE FROM pairs WHERE region = 'eu' AND num = 2;"
             "INSERT INTO pairs VALUES ('eu', 2, 'again')")
    pair.run()
    assert pair.assert_same("pairs") == 3


def test_a_truncate_in_the_middle_of_a_batch(pair):
    pair.sql("INSERT INTO items SELECT seq, 'before', seq, 1, NULL FROM seq_1_to_20")
    pair.run()
    pair.sql("START TRANSACTION; UPDATE items SET name = 'touched'; COMMIT; TRUNCATE items;"
             "INSERT INTO items VALUES (5, 'after', 5, 5, NULL), (50, 'after', 50, 50, NULL);"
             "UPDATE items SET qty = 6 WHERE id = 5")
    batch = pair.capture()
    assert "t" in batch.op_totals()
    pair.load_and_commit(batch)
    assert pair.assert_same("items") == 2


def test_soft_delete_then_reinsert(pair_factory):
    pair = pair_factory(delete_mode="soft")
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1, NULL), (2, 'b', 2, 2, NULL)")
    pair.run()
    pair.sql("DELETE FROM items WHERE id IN (1, 2)")
    pair.run()
    rows = {r["id"]: r for r in pair.under_test.raw(pair.target_schema, "items")}
    assert rows[1]["_cdc_deleted_at"] is not None and rows[2]["_cdc_deleted_at"] is not None
    assert pair.assert_same("items") == 0
    pair.sql("INSERT INTO items VALUES (1, 'back', 7, 7, NULL)")
    pair.run()
    rows = {r["id"]: r for r in pair.under_test.raw(pair.target_schema, "items")}
    assert rows[1]["_cdc_deleted_at"] is None and rows[1]["name"] == "back"
    assert rows[2]["_cdc_deleted_at"] is not None
    assert pair.assert_same("items") == 1


def test_a_failed_load_leaves_no_ledger_row_and_the_position_where_it_was(pair):
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1, NULL); INSERT INTO pairs VALUES ('eu', 1, 'a')")
    pair.run()
    position = pair.positions.get(pair.source_id)
    pair.sql("UPDATE items SET qty = 2; UPDATE pairs SET label = 'b'")
    batch = pair.capture()
    # The last table's values become unreadable for any sink: the load must fail before anything is vouched for.
    name = pair.table("pairs")
    broken = batch.tables[name]
    batch.tables[name] = broken.set_column(
        broken.column_names.index("num"), "num", pa.array(["not a number"] * broken.num_rows, pa.string()))
    with pytest.raises(CdcError):
        pipeline.load_batch(batch, pair.sink)
    assert not pair.sink.has_batch(batch.batch_id)
    assert pair.positions.get(pair.source_id) == position
    if pair.sink.capabilities.transactional:
        assert pair.sink_rows("items")[0]["qty"] == 1
    # Nothing was acknowledged: the next run captures the same changes again and converges.
    pair.run()
    assert pair.assert_same("items") == 1 and pair.assert_same("pairs") == 1


KINDS_ROW = {
    "id": 1, "i": -7, "big": 9223372036854775807, "n": decimal.Decimal("1234567890123456789012345678.0123456789"),
    "f": 1.5e-300, "b": 1, "t": "héllo, \"wörld\"\n\\\ttab 'quoted'",
    "tz": dt.datetime(2024, 5, 1, 12, 0, 0, 250000),  # a TIMESTAMP written in a UTC session
    "ts": dt.datetime(1999, 12, 31, 23, 59, 59, 999999), "d": dt.date(2024, 2, 29), "tm": dt.time(23, 59, 59, 500000),
    "j": '{"a": [1, 2, {"b": null}], "ü": "x"}', "by": b"\x00\xde\xad\\\x0a",
    "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
}


def insert_kind(pair: MariaPair, **changes: Any) -> None:
    values = {**KINDS_ROW, **changes}
    names = ", ".join(mysql_quote(c) for c in values)
    pair.sql(f"INSERT INTO kinds ({names}) VALUES ({', '.join(['%s'] * len(values))})", list(values.values()))


def test_every_logical_type_round_trips(pair):
    insert_kind(pair)
    insert_kind(pair, id=2, b=0, by=b"", t="", n=decimal.Decimal("-0.0000000001"), j="[]")
    pair.sql("INSERT INTO kinds (id) VALUES (3)")
    pair.run()  # by snapshot
    insert_kind(pair, id=4, tz=dt.datetime(1970, 1, 1, 0, 0, 1), f=-0.25, ts=dt.datetime(1000, 1, 1))
    pair.sql("UPDATE kinds SET i = i + 1, t = concat(t, '!') WHERE id = 1")
    pair.run()  # by stream
    assert pair.assert_same("kinds") == 4


MYSQL_TYPES_DDL = """
CREATE TABLE mytypes (
    id int PRIMARY KEY, fl float, e enum('small', 'large'), st set('a', 'b', 'c'), bt bit(10), y year,
    bn binary(4), ch char(5), ub bigint unsigned, ui int unsigned, ti tinyint, si smallint unsigned, mi mediumint,
    tt tinytext, mt mediumtext, lb longblob, d0 decimal(20,0), boo boolean,
    g bigint AS (ui * 2) PERSISTENT, gv varchar(20) AS (concat(e, '-', ch)) VIRTUAL
)
"""
MYSQL_TYPES_COLUMNS = "id, fl, e, st, bt, y, bn, ch, ub, ui, ti, si, mi, tt, mt, lb, d0, boo"


def test_mysql_specific_types_round_trip(pair_factory):
    """ENUM, SET, BIT, YEAR, BINARY(n) padding, CHAR, unsigned integers at their maximum, FLOAT's single precision,
    BOOL, and generated columns (stored and virtual), by snapshot and by stream."""
    pair = pair_factory(ddl=MYSQL_TYPES_DDL, tables=["mytypes"])
    insert = f"INSERT INTO mytypes ({MYSQL_TYPES_COLUMNS}) VALUES "
    pair.sql(insert + "(1, 0.1, 'large', 'a,c', b'1010101010', 2024, x'01', 'ab', 18446744073709551615, 4294967295,"
             " -128, 65535, -8388608, 'tiny', 'medium', repeat(x'00ff', 50000), 99999999999999999999, true),"
             "(2, NULL, NULL, '', b'0', 1901, x'', '', 0, 0, 0, 0, 0, '', '', x'', -1, false)")
    pair.sql("INSERT INTO mytypes (id) VALUES (3)")
    pair.run()
    pair.sql(insert + "(4, -3.4e38, 'small', 'b', b'1111111111', 2155, x'ffffffff', 'abcde', 9223372036854775808,"
             " 1, 127, 1, 8388607, 'x', 'y', x'deadbeef', 1, true)")
    pair.sql("UPDATE mytypes SET fl = 1.1, st = 'a,b,c', e = 'small', ch = 'z ', bt = b'11', ui = 7 WHERE id = 1")
    pair.run()
    assert pair.assert_same("mytypes") == 4


# ------------------------------------------------------------------------- rows of EDGE_CASES.md, on every pair


def test_names_that_need_quoting_and_names_that_differ_only_in_case(pair_factory):
    pair = pair_factory(
        ddl="CREATE TABLE `Mixed_Ü` (`Id Key` int PRIMARY KEY, `select` text, `a b` text, `quote\"d` int,"
            " `back``tick` int, _op text, _position int, `ünï` text);"
            "CREATE TABLE `mixed_ü` (id int PRIMARY KEY, v text);"
            "CREATE TABLE `select` (id int PRIMARY KEY, `from` text)",
        tables=["Mixed_Ü", "mixed_ü", "select"],
    )
    pair.sql("INSERT INTO `Mixed_Ü` VALUES (1, 's', 'a', 1, 10, 'op', 7, 'é'), (2, 't', 'b', 2, 20, NULL, NULL, NULL);"
             "INSERT INTO `mixed_ü` VALUES (1, 'lower'); INSERT INTO `select` VALUES (1, 'f')")
    pair.run()
    pair.sql("UPDATE `Mixed_Ü` SET `a b` = 'changed', `quote\"d` = 3, `back``tick` = 30 WHERE `Id Key` = 1;"
             "DELETE FROM `Mixed_Ü` WHERE `Id Key` = 2; UPDATE `mixed_ü` SET v = 'still lower';"
             "UPDATE `select` SET `from` = 'g'")
    pair.run()
    assert pair.assert_same("Mixed_Ü") == 1
    assert pair.assert_same("mixed_ü") == 1
    assert pair.assert_same("select") == 1


def test_keys_of_decimal_uuid_and_binary_types_are_one_key_each(pair_factory):
    pair = pair_factory(
        ddl="CREATE TABLE knum (id decimal(20,5) PRIMARY KEY, v text);"
            "CREATE TABLE kuuid (id uuid PRIMARY KEY, v text);"
            "CREATE TABLE kbytes (id varbinary(16) PRIMARY KEY, v text);"
            "CREATE TABLE kfixed (id binary(4) PRIMARY KEY, v text)",
        tables=["knum", "kuuid", "kbytes", "kfixed"],
    )
    pair.sql("INSERT INTO knum VALUES (1.0, 'a'), (2, 'b'); INSERT INTO kuuid VALUES "
             "('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'a'); INSERT INTO kbytes VALUES (x'00ff', 'a'), (x'', 'e');"
             "INSERT INTO kfixed VALUES (x'01', 'padded'), (x'01000001', 'full')")
    pair.run()
    # 1.00 is the key 1.0 written in other text: the same row, never a second one.
    pair.sql("UPDATE knum SET id = 1.00, v = 'a2' WHERE id = 1; UPDATE knum SET v = 'b2' WHERE id = 2.000;"
             "UPDATE kuuid SET v = 'a2'; UPDATE kbytes SET v = 'a2' WHERE id = x'00ff';"
             "DELETE FROM kbytes WHERE id = x''; UPDATE kfixed SET v = 'padded2' WHERE id = x'01000000'")
    pair.run()
    assert pair.assert_same("knum") == 2
    assert pair.assert_same("kuuid") == 1
    assert pair.assert_same("kbytes") == 1
    assert pair.assert_same("kfixed") == 2


def test_add_column_with_a_default_shows_on_existing_rows(pair):
    # MariaDB adds these instantly: nothing is written for the existing rows, neither in the table nor in the binlog.
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1, NULL), (2, 'b', 2, 2, NULL)")
    pair.run()
    pair.sql("ALTER TABLE items ADD COLUMN flag boolean NOT NULL DEFAULT true;"
             "ALTER TABLE items ADD COLUMN label varchar(20) DEFAULT 'none'; UPDATE items SET qty = 5 WHERE id = 2;"
             "INSERT INTO items (id, name, flag) VALUES (3, 'c', false)")
    pair.run()
    assert pair.assert_same("items") == 3


def test_ddl_between_changes_keeps_every_value_in_its_column(pair):
    # MariaDB commits before and after each DDL statement, so "a transaction" is the batch: all of it is captured
    # together, the DDL between the row events.
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1, 'n1')")
    pair.run()
    pair.sql("INSERT INTO items VALUES (2, 'b', 2, 2, 'n2'); ALTER TABLE items RENAME COLUMN note TO remark;"
             "ALTER TABLE items ADD COLUMN extra int; INSERT INTO items VALUES (3, 'c', 3, 3, 'n3', 33);"
             "UPDATE items SET remark = 'r1' WHERE id = 1")
    batch = pair.capture()
    assert batch.change_count == 3 and len(batch.schema_changes) >= 1
    pair.load_and_commit(batch)
    assert pair.assert_same("items") == 3


def test_a_lossy_type_change_holds_only_that_table(pair):
    pair.sql("INSERT INTO items VALUES (1, '12', 1, 1, NULL); INSERT INTO pairs VALUES ('eu', 1, 'a')")
    pair.run()
    pair.sql("ALTER TABLE items MODIFY name int; UPDATE items SET qty = 9; UPDATE pairs SET label = 'flows'")
    with pytest.raises(TablesHeldError, match="items"):
        pair.run()
    assert pair.table("items") in pair.sink.held_tables(pair.source_id)
    assert pair.assert_same("pairs") == 1  # the other table kept flowing
    assert pair.sink_rows("items", pair.columns("items")[2:3]) == [{"qty": 1}]  # nothing of the held table applied


# ---------------------------------------------------------------------- MySQL / MariaDB rows of EDGE_CASES.md


def test_a_column_reorder_keeps_every_value_in_its_column(pair):
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1.5, 'n1'), (2, 'b', 2, 2.5, 'n2')")
    pair.run()
    pair.sql("ALTER TABLE items MODIFY qty int FIRST; INSERT INTO items (id, name, qty, price, note) VALUES "
             "(3, 'c', 3, 3.5, 'n3'); UPDATE items SET note = 'moved' WHERE id = 1;"
             "ALTER TABLE items MODIFY note text AFTER id; UPDATE items SET qty = 20, name = 'b2' WHERE id = 2;"
             "INSERT INTO items (id, name, qty, price, note) VALUES (4, 'd', 4, 4.5, 'n4')")
    pair.run()
    assert [c.name for c in pair.columns("items")] == ["qty", "id", "note", "name", "price"]
    assert pair.assert_same("items") == 4


def test_rename_column_keeps_the_values(pair):
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1, 'n1'), (2, 'b', 2, 2, 'n2')")
    pair.run()
    pair.sql("ALTER TABLE items RENAME COLUMN note TO remark; ALTER TABLE items CHANGE name title text;"
             "UPDATE items SET qty = 5 WHERE id = 2; INSERT INTO items VALUES (3, 'c', 3, 3, 'n3')")
    pair.run()
    assert pair.assert_same("items") == 3
    rows = {r["id"]: r for r in pair.sink_rows("items")}
    assert (rows[1]["title"], rows[1]["remark"]) == ("a", "n1")  # a row the stream never touched again


def test_a_column_dropped_and_added_again_is_a_new_column(pair):
    """DROP COLUMN note, ADD COLUMN note: the same name, a new column whose value every row now has (the default),
    though the stream carries no change for them. Following it as a rename would keep the old values: the table
    is held instead (until a re-snapshot), and the other tables keep flowing."""
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1, 'old1'), (2, 'b', 2, 2, 'old2');"
             "INSERT INTO pairs VALUES ('eu', 1, 'a')")
    pair.run()
    pair.sql("ALTER TABLE items DROP COLUMN note; ALTER TABLE items ADD COLUMN note text DEFAULT 'fresh';"
             "UPDATE items SET note = 'set' WHERE id = 1; UPDATE pairs SET label = 'flows'")
    with pytest.raises(TablesHeldError, match="items") as caught:
        pair.run()
    assert "resnapshot" in str(caught.value)
    assert pair.assert_same("pairs") == 1
    old = [Column("id", "bigint", "integer"), Column("note", "text", "text")]
    assert pair.sink_rows("items", old) == [{"id": 1, "note": "old1"}, {"id": 2, "note": "old2"}]  # untouched


ZERO_DDL = "CREATE TABLE zd (id int PRIMARY KEY, d date, dt datetime, ok date); CREATE TABLE other (id int PRIMARY KEY)"


def insert_zero_dates(pair: MariaPair, first_id: int) -> None:
    pair.sql("SET SESSION sql_mode = ''; INSERT INTO zd VALUES "
             f"({first_id}, '0000-00-00', '0000-00-00 00:00:00', '2024-01-02'),"
             f"({first_id + 1}, '2024-00-10', '2024-05-00 10:00:00', '2024-01-03')")


def test_zero_dates_become_null_with_a_warning(pair_factory, caplog):
    pair = pair_factory(ddl=ZERO_DDL, tables=["zd"])
    insert_zero_dates(pair, 1)
    with caplog.at_level(logging.WARNING, logger="airflow_provider_cdc"):
        pair.run()  # by snapshot
        insert_zero_dates(pair, 3)
        pair.run()  # by stream
    rows = pair.sink_rows("zd")
    assert rows == [{"id": i, "d": None, "dt": None, "ok": dt.date(2024, 1, 2 + (i + 1) % 2)} for i in range(1, 5)]
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("zd" in m and "dt" in m and "zero" in m.lower() for m in warned), warned


@pytest.mark.parametrize("when", ["snapshot", "stream"])
def test_zero_dates_refused_name_table_and_column(pair_factory, when):
    pair = pair_factory(ddl=ZERO_DDL, tables=["zd", "other"], options={"zero_dates": "refuse"})
    pair.sql("INSERT INTO other VALUES (1)")
    if when == "stream":
        pair.run()
    position = pair.positions.get(pair.source_id)
    pair.sql("SET SESSION sql_mode = ''; INSERT INTO zd VALUES (1, '2024-01-01', '0000-00-00 00:00:00', NULL)")
    with pytest.raises(CdcError) as caught:
        pair.run()
    message = str(caught.value)
    assert "zd" in message and re.search(r"\bdt\b", message) and "zero" in message.lower(), message
    assert pair.positions.get(pair.source_id) == position  # nothing committed past it


def test_a_timestamp_is_the_same_instant_whatever_the_writer_session_zone(pair):
    """TIMESTAMP is an instant (stored in UTC, shown in the session's zone); DATETIME is a wall clock, the same text
    in every zone. Rows written from sessions in two other zones arrive as the same instants and wall clocks."""
    pair.sql("SET time_zone = '+05:30'; INSERT INTO kinds (id, tz, ts) VALUES (1, '2024-05-01 12:00:00.5', "
             "'2024-05-01 12:00:00.5')")
    pair.run()
    pair.sql("SET time_zone = '-08:00'; INSERT INTO kinds (id, tz, ts) VALUES (2, '2024-03-10 01:30:00', "
             "'2024-03-10 01:30:00'); UPDATE kinds SET tz = '2024-05-01 00:00:00' WHERE id = 1")
    pair.run()
    assert pair.assert_same("kinds") == 2
    rows = {r["id"]: r for r in pair.sink_rows("kinds")}
    assert rows[1]["tz"] == dt.datetime(2024, 5, 1, 8, 0, tzinfo=dt.timezone.utc)  # 00:00 at -08:00
    assert rows[2]["tz"] == dt.datetime(2024, 3, 10, 9, 30, tzinfo=dt.timezone.utc)
    assert rows[2]["ts"] == dt.datetime(2024, 3, 10, 1, 30)  # the wall clock as written


def test_latin1_and_utf8mb4_columns_arrive_intact(pair_factory):
    pair = pair_factory(ddl="CREATE TABLE enc (id int PRIMARY KEY, l varchar(60) CHARACTER SET latin1,"
                            " lt text CHARACTER SET latin1, u varchar(60) CHARACTER SET utf8mb4) CHARACTER SET latin1",
                        tables=["enc"])
    pair.sql("INSERT INTO enc VALUES (1, 'café déjà vu, Ñandú ©±', 'Größe ½ ¿qué?', '😀 emoji 🎉 你好 𝄞')")
    pair.run()
    pair.sql("INSERT INTO enc VALUES (2, 'àéîõü ÿ', 'Ærø', '🚀🧪'); UPDATE enc SET l = concat(l, ' ß') WHERE id = 1")
    pair.run()
    assert pair.assert_same("enc") == 2
    rows = {r["id"]: r for r in pair.sink_rows("enc")}
    assert rows[1]["l"] == "café déjà vu, Ñandú ©± ß" and rows[2]["u"] == "🚀🧪"


def test_a_transaction_larger_than_the_batch_stays_whole(pair_factory):
    pair = pair_factory(batch_size=1000)
    pair.run()
    pair.sql("INSERT INTO items SELECT seq, 'small', seq, 1, NULL FROM seq_1_to_5")  # one transaction each
    pair.sql("INSERT INTO items SELECT 100 + seq, 'big', seq, 2, NULL FROM seq_1_to_1500")
    pair.sql("INSERT INTO items SELECT 5000 + seq, 'after', seq, 3, NULL FROM seq_1_to_10")
    batches: list[tuple[int, int, set[int]]] = []
    for _ in range(10):
        batch = pair.capture()
        if batch.change_count == 0:
            break
        ids = set(batch.tables[pair.table("items")].column("id").to_pylist())
        batches.append((batch.seq_from, batch.seq_to, {int(i) for i in ids}))
        pair.load_and_commit(batch)
    big = set(range(101, 1601))
    holding = [ids for _, _, ids in batches if ids & big]
    assert len(holding) == 1 and big <= holding[0], "the 1,500-row transaction was split over batches"
    assert not holding[0] & set(range(5001, 5011)), "the batch with the big transaction read past it"
    for (_, prev_to, _), (seq_from, _, _) in zip(batches, batches[1:]):
        assert seq_from == prev_to + 1  # the next batch starts right after it
    assert sum(len(ids) for _, _, ids in batches) == 1515
    assert pair.assert_same("items") == 1515


def test_a_unique_not_null_index_identifies_rows_of_a_table_without_primary_key(pair_factory):
    pair = pair_factory(ddl="CREATE TABLE uq (v int, code varchar(20) NOT NULL, note text, UNIQUE KEY uq_code (code))",
                        tables=["uq"])
    pair.sql("INSERT INTO uq VALUES (1, 'a', 'x'), (2, 'b', 'y'), (3, 'c', 'z')")
    pair.run()
    pair.sql("UPDATE uq SET v = 20 WHERE code = 'b'; UPDATE uq SET code = 'cc' WHERE code = 'c';"
             "DELETE FROM uq WHERE code = 'a'; INSERT INTO uq VALUES (4, 'a', 'again')")
    pair.run()
    assert pair.assert_same("uq") == 3


def test_a_table_without_a_usable_key_is_refused_at_start(pair_factory):
    pair = pair_factory(ddl="CREATE TABLE nokey (a int, b text); CREATE TABLE nullable_uq (a int, UNIQUE KEY (a));"
                            "CREATE TABLE fine (id int PRIMARY KEY)",
                        tables=["fine", "nokey", "nullable_uq"])
    pair.sql("INSERT INTO nokey VALUES (1, 'x'); INSERT INTO fine VALUES (1)")
    with pytest.raises(TableRefusedError) as caught:
        pair.run()
    message = str(caught.value)
    assert "nokey" in message and "nullable_uq" in message, message
    assert "fine:" not in message and pair.positions.get(pair.source_id) is None
    assert pair.sink.last_committed(pair.source_id) is None


def test_an_online_schema_change_in_gh_ost_shape_is_followed(pair):
    pair.sql("INSERT INTO items SELECT seq, concat('i', seq), seq, seq, NULL FROM seq_1_to_20;"
             "INSERT INTO pairs VALUES ('eu', 1, 'a')")
    pair.run()
    pair.sql("CREATE TABLE _items_gho LIKE items; ALTER TABLE _items_gho ADD COLUMN c int DEFAULT 7;"
             "UPDATE items SET qty = 100 WHERE id = 1;"
             "INSERT INTO _items_gho SELECT id, name, qty, price, note, 7 FROM items;"
             "RENAME TABLE items TO _items_del, _items_gho TO items;"
             "UPDATE items SET c = 8, name = 'after cut-over' WHERE id = 2; INSERT INTO items VALUES"
             " (21, 'new', 21, 21, NULL, 9); UPDATE pairs SET label = 'flows'")
    pair.run()
    assert "c" in [c.name for c in pair.columns("items")]
    assert pair.assert_same("items") == 21
    assert pair.assert_same("pairs") == 1


def test_a_purged_binlog_is_a_lost_position_naming_resnapshot(pair, mariadb_server):
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1, NULL)")
    pair.run()
    stored = pair.positions.get(pair.source_id)
    pair.sql("INSERT INTO items VALUES (2, 'b', 2, 2, NULL)")
    # MariaDB keeps a binlog until its binlog checkpoint passes it: purge_binlogs asks until only the newest is left.
    mariadb_server.purge_binlogs()
    with pytest.raises(PositionLostError, match="resnapshot"):
        pair.run()
    assert pair.positions.get(pair.source_id) == stored
    with pytest.raises(PositionLostError, match="resnapshot"):
        pair.source.has_changes(stored)


def test_a_safe_widening_is_followed(pair):
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1.5, NULL)")
    pair.run()
    pair.sql("ALTER TABLE items MODIFY qty BIGINT, MODIFY price DECIMAL(20,4);"
             "UPDATE items SET qty = 9000000000, price = 12345678.1234 WHERE id = 1")
    pair.run()
    assert pair.assert_same("items") == 1


def test_a_partitioned_table_streams_and_snapshots_under_its_own_name(pair_factory):
    pair = pair_factory(ddl="CREATE TABLE parts (id INT, region INT, v TEXT, PRIMARY KEY (id, region))"
                            " PARTITION BY HASH(region) PARTITIONS 4", tables=["parts"])
    pair.sql("INSERT INTO parts VALUES " + ", ".join(f"({i}, {i % 7}, 'v{i}')" for i in range(1, 41)))
    pair.run()  # by snapshot
    pair.sql("UPDATE parts SET region = region + 1 WHERE id <= 5; DELETE FROM parts WHERE id > 35;"
             "INSERT INTO parts VALUES (100, 3, 'new')")
    pair.run()  # by the binlog: rows moving between partitions too
    assert pair.assert_same("parts") == 36


def test_a_table_added_later_gets_its_snapshot_and_a_dropped_one_lets_the_others_flow(pair_factory, caplog):
    from airflow_provider_cdc.connectors.registry import make_source

    pair = pair_factory(tables=["items"])
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1, NULL); INSERT INTO pairs VALUES ('eu', 1, 'before')")
    pair.run()
    pair.source.close()
    pair.config = pair.config.model_copy(update={"tables": ["items", "pairs"]})
    pair.source = make_source(pair.config, pair.url)
    pair.sql("INSERT INTO pairs VALUES ('us', 2, 'while'); UPDATE items SET qty = 2")
    pair.run()
    assert pair.assert_same("pairs") == 2 and pair.assert_same("items") == 1
    with caplog.at_level(logging.WARNING, logger="airflow_provider_cdc"):
        pair.sql("DROP TABLE pairs; INSERT INTO items VALUES (2, 'b', 2, 2, NULL)")
        pair.run()
    assert "pairs" in caplog.text and "stops flowing" in caplog.text
    assert pair.assert_same("items") == 2


def test_a_position_from_another_server_is_lost_not_skipped(pair):
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1, NULL)")
    pair.run()
    stored = pair.positions.get(pair.source_id)
    # As after a failover to a replica (or a restore): binlog offsets of one server mean nothing on another.
    pair.positions.set(pair.source_id, {**stored, "server_id": "4242"}, batch_id=None)
    with pytest.raises(PositionLostError, match=r"another one.*resnapshot"):
        pair.run()
