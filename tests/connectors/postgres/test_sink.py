"""PgSink against real PostgreSQL servers (15 and 18): rows, ledger rows and the exactly-once guards."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest

from airflow_provider_cdc.connectors.base import ApplyResult, Sink
from airflow_provider_cdc.connectors.postgres.sink import PgSink
from airflow_provider_cdc.connectors.postgres.types import sink_column_type
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import ChangeBatch, Column, SchemaChange, TableChangesBuilder, TableSchema

SOURCE = "shop"
TS_MS = 1_714_550_400_000  # 2024-05-01 08:00:00 UTC

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
    ),
)

Event = tuple  # (op, seq, row: dict) or (op, seq, row, unchanged)


def make_batch(
    events: Sequence[Event],
    schema: TableSchema = ITEMS,
    *,
    batch_id: str | None = None,
    source_id: str = SOURCE,
    extra: dict[TableSchema, Sequence[Event]] | None = None,
    schema_changes: Sequence[SchemaChange] = (),
) -> ChangeBatch:
    """A batch of ``events`` on ``schema`` (plus ``extra`` tables); rows are dicts, missing columns are NULL."""
    tables, schemas, seqs = {}, {}, []
    for table_schema, table_events in {schema: events, **(extra or {})}.items():
        builder = TableChangesBuilder(table_schema)
        for op, seq, row, *rest in table_events:
            unchanged = rest[0] if rest else None
            builder.append(op, seq, TS_MS + seq * 1000, f"tx{seq}", f"0/{seq:X}",
                           [row.get(name) for name in table_schema.column_names], unchanged=unchanged)
            seqs.append(seq)
        tables[table_schema.qualified_name] = builder.finish()
        schemas[table_schema.qualified_name] = table_schema
    seqs += [change.seq for change in schema_changes]
    first, last = min(seqs), max(seqs)
    return ChangeBatch(
        source_id=source_id,
        batch_id=batch_id or f"{source_id}:{first}-{last}",
        position_from={"lsn": f"0/{first - 1:X}"},
        position_to={"lsn": f"0/{last:X}"},
        seq_from=first,
        seq_to=last,
        tables=tables,
        schemas=schemas,
        schema_changes=list(schema_changes),
    )


def item(id_: int, **values: Any) -> dict[str, Any]:
    return {"id": str(id_), **values}


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
    keyless = TableSchema("public", "events", (Column("id", "integer", "integer"), Column("v", "text")))
    with pytest.raises(SinkError, match="add a primary key at the source") as info:
        sink.ensure_tables([keyless])
    assert info.value.table == "public.events"


def test_missing_postgres_type_falls_back_to_the_logical_type(sink, pg_database):
    moods = TableSchema("public", "moods", (Column("id", "integer", "integer", primary_key=True),
                                            Column("mood", "mood", "other")))
    sink.apply(make_batch([("c", 1, {"id": "1", "mood": "happy"})], moods))
    assert query(pg_database, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                              " WHERE attrelid = 'public.moods'::regclass AND attname = 'mood'") == [("text",)]
    assert rows(pg_database, "moods", "id, mood") == [("1", "happy")]


# --- values -------------------------------------------------------------------------------------------------


def test_insert_update_delete_keep_values_exactly(sink, pg_database):
    tricky = 'tab\there, new\nline, back\\slash, "quoted", comma, and \\. alone'
    result = sink.apply(make_batch([
        ("c", 1, item(1, name="plain", amount="12.30", seen_at="2024-05-01 10:00:00+02", payload="\\x00ff0a",
                      tags='{a,"b c",NULL}')),
        ("c", 2, item(2, name="", amount="0.00", seen_at=None, payload="\\x")),
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
        ("u", 6, item(1, name="renamed", amount="7.5", seen_at="2024-05-02 00:00:00-05", payload="\\xff")),
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
    result = sink.apply(batch, run_id="manual__1", rule_versions={"mask": 2}, schema_versions={"public.items": 1})
    assert result.applied
    assert query(pg_database, "SELECT batch_id, source_id, position_from, position_to, seq_from, seq_to, counts,"
                              " rule_versions, schema_versions, run_id, rows_upserted, rows_deleted,"
                              " committed_at IS NOT NULL FROM _cdc_ledger") == [(
        "shop:1-3", "shop", {"lsn": "0/0"}, {"lsn": "0/3"}, 1, 3, {"public.items": {"c": 2, "d": 1}},
        {"mask": 2}, {"public.items": 1}, "manual__1", 1, 0, True,
    )]
    assert sink.has_batch("shop:1-3") and not sink.has_batch("shop:4-5")
    assert sink.high_water(SOURCE) == 3 and sink.high_water("other") == 0
    assert sink.last_committed(SOURCE) == {"lsn": "0/3"} and sink.last_committed("other") is None


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
    assert ledger(pg_database) == [("shop:1-2", "shop", 1, 2, 2, 0), ("shop:1-4", "shop", 1, 4, 2, 0)]


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
    ))
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
    sink.apply(make_batch([("c", 1, item(1, name="sink value", payload="\\x01"))]))
    sink.apply(make_batch([
        ("u", 2, item(1, name="sent in this batch", amount="1.00"), ["payload"]),
        ("u", 3, item(1, amount="2.00"), ["name", "payload"]),
        ("c", 4, item(2, name="inserted", payload="\\x02")),
        ("u", 5, item(2, amount="5.00"), ["name", "payload"]),
    ]))
    assert rows(pg_database, columns="id, name, amount, payload") == [
        ("1", "sent in this batch", "2.00", "\\x01"),
        ("2", "inserted", "5.00", "\\x02"),
    ]


# --- schema changes -----------------------------------------------------------------------------------------


def test_schema_change_adds_a_column_and_keeps_dropped_ones(sink, pg_database):
    sink.apply(make_batch([("c", 1, item(1, name="a", amount="1.00"))]))
    widened = TableSchema("public", "items", (
        *(c for c in ITEMS.columns if c.name != "amount"),
        Column("color", "character varying(10)", "text"),
    ))
    change = SchemaChange(table="public.items", seq=2, before=ITEMS, after=widened, ts_ms=TS_MS)
    result = sink.apply(make_batch([("u", 3, item(1, name="b", color="red")), ("c", 4, item(2, color="")),],
                                   widened, schema_changes=[change]))
    assert result.schema_changes == 1
    assert rows(pg_database, columns="id, name, amount, color") == [("1", "b", "1.00", "red"), ("2", None, None, "")]
    assert query(pg_database, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                              " WHERE attrelid = 'public.items'::regclass AND attname = 'color'") == [
        ("character varying(10)",)]


# --- failures -----------------------------------------------------------------------------------------------


def test_a_failure_mid_apply_leaves_nothing_behind(sink, pg_database):
    sink.apply(make_batch([("c", 1, item(1, name="before"))]))
    prices = TableSchema("public", "prices", (Column("id", "integer", "integer", primary_key=True),
                                              Column("price", "numeric(12,2)", "decimal")))
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
