"""A fused loop captures each batch while the one before it loads (``pipeline.CaptureAhead``), on real PostgreSQL
servers: the sink ends equal to the source, batches keep their size although the slot is acknowledged only after the
next batch was read, and an early batch is used only where the committed position says it starts."""

from __future__ import annotations

import logging
import threading

import psycopg
import pytest
from cdc_testing import assert_ledger_consistent, assert_same_rows, create_shop, unique_id, write_config
from test_pipeline import MemoryPositions

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.errors import PositionLostError, SinkError
from airflow_provider_cdc.hooks.cdc import CdcHook

TAKEN = "was captured while the previous batch loaded"


@pytest.fixture(params=["memory", "variables"])
def looped(request, pg_database_factory, tmp_path):
    """users snapshotted into the sink (no capture ahead while a snapshot is read), then a backlog of 230 changes
    in one-row transactions."""
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=120, orders=0)
    source_id = unique_id("ahead")
    write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                 tables=["users"], batch_size=50)
    hook = CdcHook(source_id, str(tmp_path / "config"))
    source, sink = hook.get_source(), hook.get_sink()
    # Variables: as the operator keeps positions; the early batch is used only if the stored document, read back,
    # is the position it started at.
    positions = MemoryPositions() if request.param == "memory" else hook.positions
    while True:
        summary = pipeline.run_fused(source, sink, positions, max_changes=50)
        if not summary["captured"] and "snapshot" not in positions.get(source_id):
            break
    with psycopg.connect(source_url, autocommit=True) as conn:
        for i in range(1, 121):
            conn.execute("UPDATE users SET name = %s WHERE id = %s", (f"changed {i}", i))
        for i in range(101, 121):
            conn.execute("DELETE FROM users WHERE id = %s", (i,))
        for i in range(1000, 1090):
            conn.execute("INSERT INTO users (id, email, name, balance) VALUES (%s, %s, 'new', 1)",
                         (i, f"u{i}@example.com"))
    try:
        yield source_id, source_url, sink_url, source, sink, positions
    finally:
        source.close()
        sink.close()
        if request.param == "variables":
            positions.delete(source_id)


def drain_with_ahead(source, sink, positions, ahead, limit: int = 20) -> list[dict]:
    """Fused runs until one captures nothing, then the last acknowledgement, as the operator's loop ends."""
    summaries = []
    for _ in range(limit):
        summaries.append(pipeline.run_fused(source, sink, positions, max_changes=50, ahead=ahead))
        if not summaries[-1]["captured"]:
            ahead.settle()
            return summaries
    raise AssertionError(f"not drained in {limit} runs")


def confirmed_lsn(url: str, slot: str) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                            (slot,)).fetchone()[0]


def test_a_backlog_drains_with_each_batch_captured_while_the_one_before_loads(looped, caplog):
    source_id, source_url, sink_url, source, sink, positions = looped
    ahead = pipeline.CaptureAhead(source, 50)
    caplog.set_level(logging.INFO, logger="airflow_provider_cdc.pipeline")
    summaries = drain_with_ahead(source, sink, positions, ahead)

    # 230 one-row transactions. The slot was acknowledged only after each next batch had been read, and every batch
    # is still as large as the first (50 messages: Begin, change, Commit), not that plus the messages of the batch
    # before it, which its peek read again.
    sizes = [s["captured"] for s in summaries]
    assert sum(sizes) == 230 and sizes[-1] == 0 and 0 < sizes[-2] <= sizes[0] <= 50
    assert sizes[:-2] == [sizes[0]] * (len(sizes) - 2), sizes
    # Every batch after the first was read while the one before it loaded.
    taken = [r.getMessage() for r in caplog.records if TAKEN in r.getMessage()]
    assert len(taken) == len(summaries) - 1, taken
    assert all(s["batch_id"] in message for s, message in zip(summaries[1:], taken))
    assert_same_rows(source_url, sink_url, "users")
    assert_ledger_consistent(sink_url, source_id)
    assert confirmed_lsn(source_url, source.slot_name) == positions.get(source_id)["lsn"]  # acknowledged, at last
    assert not [t for t in threading.enumerate() if t.name.startswith("cdc-capture-ahead")]


def test_a_batch_captured_ahead_is_used_only_from_the_position_it_started_at(looped, caplog):
    source_id, source_url, sink_url, source, sink, positions = looped
    ahead = pipeline.CaptureAhead(source, 50)
    caplog.set_level(logging.INFO, logger="airflow_provider_cdc.pipeline")
    stored = positions.get(source_id)
    ahead.start(stored)
    assert ahead.take({**stored, "seq": stored["seq"] + 1}) is None  # another run committed meanwhile
    assert "the position moved since the capture ahead started" in caplog.text
    ahead.start(stored)
    early = ahead.take(stored)
    assert early is not None and 0 < early.change_count <= 50 and early.position_from == stored
    assert ahead.take(stored) is None  # taken once

    # The first run of a loop whose capture ahead was dropped captures again: nothing is lost or doubled.
    ahead.start({**stored, "seq": stored["seq"] + 1})
    summaries = drain_with_ahead(source, sink, positions, ahead)
    assert sum(s["captured"] for s in summaries) == 230
    assert_same_rows(source_url, sink_url, "users")
    assert_ledger_consistent(sink_url, source_id)


def test_a_load_that_fails_while_the_next_batch_is_read_replays_from_the_stored_position(looped, monkeypatch):
    source_id, source_url, sink_url, source, sink, positions = looped
    ahead = pipeline.CaptureAhead(source, 50)
    real_apply = sink.apply
    calls = []

    def apply_failing_the_second(batch, **kwargs):
        calls.append(batch.batch_id)
        if len(calls) == 2:
            raise SinkError(sink.sink_id, "the sink went away", batch_id=batch.batch_id)
        return real_apply(batch, **kwargs)

    monkeypatch.setattr(sink, "apply", apply_failing_the_second)
    first = pipeline.run_fused(source, sink, positions, max_changes=50, ahead=ahead)["captured"]
    stored = positions.get(source_id)
    with pytest.raises(SinkError, match="the sink went away"):
        pipeline.run_fused(source, sink, positions, max_changes=50, ahead=ahead)
    # The capture ahead of the third batch ended with the run; the position is the first batch's.
    assert not [t for t in threading.enumerate() if t.name.startswith("cdc-capture-ahead")]
    assert positions.get(source_id) == stored

    summaries = drain_with_ahead(source, sink, positions, pipeline.CaptureAhead(source, 50))
    assert sum(s["captured"] for s in summaries) == 230 - first
    assert_same_rows(source_url, sink_url, "users")
    assert_ledger_consistent(sink_url, source_id)


def test_a_capture_ahead_that_fails_is_captured_again_in_the_run(looped, monkeypatch, caplog):
    source_id, source_url, sink_url, source, sink, positions = looped
    real_capture = source.capture
    failed = []

    def capture_failing_once_in_the_background(position, max_changes):
        if threading.current_thread().name.startswith("cdc-capture-ahead") and not failed:
            failed.append(position)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real_capture(position, max_changes)

    monkeypatch.setattr(source, "capture", capture_failing_once_in_the_background)
    caplog.set_level(logging.INFO, logger="airflow_provider_cdc.pipeline")
    summaries = drain_with_ahead(source, sink, positions, pipeline.CaptureAhead(source, 50))
    assert failed and "the capture ahead failed (OperationalError: server closed the connection" in caplog.text
    assert sum(s["captured"] for s in summaries) == 230
    assert_same_rows(source_url, sink_url, "users")
    assert_ledger_consistent(sink_url, source_id)


def test_each_acknowledgement_waits_for_the_next_capture_ahead_and_comes_after_the_stored_position(looped,
                                                                                                   monkeypatch):
    source_id, source_url, sink_url, source, sink, positions = looped
    monkeypatch.setattr(pipeline.CaptureAhead, "READ_AHEAD_ROWS", 50)  # no more than a batch: no read-ahead
    ahead = pipeline.CaptureAhead(source, 50)
    before = confirmed_lsn(source_url, source.slot_name)
    first = pipeline.run_fused(source, sink, positions, max_changes=50, ahead=ahead)
    # Stored, not yet acknowledged: the slot moves when the thread reads the next batch.
    stored_first = positions.get(source_id)
    assert first["captured"] and stored_first["lsn"] != before
    assert confirmed_lsn(source_url, source.slot_name) == before
    second = pipeline.run_fused(source, sink, positions, max_changes=50, ahead=ahead)
    assert second["captured"] and confirmed_lsn(source_url, source.slot_name) == stored_first["lsn"]
    ahead.settle()
    assert confirmed_lsn(source_url, source.slot_name) == positions.get(source_id)["lsn"]


def test_a_source_that_reads_ahead_is_acknowledged_once_per_read_ahead_and_at_the_end(looped, monkeypatch):
    source_id, source_url, sink_url, source, sink, positions = looped
    # Two batches per read-ahead: one peek reads both, and one slot advance covers both.
    monkeypatch.setattr(pipeline.CaptureAhead, "READ_AHEAD_ROWS", 100)
    peeks = []
    real_peek = source._peek_messages
    monkeypatch.setattr(source, "_peek_messages", lambda *args: peeks.append(args) or real_peek(*args))
    ahead = pipeline.CaptureAhead(source, 50)
    before = confirmed_lsn(source_url, source.slot_name)
    stored = []
    for _ in range(3):
        assert pipeline.run_fused(source, sink, positions, max_changes=50, ahead=ahead)["captured"]
        stored.append(positions.get(source_id)["lsn"])
    # Run 2 deferred run 1's acknowledgement; run 3 acknowledged run 2's position, which covers run 1's.
    assert confirmed_lsn(source_url, source.slot_name) == stored[1] != before
    summaries = drain_with_ahead(source, sink, positions, ahead)
    assert confirmed_lsn(source_url, source.slot_name) == positions.get(source_id)["lsn"]  # settled at the end
    batches = 3 + sum(1 for s in summaries if s["captured"])
    assert len(peeks) <= batches // 2 + 2, f"{len(peeks)} peeks for {batches} batches"
    assert_same_rows(source_url, sink_url, "users")
    assert_ledger_consistent(sink_url, source_id)


def test_a_slot_dropped_during_a_loop_is_a_position_lost_error_naming_resnapshot(looped):
    source_id, source_url, sink_url, source, sink, positions = looped
    ahead = pipeline.CaptureAhead(source, 50)
    pipeline.run_fused(source, sink, positions, max_changes=50, ahead=ahead)  # the next batch is read ahead
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (source.slot_name,))
    # The batch read before the slot went may still load (its changes were read faithfully); the next read stops.
    with pytest.raises(PositionLostError, match="resnapshot"):
        for _ in range(2):
            pipeline.run_fused(source, sink, positions, max_changes=50, ahead=ahead)
    assert_ledger_consistent(sink_url, source_id)
    with psycopg.connect(sink_url) as conn:
        (high_water,) = conn.execute("SELECT max(seq_to) FROM _cdc_ledger WHERE source_id = %s",
                                     (source_id,)).fetchone()
    assert positions.get(source_id)["seq"] == high_water  # the position never passed what the sink committed


def test_a_source_connection_lost_while_the_next_batch_is_read_is_read_again(looped, monkeypatch, caplog):
    source_id, source_url, sink_url, source, sink, positions = looped
    ahead = pipeline.CaptureAhead(source, 50)
    real_apply = sink.apply

    def apply_after_killing_the_source_connection(batch, **kwargs):
        # The server ends the source's session (a restart, a failover) while the load runs and the next batch is
        # read: that read fails, and the run reads the batch again on a new connection.
        with psycopg.connect(source_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                         " AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
        return real_apply(batch, **kwargs)

    pipeline.run_fused(source, sink, positions, max_changes=50, ahead=ahead)
    monkeypatch.setattr(sink, "apply", apply_after_killing_the_source_connection)
    caplog.set_level(logging.INFO, logger="airflow_provider_cdc.pipeline")
    pipeline.run_fused(source, sink, positions, max_changes=50, ahead=ahead)
    monkeypatch.setattr(sink, "apply", real_apply)
    summaries = drain_with_ahead(source, sink, positions, ahead)
    assert "the capture ahead failed (SourceError" in caplog.text and "capturing again" in caplog.text
    assert summaries[-1]["captured"] == 0
    assert_same_rows(source_url, sink_url, "users")
    assert_ledger_consistent(sink_url, source_id)
