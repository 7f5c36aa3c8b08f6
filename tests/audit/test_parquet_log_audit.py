"""The audit trail of the Parquet change log (``format: parquet``): a batch's entries live in its manifest, commit
with it, and outlive a whole re-snapshot; other entries are one file each, written once."""

from __future__ import annotations

from cdc_testing import batch_of, item

from airflow_provider_cdc.connectors.audit import audit_entry, committed_entry
from airflow_provider_cdc.connectors.delta.options import DeltaSinkOptions
from airflow_provider_cdc.connectors.delta.parquet_log import ParquetChangeLogSink
from airflow_provider_cdc.tables import Column, TableSchema

ITEMS = TableSchema("public", "items", (
    Column("id", "bigint", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("name", "text", "text", ordinal=2),
))


def test_the_change_log_keeps_its_trail_in_the_manifests_and_beside_them(tmp_path):
    sink = ParquetChangeLogSink(f"file://{tmp_path}", sink_id="log", options=DeltaSinkOptions(format="parquet"))
    batch = batch_of([("c", 1, item(1, name="a")), ("d", 2, item(1))], ITEMS)
    assert sink.apply(batch, run_id="manual__1").applied
    assert not sink.apply(batch).applied  # a replay writes nothing more
    actions = [entry.action for entry in sink.audit_entries("shop")]
    assert sorted(actions) == ["batch_captured", "batch_loaded", "schema_registered"]
    committed = committed_entry("shop", batch.batch_id, run_id="manual__1", position=batch.position_to,
                                position_stored=True)
    assert sink.record_audit([committed]) == 1 and sink.record_audit([committed]) == 0
    assert sink.audit_entries("shop")[0] == committed
    # A whole re-snapshot deletes the manifests; their entries stay.
    sink.forget_source("shop")
    fresh = ParquetChangeLogSink(f"file://{tmp_path}", sink_id="log", options=DeltaSinkOptions(format="parquet"))
    assert not fresh.has_batch(batch.batch_id)
    assert sorted(e.action for e in fresh.audit_entries("shop")) == sorted([*actions, "batch_committed"])
    other = audit_entry("pipeline_started", "other", actor="admin")
    fresh.record_audit([other])
    assert fresh.audit_entries("other") == [other] and fresh.audit_entries(action="pipeline_started") == [other]
