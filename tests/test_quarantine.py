"""Quarantined changes travel with their batch (staged beside its tables) and are stored by the sink in
``_cdc_quarantine`` in the batch's own transaction: once, with the data, or not at all."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest
from cdc_testing import batch_of, item, quarantined

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.connectors.postgres.sink import CAPABILITIES, PgSink
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.quarantine import BATCH_SCHEMA, merge
from airflow_provider_cdc.staging import BatchStore
from airflow_provider_cdc.tables import Column, TableSchema

ITEMS = TableSchema("public", "items", (Column("id", "bigint", "integer", primary_key=True),
                                        Column("name", "text", "text")), dialect="postgresql")


@pytest.fixture
def batch() -> ChangeBatch:
    return quarantined(batch_of([("c", s, item(s, name=f"n{s}")) for s in range(1, 6)], ITEMS), 2, 4)


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_the_quarantine_is_staged_with_its_batch(tmp_path, batch, fmt):
    uri = BatchStore(tmp_path.as_uri(), fmt=fmt).write(batch, stage="transform")
    manifest = BatchStore.read_manifest(uri)
    assert manifest["quarantined"] == 2
    again = BatchStore.read(uri)
    assert again.quarantine is not None and again.quarantine.schema == BATCH_SCHEMA
    assert again.quarantine.equals(batch.quarantine)
    assert again.change_count == 3 and not again.is_empty


def test_a_batch_with_only_quarantined_changes_is_loaded(batch):
    only = quarantined(batch_of([("c", 7, item(7))], ITEMS), 7)
    assert only.change_count == 0 and only.quarantined_count == 1 and not only.is_empty
    assert merge(None, None) is None and merge(only.quarantine, batch.quarantine).num_rows == 3


def test_the_postgresql_sink_stores_the_quarantine_with_the_batch_once(pg_database, batch):
    sink = PgSink(pg_database, sink_id="warehouse")
    try:
        first = pipeline.load_batch(batch, sink)
        again = pipeline.load_batch(batch, sink)
    finally:
        sink.close()
    assert first["applied"] and first["quarantined"] == 2 and not again["applied"]
    with psycopg.connect(pg_database) as conn:
        rows = conn.execute("SELECT source_id, batch_id, source_table, stage, rule_id, field, reason, row, op, seq,"
                            " event_time IS NOT NULL, replayed_batch_id FROM public._cdc_quarantine ORDER BY seq"
                            ).fetchall()
        loaded = conn.execute("SELECT id FROM public.items ORDER BY id").fetchall()
    assert [r[9] for r in rows] == [2, 4] and loaded == [(1,), (3,), (5,)]
    assert rows[0][:8] == ("shop", batch.batch_id, "public.items", "transform", "total", "total",
                           "division by zero in row 2", {"id": "2", "name": "n2 ü"})
    assert rows[0][10] is True and rows[0][11] is None


def test_a_failed_apply_keeps_no_quarantine_row(pg_database, batch, monkeypatch):
    sink = PgSink(pg_database, sink_id="warehouse")

    def broken(*args, **kwargs):
        raise psycopg.OperationalError("connection lost")

    monkeypatch.setattr(sink, "_insert_ledger", broken)
    try:
        with pytest.raises(SinkError, match="nothing was written"):
            pipeline.load_batch(batch, sink)
    finally:
        sink.close()
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT to_regclass('public._cdc_quarantine')").fetchone()[0] is None


def test_a_sink_that_cannot_keep_a_quarantine_refuses_the_batch(pg_database, batch):
    sink = PgSink(pg_database, sink_id="warehouse")
    sink.capabilities = dataclasses.replace(CAPABILITIES, quarantine=False)  # a sink without the capability
    try:
        with pytest.raises(SinkError, match="2 changes of batch .* were quarantined.*cannot keep quarantined changes"):
            pipeline.load_batch(batch, sink)
        assert not sink.has_batch(batch.batch_id)
    finally:
        sink.close()
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT to_regclass('public.items'), to_regclass('public._cdc_quarantine')").fetchone() == (
            None, None)


def test_an_overlapping_batch_adds_nothing_and_a_resnapshot_keeps_its_own_rows(pg_database, batch):
    sink = PgSink(pg_database, sink_id="warehouse")
    try:
        pipeline.load_batch(batch, sink)
        # The same range captured again under another id (a re-run that read further): a replay, left out.
        overlap = dataclasses.replace(batch, batch_id=batch.batch_id + "+more")
        pipeline.load_batch(overlap, sink)
        # A whole re-snapshot starts seq again: the same seq numbers are new changes and are kept.
        sink.forget_source("shop")
        again = dataclasses.replace(batch, batch_id="shop:resnapshot")
        pipeline.load_batch(again, sink)
    finally:
        sink.close()
    with psycopg.connect(pg_database) as conn:
        rows = conn.execute("SELECT batch_id, seq FROM public._cdc_quarantine ORDER BY batch_id, seq").fetchall()
    assert rows == sorted([(batch.batch_id, 2), (batch.batch_id, 4), ("shop:resnapshot", 2), ("shop:resnapshot", 4)])
