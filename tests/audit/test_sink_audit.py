"""The audit trail in every sink (PostgreSQL, Delta, MariaDB, MongoDB), on real servers: a batch's rows commit with
the batch, a crash loses none and duplicates none, a replay writes nothing, ``batch_committed`` is written once, and
``schema accept`` and ``quarantine replay`` record who did them."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import pytest
from cdc_testing import batch_of, item, quarantined, unique_id
from contract.pairs import SinkUnderTest, delta_sink, mariadb_sink, mongodb_sink, postgres_sink
from contract.test_contract import MemoryPositions

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.connectors.audit import AuditEntry
from airflow_provider_cdc.quarantine_commands import plan_replay, replay
from airflow_provider_cdc.schema import SchemaPolicy
from airflow_provider_cdc.schema_commands import SubjectRef, accept_subject
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema

pytestmark = pytest.mark.timeout(300)

ITEMS = TableSchema("public", "items", (
    Column("id", "bigint", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("name", "text", "text", ordinal=2),
))
WIDER = dataclasses.replace(ITEMS, columns=(*ITEMS.columns, Column("note", "text", "text", ordinal=3)))
STAGES = {"transform": {"rules": {"mask_email": "h1"}},
          "validate": {"suites": {"items_checks": "s1"}, "metrics": {"public.items": {"evaluated": 3, "failed": 0}}}}


@pytest.fixture(params=["postgresql", "delta", "mariadb", "mongodb"])
def under_test(request, pg_database_factory, tmp_path) -> SinkUnderTest:
    if request.param == "postgresql":
        return postgres_sink(pg_database_factory("audit_sink"))
    if request.param == "mongodb":
        return mongodb_sink(request.getfixturevalue("mongo_server").url(""))
    if request.param == "mariadb":
        return mariadb_sink(request.getfixturevalue("mariadb_database_factory")("audit_sink"))
    return delta_sink(tmp_path / "lake")


@pytest.fixture
def source_id() -> str:
    return unique_id("audit")


@pytest.fixture
def sink(under_test, source_id):
    schema = f"t_{source_id}"
    made = under_test.make(schema, "hard")
    yield made
    made.close()
    if under_test.drop is not None:
        under_test.drop(schema)


def batch(source_id: str, events, schema: TableSchema = ITEMS, **kwargs):
    return batch_of(events, schema, source_id=source_id, **kwargs)


def facts(batch) -> dict[str, Any]:
    """What the pipeline notes at capture and after each stage (pipeline.captured_facts and its stage facts)."""
    from airflow_provider_cdc.connectors.audit import stage_facts

    return {"capture": {**stage_facts(batch.change_count, batch.counts()), "run_id": "manual__1"},
            "transform": stage_facts(batch.change_count, batch.counts()),
            "validate": stage_facts(batch.change_count, batch.counts())}


def load(sink, made, *, policy: SchemaPolicy | None = None) -> dict[str, Any]:
    return pipeline.load_batch(made, sink, run_id="manual__1", stage_versions=STAGES, policy=policy,
                               facts=facts(made))


def actions(entries: list[AuditEntry]) -> collections.Counter:
    return collections.Counter(entry.action for entry in entries)


class LsnSource:
    """The part of a Source that the commit step uses, for a batch built by hand (the sink under test is real)."""

    def __init__(self, source_id: str) -> None:
        self.source_id = source_id
        self.acknowledged: list[dict] = []

    def position_order(self, position: dict) -> tuple:
        return (int(position["lsn"].split("/")[1], 16),)

    def acknowledge(self, position: dict) -> None:
        self.acknowledged.append(position)


def test_a_batch_writes_its_audit_rows_with_its_counts(sink, source_id):
    load(sink, batch(source_id, [("c", 1, item(1, name="a")), ("c", 2, item(2, name="b")),
                                 ("c", 3, item(3, name="c"))]))
    second = batch(source_id, [("u", 4, item(1, name="a2")), ("d", 5, item(2)), ("c", 6, item(4, name="d"))])
    load(sink, second)

    entries = sink.audit_entries(source_id, batch_id=second.batch_id)
    assert actions(entries) == {"batch_captured": 1, "batch_transformed": 1, "batch_validated": 1,
                                "batch_loaded": 1}
    by_action = {entry.action: entry for entry in entries}
    assert by_action["batch_captured"].details["counts"] == {"public.items": {"u": 1, "d": 1, "c": 1}}
    assert by_action["batch_captured"].details["changes"] == 3
    loaded = by_action["batch_loaded"].details
    assert (loaded["rows_upserted"], loaded["rows_deleted"]) == (2, 1)
    assert loaded["counts"] == {"public.items": {"u": 1, "d": 1, "c": 1}}
    assert by_action["batch_transformed"].details["versions"] == {"rules": {"mask_email": "h1"}}
    assert by_action["batch_validated"].details["versions"]["metrics"]["public.items"]["evaluated"] == 3
    assert {(entry.actor, entry.run_id) for entry in entries} == {("airflow:cdc_" + source_id, "manual__1")}
    # The first batch registered the table's schema and, against no batch before it, the rules.
    first = sink.audit_entries(source_id, batch_id=f"{source_id}:1-3")
    assert actions(first)["schema_registered"] == 1 and actions(first)["rules_changed"] == 2
    (registered,) = [entry for entry in first if entry.action == "schema_registered"]
    assert registered.details["subject"] == f"{source_id}.public.items" and registered.details["version"] == 1
    # Newest first, and the filters apply.
    everything = sink.audit_entries(source_id)
    assert everything[0].batch_id == second.batch_id and len(everything) == len(entries) + len(first)
    assert [e.batch_id for e in sink.audit_entries(source_id, action="batch_loaded")] == [
        second.batch_id, f"{source_id}:1-3"]
    assert len(sink.audit_entries(source_id, limit=2)) == 2
    assert sink.audit_entries(source_id, since=everything[0].at) == [
        e for e in everything if e.at >= everything[0].at]
    assert sink.audit_entries("some_other_source") == []


def test_a_replayed_batch_writes_no_second_set(sink, source_id):
    made = batch(source_id, [("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))])
    assert load(sink, made)["applied"] is True
    before = sink.audit_entries(source_id)
    assert load(sink, made)["applied"] is False
    assert sink.audit_entries(source_id) == before


def crash_after_audit_insert(under_test: SinkUnderTest, monkeypatch) -> None:
    """Raise right after the sink wrote the batch's audit rows, before the batch commits."""
    if under_test.name == "postgresql":
        from airflow_provider_cdc.connectors.postgres.sink import PgSink as owner
        name = "_insert_audit"
    elif under_test.name == "mariadb":
        from airflow_provider_cdc.connectors.mysql.sink import MySqlSink as owner  # type: ignore[assignment]
        name = "_insert_audit"
    elif under_test.name == "mongodb":
        from airflow_provider_cdc.connectors.mongodb.sink_storage import Bookkeeping as owner  # type: ignore
        name = "insert_audit"
    else:
        from airflow_provider_cdc.connectors.delta.ledger_table import DeltaAudit as owner  # type: ignore
        name = "append_batch"
    original = getattr(owner, name)

    def crash(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise RuntimeError("killed after the audit insert, before the commit")

    monkeypatch.setattr(owner, name, crash)


def test_a_crash_in_the_load_loses_nothing_and_the_replay_writes_one_set(under_test, sink, source_id,
                                                                         monkeypatch):
    made = batch(source_id, [("c", 1, item(1, name="a")), ("u", 2, item(1, name="b")), ("c", 3, item(2))])
    crash_after_audit_insert(under_test, monkeypatch)
    with pytest.raises(Exception, match="killed after the audit insert"):
        load(sink, made)
    monkeypatch.undo()
    assert not sink.has_batch(made.batch_id)
    left = sink.audit_entries(source_id)
    if under_test.name == "delta":
        # No transaction across Delta tables: the rows are there, and the replay must not add them again.
        assert actions(left)["batch_loaded"] == 1
    else:
        assert left == []  # rolled back with the batch
    assert load(sink, made)["applied"] is True
    assert sink.has_batch(made.batch_id)
    after = sink.audit_entries(source_id)
    assert actions(after) == {"batch_captured": 1, "batch_transformed": 1, "batch_validated": 1,
                              "rules_changed": 2, "schema_registered": 1, "batch_loaded": 1}


def test_committed_is_written_once_on_a_retried_commit(sink, source_id):
    made = batch(source_id, [("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))])
    load(sink, made)
    source, positions = LsnSource(source_id), MemoryPositions()
    for _ in range(2):  # the commit task retried after it stored the position
        pipeline.commit_position(source, sink, positions, batch_id=made.batch_id, position_to=made.position_to,
                                 needs_ledger=True, run_id="manual__1")
    (committed,) = sink.audit_entries(source_id, action="batch_committed")
    assert committed.batch_id == made.batch_id and committed.actor == f"airflow:cdc_{source_id}"
    assert committed.details["position"] == made.position_to and committed.run_id == "manual__1"
    assert sink.audit_entries(source_id)[0].action == "batch_committed"  # the newest


def test_schema_accept_records_who_accepted(sink, source_id):
    stop = SchemaPolicy(mode="stop")
    load(sink, batch(source_id, [("c", 1, item(1, name="a"))]), policy=stop)
    held = load(sink, batch(source_id, [("c", 3, item(2, name="b", note="n"))], WIDER,
                            schema_changes=[SchemaChange("public.items", 2, WIDER, ITEMS)]), policy=stop)
    assert list(held["newly_held"]) == ["public.items"]
    result = accept_subject(sink, SubjectRef(source_id, "public.items"), stop, actor="alice")
    (accepted,) = sink.audit_entries(source_id, action="schema_accepted")
    assert (accepted.actor, accepted.batch_id) == ("alice", result.batch_id)
    assert accepted.details["accepted_versions"] == result.accepted_versions == [2]
    assert accepted.details["table"] == "public.items"
    # The held version was registered with the batch that held it.
    registered = [e.details for e in sink.audit_entries(source_id, action="schema_registered")]
    assert {(d["version"], d["status"]) for d in registered} == {(1, "applied"), (2, "held")}


def test_quarantine_replay_records_who_replayed(sink, source_id, monkeypatch):
    made = batch(source_id, [("c", 1, item(1, name="a")), ("c", 2, item(2, name="b")), ("c", 3, item(3))])
    load(sink, quarantined(made, 2, table="public.items"))
    monkeypatch.setenv("CDC_ACTOR", "bob")
    plan = plan_replay(sink, source_id)
    outcome = replay(sink, plan, [])
    assert outcome.applied and outcome.replayed == 1
    (replayed,) = sink.audit_entries(source_id, action="quarantine_replayed")
    assert (replayed.actor, replayed.batch_id) == ("bob", outcome.batch_id)
    assert replayed.details["selected"] == 1 and replayed.details["upserted"] == 1
    # Run again: nothing is waiting, nothing is recorded twice.
    replay(sink, plan_replay(sink, source_id), [])
    assert len(sink.audit_entries(source_id, action="quarantine_replayed")) == 1
