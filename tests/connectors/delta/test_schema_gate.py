"""The schema gate in the Delta sink, on real Delta tables under tmp_path: every schema change under every policy
mode, the registry and held changes beside the ledger, crashes between the writes, ``schema accept`` and release."""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from airflow_provider_cdc.connectors.base import Sink
from airflow_provider_cdc.connectors.delta import sink as sink_module
from airflow_provider_cdc.connectors.delta.ledger_table import DeltaLedger, HeldTables
from airflow_provider_cdc.connectors.delta.parquet_log import ParquetChangeLogSink
from airflow_provider_cdc.connectors.delta.registry import HeldChangeTable, SchemaVersionTable
from airflow_provider_cdc.connectors.delta.sink import DeltaSink
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.schema import SchemaPolicy
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema

from .helpers import SOURCE, make_batch, read_table

ITEMS = TableSchema("public", "items", (
    Column("id", "bigint", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("name", "text", "text", ordinal=2),
    Column("qty", "integer", "integer", ordinal=3),
    Column("big", "bigint", "integer", ordinal=4),
    Column("code", "text", "text", ordinal=5),
))
OTHERS = TableSchema("public", "others", (
    Column("id", "bigint", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("v", "text", "text", ordinal=2),
))
ITEMS_SUBJECT, OTHERS_SUBJECT = f"{SOURCE}.public.items", f"{SOURCE}.public.others"
BOOKKEEPING = ("_cdc_op", "_cdc_position", "_cdc_ts", "_cdc_deleted_at")


def changed(**columns: dict[str, Any]) -> TableSchema:
    """ITEMS with some columns changed (``name={"source_type": ...}``)."""
    return dataclasses.replace(ITEMS, columns=tuple(dataclasses.replace(col, **columns.get(col.name, {}))
                                                    for col in ITEMS.columns))


def added(column: Column) -> TableSchema:
    return dataclasses.replace(ITEMS, columns=(*ITEMS.columns, column))


SCENARIOS: dict[str, TableSchema] = {
    "add_nullable": added(Column("note", "text", "text", ordinal=6)),
    "add_not_null_with_default": added(Column("flag", "boolean", "boolean", nullable=False, backfill="true",
                                              ordinal=6)),
    "add_not_null_without_default": added(Column("flag", "boolean", "boolean", nullable=False, ordinal=6)),
    "drop": dataclasses.replace(ITEMS, columns=tuple(col for col in ITEMS.columns if col.name != "code")),
    "rename": changed(name={"name": "label"}),
    "widen_integer_to_bigint": changed(qty={"source_type": "bigint"}),
    "narrow_bigint_to_integer": changed(big={"source_type": "integer"}),
    "text_to_integer": changed(code={"source_type": "integer", "logical_type": "integer"}),
}
# Values of the rows written after the change, per scenario (beyond the common ones).
EXTRA_VALUES: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "add_nullable": ({"note": "n1"}, {"note": "n3"}),
    "add_not_null_with_default": ({"flag": "false"}, {"flag": "false"}),
    "add_not_null_without_default": ({"flag": "false"}, {"flag": "true"}),
}


def first_batch(code: str = "42"):
    return make_batch([("c", 1, {"id": "1", "name": "a", "qty": "1", "big": "10", "code": "41"}),
                       ("c", 2, {"id": "2", "name": "b", "qty": "2", "big": "20", "code": code})],
                      ITEMS, extra={OTHERS: [("c", 3, {"id": "1", "v": "x"})]})


def written(after: TableSchema, values: dict[str, str]) -> dict[str, str]:
    """A row of ``after`` with ``values`` (a renamed column takes the value written under the old name)."""
    row = {"name": values["name"], **values}
    if "label" in after.column_names:
        row["label"] = row.pop("name")
    return {name: value for name, value in row.items() if name in after.column_names}


def second_batch(scenario: str):
    after = SCENARIOS[scenario]
    extra1, extra3 = EXTRA_VALUES.get(scenario, ({}, {}))
    row1 = written(after, {"id": "1", "name": "a2", "qty": "11", "big": "110", "code": "51", **extra1})
    row3 = written(after, {"id": "3", "name": "c", "qty": "3", "big": "30", "code": "43", **extra3})
    return make_batch([("u", 5, row1), ("c", 6, row3)], after, extra={OTHERS: [("u", 7, {"id": "1", "v": "y"})]},
                      schema_changes=[SchemaChange("public.items", 4, after, ITEMS)])


STRING, LONG, BOOL = pa.string(), pa.int64(), pa.bool_()
BASE_COLUMNS = [("id", LONG), ("name", STRING), ("qty", LONG), ("big", LONG), ("code", STRING)]
FLOWED = [(1, "a2", 11, 110, "51"), (2, "b", 2, 20, "42"), (3, "c", 3, 30, "43")]
HELD_ROWS = [(1, "a", 1, 10, "41"), (2, "b", 2, 20, "42")]
NEW_NOTE = [*BASE_COLUMNS, ("note", STRING)]
NEW_FLAG = [*BASE_COLUMNS, ("flag", BOOL)]
WITH_NOTE = [(1, "a2", 11, 110, "51", "n1"), (2, "b", 2, 20, "42", None), (3, "c", 3, 30, "43", "n3")]
BACKFILLED = [(1, "a2", 11, 110, "51", False), (2, "b", 2, 20, "42", True), (3, "c", 3, 30, "43", False)]
CODE_KEPT = [(1, "a2", 11, 110, None), (2, "b", 2, 20, "42"), (3, "c", 3, 30, None)]

# (mode, scenario) -> (status of version 2, sink columns and types, sink rows); no columns: the table is held.
Expected = tuple[str, list[tuple[str, pa.DataType]] | None, list[tuple[Any, ...]]]
EXPECTED: dict[tuple[str, str], Expected] = {
    ("evolve", "add_nullable"): ("applied", NEW_NOTE, WITH_NOTE),
    ("evolve", "add_not_null_with_default"): ("applied", NEW_FLAG, BACKFILLED),
    ("evolve", "add_not_null_without_default"): ("held", None, HELD_ROWS),
    ("evolve", "drop"): ("applied", BASE_COLUMNS[:4], [row[:4] for row in FLOWED]),
    ("evolve", "rename"): ("applied", [("id", LONG), ("label", STRING), *BASE_COLUMNS[2:]], FLOWED),
    ("evolve", "widen_integer_to_bigint"): ("applied", BASE_COLUMNS, FLOWED),
    ("evolve", "narrow_bigint_to_integer"): ("held", None, HELD_ROWS),
    ("evolve", "text_to_integer"): ("held", None, HELD_ROWS),
    ("lenient", "add_nullable"): ("applied", NEW_NOTE, WITH_NOTE),
    ("lenient", "add_not_null_with_default"): ("applied", NEW_FLAG, BACKFILLED),
    ("lenient", "add_not_null_without_default"): (
        "applied", NEW_FLAG, [(1, "a2", 11, 110, "51", False), (2, "b", 2, 20, "42", None),
                              (3, "c", 3, 30, "43", True)]),
    ("lenient", "drop"): ("applied", BASE_COLUMNS, CODE_KEPT),
    ("lenient", "rename"): ("applied", [*BASE_COLUMNS, ("label", STRING)],
                            [(1, None, 11, 110, "51", "a2"), (2, "b", 2, 20, "42", None),
                             (3, None, 3, 30, "43", "c")]),
    ("lenient", "widen_integer_to_bigint"): ("applied", BASE_COLUMNS, FLOWED),
    ("lenient", "narrow_bigint_to_integer"): ("held", None, HELD_ROWS),
    ("lenient", "text_to_integer"): ("held", None, HELD_ROWS),
    ("ignore", "add_nullable"): ("ignored", BASE_COLUMNS, FLOWED),
    ("ignore", "add_not_null_with_default"): ("ignored", BASE_COLUMNS, FLOWED),
    ("ignore", "add_not_null_without_default"): ("ignored", BASE_COLUMNS, FLOWED),
    ("ignore", "drop"): ("ignored", BASE_COLUMNS, CODE_KEPT),
    ("ignore", "rename"): ("ignored", BASE_COLUMNS,
                           [(1, None, 11, 110, "51"), (2, "b", 2, 20, "42"), (3, None, 3, 30, "43")]),
    ("ignore", "widen_integer_to_bigint"): ("held", None, HELD_ROWS),
    ("ignore", "narrow_bigint_to_integer"): ("ignored", BASE_COLUMNS, FLOWED),
    ("ignore", "text_to_integer"): ("held", None, HELD_ROWS),
    **{("stop", scenario): ("held", None, HELD_ROWS) for scenario in SCENARIOS},
}


@pytest.fixture
def sink(tmp_path) -> DeltaSink:
    return DeltaSink(f"file://{tmp_path}/lake", sink_id="lake")


def columns_of(uri: str) -> list[tuple[str, pa.DataType]]:
    schema = read_table(uri).schema
    return [(field.name, field.type) for field in schema if field.name not in BOOKKEEPING]


def table_rows(uri: str) -> list[tuple[Any, ...]]:
    table = read_table(uri).sort_by("id")
    names = [name for name in table.column_names if name not in BOOKKEEPING]
    return [tuple(record[name] for name in names) for record in table.to_pylist()]


def versions(sink: DeltaSink, subject: str = ITEMS_SUBJECT) -> list[tuple[int, str]]:
    return [(version.version, version.status) for version in sink.schema_versions(SOURCE)
            if version.subject == subject]


def ledger_ids(sink: DeltaSink) -> list[str]:
    return sorted(row.batch_id for row in DeltaLedger(sink.root, {}).rows())


# --- every change under every mode ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("mode", ["evolve", "lenient", "ignore", "stop"])
def test_a_schema_change_under_each_policy_mode(sink, mode, scenario):
    policy = SchemaPolicy(mode=mode)
    first = sink.apply(first_batch(), policy=policy)
    assert first.schema_versions == {ITEMS_SUBJECT: 1, OTHERS_SUBJECT: 1}
    result = sink.apply(second_batch(scenario), policy=policy)
    status, columns, rows = EXPECTED[(mode, scenario)]
    items, others = sink.table_uri("items"), sink.table_uri("others")
    assert result.applied
    # The other table of the batch always flows.
    assert table_rows(others) == [(1, "y")] and "public.others" in result.tables
    assert versions(sink, OTHERS_SUBJECT) == [(1, "applied")]
    assert versions(sink) == [(1, "applied"), (2, status)]
    assert table_rows(items) == rows
    if columns is None:
        assert columns_of(items) == BASE_COLUMNS  # untouched
        assert list(result.held_tables) == list(result.newly_held) == ["public.items"]
        assert f"refused under schema_changes mode {mode}" in sink.held_tables(SOURCE)["public.items"]
        assert "public.items" not in result.tables
        (chunk,) = sink.held_changes(SOURCE, "public.items")
        assert (chunk.batch_id, chunk.seq_from, chunk.seq_to, chunk.rows) == ("shop:4-7", 4, 6, 2)
        assert chunk.schema == SCENARIOS[scenario]
        assert result.schema_versions == {ITEMS_SUBJECT: 1, OTHERS_SUBJECT: 1}
        assert DeltaTable(items).transaction_version(f"{SOURCE}:public.items") == 3
    else:
        assert columns_of(items) == columns
        # Rewrites (a rename, a drop) keep the table's Delta transaction: the batch stays applied exactly once.
        assert DeltaTable(items).transaction_version(f"{SOURCE}:public.items") == 7
        assert result.held_tables == {} and sink.held_tables(SOURCE) == {}
        assert sink.held_changes(SOURCE, "public.items") == []
        assert result.schema_versions == {ITEMS_SUBJECT: 2, OTHERS_SUBJECT: 1}
    # The ledger row records the versions in effect and what the gate did with the change.
    (row,) = DeltaLedger(sink.root, {}).rows(batch_id="shop:4-7")
    assert row.schema_versions is not None
    assert row.schema_versions["versions"] == result.schema_versions
    assert [(note["subject"], note["outcome"]) for note in row.schema_versions["changes"]] == [
        (ITEMS_SUBJECT, status)]


# --- held tables ---------------------------------------------------------------------------------------------------


def third_batch(schema: TableSchema = SCENARIOS["text_to_integer"]):
    row = {"id": "1", "name": "a3", "qty": "12", "big": "120", "code": "52"}
    return make_batch([("u", 8, row), ("d", 9, {"id": "3"})], schema,
                      extra={OTHERS: [("c", 10, {"id": "2", "v": "z"})]})


def test_later_batches_of_a_held_table_accumulate_chunks(sink):
    sink.apply(first_batch())
    sink.apply(second_batch("text_to_integer"))
    result = sink.apply(third_batch())
    assert result.held_tables == {"public.items": sink.held_tables(SOURCE)["public.items"]}
    assert result.newly_held == {} and "public.items" not in result.tables
    assert table_rows(sink.table_uri("others")) == [(1, "y"), (2, "z")]
    chunks = sink.held_changes(SOURCE, "public.items")
    assert [(c.batch_id, c.seq_from, c.seq_to, c.rows) for c in chunks] == [("shop:4-7", 4, 6, 2),
                                                                           ("shop:8-10", 8, 9, 2)]
    assert versions(sink) == [(1, "applied"), (2, "held")]  # no new version: the schema did not change again
    assert table_rows(sink.table_uri("items")) == HELD_ROWS


@pytest.mark.parametrize("scenario", ["drop", "text_to_integer"])
def test_replaying_the_same_batch_is_a_no_op(sink, scenario):
    sink.apply(first_batch())
    sink.apply(second_batch(scenario))
    state = snapshot(sink)
    again = sink.apply(second_batch(scenario))
    assert not again.applied
    assert snapshot(sink) == state


def test_versions_of_an_older_batch_with_the_same_id_stay_versions(sink):
    # A source re-snapshotted from scratch starts its seq again, so a snapshot batch can have an id seen before.
    sink.apply(make_batch([("r", 2, {"id": "1", "name": "a"})], ITEMS,
                          schema_changes=[SchemaChange("public.items", 1, ITEMS)]))
    assert sink.forget_source(SOURCE) == 1 and sink.reset_table("items")
    wider = SCENARIOS["add_nullable"]
    result = sink.apply(make_batch([("r", 2, {"id": "1", "name": "a", "note": "n"})], wider,
                                   schema_changes=[SchemaChange("public.items", 1, wider)]))
    assert result.batch_id == "shop:1-2" and result.schema_versions == {ITEMS_SUBJECT: 2}
    assert [(v.version, v.status, v.table) for v in sink.schema_versions(SOURCE)] == [
        (1, "applied", ITEMS), (2, "applied", wider)]
    assert table_rows(sink.table_uri("items")) == [(1, "a", None, None, None, "n")]


# --- crashes between the writes ------------------------------------------------------------------------------------

CODES = TableSchema("public", "codes", (
    Column("id", "bigint", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("code", "text", "text", ordinal=2),
))
CODES_INT = dataclasses.replace(CODES, columns=(CODES.columns[0], dataclasses.replace(
    CODES.columns[1], source_type="integer", logical_type="integer")))


def crash_batches():
    """Three tables: items drops a column (followed, then dropped), codes changes a type (held), others flows."""
    first = make_batch([("c", 1, {"id": "1", "name": "a", "qty": "1", "big": "10", "code": "41"})], ITEMS,
                       extra={OTHERS: [("c", 2, {"id": "1", "v": "x"})], CODES: [("c", 3, {"id": "1", "code": "7"})]})
    dropped = SCENARIOS["drop"]
    second = make_batch(
        [("u", 6, {"id": "1", "name": "a2", "qty": "2", "big": "20"})], dropped,
        extra={OTHERS: [("u", 7, {"id": "1", "v": "y"})], CODES: [("u", 8, {"id": "1", "code": "8"})]},
        schema_changes=[SchemaChange("public.items", 4, dropped, ITEMS), SchemaChange("public.codes", 5, CODES_INT,
                                                                                      CODES)])
    return first, second


def snapshot(sink: DeltaSink) -> dict[str, Any]:
    """Everything the sink holds, minus commit times: tables, registry, held marks and chunks, ledger."""
    root = sink.root
    ledger = [(r.batch_id, r.seq_from, r.seq_to, r.counts, r.schema_versions, r.rows_upserted, r.rows_deleted)
              for r in sorted(DeltaLedger(root, {}).rows(), key=lambda r: r.batch_id)]
    registry = [dataclasses.replace(v, registered_at="") for v in SchemaVersionTable(root, {}).versions(SOURCE)]
    chunks = [(c.table, c.batch_id, c.seq_from, c.seq_to, c.rows, c.meta(), c.data_bytes())
              for table in ("public.items", "public.codes")
              for c in HeldChangeTable(root, {}).chunks(SOURCE, table)]
    tables = {name: (columns_of(sink.table_uri(name)), table_rows(sink.table_uri(name)),
                     DeltaTable(sink.table_uri(name)).transaction_version(f"{SOURCE}:public.{name}"))
              for name in ("items", "others", "codes") if DeltaTable.is_deltatable(sink.table_uri(name))}
    return {"tables": tables, "registry": registry, "held": HeldTables(root, {}).marks(SOURCE), "chunks": chunks,
            "ledger": ledger}


CRASH_POINTS = {
    # after the held chunks, before the held marks
    "marks": (HeldTables, "hold_many"),
    # after chunks and marks, before the table commits
    "table commits": (sink_module, "merge_table"),
    # after the table commits, before the drops
    "drops": (sink_module, "drop_columns"),
    # after the drops, before the registrations
    "registrations": (SchemaVersionTable, "store"),
    # after everything but the ledger row
    "ledger": (DeltaLedger, "append_row"),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_a_crash_between_the_writes_ends_as_an_uninterrupted_apply(tmp_path, monkeypatch, point):
    first, second = crash_batches()
    clean = DeltaSink(str(tmp_path / "clean"), sink_id="lake")
    clean.apply(first)
    clean.apply(second)
    expected = snapshot(clean)

    sink = DeltaSink(str(tmp_path / "crashed"), sink_id="lake")
    sink.apply(first)
    owner, name = CRASH_POINTS[point]

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"killed before {point}")

    monkeypatch.setattr(owner, name, crash)
    with pytest.raises(RuntimeError, match="killed"):
        sink.apply(second)
    monkeypatch.undo()
    assert "shop:4-8" not in ledger_ids(sink)
    stored_before = {(v.subject, v.version): v.registered_at for v in sink.schema_versions(SOURCE)}
    result = sink.apply(second)
    assert result.applied and result.held_tables == result.newly_held
    assert list(result.newly_held) == ["public.codes"]
    assert snapshot(sink) == expected
    # One version per change, one chunk per batch, and the versions stored before the crash kept their time.
    assert [(v.subject, v.version, v.status) for v in sink.schema_versions(SOURCE)] == [
        (f"{SOURCE}.public.codes", 1, "applied"), (f"{SOURCE}.public.codes", 2, "held"),
        (ITEMS_SUBJECT, 1, "applied"), (ITEMS_SUBJECT, 2, "applied"), (OTHERS_SUBJECT, 1, "applied")]
    assert len(sink.held_changes(SOURCE, "public.codes")) == 1
    for version in sink.schema_versions(SOURCE):
        if (version.subject, version.version) in stored_before:
            assert version.registered_at == stored_before[(version.subject, version.version)]
    assert columns_of(sink.table_uri("items")) == BASE_COLUMNS[:4]
    assert not sink.apply(second).applied


# --- schema accept -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "scenario", "code_type", "items"), [
    # evolve: the conversion of the values already there (text to integer), and a new column
    ("evolve", "text_to_integer", LONG, [(1, "a3", 12, 120, 52), (2, "b", 2, 20, 42)]),
    ("evolve", "add_not_null_without_default", STRING,
     [(1, "a3", 12, 120, "52", None), (2, "b", 2, 20, "42", None)]),
    # ignore: the sink keeps its columns, the held changes are read with them
    ("ignore", "widen_integer_to_bigint", STRING, [(1, "a3", 12, 120, "52"), (2, "b", 2, 20, "42")]),
])
def test_accept_replays_the_held_changes_exactly_once(sink, monkeypatch, mode, scenario, code_type, items):
    policy = SchemaPolicy(mode=mode)
    sink.apply(first_batch(), policy=policy)
    sink.apply(second_batch(scenario), policy=policy)
    sink.apply(third_batch(SCENARIOS[scenario]), policy=policy)
    items_uri = sink.table_uri("items")
    version_before = DeltaTable(items_uri).version()

    # A crash after the replay's merge and before its ledger row: the retry merges nothing again.
    monkeypatch.setattr(DeltaLedger, "append_row", lambda *args, **kwargs: (_ for _ in ()).throw(
        RuntimeError("killed before the accept's ledger row")))
    with pytest.raises(RuntimeError, match="killed"):
        sink.accept_table(SOURCE, "public.items", policy=policy)
    monkeypatch.undo()
    assert "public.items" in sink.held_tables(SOURCE)
    merged = DeltaTable(items_uri).version()
    assert merged > version_before

    result = sink.accept_table(SOURCE, "public.items", policy=policy, run_id="accept-1")
    assert DeltaTable(items_uri).version() == merged  # nothing merged twice
    assert (result.subject, result.table, result.accepted_versions) == (ITEMS_SUBJECT, "public.items", [])
    assert result.batch_id == "shop:accept:public.items:4-9" and result.replayed_events == 4
    assert table_rows(items_uri) == items  # id 3 created in batch 2 and deleted in batch 3: gone
    assert dict(columns_of(items_uri))["code"] == code_type
    assert versions(sink) == [(1, "applied"), (2, "accepted")]
    assert sink.held_tables(SOURCE) == {} and sink.held_changes(SOURCE, "public.items") == []
    assert ledger_ids(sink).count("shop:accept:public.items:4-9") == 1
    (row,) = DeltaLedger(sink.root, {}).rows(batch_id="shop:accept:public.items:4-9")
    assert (row.seq_from, row.seq_to, row.run_id) == (4, 9, "accept-1")
    assert row.schema_versions is not None and row.schema_versions["versions"][ITEMS_SUBJECT] == 2
    assert sink.high_water(SOURCE) == 10 and sink.last_committed(SOURCE) == {"lsn": "0/A"}

    # The table flows again from the next batch on; an accept again is refused, naming what is held.
    later = sink.apply(make_batch([("c", 11, {"id": "4", "name": "d", "code": "9"})], SCENARIOS[scenario]),
                       policy=policy)
    assert "public.items" in later.tables and table_rows(items_uri)[-1][0] == 4
    with pytest.raises(SinkError, match="is not held.*held tables: none") as info:
        sink.accept_table(SOURCE, "public.items", policy=policy)
    assert info.value.terminal


def test_a_change_the_sink_cannot_follow_is_held_like_a_refused_one(sink):
    # Compatible for the gate (a nullable column), but the rows already in the sink cannot be given its values.
    sink.apply(first_batch())
    volatile = added(Column("token", "text", "text", backfill_unknown=True, ordinal=6))
    result = sink.apply(make_batch([("c", 5, {"id": "3", "name": "c", "token": "t"})], volatile,
                                   extra={OTHERS: [("u", 6, {"id": "1", "v": "y"})]},
                                   schema_changes=[SchemaChange("public.items", 4, volatile, ITEMS)]))
    assert list(result.newly_held) == ["public.items"] and "volatile default" in result.newly_held["public.items"]
    assert table_rows(sink.table_uri("others")) == [(1, "y")] and table_rows(sink.table_uri("items")) == HELD_ROWS
    assert versions(sink) == [(1, "applied"), (2, "held")]
    (chunk,) = sink.held_changes(SOURCE, "public.items")
    assert (chunk.seq_from, chunk.seq_to, chunk.rows) == (4, 5, 1)
    # Accepting cannot give the old rows their values either: the way out is a re-snapshot.
    with pytest.raises(SinkError, match="resnapshot shop --table public.items") as info:
        sink.accept_table(SOURCE, "public.items")
    assert info.value.terminal and "public.items" in sink.held_tables(SOURCE)
    assert versions(sink) == [(1, "applied"), (2, "held")]


def test_an_accept_retried_after_the_ledger_row_only_clears_the_hold(sink, monkeypatch):
    sink.apply(first_batch())
    sink.apply(second_batch("text_to_integer"))
    monkeypatch.setattr(HeldTables, "release", lambda *args, **kwargs: (_ for _ in ()).throw(
        RuntimeError("killed before the hold was cleared")))
    with pytest.raises(RuntimeError, match="killed"):
        sink.accept_table(SOURCE, "public.items")
    monkeypatch.undo()
    state = DeltaTable(sink.table_uri("items")).version()
    result = sink.accept_table(SOURCE, "public.items")
    assert not result.applied and result.batch_id is None and result.accepted_versions == []
    assert DeltaTable(sink.table_uri("items")).version() == state
    assert sink.held_tables(SOURCE) == {} and ledger_ids(sink).count("shop:accept:public.items:4-6") == 1
    assert table_rows(sink.table_uri("items")) == [(1, "a2", 11, 110, 51), (2, "b", 2, 20, 42), (3, "c", 3, 30, 43)]


def test_an_accept_whose_cast_fails_leaves_the_table_held_and_unchanged(sink):
    sink.apply(first_batch(code="abc"))
    sink.apply(second_batch("text_to_integer"))
    items_uri = sink.table_uri("items")
    version = DeltaTable(items_uri).version()
    with pytest.raises(SinkError) as info:
        sink.accept_table(SOURCE, "public.items")
    message = str(info.value)
    assert info.value.terminal
    assert "column 'code'" in message and "'abc'" in message and "nothing was changed" in message
    assert "python -m airflow_provider_cdc resnapshot shop --table public.items" in message
    assert DeltaTable(items_uri).version() == version
    assert table_rows(items_uri) == [(1, "a", 1, 10, "41"), (2, "b", 2, 20, "abc")]
    assert "public.items" in sink.held_tables(SOURCE) and len(sink.held_changes(SOURCE, "public.items")) == 1
    assert versions(sink) == [(1, "applied"), (2, "held")]
    assert "shop:accept:public.items:4-6" not in ledger_ids(sink)


def test_accept_refuses_a_table_that_is_not_held(sink):
    sink.apply(first_batch())
    sink.apply(second_batch("text_to_integer"))
    with pytest.raises(SinkError, match=r"public.others .* is not held.*held tables: public.items") as info:
        sink.accept_table(SOURCE, "public.others")
    assert info.value.terminal


def test_release_table_discards_the_held_changes(sink):
    sink.apply(first_batch())
    sink.apply(second_batch("text_to_integer"))
    sink.apply(third_batch())
    assert len(sink.held_changes(SOURCE, "public.items")) == 2
    assert sink.release_table(SOURCE, "public.items") and not sink.release_table(SOURCE, "public.items")
    assert sink.held_changes(SOURCE, "public.items") == [] and sink.held_tables(SOURCE) == {}
    assert versions(sink) == [(1, "applied"), (2, "accepted")]
    assert read_table(sink.table_uri("items")).num_rows == 0
    # The re-snapshot then loads the table with the source's current columns.
    sink.apply(make_batch([("r", 11, {"id": "1", "name": "a", "code": "52"})], SCENARIOS["text_to_integer"]))
    assert table_rows(sink.table_uri("items")) == [(1, "a", None, None, 52)]


# --- the Parquet change log ----------------------------------------------------------------------------------------


def test_the_parquet_change_log_registers_versions_and_never_holds(tmp_path):
    log = ParquetChangeLogSink(str(tmp_path / "log"), sink_id="log")
    assert isinstance(log, Sink)
    log.apply(first_batch(), policy=SchemaPolicy(mode="stop"))
    result = log.apply(second_batch("text_to_integer"), policy=SchemaPolicy(mode="stop"))
    assert result.applied and result.held_tables == {}
    assert result.schema_versions == {ITEMS_SUBJECT: 2, OTHERS_SUBJECT: 1}
    assert [(v.subject, v.version, v.status) for v in log.schema_versions(SOURCE)] == [
        (ITEMS_SUBJECT, 1, "applied"), (ITEMS_SUBJECT, 2, "applied"), (OTHERS_SUBJECT, 1, "applied")]
    assert log.held_changes(SOURCE, "public.items") == []
    assert not log.apply(second_batch("text_to_integer")).applied
    assert len(log.schema_versions(SOURCE)) == 3
    with pytest.raises(SinkError, match="never holds a table") as info:
        log.accept_table(SOURCE, "public.items")
    assert info.value.terminal
    # A batch whose manifest is missing (a crash) registered nothing; the replay registers its version.
    crashed = ParquetChangeLogSink(str(tmp_path / "log"), sink_id="log")
    third = make_batch([("c", 12, {"id": "9", "name": "n", "note": "x"})], SCENARIOS["add_nullable"],
                       schema_changes=[SchemaChange("public.items", 11, SCENARIOS["add_nullable"],
                                                    SCENARIOS["text_to_integer"])])
    crashed._write_atomically = _fail_on_manifest(crashed._write_atomically)  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="killed"):
        crashed.apply(third)
    assert len(ParquetChangeLogSink(str(tmp_path / "log"), sink_id="log").schema_versions(SOURCE)) == 3
    assert log.apply(third).applied and [v.version for v in log.schema_versions(SOURCE)] == [1, 2, 3, 1]
    # A whole re-snapshot deletes the manifests and starts seq again; the registry stays.
    assert log.forget_source(SOURCE) == 3 and log.high_water(SOURCE) == 0
    assert [v.version for v in log.schema_versions(SOURCE)] == [1, 2, 3, 1]
    assert log.apply(first_batch()).applied and log.high_water(SOURCE) == 3
    assert [(v.version, v.table) for v in log.schema_versions(SOURCE)] == [
        (1, ITEMS), (2, SCENARIOS["text_to_integer"]), (3, SCENARIOS["add_nullable"]), (1, OTHERS)]


def _fail_on_manifest(write: Any) -> Any:
    def guarded(path: str, content: Any) -> None:
        if "_cdc_manifests" in path:
            raise RuntimeError("killed before the manifest")
        write(path, content)

    return guarded
