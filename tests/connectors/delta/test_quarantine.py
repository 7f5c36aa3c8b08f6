"""DeltaSink keeps a batch's quarantined changes in ``<root>/_cdc_quarantine``, before the batch's ledger row and
idempotent by ``(source_id, seq, stage)``: stored once, nothing added by a replay, neither lost nor doubled by a crash
on either side of that write, nothing written by a batch refused before its first commit."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from cdc_testing import quarantined
from deltalake import DeltaTable

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.connectors.delta.ledger_table import DeltaLedger
from airflow_provider_cdc.connectors.delta.quarantine_table import QUARANTINE_SCHEMA, QuarantineTable
from airflow_provider_cdc.connectors.delta.sink import DeltaSink
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.quarantine import quarantine_rows
from airflow_provider_cdc.tables import Column, TableSchema

from .helpers import batch_of, item, rows

ITEMS = TableSchema("public", "items", (Column("id", "bigint", "integer", primary_key=True),
                                        Column("name", "text", "text")), dialect="postgresql")
UTC = dt.timezone.utc


@pytest.fixture
def batch() -> ChangeBatch:
    return quarantined(batch_of([("c", s, item(s, name=f"n{s}")) for s in range(1, 6)], ITEMS), 2, 4)


@pytest.fixture
def sink(tmp_path) -> DeltaSink:
    return DeltaSink(str(tmp_path / "lake"), sink_id="lake")


def stored(sink: DeltaSink) -> list[dict[str, Any]]:
    uri = f"{sink.root}/_cdc_quarantine"
    if not DeltaTable.is_deltatable(uri):
        return []
    return sorted(DeltaTable(uri).to_pyarrow_table().to_pylist(), key=lambda row: (row["seq"], row["stage"]))


def test_the_sink_declares_it_keeps_a_quarantine(sink):
    assert sink.capabilities.quarantine and not sink.capabilities.transactional


def test_the_quarantine_is_stored_with_the_batch_once(sink, batch):
    first = pipeline.load_batch(batch, sink)
    again = pipeline.load_batch(batch, sink)
    assert first["applied"] and first["quarantined"] == 2 and not again["applied"]
    assert rows(sink.table_uri("items"), ("id",)) == [(1,), (3,), (5,)]
    table = DeltaTable(f"{sink.root}/_cdc_quarantine").to_pyarrow_table()
    assert table.schema.equals(QUARANTINE_SCHEMA)
    found = stored(sink)
    assert [row["seq"] for row in found] == [2, 4]
    row = found[0]
    assert {name: row[name] for name in ("source_id", "batch_id", "source_table", "stage", "rule_id", "suite",
                                         "field", "reason", "op", "replayed_batch_id")} == {
        "source_id": "shop", "batch_id": batch.batch_id, "source_table": "public.items", "stage": "transform",
        "rule_id": "total", "suite": None, "field": "total", "reason": "division by zero in row 2", "op": "c",
        "replayed_batch_id": None}
    assert json.loads(row["row"]) == {"id": "2", "name": "n2 ü"}  # JSON text
    assert row["event_time"] == dt.datetime(2024, 5, 1, 8, 0, 0, 2000, tzinfo=UTC)
    now = dt.datetime.now(UTC)
    assert now - dt.timedelta(minutes=5) < row["quarantined_at"] <= now
    assert [r["row"] for r in QuarantineTable(sink.root, {}).rows("shop")] == [
        {"id": "2", "name": "n2 ü"}, {"id": "4", "name": "n4 ü"}]


def test_a_crash_between_the_quarantine_and_the_ledger_replays_without_doubling(sink, batch, monkeypatch):
    def crash(self: DeltaLedger, row: Any, **kwargs: Any) -> None:
        raise RuntimeError("the process died before the ledger row (simulated)")

    monkeypatch.setattr(DeltaLedger, "append_row", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        pipeline.load_batch(batch, sink)
    before = stored(sink)
    assert [row["seq"] for row in before] == [2, 4] and not sink.has_batch(batch.batch_id)
    monkeypatch.undo()
    assert pipeline.load_batch(batch, sink)["applied"]
    assert stored(sink) == before  # the same rows, their first quarantined_at kept
    assert sink.has_batch(batch.batch_id) and rows(sink.table_uri("items"), ("id",)) == [(1,), (3,), (5,)]


def test_a_crash_before_the_quarantine_is_written_loses_nothing(sink, batch, monkeypatch):
    def crash(self: QuarantineTable, records: Any) -> int:
        raise RuntimeError("the process died before the quarantine (simulated)")

    monkeypatch.setattr(QuarantineTable, "insert", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        pipeline.load_batch(batch, sink)
    assert stored(sink) == [] and not sink.has_batch(batch.batch_id)
    monkeypatch.undo()
    assert pipeline.load_batch(batch, sink)["applied"]
    assert [row["seq"] for row in stored(sink)] == [2, 4]


def test_a_batch_refused_before_its_first_commit_keeps_no_quarantine_row(sink, batch):
    bad = quarantined(batch_of([("c", 1, item(1)), ("c", 2, item(2)), ("c", 3, {"id": "three"})], ITEMS), 2)
    with pytest.raises(SinkError, match="value 'three' cannot be stored .* nothing of this batch was written"):
        pipeline.load_batch(bad, sink)
    assert stored(sink) == [] and not sink.has_batch(bad.batch_id)


def test_a_change_already_quarantined_keeps_its_first_row(sink, batch):
    pipeline.load_batch(batch, sink)
    overlap = quarantined(batch_of([("c", s, item(s)) for s in range(4, 8)], ITEMS), 4, 6)
    assert pipeline.load_batch(overlap, sink)["applied"]
    assert [(row["seq"], row["batch_id"]) for row in stored(sink)] == [
        (2, batch.batch_id), (4, batch.batch_id), (6, overlap.batch_id)]
    validated = quarantined(batch_of([("c", s, item(s)) for s in range(8, 10)], ITEMS), 8, stage="validate")
    first = validated.quarantine.to_pylist()[0]
    pipeline.load_batch(dataclasses.replace(validated, quarantine=quarantine_rows(
        [first, {**first, "stage": "transform"}, {**first, "reason": "again"}])), sink)
    assert [(row["stage"], row["reason"]) for row in stored(sink) if row["seq"] == 8] == [
        ("transform", "division by zero in row 8"), ("validate", "division by zero in row 8")]


def test_a_batch_of_only_quarantined_changes_is_loaded(sink):
    only = quarantined(batch_of([("c", 7, item(7))], ITEMS), 7)
    result = pipeline.load_batch(only, sink)
    assert result["applied"] and result["quarantined"] == 1 and result["upserted"] == 0
    assert [row["seq"] for row in stored(sink)] == [7] and sink.has_batch(only.batch_id)
