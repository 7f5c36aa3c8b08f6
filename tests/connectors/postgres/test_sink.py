"""PgSink against real PostgreSQL servers (15 and 18): rows, ledger rows and the exactly-once guards."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from cdc_testing import TS_MS, Event, batch_of, item
from conftest import require_server

from airflow_provider_cdc.connectors.base import ApplyResult, Sink
from airflow_provider_cdc.connectors.ledger import LEDGER_COLUMN_NAMES
from airflow_provider_cdc.connectors.postgres.sink import PgSink
from airflow_provider_cdc.connectors.postgres.types import canonical_type, is_safe_widening, sink_column_type
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.schema import SchemaPolicy
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema
from airflow_provider_cdc.values import LOGICAL_TYPES

SOURCE = "shop"

ITEMS = TableSchema(
    schema="public",
    name="items",
    columns=(
        Column("id", "integer", "integer", nullable=False, primary_key=True),
        Column("name", "text", "text"),
        Column("amount", "numeric(12,2)", "decimal"),
        Column("seen_at", "timestamp with time zone", "timestamptz"),
        Column("payload", "bytea", "binary"),
        Column("tags", "text[]", "other"),
    ), dialect="postgresql"
)

LENIENT = SchemaPolicy(mode="lenient")


def make_batch(events: Sequence[Event], schema: TableSchema = ITEMS, **kwargs: Any) -> ChangeBatch:
    return batch_of(events, schema, **kwargs)


@pytest.fixture
def sink(pg_database: str) -> Iterator[PgSink]:
    with PgSink(pg_database, sink_id="warehouse") as sink:
        yield sink


@pytest.fixture
def soft_sink(pg_database: str) -> Iterator[PgSink]:
    with PgSink(pg_database, sink_id="warehouse", delete_mode="soft") as sink:
        yield sink


def query(url: str, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def rows(url: str, table: str = "items", columns: str = "id, name, amount, seen_at, payload, tags") -> list[tuple]:
    """The sink table in its text forms (exact: '12.30' stays '12.30'), ordered by key."""
    text_columns = ", ".join(f"{c.strip()}::text" for c in columns.split(","))
    return query(url, f"SELECT {text_columns} FROM public.{table} ORDER BY 1")


def ledger(url: str) -> list[tuple]:
    return query(url, "SELECT batch_id, source_id, seq_from, seq_to, rows_upserted, rows_deleted"
                      " FROM public._cdc_ledger ORDER BY seq_to, batch_id")


# --- types --------------------------------------------------------------------------------------------------


def test_postgres_source_types_are_kept_verbatim():
    assert sink_column_type(Column("a", "numeric(12,2)", "decimal"), "postgresql") == "numeric(12,2)"
    assert sink_column_type(Column("a", "timestamp(3) with time zone", "timestamptz"), "postgresql") == (
        "timestamp(3) with time zone")
    assert sink_column_type(Column("a", "character varying(20)[]", "other"), "postgresql") == (
        "character varying(20)[]")


def test_other_sources_map_logical_types():
    expected = {
        "integer": "bigint", "decimal": "numeric", "float": "double precision", "boolean": "boolean",
        "text": "text", "timestamptz": "timestamptz", "timestamp": "timestamp", "date": "date", "time": "time",
        "json": "jsonb", "binary": "bytea", "uuid": "uuid", "other": "text",
    }
    for logical, sink_type in expected.items():
        assert sink_column_type(Column("a", "whatever(1)", logical), "mysql") == sink_type


def test_type_text_that_is_not_a_type_name_never_reaches_sql():
    col = Column("a", "int); DROP TABLE x; --", "integer")
    assert sink_column_type(col, "postgresql") == "bigint"


def test_sink_satisfies_the_protocol(sink):
    assert isinstance(sink, Sink)


# --- tables -------------------------------------------------------------------------------------------------


def test_ensure_tables_creates_table_and_ledger(sink, pg_database):
    sink.ensure_tables([ITEMS])
    columns = query(
        pg_database,
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a"
        " WHERE a.attrelid = 'public.items'::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
    )
    assert columns == [
        ("id", "integer", True),
        ("name", "text", False),
        ("amount", "numeric(12,2)", False),
        ("seen_at", "timestamp with time zone", False),
        ("payload", "bytea", False),
        ("tags", "text[]", False),
        ("_cdc_op", "text", False),
        ("_cdc_position", "bigint", False),
        ("_cdc_ts", "timestamp with time zone", False),
    ]
    assert query(pg_database, "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                              " WHERE conrelid = 'public.items'::regclass AND contype = 'p'") == [("PRIMARY KEY (id)",)]
    assert query(pg_database, "SELECT indexdef LIKE '%%(source_id, seq_to)' FROM pg_indexes"
                              " WHERE tablename = '_cdc_ledger' AND indexname <> '_cdc_ledger_pkey'") == [(True,)]
    sink.ensure_tables([ITEMS])  # idempotent


def test_ensure_tables_in_other_schemas_and_soft_mode(pg_database):
    with PgSink(pg_database, sink_id="w", target_schema="Sales Data", ledger_schema="cdc",
                delete_mode="soft") as sink:
        sink.ensure_tables([ITEMS])
        assert sink.high_water(SOURCE) == 0
    assert query(pg_database, """SELECT count(*) FROM "Sales Data".items WHERE _cdc_deleted_at IS NULL""") == [(0,)]
    assert query(pg_database, "SELECT count(*) FROM cdc._cdc_ledger") == [(0,)]


def test_ledger_reads_before_any_ledger_exists(sink, pg_database):
    assert sink.has_batch("shop:1-2") is False
    assert sink.high_water(SOURCE) == 0
    assert sink.last_committed(SOURCE) is None
    assert query(pg_database, "SELECT to_regclass('public._cdc_ledger') IS NULL") == [(True,)]


def test_table_without_primary_key_is_refused(sink):
    keyless = TableSchema("public", "events", (Column("id", "integer", "integer"), Column("v", "text")),
                          dialect="postgresql")
    with pytest.raises(SinkError, match="add a primary key at the source") as info:
        sink.ensure_tables([keyless])
    assert info.value.table == "public.events"


def test_missing_postgres_type_falls_back_to_the_logical_type(sink, pg_database):
    moods = TableSchema("public", "moods", (Column("id", "integer", "integer", primary_key=True),
                                            Column("mood", "mood", "other")), dialect="postgresql")
    sink.apply(make_batch([("c", 1, {"id": "1", "mood": "happy"})], moods))
    assert query(pg_database, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                              " WHERE attrelid = 'public.moods'::regclass AND attname = 'mood'") == [("text",)]
    assert rows(pg_database, "moods", "id, mood") == [("1", "happy")]


# --- values -------------------------------------------------------------------------------------------------


def test_insert_update_delete_keep_values_exactly(sink, pg_database):
    tricky = 'tab\there, new\nline, back\\slash, "quoted", comma, and \\. alone'
    result = sink.apply(make_batch([
        ("c", 1, item(1, name="plain", amount="12.30", seen_at="2024-05-01T08:00:00Z", payload="00ff0a",
                      tags='{a,"b c",NULL}')),
        ("c", 2, item(2, name="", amount="0.00", seen_at=None, payload="")),
        ("c", 3, item(3, name=None, amount="-9999999999.99")),
        ("c", 4, item(4, name=tricky)),
        ("c", 5, item(5, name="\\.")),
    ]))
    assert result.applied and (result.upserted, result.deleted) == (5, 0)
    assert rows(pg_database) == [
        ("1", "plain", "12.30", "2024-05-01 08:00:00+00", "\\x00ff0a", '{a,"b c",NULL}'),
        ("2", "", "0.00", None, "\\x", None),
        ("3", None, "-9999999999.99", None, None, None),
        ("4", tricky, None, None, None, None),
        ("5", "\\.", None, None, None, None),
    ]

    result = sink.apply(make_batch([
        ("u", 6, item(1, name="renamed", amount="7.5", seen_at="2024-05-02T05:00:00Z", payload="ff")),
        ("u", 7, item(2, name=None, amount="1")),
        ("d", 8, item(3)),
        ("d", 9, item(42)),  # a delete of a row the sink never had: nothing
    ]))
    assert (result.upserted, result.deleted) == (2, 1)
    assert rows(pg_database) == [
        ("1", "renamed", "7.50", "2024-05-02 05:00:00+00", "\\xff", None),
        ("2", None, "1.00", None, None, None),
        ("4", tricky, None, None, None, None),
        ("5", "\\.", None, None, None, None),
    ]


def test_bookkeeping_columns_are_set(sink, pg_database):
    sink.apply(make_batch([("r", 1, item(1, name="a")), ("c", 2, item(2, name="b")), ("u", 3, item(1, name="c"))]))
    assert query(pg_database, "SELECT id, _cdc_op, _cdc_position, _cdc_ts::text FROM items ORDER BY id") == [
        (1, "u", 3, "2024-05-01 08:00:03+00"),
        (2, "c", 2, "2024-05-01 08:00:02+00"),
    ]


def test_ledger_row_is_written_with_the_data(sink, pg_database):
    batch = make_batch([("c", 1, item(1)), ("c", 2, item(2)), ("d", 3, item(1))])
    versions = {"rule_versions": {"mask": 2}, "schema_versions": {"public.items": 1},
                "stage_versions": {"transform": {"rules": 1}}}
    result = sink.apply(batch, run_id="manual__1", versions=versions)
    assert result.applied
    assert query(pg_database, "SELECT batch_id, source_id, position_from, position_to, seq_from, seq_to, counts,"
                              " rule_versions, schema_versions, stage_versions, run_id, rows_upserted, rows_deleted,"
                              " committed_at IS NOT NULL FROM _cdc_ledger") == [(
        "shop:1-3", "shop", {"lsn": "0/0"}, {"lsn": "0/3"}, 1, 3, {"public.items": {"c": 2, "d": 1}},
        # schema_versions is the schema gate's (the version each subject follows), not the caller's.
        {"mask": 2}, {"versions": {"shop.public.items": 1}, "changes": [], "held": {}}, {"transform": {"rules": 1}},
        "manual__1", 1, 0, True,
    )]
    assert [name for (name,) in query(pg_database, "SELECT attname FROM pg_attribute WHERE attrelid = "
                                      "'_cdc_ledger'::regclass AND attnum > 0 ORDER BY attnum")] == list(
        LEDGER_COLUMN_NAMES)
    assert sink.has_batch("shop:1-3") and not sink.has_batch("shop:4-5")
    assert sink.high_water(SOURCE) == 3 and sink.high_water("other") == 0
    assert sink.last_committed(SOURCE) == {"lsn": "0/3"} and sink.last_committed("other") is None


def test_a_ledger_of_an_older_version_gains_stage_versions(pg_database):
    query(pg_database, "CREATE TABLE _cdc_ledger (batch_id text PRIMARY KEY, source_id text NOT NULL,"
                       " position_from jsonb, position_to jsonb, seq_from bigint, seq_to bigint, counts jsonb,"
                       " rule_versions jsonb, schema_versions jsonb, run_id text, rows_upserted bigint,"
                       " rows_deleted bigint, committed_at timestamptz DEFAULT now())")
    query(pg_database, "INSERT INTO _cdc_ledger (batch_id, source_id, position_to, seq_from, seq_to)"
                       " VALUES ('shop:old', 'shop', '{\"lsn\": \"0/1\"}', 1, 1)")
    with PgSink(pg_database, sink_id="warehouse") as sink:
        assert sink.last_committed(SOURCE) == {"lsn": "0/1"}
        sink.apply(make_batch([("c", 2, item(2))]), versions={"stage_versions": {"capture": None}})
        assert sink.last_committed(SOURCE) == {"lsn": "0/2"}
    assert query(pg_database, "SELECT batch_id, stage_versions FROM _cdc_ledger ORDER BY seq_to") == [
        ("shop:old", None), ("shop:2-2", {"capture": None})]


def test_capabilities_declare_every_logical_type_and_the_postgresql_dialect(sink):
    assert sink.capabilities.native_types == frozenset(LOGICAL_TYPES)
    assert sink.capabilities.dialect == "postgresql" and sink.capabilities.stores_other_exactly
    assert sink.capabilities.transactional and sink.capabilities.merge_by_key and sink.capabilities.soft_delete


# --- exactly once -------------------------------------------------------------------------------------------


def test_replaying_a_batch_is_a_no_op(sink, pg_database):
    batch = make_batch([("c", 1, item(1, name="a")), ("u", 2, item(1, name="b"))])
    assert sink.apply(batch).applied
    query(pg_database, "UPDATE items SET name = 'changed in the sink'")
    again = sink.apply(batch)
    assert again == ApplyResult(batch_id="shop:1-2", applied=False, seconds=again.seconds)
    assert rows(pg_database, columns="id, name") == [("1", "changed in the sink")]
    assert ledger(pg_database) == [("shop:1-2", "shop", 1, 2, 1, 0)]


def test_overlapping_batch_applies_only_new_events(sink, pg_database):
    first = [("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]
    sink.apply(make_batch(first))
    query(pg_database, "UPDATE items SET name = 'sink edit' WHERE id = 1")
    overlapping = make_batch([*first, ("c", 3, item(3, name="c")), ("u", 4, item(2, name="b2"))])
    result = sink.apply(overlapping)
    assert result.applied and result.skipped_replayed == 2 and result.upserted == 2
    assert rows(pg_database, columns="id, name") == [("1", "sink edit"), ("2", "b2"), ("3", "c")]
    # the overlapping batch's row records the range it applied (3-4)
    assert ledger(pg_database) == [("shop:1-2", "shop", 1, 2, 2, 0), ("shop:1-4", "shop", 3, 4, 2, 0)]


def test_a_batch_of_only_replayed_events_is_recorded_and_changes_nothing(sink, pg_database):
    sink.apply(make_batch([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]))
    result = sink.apply(make_batch([("d", 2, item(2))], batch_id="shop:2-2"))
    assert result.applied and result.skipped_replayed == 1 and result.deleted == 0
    assert rows(pg_database, columns="id, name") == [("1", "a"), ("2", "b")]
    assert sink.high_water(SOURCE) == 2


def test_older_change_never_overwrites_a_newer_one(sink, pg_database):
    sink.apply(make_batch([("c", 10, item(1, name="new")), ("c", 11, item(2, name="kept"))]))
    # A second ledger (another ledger schema) has no high water for this source: only the row guard stands.
    with PgSink(pg_database, sink_id="warehouse", ledger_schema="other") as stale:
        result = stale.apply(make_batch([
            ("u", 5, item(1, name="old")),
            ("d", 6, item(2)),
            ("c", 7, item(3, name="fresh key")),
            ("u", 11, item(2, name="same seq again")),  # re-applying the row's own change is harmless
        ]))
    assert result.applied and (result.upserted, result.deleted) == (2, 0)
    assert rows(pg_database, columns="id, name") == [("1", "new"), ("2", "same seq again"), ("3", "fresh key")]
    assert query(pg_database, "SELECT id, _cdc_position FROM items ORDER BY id") == [(1, 10), (2, 11), (3, 7)]


def sink_scans(sink: PgSink, url: str, *, after: tuple[int, int] | None = None) -> tuple[int, int]:
    """(sequential, index) scans of the sink's ``items`` so far, once the sink's backend has published them (it
    does so after a transaction, at most once a second, unless told to: ``pg_stat_force_next_flush``)."""
    with sink._conn.transaction(), sink._conn.cursor() as cur:
        cur.execute("SELECT pg_stat_force_next_flush()")
    deadline, last = time.monotonic() + 15, None
    while True:
        with psycopg.connect(url) as conn:  # a fresh statistics snapshot each time
            seen = conn.execute("SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables"
                                " WHERE relname = 'items'").fetchone()
        settled = seen == last if after is None else seen[1] > after[1]
        if settled or time.monotonic() > deadline:
            return seen
        last = seen
        time.sleep(0.3)


def test_a_small_batch_into_a_large_table_probes_its_key_index_and_never_scans_it(sink, pg_database):
    # 20,000 rows, then a batch of 2,000 changes (updates, deletes, inserts) with statistics of neither: the
    # planner's own choice for deletes of a tenth of a batch this size is a hash join over the whole table.
    sink.apply(make_batch([("c", seq, item(seq, name=f"n{seq}")) for seq in range(1, 20_001)]))
    query(pg_database, "VACUUM ANALYZE public.items")
    events = [("u", 20_000 + i, item(i * 10, name="changed")) for i in range(1, 1001)]
    events += [("d", 21_000 + i, item(i * 10 + 1)) for i in range(1, 801)]
    events += [("c", 22_000 + i, item(30_000 + i, name="new")) for i in range(1, 201)]
    before = sink_scans(sink, pg_database)
    result = sink.apply(make_batch(events))
    seq_scans, idx_scans = sink_scans(sink, pg_database, after=before)
    assert (result.upserted, result.deleted) == (1200, 800)
    assert seq_scans == before[0], "the batch scanned the whole sink table"
    assert idx_scans > before[1]
    assert query(pg_database, "SELECT count(*), count(*) FILTER (WHERE name = 'changed'),"
                              " count(*) FILTER (WHERE name = 'new') FROM public.items") == [(19_400, 1000, 200)]
    # The planner settings were for those statements only.
    with sink._conn.cursor() as cur:
        cur.execute("SELECT current_setting('enable_hashjoin'), current_setting('enable_mergejoin')")
        assert cur.fetchone() == ("on", "on")


def test_a_sink_table_without_an_index_on_the_key_still_merges(sink, pg_database):
    # A table the user created, keyed by convention only: no index to probe, so the planner joins as it likes.
    query(pg_database, "CREATE TABLE public.items (id integer NOT NULL, name text, amount numeric(12,2),"
                       " seen_at timestamptz, payload bytea, tags text[], _cdc_op text, _cdc_position bigint,"
                       " _cdc_ts timestamptz)")
    sink.apply(make_batch([("c", seq, item(seq, name=f"n{seq}")) for seq in range(1, 101)]))
    result = sink.apply(make_batch([("u", 101, item(5, name="changed")), ("d", 102, item(6)),
                                    ("c", 103, item(500, name="new"))]))
    assert (result.upserted, result.deleted) == (2, 1)
    assert query(pg_database, "SELECT count(*), max(name) FILTER (WHERE id = 5), max(name) FILTER (WHERE id = 500)"
                              " FROM public.items") == [(100, "changed", "new")]


def test_concurrent_applies_of_one_batch_commit_once(pg_database):
    batch = make_batch([("c", seq, item(seq, name=str(seq))) for seq in range(1, 2001)])
    with PgSink(pg_database, sink_id="w") as sink:
        sink.ensure_tables([ITEMS])
    results: list[ApplyResult] = []

    def run() -> None:
        with PgSink(pg_database, sink_id="w") as sink:
            results.append(sink.apply(batch))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.applied for r in results) == [False, False, True]
    assert query(pg_database, "SELECT count(*) FROM items") == [(2000,)]
    assert len(ledger(pg_database)) == 1


# --- folding ------------------------------------------------------------------------------------------------


def test_changes_to_one_key_are_folded_in_order(sink, pg_database):
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
    assert rows(pg_database, columns="id, name, amount, _cdc_position") == [
        ("1", "v3", None, "5"),
        ("9", "reborn", None, "9"),
    ]


def test_fold_with_a_composite_key(sink, pg_database):
    lines = TableSchema("public", "order_lines", (
        Column("order_id", "bigint", "integer", primary_key=True),
        Column("line", "smallint", "integer", primary_key=True),
        Column("qty", "integer", "integer"),
    ), dialect="postgresql")
    sink.apply(make_batch([
        ("c", 1, {"order_id": "1", "line": "1", "qty": "1"}),
        ("c", 2, {"order_id": "1", "line": "2", "qty": "1"}),
        ("u", 3, {"order_id": "1", "line": "1", "qty": "5"}),
        ("c", 4, {"order_id": "2", "line": "1", "qty": "7"}),
        ("d", 5, {"order_id": "1", "line": "2"}),
    ], lines))
    assert rows(pg_database, "order_lines", "order_id, line, qty") == [("1", "1", "5"), ("2", "1", "7")]


def test_truncate_in_the_middle_of_a_batch(sink, pg_database):
    sink.apply(make_batch([("c", 1, item(1, name="old")), ("c", 2, item(2, name="old"))]))
    result = sink.apply(make_batch([
        ("u", 3, item(1, name="updated before truncate")),
        ("c", 4, item(3, name="inserted before truncate")),
        ("t", 5, {}),
        ("c", 6, item(4, name="after")),
        ("c", 7, item(1, name="re-inserted after")),
    ]))
    assert result.truncated_tables == 1 and result.tables["public.items"]["truncated_rows"] == 3
    assert rows(pg_database, columns="id, name") == [("1", "re-inserted after"), ("4", "after")]


def test_soft_truncate_marks_rows(soft_sink, pg_database):
    soft_sink.apply(make_batch([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]))
    soft_sink.apply(make_batch([("t", 3, {}), ("c", 4, item(2, name="b again"))]))
    assert query(pg_database, "SELECT id, name, _cdc_op, _cdc_position, _cdc_deleted_at::text FROM items ORDER BY id"
                 ) == [(1, "a", "t", 3, "2024-05-01 08:00:03+00"), (2, "b again", "c", 4, None)]


# --- soft deletes -------------------------------------------------------------------------------------------


def test_soft_delete_marks_the_row_and_a_reinsert_clears_it(soft_sink, pg_database):
    soft_sink.apply(make_batch([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]))
    result = soft_sink.apply(make_batch([("d", 3, item(1)), ("d", 4, item(7))]))
    assert result.deleted == 1
    assert query(pg_database, "SELECT id, name, _cdc_op, _cdc_position, _cdc_deleted_at::text FROM items ORDER BY id"
                 ) == [(1, "a", "d", 3, "2024-05-01 08:00:03+00"), (2, "b", "c", 2, None)]
    soft_sink.apply(make_batch([("c", 5, item(1, name="back"))]))
    assert query(pg_database, "SELECT id, name, _cdc_op, _cdc_position, _cdc_deleted_at FROM items ORDER BY id") == [
        (1, "back", "c", 5, None), (2, "b", "c", 2, None)]


# --- unchanged TOAST ----------------------------------------------------------------------------------------


def test_unchanged_toast_keeps_the_sink_value(sink, pg_database):
    big = "x" * 10_000
    sink.apply(make_batch([("c", 1, item(1, name=big, amount="1.00")), ("c", 2, item(2, name="small"))]))
    sink.apply(make_batch([
        ("u", 3, item(1, amount="2.00"), ["name"]),
        ("u", 4, item(2, name="changed", amount="3.00")),
    ]))
    assert rows(pg_database, columns="id, length(name), amount") == [("1", "10000", "2.00"), ("2", "7", "3.00")]


def test_unchanged_toast_is_filled_from_an_earlier_event_of_the_batch(sink, pg_database):
    sink.apply(make_batch([("c", 1, item(1, name="sink value", payload="01"))]))
    sink.apply(make_batch([
        ("u", 2, item(1, name="sent in this batch", amount="1.00"), ["payload"]),
        ("u", 3, item(1, amount="2.00"), ["name", "payload"]),
        ("c", 4, item(2, name="inserted", payload="02")),
        ("u", 5, item(2, amount="5.00"), ["name", "payload"]),
    ]))
    assert rows(pg_database, columns="id, name, amount, payload") == [
        ("1", "sent in this batch", "2.00", "\\x01"),
        ("2", "inserted", "5.00", "\\x02"),
    ]


# --- schema changes -----------------------------------------------------------------------------------------


def test_schema_change_adds_a_column_and_keeps_dropped_ones(sink, pg_database):
    # Mode lenient keeps a dropped column (evolve drops it: tests/connectors/postgres/test_schema_gate.py).
    sink.apply(make_batch([("c", 1, item(1, name="a", amount="1.00"))]), policy=LENIENT)
    widened = TableSchema("public", "items", (
        *(c for c in ITEMS.columns if c.name != "amount"),
        Column("color", "character varying(10)", "text"),
    ), dialect="postgresql")
    change = SchemaChange(table="public.items", seq=2, before=ITEMS, after=widened, ts_ms=TS_MS)
    result = sink.apply(make_batch([("u", 3, item(1, name="b", color="red")), ("c", 4, item(2, color="")),],
                                   widened, schema_changes=[change]), policy=LENIENT)
    assert result.schema_changes == 1
    # amount is kept, but row 1 changed after the drop: its amount is NULL now, like every row written since.
    assert rows(pg_database, columns="id, name, amount, color") == [("1", "b", None, "red"), ("2", None, None, "")]
    assert query(pg_database, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                              " WHERE attrelid = 'public.items'::regclass AND attname = 'color'") == [
        ("character varying(10)",)]


# --- failures -----------------------------------------------------------------------------------------------


def test_a_failure_mid_apply_leaves_nothing_behind(sink, pg_database):
    sink.apply(make_batch([("c", 1, item(1, name="before"))]))
    prices = TableSchema("public", "prices", (Column("id", "integer", "integer", primary_key=True),
                                              Column("price", "numeric(12,2)", "decimal")), dialect="postgresql")
    batch = make_batch(
        [("u", 2, item(1, name="changed")), ("c", 3, item(2, name="new"))],
        extra={prices: [("c", 4, {"id": "1", "price": "1.00"}), ("c", 5, {"id": "2", "price": "not a number"})]},
    )
    with pytest.raises(SinkError) as info:
        sink.apply(batch)
    error = info.value
    assert (error.sink_id, error.table, error.batch_id) == ("warehouse", "public.prices", "shop:2-5")
    assert "public.prices" in str(error) and "not a number" in str(error)
    assert isinstance(error.__cause__, psycopg.Error)
    assert rows(pg_database, columns="id, name") == [("1", "before")]
    assert query(pg_database, "SELECT to_regclass('public.prices') IS NULL") == [(True,)]
    assert ledger(pg_database) == [("shop:1-1", "shop", 1, 1, 1, 0)]
    # The sink is usable afterwards, and the fixed batch goes through.
    fixed = make_batch(
        [("u", 2, item(1, name="changed")), ("c", 3, item(2, name="new"))],
        extra={prices: [("c", 4, {"id": "1", "price": "1.00"}), ("c", 5, {"id": "2", "price": "2"})]},
    )
    assert sink.apply(fixed).applied
    assert rows(pg_database, "prices", "id, price") == [("1", "1.00"), ("2", "2.00")]


def test_a_concurrent_ledger_commit_of_the_same_batch_rolls_this_copy_back(sink, pg_database):
    sink.ensure_tables([ITEMS])
    batch = make_batch([("c", 1, item(1, name="a"))])
    with psycopg.connect(pg_database) as other:  # a writer that bypasses the sink's lock, mid-transaction
        other.execute("INSERT INTO _cdc_ledger (batch_id, source_id, seq_to) VALUES (%s, %s, 1)",
                      (batch.batch_id, SOURCE))
        results: list[ApplyResult] = []
        thread = threading.Thread(target=lambda: results.append(sink.apply(batch)))
        thread.start()
        thread.join(timeout=1)
        assert thread.is_alive()  # waiting for the other transaction's ledger row
        other.commit()
        thread.join()
    assert [r.applied for r in results] == [False]
    assert query(pg_database, "SELECT count(*) FROM items") == [(0,)]
    assert query(pg_database, "SELECT batch_id, rows_upserted FROM _cdc_ledger") == [(batch.batch_id, None)]


# --- schema migrations --------------------------------------------------------------------------------------

DOCS = TableSchema("public", "docs", (
    Column("id", "integer", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("title", "text", "text", ordinal=2),
    Column("price", "numeric(6,2)", "decimal", ordinal=3),
), dialect="postgresql")


def with_columns(schema: TableSchema, *columns: Column, drop: Sequence[str] = (),
                 retype: dict[str, str] | None = None, rename: dict[str, str] | None = None) -> TableSchema:
    """``schema`` after an ALTER TABLE at the source: columns added, dropped, retyped or renamed (same ordinal)."""
    kept = []
    for col in schema.columns:
        if col.name in drop:
            continue
        if retype and col.name in retype:
            col = dataclasses.replace(col, source_type=retype[col.name])
        if rename and col.name in rename:
            col = dataclasses.replace(col, name=rename[col.name])
        kept.append(col)
    return dataclasses.replace(schema, columns=(*kept, *columns))


def column_types(url: str, table: str) -> dict[str, str]:
    return dict(query(url, "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid ="
                           " %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (f"public.{table}",)))


def test_type_widening_helpers():
    assert canonical_type("varchar(10)") == "character varying(10)"
    assert canonical_type("timestamptz(3)") == "timestamp(3) with time zone"
    # As the sink's catalog prints them: a source of another dialect is mapped to the short spellings.
    assert canonical_type("timestamp with time zone") == canonical_type("timestamptz")
    assert canonical_type("timestamp(6) with time zone") == canonical_type("timestamptz(6)")
    assert canonical_type("time without time zone") == canonical_type("time")
    assert canonical_type("int4[]") == "integer[]"
    safe = [("numeric(6,2)", "numeric(12,4)"), ("numeric(6,2)", "numeric"), ("smallint", "integer"),
            ("integer", "bigint"), ("bigint", "numeric"), ("integer", "numeric(12,2)"), ("real", "double precision"),
            ("varchar(5)", "varchar(9)"), ("character varying(5)", "text"), ("char(3)", "text"),
            ("numeric(6,2)[]", "numeric(8,2)[]")]
    unsafe = [("numeric(12,4)", "numeric(6,2)"), ("numeric(6,2)", "numeric(6,3)"), ("numeric", "numeric(30,10)"),
              ("bigint", "integer"), ("integer", "numeric(9,0)"), ("double precision", "real"), ("text", "varchar(5)"),
              ("varchar(9)", "varchar(5)"), ("integer", "text"), ("text", "integer"), ("integer[]", "bigint")]
    assert all(is_safe_widening(old, new) for old, new in safe)
    assert not any(is_safe_widening(old, new) for old, new in unsafe)


def test_added_column_gets_the_backfill_for_existing_rows(sink, pg_database):
    sink.apply(make_batch([("c", 1, {"id": "1", "title": "old"}), ("c", 2, {"id": "2", "title": "old too"})], DOCS))
    after = with_columns(DOCS, Column("status", "character varying(10)", "text", ordinal=4, backfill="new"),
                         Column("qty", "integer", "integer", ordinal=5, backfill="0"),
                         Column("note", "text", "text", ordinal=6))
    change = SchemaChange("public.docs", 3, after=after, before=DOCS)
    sink.apply(make_batch([("u", 4, {"id": "2", "title": "changed", "status": "open", "qty": "5"}),
                           ("c", 5, {"id": "3", "title": "fresh"})], after, schema_changes=[change]))
    assert rows(pg_database, "docs", "id, title, status, qty, note") == [
        ("1", "old", "new", "0", None), ("2", "changed", "open", "5", None), ("3", "fresh", None, None, None)]
    # The default served the existing rows only: it is gone again.
    assert query(pg_database, "SELECT count(*) FROM pg_attrdef WHERE adrelid = 'public.docs'::regclass") == [(0,)]


def test_added_column_with_unknown_backfill_stops_when_the_sink_has_rows(sink, pg_database):
    after = with_columns(DOCS, Column("token", "uuid", "uuid", ordinal=4, backfill_unknown=True))
    change = SchemaChange("public.docs", 3, after=after, before=DOCS)
    # An empty sink table has no rows that could miss the value.
    with PgSink(pg_database, sink_id="w", target_schema="fresh") as fresh:
        fresh.ensure_tables([DOCS])
        assert fresh.apply(make_batch([("c", 4, {"id": "1", "token": None})], after, schema_changes=[change])).applied
    sink.apply(make_batch([("c", 1, {"id": "1", "title": "a"})], DOCS))
    result = sink.apply(make_batch([("c", 4, {"id": "2", "token": None})], after, schema_changes=[change]))
    # The table is held (its changes wait for a re-snapshot); the batch is recorded for the others.
    message = result.held_tables["public.docs"]
    assert "'token'" in message and "nothing of it was written" in message
    assert "python -m airflow_provider_cdc resnapshot shop --table public.docs" in message
    assert "token" not in column_types(pg_database, "docs") and rows(pg_database, "docs", "id") == [("1",)]
    assert sink.held_tables("shop") == {"public.docs": message}
    assert sink.release_table("shop", "public.docs") and sink.held_tables("shop") == {}
    # Dropped, to be made anew by the re-snapshot.
    assert query(pg_database, "SELECT to_regclass('public.docs')") == [(None,)]


def test_widened_types_follow_the_source_and_keep_values(sink, pg_database):
    base = with_columns(DOCS, Column("code", "character varying(5)", "text", ordinal=4),
                        Column("n", "integer", "integer", ordinal=5))
    sink.apply(make_batch([("c", 1, {"id": "1", "price": "1.23", "code": "abc", "n": "7"})], base))
    after = with_columns(base, retype={"price": "numeric(12,4)", "code": "text", "n": "bigint"})
    change = SchemaChange("public.docs", 2, after=after, before=base)
    sink.apply(make_batch([("c", 3, {"id": "2", "price": "1.2345", "code": "longer text", "n": "9000000000"})],
                          after, schema_changes=[change]))
    assert column_types(pg_database, "docs")["price"] == "numeric(12,4)"
    assert column_types(pg_database, "docs")["code"] == "text" and column_types(pg_database, "docs")["n"] == "bigint"
    # Not rounded to numeric(6,2) any more: 1.2345 lands as 1.2345.
    assert rows(pg_database, "docs", "id, price, code, n") == [
        ("1", "1.2300", "abc", "7"), ("2", "1.2345", "longer text", "9000000000")]


def test_type_change_that_loses_values_stops_the_batch(sink, pg_database):
    wide = with_columns(DOCS, retype={"price": "numeric(12,4)"})
    sink.apply(make_batch([("c", 1, {"id": "1", "price": "1.2345"})], wide))
    narrow = with_columns(wide, retype={"price": "numeric(6,2)"})
    change = SchemaChange("public.docs", 2, after=narrow, before=wide)
    other = TableSchema("public", "others", (Column("id", "integer", "integer", False, True, 1),
                                              Column("v", "text", "text", ordinal=2)), dialect="postgresql")
    batch = make_batch([("u", 3, {"id": "1", "title": "x", "price": "1.23"})], narrow, schema_changes=[change])
    batch.tables["public.others"] = make_batch([("c", 3, {"id": "7", "v": "kept flowing"})], other).tables[
        "public.others"]
    batch.schemas["public.others"] = other
    result = sink.apply(batch)
    message = result.held_tables["public.docs"]
    assert "'price'" in message and "numeric(12,4) -> numeric(6,2)" in message
    assert "nothing of it was written" in message and "resnapshot shop --table public.docs" in message
    assert rows(pg_database, "docs", "id, title, price") == [("1", None, "1.2345")]  # held: untouched
    assert rows(pg_database, "others", "id, v") == [("7", "kept flowing")]  # the other table flows
    # Held from now on: later changes of the table wait too.
    later = sink.apply(make_batch([("u", 4, {"id": "1", "title": "y", "price": "1.23"})], narrow, batch_id="shop:4-4"))
    assert later.applied and "public.docs" in later.held_tables
    assert rows(pg_database, "docs", "id, title, price") == [("1", None, "1.2345")]
    # Text to integer is no widening either, without a declared change too.
    retyped = with_columns(DOCS, retype={"title": "integer"})
    with PgSink(pg_database, sink_id="w", target_schema="fresh") as fresh:
        fresh.apply(make_batch([("c", 1, {"id": "1", "title": "5"})], DOCS))
        held = fresh.apply(make_batch([("u", 4, {"id": "1", "title": "5"})], retyped, batch_id="shop:4-4"))
    assert re.search(r"'title'.*text -> integer", held.held_tables["public.docs"])


def test_renamed_column_is_renamed_in_the_sink(sink, pg_database, caplog):
    sink.apply(make_batch([("c", 1, {"id": "1", "title": "kept", "price": "1.00"})], DOCS))
    renamed = with_columns(DOCS, rename={"title": "headline"})
    change = SchemaChange("public.docs", 2, after=renamed, before=DOCS)
    with caplog.at_level("INFO", logger="airflow_provider_cdc.sink.postgres"):
        sink.apply(make_batch([("c", 3, {"id": "2", "headline": "new", "price": "2.00"})], renamed,
                              schema_changes=[change]))
    assert list(column_types(pg_database, "docs"))[:3] == ["id", "headline", "price"]
    assert rows(pg_database, "docs", "id, headline, price") == [("1", "kept", "1.00"), ("2", "new", "2.00")]
    assert "renamed column title to headline" in caplog.text
    # A replay of the change (already applied) renames nothing.
    sink.apply(make_batch([("u", 4, {"id": "2", "headline": "again", "price": "2.00"})], renamed,
                          schema_changes=[change], batch_id="shop:2-4"))
    assert rows(pg_database, "docs", "id, headline") == [("1", "kept"), ("2", "again")]


def test_dropped_column_is_kept_and_nulled_in_changed_rows(sink, pg_database, caplog):
    # Mode lenient keeps a dropped column (evolve drops it: tests/connectors/postgres/test_schema_gate.py).
    sink.apply(make_batch([("c", 1, {"id": "1", "title": "a", "price": "1.00"}),
                           ("c", 2, {"id": "2", "title": "b", "price": "2.00"})], DOCS), policy=LENIENT)
    dropped = with_columns(DOCS, drop=["price"])
    change = SchemaChange("public.docs", 3, after=dropped, before=DOCS)
    with caplog.at_level("INFO", logger="airflow_provider_cdc"):
        sink.apply(make_batch([("u", 4, {"id": "2", "title": "b2"}), ("c", 5, {"id": "3", "title": "c"})], dropped,
                              schema_changes=[change]), policy=LENIENT)
        sink.apply(make_batch([("u", 6, {"id": "1", "title": "a2"})], dropped), policy=LENIENT)
    assert rows(pg_database, "docs", "id, title, price") == [("1", "a2", None), ("2", "b2", None), ("3", "c", None)]
    assert caplog.text.count("(dropped price): applied under mode lenient") == 1


def test_dropped_within_the_batch_keeps_earlier_values(sink, pg_database):
    sink.apply(make_batch([("c", 1, {"id": "1", "title": "a", "price": "1.00"})], DOCS), policy=LENIENT)
    dropped = with_columns(DOCS, drop=["price"])
    change = SchemaChange("public.docs", 3, after=dropped, before=DOCS)
    batch = make_batch([("c", 2, {"id": "2", "title": "b", "price": "2.00"}), ("u", 4, {"id": "1", "title": "a2"})],
                       DOCS, schema_changes=[change])
    batch.schemas["public.docs"] = dropped  # the Arrow table still has price (NULL after the drop)
    sink.apply(batch, policy=LENIENT)
    assert rows(pg_database, "docs", "id, title, price") == [("1", "a2", None), ("2", "b", "2.00")]


def test_reserved_source_columns_are_refused(sink):
    bad = TableSchema("public", "bad", (Column("id", "integer", "integer", primary_key=True),
                                        Column("_cdc_note", "text")), dialect="postgresql")
    with pytest.raises(SinkError, match=r"\['_cdc_note'\].*reserved bookkeeping namespace _cdc_\*") as info:
        sink.apply(make_batch([("c", 1, {"id": "1"})], bad))
    assert info.value.table == "public.bad"


def test_unusual_column_names_load(sink, pg_database):
    names = ["_op", "_seq", "_position", "_unchanged", "before.x", "c" * 63, "naïve größe", 'say "hi"', "two words",
             "s", "t", "cdc_op"]
    odd = TableSchema("public", "odd names", (Column("id", "integer", "integer", primary_key=True),
                                              *(Column(name, "text", "text") for name in names)), dialect="postgresql")
    values = {name: f"v{i}" for i, name in enumerate(names)}
    sink.apply(make_batch([("c", 1, {"id": "1", **values}), ("u", 2, {"id": "1", **values, "_op": "changed"},
                                                             ["before.x"])], odd))
    got = query(pg_database, 'SELECT * FROM public."odd names"')
    columns = [name for name, _ in column_types(pg_database, '"odd names"').items()]
    assert columns[:len(names) + 1] == ["id", *names]
    row = dict(zip(columns, got[0]))
    assert row == {**row, "id": 1, **values, "_op": "changed"}


# --- key changes over unchanged TOAST -----------------------------------------------------------------------

BLOBS = TableSchema("public", "blobs", (
    Column("id", "integer", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("name", "text", "text", ordinal=2),
    Column("doc", "text", "text", ordinal=3),
), dialect="postgresql")


def blob_rows(url: str) -> list[tuple]:
    return rows(url, "blobs", "id, name, doc")


def test_key_change_takes_unchanged_values_from_the_sink_row_of_the_old_key(sink, pg_database):
    sink.apply(make_batch([("c", 1, {"id": "1", "name": "a", "doc": "big A"})], BLOBS))
    sink.apply(make_batch([
        ("d", 2, {"id": "1"}),
        ("c", 3, {"id": "2", "name": "a moved"}, ["doc"], {"id": "1"}),
    ], BLOBS))
    assert blob_rows(pg_database) == [("2", "a moved", "big A")]


def test_key_change_chain_within_the_batch(sink, pg_database):
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
    assert blob_rows(pg_database) == [("3", "a", "big A"), ("8", "z", "sent Z")]


def test_key_change_onto_a_key_with_a_sink_row_never_keeps_that_rows_value(sink, pg_database):
    sink.apply(make_batch([("c", 1, {"id": "1", "name": "a", "doc": "doc of 1"}),
                           ("c", 2, {"id": "2", "name": "b", "doc": "doc of 2"})], BLOBS))
    # Key 2 is deleted and row 1 moves onto it: the MERGE matches the sink's row 2, whose doc is not row 1's.
    sink.apply(make_batch([
        ("d", 3, {"id": "2"}),
        ("d", 4, {"id": "1"}),
        ("c", 5, {"id": "2", "name": "a"}, ["doc"], {"id": "1"}),
    ], BLOBS))
    assert blob_rows(pg_database) == [("2", "a", "doc of 1")]


def test_key_change_whose_values_nobody_has_is_refused(sink, pg_database):
    sink.apply(make_batch([("c", 1, {"id": "5", "name": "other", "doc": "x"})], BLOBS))
    with pytest.raises(SinkError) as info:
        sink.apply(make_batch([
            ("u", 2, {"id": "5", "name": "other2", "doc": "y"}),
            ("d", 3, {"id": "1"}),
            ("c", 4, {"id": "2", "name": "a"}, ["doc"], {"id": "1"}),  # the sink never had key 1
        ], BLOBS))
    message = str(info.value)
    assert info.value.table == "public.blobs" and "(id=2)" in message and "['doc']" in message
    assert "nothing was written" in message
    assert blob_rows(pg_database) == [("5", "other", "x")]
    # An update with unchanged values of a row the sink lacks is no better: it would be inserted with a gap.
    with pytest.raises(SinkError, match=r"\(id=9\).*\['doc'\]"):
        sink.apply(make_batch([("u", 5, {"id": "9", "name": "n"}, ["doc"])], BLOBS))


# --- keys equal by type -------------------------------------------------------------------------------------


def test_numeric_keys_equal_by_value_fold_as_one(sink, pg_database):
    prices = TableSchema("public", "prices", (Column("k", "numeric(10,2)", "decimal", primary_key=True),
                                              Column("v", "text", "text")), dialect="postgresql")
    sink.apply(make_batch([("c", 1, {"k": "1", "v": "first"})], prices))
    result = sink.apply(make_batch([("u", 2, {"k": "1.0", "v": "second"}), ("u", 3, {"k": "1.00", "v": "third"}),
                                    ("c", 4, {"k": "-0.0", "v": "zero"}), ("u", 5, {"k": "0", "v": "zero2"})], prices))
    assert result.tables["public.prices"]["staged"] == 2
    assert rows(pg_database, "prices", "k, v") == [("0.00", "zero2"), ("1.00", "third")]


def test_citext_keys_fold_case_insensitively(sink, pg_database):
    try:
        query(pg_database, "CREATE EXTENSION IF NOT EXISTS citext")
    except psycopg.Error as exc:  # contrib not installed on this server: a skip locally, a failure in CI
        require_server("citext", f"the citext extension is unavailable: {exc}")
    users = TableSchema("public", "users", (Column("email", "citext", "text", primary_key=True),
                                            Column("v", "text", "text")), dialect="postgresql")
    sink.apply(make_batch([("c", 1, {"email": "Bob@X.org", "v": "a"}), ("u", 2, {"email": "bob@x.org", "v": "b"})],
                          users))
    assert query(pg_database, "SELECT email::text, v FROM users") == [("bob@x.org", "b")]


# --- ledger placement, durability, re-snapshot --------------------------------------------------------------


def test_ledger_goes_in_the_target_schema_by_default(pg_database):
    with PgSink(pg_database, sink_id="w", target_schema="sales") as sink:
        sink.apply(make_batch([("c", 1, item(1))]))
        assert sink.ledger_schema == "sales" and sink.high_water(SOURCE) == 1
    assert query(pg_database, "SELECT count(*) FROM sales._cdc_ledger") == [(1,)]
    assert query(pg_database, "SELECT to_regclass('public._cdc_ledger') IS NULL") == [(True,)]


@pytest.fixture
def schema_owner(pg_server, pg_database) -> Iterator[str]:
    """A login role that owns schema ``own`` of the test database and has no rights on ``public``."""
    role = f"cdc_sink_{uuid.uuid4().hex[:10]}"
    query(pg_database, f"CREATE ROLE {role} LOGIN")
    query(pg_database, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    query(pg_database, f"CREATE SCHEMA own AUTHORIZATION {role}")
    parts = pg_server.url(pg_database.rsplit("/", 1)[1]).split("://", 1)
    netloc, rest = parts[1].split("/", 1)
    host = netloc.rsplit("@", 1)[-1]
    yield f"{parts[0]}://{role}@{host}/{rest}"
    query(pg_database, f"DROP OWNED BY {role}")
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP ROLE {role}")


def test_a_role_that_owns_only_its_schema_can_apply(schema_owner, pg_database):
    with PgSink(schema_owner, sink_id="w", target_schema="own") as sink:
        assert sink.apply(make_batch([("c", 1, item(1, name="a")), ("u", 2, item(1, name="b"))])).applied
        result = sink.apply(make_batch([("d", 3, item(1)), ("c", 4, item(2, name="c"))]))
        assert result.applied and sink.has_batch("shop:3-4")
    assert query(pg_database, "SELECT id, name FROM own.items") == [(2, "c")]
    assert query(pg_database, "SELECT count(*) FROM own._cdc_ledger") == [(2,)]


def test_the_apply_transaction_commits_synchronously(pg_database, monkeypatch):
    dbname = pg_database.rsplit("/", 1)[1]
    query(pg_database, f'ALTER DATABASE "{dbname}" SET synchronous_commit = off')
    seen: list[str] = []
    original = PgSink._insert_ledger

    def spy(self, cur, *args, **kwargs):
        seen.append(cur.execute("SHOW synchronous_commit").fetchone()[0])
        return original(self, cur, *args, **kwargs)

    monkeypatch.setattr(PgSink, "_insert_ledger", spy)
    with PgSink(pg_database, sink_id="w") as sink:
        assert sink._conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        sink._conn.rollback()
        sink.apply(make_batch([("c", 1, item(1))]))
        assert seen == ["on"]
        # SET LOCAL: the session's own setting is back after the commit.
        assert sink._conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"
        sink._conn.rollback()


def test_forget_source_and_reset_table(sink, pg_database):
    assert sink.forget_source(SOURCE) == 0  # no ledger yet
    assert sink.reset_table(ITEMS) is False
    sink.apply(make_batch([("c", 1, item(1)), ("c", 2, item(2))]))
    sink.apply(make_batch([("c", 3, item(3))]))
    sink.apply(make_batch([("c", 4, item(4))], source_id="other"))
    assert sink.forget_source(SOURCE) == 2
    assert sink.high_water(SOURCE) == 0 and sink.high_water("other") == 4
    assert sink.reset_table("public.items") is True
    assert query(pg_database, "SELECT count(*) FROM items") == [(0,)]
    sink.apply(make_batch([("c", 5, item(5))]))
    assert sink.reset_table(ITEMS) is True and sink.reset_table("nothing_here") is False
    assert query(pg_database, "SELECT count(*) FROM items") == [(0,)]
    # After both, the source's first batch applies again from scratch.
    assert sink.forget_source(SOURCE) == 1
    assert sink.apply(make_batch([("c", 1, item(1)), ("c", 2, item(2))])).applied
    assert query(pg_database, "SELECT count(*) FROM items") == [(2,)]
