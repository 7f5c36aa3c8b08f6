"""DeltaSink on real Delta tables under tmp_path: rows, the exactly-once guards, schema changes, typed values."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import math

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from airflow_provider_cdc.connectors.base import Sink
from airflow_provider_cdc.connectors.delta import sink as sink_module
from airflow_provider_cdc.connectors.delta.ledger_table import DeltaLedger
from airflow_provider_cdc.connectors.delta.sink import DeltaSink
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema

from .helpers import ITEMS, SOURCE, TS_MS, item, make_batch, read_table, rows

UTC = dt.timezone.utc
D = decimal.Decimal


@pytest.fixture
def sink(tmp_path) -> DeltaSink:
    return DeltaSink(f"file://{tmp_path}/lake", sink_id="lake")


@pytest.fixture
def soft_sink(tmp_path) -> DeltaSink:
    return DeltaSink(str(tmp_path / "lake"), sink_id="lake", delete_mode="soft")


def items_uri(sink: DeltaSink, name: str = "items") -> str:
    return sink.table_uri(name)


def ledger(sink: DeltaSink) -> list[tuple]:
    return sorted((r.batch_id, r.source_id, r.seq_from, r.seq_to, r.rows_upserted, r.rows_deleted)
                  for r in DeltaLedger(sink.root, {}).rows())


# --- basics ---------------------------------------------------------------------------------------------------


def test_sink_satisfies_the_protocol_and_declares_its_capabilities(sink):
    assert isinstance(sink, Sink)
    assert sink.capabilities.merge_by_key and sink.capabilities.soft_delete
    assert not sink.capabilities.transactional and not sink.capabilities.stores_other_exactly
    assert "time" not in sink.capabilities.native_types and "decimal" in sink.capabilities.native_types


def test_insert_update_delete_and_the_ledger(sink):
    first = sink.apply(make_batch([
        ("c", 1, item(1, name="a", amount="1.50")),
        ("c", 2, item(2, name="b", amount="2.00")),
        ("c", 3, item(3, name="c")),
    ]), run_id="run-1", versions={"rule_versions": {"mask": 1}})
    assert (first.applied, first.upserted, first.deleted) == (True, 3, 0)
    second = sink.apply(make_batch([("u", 4, item(1, name="a2", amount="9.99")), ("d", 5, item(2))]))
    assert (second.applied, second.upserted, second.deleted) == (True, 1, 1)
    assert rows(items_uri(sink)) == [(1, "a2", D("9.99")), (3, "c", None)]
    assert ledger(sink) == [("shop:1-3", SOURCE, 1, 3, 3, 0), ("shop:4-5", SOURCE, 4, 5, 1, 1)]
    (row,) = DeltaLedger(sink.root, {}).rows(batch_id="shop:1-3")
    assert (row.run_id, row.rule_versions, row.counts) == ("run-1", {"mask": 1}, {"public.items": {"c": 3}})
    assert sink.high_water(SOURCE) == 5 and sink.has_batch("shop:4-5") and not sink.has_batch("shop:9-9")
    assert sink.last_committed(SOURCE) == {"lsn": "0/5"}
    bookkeeping = read_table(items_uri(sink)).sort_by("id").select(["_cdc_op", "_cdc_position", "_cdc_ts"])
    assert bookkeeping.to_pylist()[0] == {
        "_cdc_op": "u", "_cdc_position": 4, "_cdc_ts": dt.datetime.fromtimestamp((TS_MS + 4000) / 1000, UTC)}
    assert DeltaTable(items_uri(sink)).transaction_version("shop:public.items") == 5


def test_fold_order_last_write_wins_and_delete_after_insert_is_nothing(sink):
    sink.apply(make_batch([
        ("u", 4, item(1, name="third")),  # out of order in the table: seq decides
        ("c", 2, item(1, name="first")),
        ("u", 3, item(1, name="second")),
        ("c", 5, item(2, name="short-lived")),
        ("d", 6, item(2)),
    ]))
    assert rows(items_uri(sink)) == [(1, "third", None)]


def test_older_never_overwrites_newer(sink):
    sink.apply(make_batch([("c", 10, item(1, name="new"))]))
    # Another source writing the same table has its own high water: only the row guard protects the newer row.
    result = sink.apply(make_batch([("u", 4, item(1, name="old")), ("c", 5, item(2, name="x"))], source_id="other"))
    assert result.applied
    assert rows(items_uri(sink)) == [(1, "new", None), (2, "x", None)]
    # An overlapping batch of the same source: what the ledger already vouches for is dropped.
    overlap = sink.apply(make_batch([("u", 9, item(1, name="replayed")), ("c", 11, item(3, name="y"))],
                                    batch_id="shop:longer"))
    assert (overlap.skipped_replayed, overlap.upserted) == (1, 1)
    assert rows(items_uri(sink)) == [(1, "new", None), (2, "x", None), (3, "y", None)]


def test_replaying_an_applied_batch_is_a_no_op(sink):
    batch = make_batch([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))])
    assert sink.apply(batch).applied
    version = DeltaTable(items_uri(sink)).version()
    again = sink.apply(batch)
    assert (again.applied, again.upserted) == (False, 0)
    assert DeltaTable(items_uri(sink)).version() == version
    assert len(ledger(sink)) == 1 and rows(items_uri(sink)) == [(1, "a", None), (2, "b", None)]


def test_composite_keys(sink):
    lines = TableSchema("public", "lines", (
        Column("order_id", "integer", "integer", False, True),
        Column("line", "text", "text", False, True),
        Column("qty", "integer", "integer"),
    ))
    sink.apply(make_batch([
        ("c", 1, {"order_id": "1", "line": "a", "qty": "1"}),
        ("c", 2, {"order_id": "1", "line": "b", "qty": "2"}),
        ("c", 3, {"order_id": "2", "line": "a", "qty": "3"}),
    ], lines))
    sink.apply(make_batch([
        ("u", 4, {"order_id": "1", "line": "b", "qty": "20"}),
        ("d", 5, {"order_id": "2", "line": "a"}),
    ], lines))
    assert rows(sink.table_uri("lines"), ("order_id", "line", "qty"), ("order_id", "line")) == [
        (1, "a", 1), (1, "b", 20)]


def test_truncate_mid_batch(sink):
    sink.apply(make_batch([("c", 1, item(1, name="old")), ("c", 2, item(2, name="old"))]))
    result = sink.apply(make_batch([
        ("c", 3, item(3, name="gone with the truncate")),
        ("t", 4, {}),
        ("c", 5, item(2, name="after")),
        ("c", 6, item(4, name="after")),
        ("u", 7, item(4, name="after2")),
    ]))
    assert rows(items_uri(sink)) == [(2, "after", None), (4, "after2", None)]
    assert result.truncated_tables == 1 and result.tables["public.items"]["truncated_rows"] == 1


def test_soft_delete_re_insert_and_truncate(soft_sink):
    sink = soft_sink
    sink.apply(make_batch([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]))
    result = sink.apply(make_batch([("d", 3, item(1))]))
    assert (result.deleted, result.upserted) == (1, 0)
    table = read_table(items_uri(sink)).sort_by("id").to_pylist()
    assert (table[0]["name"], table[0]["_cdc_op"], table[0]["_cdc_deleted_at"]) == (
        "a", "d", dt.datetime.fromtimestamp((TS_MS + 3000) / 1000, UTC))
    assert table[1]["_cdc_deleted_at"] is None
    sink.apply(make_batch([("c", 4, item(1, name="back"))]))
    table = read_table(items_uri(sink)).sort_by("id").to_pylist()
    assert (table[0]["name"], table[0]["_cdc_op"], table[0]["_cdc_deleted_at"]) == ("back", "c", None)
    # A truncate marks every older row; rows written before it in the batch stay, marked; later rows live.
    sink.apply(make_batch([("c", 5, item(3, name="pre")), ("t", 6, {}), ("c", 7, item(4, name="post"))]))
    marked = {r["id"]: (r["name"], r["_cdc_op"], r["_cdc_position"], r["_cdc_deleted_at"] is not None)
              for r in read_table(items_uri(sink)).to_pylist()}
    assert marked == {1: ("back", "t", 6, True), 2: ("b", "t", 6, True), 3: ("pre", "t", 6, True),
                      4: ("post", "c", 7, False)}
    truncated_at = {r["_cdc_deleted_at"] for r in read_table(items_uri(sink)).to_pylist() if r["id"] != 4}
    assert truncated_at == {dt.datetime.fromtimestamp((TS_MS + 6000) / 1000, UTC)}


# --- unchanged (TOAST) values and moved keys ------------------------------------------------------------------


def test_unchanged_values_keep_the_sink_value(sink):
    sink.apply(make_batch([("c", 1, item(1, name="a", payload="deadbeef"))]))
    sink.apply(make_batch([
        ("u", 2, item(1, name="a2"), ["payload"]),
        ("c", 3, item(2, name="b", payload="00ff")),
        ("u", 4, item(2, name="b2"), ["payload"]),  # filled from the batch itself
    ]))
    assert rows(items_uri(sink), ("id", "name", "payload")) == [(1, "a2", b"\xde\xad\xbe\xef"), (2, "b2", b"\x00\xff")]


def test_unchanged_values_nobody_has_are_refused(sink):
    sink.apply(make_batch([("c", 1, item(1, name="a", payload="01"))]))
    with pytest.raises(SinkError, match=r"key \(id=7\).*payload") as info:
        sink.apply(make_batch([("u", 2, item(7, name="x"), ["payload"]), ("u", 3, item(1, name="b"))]))
    assert info.value.terminal
    assert rows(items_uri(sink)) == [(1, "a", None)] and len(ledger(sink)) == 1


def test_a_moved_key_takes_missing_values_from_the_old_keys_row(sink):
    sink.apply(make_batch([("c", 1, item(1, name="a", payload="abcd"))]))
    sink.apply(make_batch([
        ("d", 2, item(1)),
        ("c", 3, item(5, name="moved"), ["payload"], item(1)),
    ]))
    assert rows(items_uri(sink), ("id", "name", "payload")) == [(5, "moved", b"\xab\xcd")]


def test_a_moved_key_without_an_old_row_is_refused(sink):
    sink.apply(make_batch([("c", 1, item(1, name="a", payload="abcd"))]))
    version = DeltaTable(items_uri(sink)).version()
    with pytest.raises(SinkError, match="old key's row is not in the sink") as info:
        sink.apply(make_batch([("d", 2, item(8)), ("c", 3, item(9, name="moved"), ["payload"], item(8))]))
    assert info.value.terminal
    assert DeltaTable(items_uri(sink)).version() == version and len(ledger(sink)) == 1


# --- schema changes ----------------------------------------------------------------------------------------------


def with_columns(schema: TableSchema, *columns: Column) -> TableSchema:
    return dataclasses.replace(schema, columns=(*schema.columns, *columns))


def test_an_added_column_evolves_the_table_with_its_backfill(sink):
    sink.apply(make_batch([("c", 1, item(1, name="a"))]))
    after = with_columns(ITEMS, Column("rank", "integer", "integer", backfill="7"), Column("note", "text", "text"))
    change = SchemaChange("public.items", 2, after, ITEMS)
    result = sink.apply(make_batch([("c", 3, item(2, name="b", rank="1", note="n"))], after, schema_changes=[change]))
    assert result.schema_changes == 1
    assert rows(items_uri(sink), ("id", "rank", "note")) == [(1, 7, None), (2, 1, "n")]
    # A dropped source column is dropped from the Delta table too (schema_changes mode evolve, the default).
    dropped = TableSchema("public", "items", tuple(c for c in after.columns if c.name != "note"))
    sink.apply(make_batch([("u", 5, item(2, name="b2", rank="2"))], dropped,
                          schema_changes=[SchemaChange("public.items", 4, dropped, after)]))
    assert "note" not in read_table(items_uri(sink)).column_names
    assert rows(items_uri(sink), ("id", "name", "rank")) == [(1, "a", 7), (2, "b2", 2)]


def test_a_backfill_the_source_cannot_tell_holds_the_table(sink):
    sink.apply(make_batch([("c", 1, item(1, name="a"))]))
    after = with_columns(ITEMS, Column("token", "text", "text", backfill_unknown=True))
    result = sink.apply(make_batch([("c", 3, item(2, token="t"))], after,
                                   schema_changes=[SchemaChange("public.items", 2, after, ITEMS)]))
    assert "volatile default" in result.held_tables["public.items"]
    assert rows(items_uri(sink)) == [(1, "a", None)]


def test_a_decimal_widening_is_followed_exactly(sink):
    sink.apply(make_batch([("c", 1, item(1, amount="1234567890.12"))]))
    wider = TableSchema("public", "items", tuple(
        dataclasses.replace(c, source_type="numeric(16,4)", precision=16, scale=4) if c.name == "amount" else c
        for c in ITEMS.columns))
    sink.apply(make_batch([("c", 3, item(2, amount="123456789012.3456"))], wider,
                          schema_changes=[SchemaChange("public.items", 2, wider, ITEMS)]))
    table = read_table(items_uri(sink))
    assert table.schema.field("amount").type == pa.decimal128(16, 4)
    assert rows(items_uri(sink), ("id", "amount")) == [(1, D("1234567890.1200")), (2, D("123456789012.3456"))]


def test_an_incompatible_type_change_holds_only_that_table(sink):
    others = TableSchema("public", "others", (Column("id", "integer", "integer", False, True),
                                              Column("v", "text", "text")))
    sink.apply(make_batch([("c", 1, item(1, name="a"))], extra={others: [("c", 2, {"id": "1", "v": "x"})]}))
    changed = TableSchema("public", "items", tuple(
        dataclasses.replace(c, source_type="integer", logical_type="integer") if c.name == "name" else c
        for c in ITEMS.columns))
    result = sink.apply(make_batch(
        [("u", 4, item(1, name="42"))], changed, extra={others: [("u", 5, {"id": "1", "v": "y"})]},
        schema_changes=[SchemaChange("public.items", 3, changed, ITEMS)]))
    assert result.applied and list(result.held_tables) == ["public.items"]
    assert "refused under schema_changes mode evolve" in sink.held_tables(SOURCE)["public.items"]
    assert rows(items_uri(sink)) == [(1, "a", None)]
    assert rows(sink.table_uri("others"), ("id", "v")) == [(1, "y")]
    # Held changes wait; the release empties the table down to its bookkeeping, and the re-snapshot rebuilds it.
    later = sink.apply(make_batch([("u", 6, item(1, name="43"))], changed))
    assert later.tables == {} and rows(items_uri(sink)) == [(1, "a", None)]
    assert sink.release_table(SOURCE, "public.items") and not sink.release_table(SOURCE, "public.items")
    assert sink.held_tables(SOURCE) == {} and read_table(items_uri(sink)).num_rows == 0
    sink.apply(make_batch([("r", 7, item(1, name="43"))], changed))
    assert rows(items_uri(sink)) == [(1, 43, None)]


# --- typed values ------------------------------------------------------------------------------------------------

ALL_TYPES = TableSchema("public", "all_types", (
    Column("id", "bigint", "integer", False, True),
    Column("exact", "numeric(38,10)", "decimal", precision=38, scale=10),
    Column("free", "numeric", "decimal"),
    Column("f", "double precision", "float"),
    Column("ok", "boolean", "boolean"),
    Column("t", "text", "text"),
    Column("tz", "timestamptz", "timestamptz"),
    Column("ts", "timestamp", "timestamp"),
    Column("d", "date", "date"),
    Column("tm", "time", "time"),
    Column("j", "jsonb", "json"),
    Column("b", "bytea", "binary"),
    Column("u", "uuid", "uuid"),
    Column("o", "int4range", "other"),
))

TYPED_ROW = {
    "id": "9007199254740993", "exact": "1234567890123456789012345678.0123456789", "free": "-1234.5600",
    "f": "1e+100", "ok": "true", "t": "caf\u00e9 \U0001f600", "tz": "2024-05-01T12:00:00.25Z",
    "ts": "2024-05-01T12:00:00.000001", "d": "0001-01-01", "tm": "23:59:59.999999", "j": '{"a": [1, 2]}',
    "b": "00ff10", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "o": "[1,5)",
}
EXPECTED_TYPED = {
    "id": 9007199254740993, "exact": D("1234567890123456789012345678.0123456789"), "free": "-1234.5600",
    "f": 1e100, "ok": True, "t": "caf\u00e9 \U0001f600", "tz": dt.datetime(2024, 5, 1, 12, 0, 0, 250000, UTC),
    "ts": dt.datetime(2024, 5, 1, 12, 0, 0, 1), "d": dt.date(1, 1, 1), "tm": "23:59:59.999999", "j": '{"a": [1, 2]}',
    "b": b"\x00\xff\x10", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "o": "[1,5)",
}


def test_every_portable_logical_type_reads_back_typed(sink):
    # A float NaN has a typed form; an unconstrained decimal is text, so its NaN is kept too.
    specials = {"id": "2", "f": "NaN", "ok": "false", "free": "NaN"}
    sink.apply(make_batch([("c", 1, TYPED_ROW), ("c", 2, specials)], ALL_TYPES))
    table = read_table(sink.table_uri("all_types")).sort_by("id")
    assert {name: table.schema.field(name).type for name in ("exact", "free", "tz", "ts", "tm", "b")} == {
        "exact": pa.decimal128(38, 10), "free": pa.string(), "tz": pa.timestamp("us", tz="UTC"),
        "ts": pa.timestamp("us"), "tm": pa.string(), "b": pa.binary()}
    second, first = table.to_pylist()  # ordered by id: 2 first
    assert {name: first[name] for name in EXPECTED_TYPED} == EXPECTED_TYPED
    assert math.isnan(second["f"]) and second["ok"] is False and second["free"] == "NaN"


@pytest.mark.parametrize(("column", "value"), [("tz", "infinity"), ("exact", "NaN"), ("d", "-infinity")])
def test_a_value_with_no_typed_form_stops_the_batch_and_leaves_nothing(sink, column, value):
    others = TableSchema("public", "others", (Column("id", "integer", "integer", False, True),))
    with pytest.raises(SinkError) as info:
        sink.apply(make_batch([("c", 2, {"id": "1", column: value})], ALL_TYPES,
                              extra={others: [("c", 1, {"id": "1"})]}))
    message = str(info.value)
    assert info.value.terminal and "public.all_types" in message and repr(column) in message and repr(value) in message
    assert not DeltaTable.is_deltatable(sink.table_uri("others"))
    assert not DeltaTable.is_deltatable(sink.table_uri("all_types")) and ledger(sink) == []


# --- crashes between commits ---------------------------------------------------------------------------------

OTHERS = TableSchema("public", "others", (Column("id", "integer", "integer", False, True), Column("v", "text", "text")))


def two_table_batch():
    return make_batch([("c", 1, item(1, name="a")), ("u", 3, item(1, name="a2"))],
                      extra={OTHERS: [("c", 2, {"id": "1", "v": "x"}), ("c", 4, {"id": "2", "v": "y"})]})


def assert_two_tables_applied(sink):
    assert rows(items_uri(sink)) == [(1, "a2", None)]
    assert rows(sink.table_uri("others"), ("id", "v")) == [(1, "x"), (2, "y")]
    # The ledger counts the rows of the tables skipped on the replay too (read back from their commits).
    assert ledger(sink) == [("shop:1-4", SOURCE, 1, 4, 3, 0)]


def test_a_crash_between_two_table_commits_replays_exactly_once(sink, monkeypatch):
    real = sink_module.merge_table
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(args[1].name)
        if len(calls) == 2:
            raise RuntimeError("killed between two table commits")
        return real(*args, **kwargs)

    monkeypatch.setattr(sink_module, "merge_table", crash_on_second)
    with pytest.raises(RuntimeError):
        sink.apply(two_table_batch())
    monkeypatch.setattr(sink_module, "merge_table", real)
    assert calls == ["public.items", "public.others"] and ledger(sink) == []
    committed = DeltaTable(items_uri(sink)).version()
    result = sink.apply(two_table_batch())
    assert result.applied and result.skipped_replayed == 2  # public.items took it before the crash
    assert DeltaTable(items_uri(sink)).version() == committed
    assert_two_tables_applied(sink)
    assert sink.apply(two_table_batch()).applied is False


def test_a_crash_between_the_data_and_the_ledger_replays_exactly_once(sink, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("killed before the ledger commit")

    monkeypatch.setattr(DeltaLedger, "append_row", crash)
    with pytest.raises(RuntimeError):
        sink.apply(two_table_batch())
    monkeypatch.undo()
    versions = (DeltaTable(items_uri(sink)).version(), DeltaTable(sink.table_uri("others")).version())
    assert ledger(sink) == [] and not sink.has_batch("shop:1-4")
    result = sink.apply(two_table_batch())
    assert result.applied and result.skipped_replayed == 4
    assert (DeltaTable(items_uri(sink)).version(), DeltaTable(sink.table_uri("others")).version()) == versions
    assert_two_tables_applied(sink)
    assert len(ledger(sink)) == 1


# --- re-snapshot -------------------------------------------------------------------------------------------------


def test_forget_source_and_reset_table_let_a_re_snapshot_start_seq_again(sink):
    sink.apply(make_batch([("c", 1, item(1, name="a")), ("c", 50, item(2, name="b"))]))
    assert sink.forget_source(SOURCE) == 1 and sink.high_water(SOURCE) == 0 and sink.last_committed(SOURCE) is None
    assert sink.reset_table(ITEMS) and not sink.reset_table("missing")
    assert read_table(items_uri(sink)).num_rows == 0
    assert DeltaTable(items_uri(sink)).transaction_version("shop:public.items") == 0
    result = sink.apply(make_batch([("r", 1, item(1, name="again"))]))
    assert result.upserted == 1 and rows(items_uri(sink)) == [(1, "again", None)]


def test_ensure_tables_creates_typed_tables_and_refuses_tables_without_a_key(sink):
    sink.ensure_tables([ITEMS])
    schema = read_table(items_uri(sink)).schema
    assert schema.names == [*ITEMS.column_names, "_cdc_op", "_cdc_position", "_cdc_ts"]
    assert schema.field("amount").type == pa.decimal128(12, 2) and schema.field("tags").type == pa.string()
    keyless = TableSchema("public", "keyless", (Column("v", "text", "text"),))
    with pytest.raises(SinkError, match="no primary key") as info:
        sink.ensure_tables([keyless])
    assert info.value.terminal


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_a_truncate_as_the_last_event_empties_the_table(tmp_path, mode):
    sink = DeltaSink(str(tmp_path), sink_id="lake", delete_mode=mode)
    sink.apply(make_batch([("c", 1, item(1, name="a"))]))
    result = sink.apply(make_batch([("c", 2, item(2, name="b")), ("t", 3, {})]))
    assert result.truncated_tables == 1
    table = read_table(items_uri(sink))
    if mode == "hard":
        assert table.num_rows == 0
    else:
        assert sorted((r["id"], r["_cdc_op"], r["_cdc_deleted_at"] is not None) for r in table.to_pylist()) == [
            (1, "t", True), (2, "t", True)]
    assert DeltaTable(items_uri(sink)).transaction_version("shop:public.items") == 3


def test_a_renamed_column_keeps_its_values_and_odd_names_are_quoted(sink):
    odd = TableSchema("public", "Odd Table", (
        Column("Key`Id", "integer", "integer", False, True, ordinal=1),
        Column("Order Total", "numeric(10,2)", "decimal", ordinal=2, precision=10, scale=2),
    ))
    sink.apply(make_batch([("c", 1, {"Key`Id": "1", "Order Total": "3.50"})], odd))
    renamed = TableSchema("public", "Odd Table", (
        odd.columns[0], dataclasses.replace(odd.columns[1], name="total"),
    ))
    sink.apply(make_batch([("u", 3, {"Key`Id": "1", "total": "4.50"}), ("c", 4, {"Key`Id": "2", "total": "1"})],
                          renamed, schema_changes=[SchemaChange("public.Odd Table", 2, renamed, odd)]))
    table = read_table(sink.table_uri("Odd Table"))
    assert "Order Total" not in table.column_names
    assert rows(sink.table_uri("Odd Table"), ("Key`Id", "total"), ("Key`Id",)) == [(1, D("4.50")), (2, D("1.00"))]


def test_a_schema_change_alone_creates_the_table(sink):
    change = SchemaChange("public.items", 1, ITEMS, None)
    result = sink.apply(make_batch([], schema_changes=[change]))
    assert result.applied and read_table(items_uri(sink)).num_rows == 0
    assert sink.high_water(SOURCE) == 1


def test_target_file_size_is_a_table_setting(tmp_path):
    from airflow_provider_cdc.connectors.delta.options import DeltaSinkOptions

    sink = DeltaSink(str(tmp_path), sink_id="lake", options=DeltaSinkOptions(target_file_size=64 * 1024 * 1024))
    sink.apply(make_batch([("c", 1, item(1))]))
    assert DeltaTable(items_uri(sink)).metadata().configuration == {"delta.targetFileSize": str(64 * 1024 * 1024)}


def test_the_ledger_is_compacted_now_and_then(sink, monkeypatch):
    from airflow_provider_cdc.connectors.delta import ledger_table

    monkeypatch.setattr(ledger_table, "COMPACT_EVERY", 3)
    for seq in range(1, 8):
        sink.apply(make_batch([("c", seq, item(seq))]))
    assert len(DeltaTable(DeltaLedger(sink.root, {}).uri).file_uris()) < 7
    assert len(ledger(sink)) == 7 and sink.high_water(SOURCE) == 7


def test_a_delete_needs_only_its_key(sink):
    sink.apply(make_batch([("c", 1, item(1, name="a"))]))
    # The old row image of a delete (REPLICA IDENTITY FULL) may hold values the sink could never have stored.
    sink.apply(make_batch([("d", 2, item(1, name="a", seen_at="infinity"))]))
    assert rows(items_uri(sink)) == []


def test_soft_deletes_a_moved_key_needs_a_live_old_row(soft_sink):
    sink = soft_sink
    sink.apply(make_batch([("c", 1, item(1, name="a", payload="abcd"))]))
    sink.apply(make_batch([("d", 2, item(1))]))
    with pytest.raises(SinkError, match="old key's row is not in the sink"):
        sink.apply(make_batch([("c", 3, item(5, name="moved"), ["payload"], item(1))]))
    sink.apply(make_batch([("c", 4, item(2, name="b", payload="0102"))]))
    sink.apply(make_batch([("d", 5, item(2)), ("c", 6, item(6, name="moved"), ["payload"], item(2))]))
    live = {r["id"]: (r["payload"], r["_cdc_deleted_at"] is None) for r in read_table(items_uri(sink)).to_pylist()}
    assert live == {1: (b"\xab\xcd", False), 2: (b"\x01\x02", False), 6: (b"\x01\x02", True)}
