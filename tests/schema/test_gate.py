"""The schema gate: what decide() registers, follows, holds and hands the sink, and what plan_accept() replays."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pytest
from cdc_testing import Event, batch_of, item

from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.schema import gate
from airflow_provider_cdc.schema.gate import GateDecision, HeldChunk, decide, lenient_table, plan_accept
from airflow_provider_cdc.schema.policy import SchemaPolicy
from airflow_provider_cdc.schema.registry import SchemaVersion
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema

T, SUBJECT = "public.items", "shop.public.items"
ID = Column("id", "bigint", "integer", nullable=False, primary_key=True, ordinal=1)
NAME = Column("name", "text", "text", nullable=True, ordinal=2)
QTY = Column("qty", "integer", "integer", nullable=False, ordinal=3)
TOTAL = Column("total", "bigint", "integer", nullable=False, ordinal=4)
SCORE = Column("score", "real", "float", nullable=False, ordinal=5)
ITEMS = TableSchema("public", "items", (ID, NAME, QTY, TOTAL, SCORE), "postgresql")
ORDERS = TableSchema("public", "orders", (ID, Column("status", "text", "text", ordinal=2)), "postgresql")
# Sample values by column name (text that every type in these tests reads).
VALUES = {"name": "7", "label": "7", "qty": "2", "quantity": "2", "total": "20", "score": "2.5", "note": "n",
          "code": "c", "memo": "m", "status": "new"}


def with_columns(*columns: Column) -> TableSchema:
    return dataclasses.replace(ITEMS, columns=(ID, *columns))


def retyped(column: Column, source_type: str, logical: str | None = None) -> Column:
    return dataclasses.replace(column, source_type=source_type, logical_type=logical or column.logical_type)


CHANGES: dict[str, TableSchema] = {
    "add nullable column": with_columns(NAME, QTY, TOTAL, SCORE, Column("note", "text", "text", ordinal=6)),
    "add NOT NULL column without default": with_columns(
        NAME, QTY, TOTAL, SCORE, Column("code", "text", "text", nullable=False, ordinal=6)),
    "add NOT NULL column with default": with_columns(
        NAME, QTY, TOTAL, SCORE, Column("code", "text", "text", nullable=False, ordinal=6, backfill="none")),
    "drop nullable column": with_columns(QTY, TOTAL, SCORE),
    "drop NOT NULL column": with_columns(NAME, TOTAL, SCORE),
    "rename nullable column": with_columns(dataclasses.replace(NAME, name="label"), QTY, TOTAL, SCORE),
    "rename NOT NULL column": with_columns(NAME, dataclasses.replace(QTY, name="quantity"), TOTAL, SCORE),
    "widen int to long": with_columns(NAME, retyped(QTY, "bigint"), TOTAL, SCORE),
    "narrow long to int": with_columns(NAME, QTY, retyped(TOTAL, "integer"), SCORE),
    "string to int": with_columns(retyped(NAME, "integer", "integer"), QTY, TOTAL, SCORE),
    "float to double": with_columns(NAME, QTY, TOTAL, retyped(SCORE, "double precision")),
}
# What each mode does with each change under BACKWARD (the default level).
HELD_UNDER = {
    "evolve": {"add NOT NULL column without default", "narrow long to int", "string to int"},
    "lenient": {"narrow long to int", "string to int"},
    # ignore keeps the sink's columns: the new values must fit them (Avro: FORWARD, source writer -> sink reader).
    "ignore": {"widen int to long", "string to int", "float to double"},
    "stop": set(CHANGES),
}
FOLLOWED_AS = {"evolve": "applied", "lenient": "applied", "ignore": "ignored", "stop": "applied"}


def values_of(table: TableSchema, id_: int) -> dict[str, Any]:
    return item(id_, **{name: VALUES[name] for name in table.column_names if name != "id"})


def first_versions(*, tables: Sequence[TableSchema] = (ITEMS,)) -> list[SchemaVersion]:
    """Version 1 of each table, as the first batch registers it."""
    batch = batch_of([("r", 1, values_of(tables[0], 1))], tables[0],
                     extra={table: [("r", 2 + i, values_of(table, 1))] for i, table in enumerate(tables[1:])})
    return decide(batch, [], {}).registrations


def change_batch(new: TableSchema, *, seq: int = 10, before: TableSchema = ITEMS, events: Sequence[Event] = (),
                 extra: dict[TableSchema, Sequence[Event]] | None = None, batch_id: str | None = None) -> ChangeBatch:
    """A batch with ``new`` taking effect at ``seq`` and one insert after it (unless ``events`` are given)."""
    return batch_of(list(events) or [("c", seq + 1, values_of(new, 2))], new, extra=extra, batch_id=batch_id,
                    schema_changes=[SchemaChange(T, seq, new, before=before, position=f"0/{seq:X}")])


def policy(mode: str, level: str = "BACKWARD") -> SchemaPolicy:
    return SchemaPolicy(mode=mode, compatibility=level)  # type: ignore[arg-type]


def status_of(decision: GateDecision) -> dict[int, str]:
    return {version.version: version.status for version in decision.registrations if version.subject == SUBJECT}


# --- decide: each mode x each change ----------------------------------------------------------------------------

@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("mode", ["evolve", "lenient", "ignore", "stop"])
def test_decide_follows_or_holds_each_change_by_mode(mode: str, change: str) -> None:
    new = CHANGES[change]
    batch = change_batch(new)
    decision = decide(batch, first_versions(), {}, policy(mode))
    [note] = decision.ledger_versions()["changes"]
    # ignore checks the sink's columns as the reader of the new data, whatever the level: FORWARD against them
    assert (note["subject"], note["version"], note["seq"], note["mode"], note["level"]) == (
        SUBJECT, 2, 10, mode, "FORWARD" if mode == "ignore" else "BACKWARD")
    if change in HELD_UNDER[mode]:
        assert status_of(decision) == {2: "held"}
        assert note["outcome"] == "held" and note["reason"]
        assert list(decision.held) == [T] and decision.all_held == decision.held
        assert T not in decision.batch.tables and T not in decision.batch.schemas
        assert not [c for c in decision.batch.schema_changes if c.table == T]
        [chunk] = decision.chunks
        assert (chunk.table, chunk.seq_from, chunk.seq_to, chunk.rows) == (T, 10, 11, 1)
        assert chunk.schema == new and [c.after for c in chunk.changes] == [new]
        assert decision.drops == {}
        assert decision.ledger_versions()["versions"] == {SUBJECT: 1}
        assert SUBJECT in decision.held[T] and f"mode {mode}" in decision.held[T]
    else:
        assert status_of(decision) == {2: FOLLOWED_AS[mode]}
        assert note["outcome"] == FOLLOWED_AS[mode] and "reason" not in note
        assert decision.held == {} and decision.chunks == []
        assert decision.batch.tables[T].num_rows == 1
        assert decision.ledger_versions()["versions"] == {SUBJECT: 2}
    # the batch the caller passed is left as it was
    assert batch.tables[T].num_rows == 1 and batch.schemas[T] == new and len(batch.schema_changes) == 1


@pytest.mark.parametrize(("change", "dropped"), [
    ("drop nullable column", ["name"]), ("drop NOT NULL column", ["qty"]), ("rename nullable column", []),
    ("add nullable column", []),
])
def test_evolve_follows_a_change_exactly_and_drops_after_the_merge(change: str, dropped: list[str]) -> None:
    new = CHANGES[change]
    decision = decide(change_batch(new), first_versions(), {}, policy("evolve"))
    assert decision.drops == ({T: dropped} if dropped else {})
    assert decision.batch.schemas[T] == new
    assert decision.batch.tables[T].column_names[-len(new.columns):] == new.column_names
    [version] = decision.registrations
    assert version.table == new and version.sink_table == new and version.batch_id == "shop:10-11"
    assert version.position == "0/A" and version.seq == 10
    assert version.compatibility is not None and version.compatibility["compatible"] is True


def test_a_column_dropped_and_re_added_in_one_batch_is_not_dropped_after_the_merge() -> None:
    dropped = with_columns(QTY, TOTAL, SCORE)
    re_added = with_columns(QTY, TOTAL, SCORE, dataclasses.replace(NAME, ordinal=6))
    batch = batch_of([("c", 13, values_of(re_added, 2))], re_added, schema_changes=[
        SchemaChange(T, 10, dropped, before=ITEMS), SchemaChange(T, 12, re_added, before=dropped)])
    decision = decide(batch, first_versions(), {}, policy("evolve"))
    assert status_of(decision) == {2: "applied", 3: "applied"}
    assert decision.drops == {}  # the source has "name" again: dropping it would lose this batch's values


def test_describe_change_names_what_changed() -> None:
    assert gate.describe_change(ITEMS, CHANGES["add NOT NULL column with default"]) == (
        "added code text NOT NULL DEFAULT none")
    assert gate.describe_change(ITEMS, CHANGES["rename NOT NULL column"]) == "renamed qty to quantity"
    assert gate.describe_change(ITEMS, CHANGES["drop nullable column"]) == "dropped name"
    assert gate.describe_change(ITEMS, CHANGES["string to int"]) == "name type text -> integer"
    assert gate.describe_change(None, ITEMS) == "new table with columns ['id', 'name', 'qty', 'total', 'score']"
    assert gate.describe_change(ITEMS, ITEMS) == "no column change"


# --- first versions, replays, high water ------------------------------------------------------------------------

def test_the_first_batch_registers_version_1_of_every_table_also_one_with_only_data() -> None:
    batch = batch_of([("r", 3, values_of(ITEMS, 1)), ("r", 4, values_of(ITEMS, 2))], ITEMS,
                     extra={ORDERS: [("r", 6, values_of(ORDERS, 1))]},
                     schema_changes=[SchemaChange("public.orders", 5, ORDERS)])
    decision = decide(batch, [], {})
    versions = {version.subject: version for version in decision.registrations}
    assert set(versions) == {SUBJECT, "shop.public.orders"}
    assert all(version.version == 1 and version.status == "applied" for version in versions.values())
    assert versions[SUBJECT].seq == 3 and versions[SUBJECT].table == ITEMS  # from its data: first event's seq
    assert versions["shop.public.orders"].seq == 5  # from its schema change
    assert decision.ledger_versions() == {"versions": {SUBJECT: 1, "shop.public.orders": 1}, "changes": [],
                                          "held": {}}
    assert decision.batch.tables[T].equals(batch.tables[T])


def test_a_replay_registers_nothing_new() -> None:
    first = first_versions()
    replay = batch_of([("r", 1, values_of(ITEMS, 1))], ITEMS)
    assert decide(replay, first, {}).registrations == []
    batch = change_batch(CHANGES["rename nullable column"])
    applied = decide(batch, first, {}).registrations
    again = decide(batch, [*first, *applied], {})
    assert again.registrations == [] and again.notes == [] and again.held == {}
    assert again.registry.in_effect() == {SUBJECT: 2}


def test_a_schema_re_announced_without_its_before_image_is_not_a_new_version() -> None:
    """A source that restarts announces its tables again with no before-image, so the rename's alias is missing
    from the document: the table is the same, and nothing is registered."""
    renamed = CHANGES["rename nullable column"]
    versions = [*first_versions(), *decide(change_batch(renamed), first_versions(), {}).registrations]
    announced = batch_of([("c", 31, values_of(renamed, 3))], renamed, schema_changes=[SchemaChange(T, 30, renamed)])
    decision = decide(announced, versions, {})
    assert decision.registrations == [] and decision.held == {}
    assert decision.batch.tables[T].num_rows == 1


def test_a_refused_change_holds_only_events_above_the_high_water() -> None:
    new = CHANGES["add NOT NULL column without default"]
    batch = change_batch(new, events=[("c", 4, values_of(new, 1)), ("c", 11, values_of(new, 2)),
                                      ("u", 12, values_of(new, 2))])
    decision = decide(batch, first_versions(), {}, policy("evolve"), high_water=5)
    [chunk] = decision.chunks
    assert chunk.data is not None and chunk.data["_cdc_seq"].to_pylist() == [11, 12]
    assert (chunk.seq_from, chunk.seq_to) == (10, 12)


def test_a_held_table_keeps_nothing_at_or_below_the_high_water() -> None:
    older = SchemaChange(T, 2, ITEMS, before=ITEMS)
    batch = batch_of([("c", i, values_of(ITEMS, i)) for i in range(1, 6)], ITEMS, schema_changes=[older])
    decision = decide(batch, first_versions(), {T: "held before"}, high_water=3)
    [chunk] = decision.chunks
    assert chunk.data is not None and chunk.data["_cdc_seq"].to_pylist() == [4, 5]
    assert (chunk.seq_from, chunk.seq_to, chunk.changes) == (4, 5, [])
    assert decision.registrations == []
    nothing_new = decide(batch, first_versions(), {T: "held before"}, high_water=5)
    assert nothing_new.chunks == [] and T not in nothing_new.batch.tables


def test_a_held_tables_later_batches_add_chunks_and_held_versions() -> None:
    v2 = CHANGES["add NOT NULL column without default"]
    refused = decide(change_batch(v2), first_versions(), {}, policy("evolve"))
    versions = [*first_versions(), *refused.registrations]
    held = dict(refused.held)
    v3 = with_columns(NAME, QTY, TOTAL, SCORE, Column("code", "text", "text", nullable=False, ordinal=6),
                      Column("memo", "text", "text", ordinal=7))
    later = change_batch(v3, seq=20, before=v2, events=[("c", 21, values_of(v3, 5)), ("d", 22, values_of(v3, 2))])
    decision = decide(later, versions, held, policy("evolve"))
    assert status_of(decision) == {3: "held"}
    assert decision.held == {} and decision.all_held == held  # held already: not newly held
    [chunk] = decision.chunks
    assert (chunk.batch_id, chunk.seq_from, chunk.seq_to, chunk.rows) == ("shop:20-22", 20, 22, 2)
    assert chunk.schema == v3 and [change.after for change in chunk.changes] == [v3]
    assert T not in decision.batch.tables
    assert decision.ledger_versions()["held"] == held
    # data only, no change: one more chunk, no version
    data_only = decide(batch_of([("u", 30, values_of(v3, 5))], v3), [*versions, *decision.registrations], held)
    assert data_only.registrations == [] and [c.rows for c in data_only.chunks] == [1]


def test_one_table_held_the_other_flows_with_its_data_intact() -> None:
    new = CHANGES["string to int"]
    orders = [("c", 12, values_of(ORDERS, 1)), ("u", 13, values_of(ORDERS, 1)), ("d", 14, values_of(ORDERS, 1))]
    batch = change_batch(new, extra={ORDERS: orders})
    decision = decide(batch, first_versions(tables=(ITEMS, ORDERS)), {}, policy("evolve"))
    assert list(decision.held) == [T]
    assert list(decision.batch.tables) == ["public.orders"]
    assert decision.batch.tables["public.orders"].equals(batch.tables["public.orders"])
    assert decision.batch.schemas == {"public.orders": ORDERS}
    assert [chunk.table for chunk in decision.chunks] == [T]
    assert decision.ledger_versions()["versions"] == {SUBJECT: 1, "shop.public.orders": 1}


# --- hold() from the sink, ledger, messages ---------------------------------------------------------------------

def test_hold_from_the_sink_marks_the_batchs_versions_held_and_moves_the_data_out() -> None:
    new = CHANGES["drop nullable column"]
    batch = change_batch(new, events=[("c", 11, values_of(new, 2)), ("c", 12, values_of(new, 3))],
                         extra={ORDERS: [("c", 13, values_of(ORDERS, 1))]})
    decision = decide(batch, first_versions(tables=(ITEMS, ORDERS)), {}, policy("evolve"))
    assert status_of(decision) == {2: "applied"} and decision.drops == {T: ["name"]}
    decision.hold(T, "the sink cannot follow: column name is referenced by a view")
    assert status_of(decision) == {2: "held"}
    assert decision.held == {T: "the sink cannot follow: column name is referenced by a view"}
    assert decision.drops == {}
    assert list(decision.batch.tables) == ["public.orders"] and T not in decision.batch.schemas
    assert [change.table for change in decision.batch.schema_changes] == []
    [chunk] = decision.chunks
    assert chunk.rows == 2 and chunk.schema == new and (chunk.seq_from, chunk.seq_to) == (10, 12)
    assert decision.registry.in_effect() == {SUBJECT: 1, "shop.public.orders": 1}
    [note] = decision.ledger_versions()["changes"]
    assert (note["outcome"], note["reason"]) == ("held", "the sink cannot follow: column name is referenced by a view")
    decision.hold(T, "again")  # held already: nothing more
    assert len(decision.chunks) == 1 and decision.held[T].startswith("the sink cannot follow")


def test_hold_from_the_sink_under_lenient_keeps_the_sources_events() -> None:
    new = CHANGES["drop nullable column"]
    decision = decide(change_batch(new), first_versions(), {}, policy("lenient"))
    assert "name" in decision.batch.tables[T].column_names  # projected onto the sink's columns
    decision.hold(T, "cannot")
    [chunk] = decision.chunks
    assert chunk.schema == new and chunk.data is not None and "name" not in chunk.data.column_names


def test_ledger_versions_name_change_mode_outcome_and_reason() -> None:
    new = CHANGES["add NOT NULL column without default"]
    decision = decide(change_batch(new), first_versions(), {}, policy("evolve", "FULL"))
    ledger = decision.ledger_versions()
    [note] = ledger["changes"]
    assert note["change"] == "added code text NOT NULL"
    assert (note["mode"], note["level"], note["outcome"]) == ("evolve", "FULL", "held")
    assert note["reason"] == ("not FULL compatible: column 'code': the new schema cannot read data written with "
                              "version 1 (field code has no default value)")
    assert ledger["held"] == decision.held and ledger["versions"] == {SUBJECT: 1}
    json.dumps(ledger)  # stored as JSON in the ledger row


def test_the_hold_message_says_what_and_how_to_resume_with_the_impact_hooks_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate, "IMPACT_HOOKS", [lambda source, table: f"downstream of {source}/{table}: sales_dash",
                                               lambda source, table: None])
    decision = decide(change_batch(CHANGES["narrow long to int"]), first_versions(), {}, policy("evolve"))
    message = decision.held[T]
    assert message.startswith("schema change of shop.public.items (total type bigint -> integer) refused under "
                              "schema_changes mode evolve, compatibility BACKWARD: not BACKWARD compatible: column "
                              "'total'")
    assert "python -m airflow_provider_cdc schema accept shop.public.items" in message
    assert "python -m airflow_provider_cdc resnapshot shop --table public.items" in message
    assert message.endswith(". downstream of shop/public.items: sales_dash")


# --- lenient and ignore -----------------------------------------------------------------------------------------

def test_lenient_keeps_a_dropped_column_nullable_and_loads_null_into_it() -> None:
    new = CHANGES["drop NOT NULL column"]
    decision = decide(change_batch(new), first_versions(), {}, policy("lenient"))
    sink = decision.batch.schemas[T]
    assert sink.column_names == ["id", "name", "total", "score", "qty"]
    assert sink.column("qty").nullable and sink.column("qty").ordinal is None
    assert decision.drops == {}
    data = decision.batch.tables[T].to_pydict()
    assert data["qty"] == [None] and data["total"] == ["20"]
    [version] = decision.registrations
    assert version.table == new and version.sink_table == sink
    [change] = [c for c in decision.batch.schema_changes if c.table == T]
    assert change.before == ITEMS and change.after == sink


def test_lenient_turns_a_rename_into_an_added_column_and_the_kept_one_is_null_never_its_old_backfill() -> None:
    tier = Column("tier", "text", "text", nullable=False, ordinal=6, backfill="basic")  # added with a DEFAULT
    v1 = with_columns(NAME, QTY, TOTAL, SCORE, tier)
    v2 = with_columns(NAME, QTY, TOTAL, SCORE, dataclasses.replace(tier, name="level"))
    first = decide(batch_of([("r", 1, item(1, tier="gold"))], v1), [], {}, policy("lenient")).registrations
    decision = decide(change_batch(v2, before=v1, events=[("c", 11, item(2, level="silver")),
                                                          ("u", 12, item(1, level="gold"))]),
                      first, {}, policy("lenient"))
    sink = decision.batch.schemas[T]
    assert sink.column_names == ["id", "name", "qty", "total", "score", "level", "tier"]
    assert sink.column("level").nullable and sink.column("level").ordinal is None
    # "level" is new to the sink: its existing rows hold their value in "tier", not the source's backfill
    assert sink.column("level").backfill is None
    assert sink.column("tier").backfill is None and sink.column("tier").nullable
    data = decision.batch.tables[T].to_pydict()
    assert data["level"] == ["silver", "gold"] and data["tier"] == [None, None]
    assert decision.drops == {}


def test_lenient_adds_a_not_null_column_as_nullable() -> None:
    decision = decide(change_batch(CHANGES["add NOT NULL column without default"]), first_versions(), {},
                      policy("lenient"))
    assert status_of(decision) == {2: "applied"}
    assert decision.batch.schemas[T].column("code").nullable
    [change] = decision.batch.schema_changes
    assert change.after.column("code").nullable


def test_lenient_later_batches_follow_the_sink_table() -> None:
    new = CHANGES["drop nullable column"]
    versions = [*first_versions(), *decide(change_batch(new), first_versions(), {}, policy("lenient")).registrations]
    later = decide(batch_of([("u", 20, values_of(new, 2))], new), versions, {}, policy("lenient"))
    assert later.registrations == []
    assert later.batch.schemas[T].column_names == ["id", "qty", "total", "score", "name"]
    assert later.batch.tables[T].to_pydict()["name"] == [None]


def test_ignore_projects_the_data_onto_the_sinks_columns() -> None:
    new = with_columns(QTY, TOTAL, SCORE, Column("note", "text", "text", ordinal=6))  # name dropped, note added
    decision = decide(change_batch(new), first_versions(), {}, policy("ignore"))
    assert status_of(decision) == {2: "ignored"}
    assert decision.batch.schemas[T] == ITEMS
    data = decision.batch.tables[T]
    assert [name for name in data.column_names if not name.startswith("_cdc_")] == ITEMS.column_names
    assert data.to_pydict()["name"] == [None] and data.to_pydict()["qty"] == ["2"]
    assert [c for c in decision.batch.schema_changes if c.table == T] == []  # the sink's table does not change
    assert decision.drops == {}
    [version] = decision.registrations
    assert version.table == new and version.sink_table == ITEMS
    assert decision.registry.in_effect() == {SUBJECT: 2}


def test_stop_holds_any_change_of_an_existing_table_but_not_a_new_table() -> None:
    decision = decide(change_batch(CHANGES["add nullable column"]), first_versions(), {}, policy("stop"))
    assert "mode stop refuses every change of an existing table" in decision.held[T]
    new_table = batch_of([("c", 2, values_of(ORDERS, 1))], ORDERS,
                         schema_changes=[SchemaChange("public.orders", 1, ORDERS)])
    assert decide(new_table, [], {}, policy("stop")).held == {}


# --- plan_accept ------------------------------------------------------------------------------------------------

V2 = with_columns(dataclasses.replace(NAME, name="label"), TOTAL, SCORE,  # name renamed, qty dropped
                  Column("note", "text", "text", ordinal=6, backfill="n/a"), Column("memo", "text", "text", ordinal=7))


def held_state(mode: str = "stop") -> tuple[list[SchemaVersion], list[HeldChunk]]:
    """items held by the sink in batch A (v1 data at seqs 5 and 6), then v2 refused in batch B (seq 10, data 11)."""
    versions = first_versions()
    batch_a = batch_of([("c", 5, values_of(ITEMS, 5)), ("u", 6, item(1, name="one", qty="9", total="1",
                                                                      score="0.5"))], ITEMS)
    decision_a = decide(batch_a, versions, {}, policy(mode))
    decision_a.hold(T, "sink cannot follow")
    decision_b = decide(change_batch(V2), versions, dict(decision_a.held), policy(mode))
    return [*versions, *decision_a.registrations, *decision_b.registrations], [*decision_a.chunks,
                                                                               *decision_b.chunks]


@pytest.mark.parametrize(("mode", "target", "drops"), [
    ("evolve", V2, ["qty"]),
    ("stop", V2, ["qty"]),
    ("lenient", lenient_table(ITEMS, V2), []),
    ("ignore", ITEMS, []),
])
def test_plan_accept_targets_per_mode_and_marks_held_versions_accepted(mode: str, target: TableSchema,
                                                                       drops: list[str]) -> None:
    versions, chunks = held_state()
    plan = plan_accept("shop", T, versions, chunks, policy(mode))
    assert (plan.subject, plan.table) == (SUBJECT, T)
    assert plan.target == target and plan.previous == ITEMS and plan.drops == drops
    assert [(v.version, v.status, v.sink_table) for v in plan.registrations] == [(2, "accepted", target)]
    assert plan.batch is not None and plan.batch.schemas == {T: target}
    assert [(c.seq, c.before, c.after) for c in plan.batch.schema_changes] == [(5, ITEMS, target)]


def test_plan_accept_under_lenient_keeps_the_renamed_and_dropped_columns() -> None:
    plan = plan_accept("shop", T, *held_state(), policy("lenient"))
    assert plan.target.column_names == ["id", "label", "total", "score", "note", "memo", "name", "qty"]
    assert plan.batch is not None
    data = plan.batch.tables[T].to_pydict()
    assert data["name"] == ["7", "one", None] and data["label"] == [None, None, "7"]  # no rename under lenient
    assert data["qty"] == ["2", "9", None]


def test_the_accept_batch_reads_older_chunks_with_the_newest_schema() -> None:
    versions, chunks = held_state()
    plan = plan_accept("shop", T, versions, list(reversed(chunks)), policy("evolve"))
    batch = plan.batch
    assert batch is not None
    assert batch.batch_id == "shop:accept:public.items:5-11"
    assert (batch.seq_from, batch.seq_to) == (5, 11)
    assert batch.position_from == chunks[0].position_from and batch.position_to == chunks[1].position_to
    data = batch.tables[T]
    assert data["_cdc_seq"].to_pylist() == [5, 6, 11]  # chunks of several batches, in seq order
    assert [name for name in data.column_names if not name.startswith("_cdc_")] == V2.column_names
    rows = data.to_pydict()
    assert rows["label"] == ["7", "one", "7"]  # renamed: the old values
    assert rows["note"] == ["n/a", "n/a", "n"]  # added with a backfill: the backfill for older rows
    assert rows["memo"] == [None, None, "m"]  # added without one: NULL
    assert "qty" not in rows  # dropped
    assert rows["_cdc_op"] == ["c", "u", "c"]


def test_plan_accept_with_nothing_held_has_no_batch_and_without_any_version_refuses() -> None:
    versions, _ = held_state()
    plan = plan_accept("shop", T, versions, [], policy("evolve"))
    assert plan.batch is None and [v.status for v in plan.registrations] == ["accepted"]
    with pytest.raises(ValueError, match=r"shop\.public\.nothing has no registered version and nothing held"):
        plan_accept("shop", "public.nothing", versions, [], policy("evolve"))


def test_plan_accept_of_a_table_held_before_any_version_uses_its_chunks_schema() -> None:
    decision = decide(batch_of([("c", 3, values_of(ITEMS, 1))], ITEMS), [], {})
    decision.hold(T, "cannot create it")
    assert status_of(decision) == {1: "held"} and decision.registry.in_effect() == {}
    plan = plan_accept("shop", T, decision.registrations, decision.chunks, policy("evolve"))
    assert plan.previous is None and plan.target == ITEMS and plan.drops == []
    assert plan.batch is not None and plan.batch.schema_changes == []
    assert plan.batch.tables[T]["_cdc_seq"].to_pylist() == [3]


# --- HeldChunk storage ------------------------------------------------------------------------------------------

def test_a_held_chunk_round_trips_through_its_stored_form() -> None:
    _, chunks = held_state()
    chunk = chunks[1]
    assert chunk.data is not None and chunk.changes
    stored = HeldChunk.from_stored(source_id=chunk.source_id, table=chunk.table, batch_id=chunk.batch_id,
                                   seq_from=chunk.seq_from, seq_to=chunk.seq_to, meta=json.dumps(chunk.meta()),
                                   data=chunk.data_bytes())
    assert stored.data is not None and stored.data.equals(chunk.data)
    assert dataclasses.replace(stored, data=None) == dataclasses.replace(chunk, data=None)
    as_mapping = HeldChunk.from_stored(source_id="shop", table=T, batch_id="b", seq_from=1, seq_to=2,
                                       meta=chunk.meta(), data=None)
    assert as_mapping.data is None and as_mapping.rows == 0 and as_mapping.schema == chunk.schema
    assert dataclasses.replace(chunk, data=None).data_bytes() is None
    assert isinstance(chunk.data_bytes(), bytes) and pa.ipc.open_stream(chunk.data_bytes()).read_all().num_rows == 1


def test_a_tables_own_level_overrides_the_sources() -> None:
    override = SchemaPolicy(mode="evolve", compatibility="BACKWARD", tables={T: "NONE"})
    decision = decide(change_batch(CHANGES["string to int"]), first_versions(), {}, override)
    assert status_of(decision) == {2: "applied"} and decision.notes[0]["level"] == "NONE"
    stricter = SchemaPolicy(mode="evolve", compatibility="NONE", tables={T: "FORWARD"})
    held = decide(change_batch(CHANGES["widen int to long"]), first_versions(), {}, stricter)
    assert "compatibility FORWARD" in held.held[T]


@pytest.mark.parametrize("mode", ["evolve", "lenient"])
def test_a_column_dropped_and_added_again_holds_the_table_and_accept_refuses_it(mode):
    """Same name, new identity (ordinal): the source's rows now hold the new column's default, which the stream
    never carries, so following the change would keep the old values in the sink's older rows."""
    first = decide(batch_of([("c", 1, item(1, name="a", qty="1", total="1", score="1"))], ITEMS), [], {})
    again = with_columns(QTY, TOTAL, SCORE, dataclasses.replace(NAME, ordinal=6, backfill="fresh"))
    change = SchemaChange(T, 2, again, before=ITEMS)
    decision = decide(batch_of([("u", 3, item(1, name="b", qty="1", total="1", score="1"))], again,
                               schema_changes=[change]), first.registrations, {}, SchemaPolicy(mode=mode))
    assert list(decision.held) == [T]
    assert "dropped and added again" in decision.held[T] and "name" in decision.held[T]
    with pytest.raises(gate.AcceptRefusedError, match="Re-snapshot the table instead: python -m "
                                                      "airflow_provider_cdc resnapshot shop --table public.items"):
        plan_accept("shop", T, first.registrations + decision.registrations, decision.chunks, SchemaPolicy(mode=mode))


def test_ignore_does_not_hold_a_column_dropped_and_added_again():
    first = decide(batch_of([("c", 1, item(1, name="a", qty="1", total="1", score="1"))], ITEMS), [], {})
    again = with_columns(QTY, TOTAL, SCORE, dataclasses.replace(NAME, ordinal=6))
    decision = decide(batch_of([("u", 3, item(1, name="b", qty="1", total="1", score="1"))], again,
                               schema_changes=[SchemaChange(T, 2, again, before=ITEMS)]),
                      first.registrations, {}, SchemaPolicy(mode="ignore"))
    assert decision.held == {}


# --- schemas registered ahead through the REST API --------------------------------------------------------------


def edited_v1(field: str, avro_type: Any) -> dict[str, Any]:
    """Version 1's document with one field's type changed, as a user edits it before ``POST schema/register``
    (its ``cdc.*`` attributes left as they were)."""
    doc = json.loads(json.dumps(first_versions()[0].schema))
    for entry in doc["fields"]:
        if entry["name"] == field:
            entry["type"] = avro_type
    return doc


def approving(mode: str, doc: dict[str, Any], version: int = 3) -> SchemaPolicy:
    from airflow_provider_cdc.schema.avro import shape_key

    return SchemaPolicy(mode=mode, registered={SUBJECT: {shape_key(doc): version}})  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["evolve", "lenient", "ignore", "stop"])
def test_a_change_registered_ahead_is_applied_as_under_evolve_in_every_mode(mode: str) -> None:
    new = CHANGES["string to int"]  # held under BACKWARD in every mode
    decision = decide(change_batch(new), first_versions(), {}, approving(mode, edited_v1("name", ["null", "int"])))
    [note] = decision.ledger_versions()["changes"]
    assert status_of(decision) == {2: "applied"}
    assert (note["outcome"], note["registered_version"]) == ("applied", 3) and "reason" not in note
    assert decision.held == {} and decision.chunks == []
    assert decision.batch.tables[T].num_rows == 1 and decision.batch.schemas[T] == new
    [version] = [v for v in decision.registrations if v.version == 2]
    assert version.sink_table == new and version.compatibility["registered_version"] == 3
    assert version.compatibility["compatible"] is False  # what the level said is kept for the record


def test_a_registered_schema_of_another_shape_approves_nothing() -> None:
    new = CHANGES["string to int"]
    decision = decide(change_batch(new), first_versions(), {}, approving("evolve", edited_v1("name", ["null", "long"])))
    assert status_of(decision) == {2: "held"} and list(decision.held) == [T]
    lost_logical_type = edited_v1("name", ["null", "int"])
    for entry in lost_logical_type["fields"]:
        if entry["name"] == "total":
            entry["type"] = {"type": "long", "logicalType": "timestamp-micros"}
    decision = decide(change_batch(new), first_versions(), {}, approving("evolve", lost_logical_type))
    assert status_of(decision) == {2: "held"}


def test_a_column_dropped_and_added_again_stays_held_although_registered() -> None:
    from airflow_provider_cdc.schema.avro import avro_schema

    again = with_columns(QTY, TOTAL, SCORE, dataclasses.replace(NAME, ordinal=6))
    doc = avro_schema(again, source_id="shop", previous=ITEMS)
    decision = decide(change_batch(again), first_versions(), {}, approving("evolve", doc))
    assert status_of(decision) == {2: "held"}
    assert "re-snapshot" in decision.held[T]
