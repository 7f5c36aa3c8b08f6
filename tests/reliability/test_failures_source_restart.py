"""The source database restarts while a capture reads from it (issue 16, item 1).

Each source server is private to this test process. It is stopped and started again (cleanly, or crashed: an
immediate shutdown, SIGKILL) in the middle of the capture: PostgreSQL once the run has checked its position and
holds its connection, just before it reads the slot; MariaDB and MongoDB forty events into the binlog or change
stream, while the server still has more to send. The capture must then either fail with a transient error that
names the source (Airflow retries the task; nothing is stored or acknowledged) or, where the driver reconnects by
itself, read exactly the batch a capture without the restart reads. The next runs resume from the stored position,
and the sink ends equal to the source row for row, with no batch twice in the ledger.

What each does: PostgreSQL fails (``SourceError``: the driver's error names neither source nor remedy, so the source
wraps it); mysql-replication and pymongo reconnect and read on. With MariaDB's ``position_mode: gtid`` the library
would reconnect from the GTID the read started at, so the reader fails that read with a transient ``SourceError``.
"""

from __future__ import annotations

import random

import pytest
from cdc_testing import (
    assert_ledger_consistent,
    assert_same_rows,
    drain,
    random_changes,
    slot_lsn,
    staged_run,
    unique_id,
)

from airflow_provider_cdc.connectors.postgres.pgoutput import lsn_to_int
from airflow_provider_cdc.connectors.postgres.source import PgSource
from airflow_provider_cdc.errors import SourceError, is_terminal
from airflow_provider_cdc.hooks.cdc import CdcHook
from reliability.conftest import fault_before, stored_position

pytestmark = [pytest.mark.timeout(300)]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgresql_restarted_mid_capture_fails_transiently_and_the_next_run_resumes(
        mode, source_pg, sink_pg, shop_pipeline, monkeypatch):
    shop = shop_pipeline(source_pg, sink_pg, name="pgrestart", users=80, orders=120, batch_size=200)
    source_url, sink_url, source_id, hook = shop.source_url, shop.sink_url, shop.source_id, shop.hook
    rng = random.Random(16)
    drain(hook, "snapshot")
    random_changes(source_url, rng, transactions=6, allow_truncate=False)
    drain(hook, "streamed")  # the slot advanced since it was made: a crash may take that back
    random_changes(source_url, rng, transactions=12, allow_truncate=False)
    stored, acknowledged = stored_position(source_id), slot_lsn(source_url, f"cdc_{source_id}")

    fired = fault_before(monkeypatch, PgSource, "_peek_messages", lambda: source_pg.restart(mode))
    with pytest.raises(SourceError) as caught:
        staged_run(hook, unique_id("restarted"))
    assert fired, "the capture never read the stream"
    message = str(caught.value)
    assert not is_terminal(caught.value), f"a restart is transient (Airflow retries it), got a terminal {message}"
    assert message.startswith(f"source {source_id!r}: capture failed: "), message
    assert "terminating connection" in message or "closed the connection" in message, message  # the server's word
    assert stored_position(source_id) == stored  # nothing stored ...
    monkeypatch.undo()

    # ... nor acknowledged: the slot is where the last commit left it, or, after a crash, possibly before it
    # (PostgreSQL saves a slot's advance at checkpoints): the ledger then absorbs what is read again.
    slot_after = slot_lsn(source_url, f"cdc_{source_id}")
    assert slot_after is not None and lsn_to_int(slot_after) <= lsn_to_int(acknowledged), (slot_after, acknowledged)
    if mode == "fast":
        assert slot_after == acknowledged
    runs = drain(hook, "resumed")
    assert runs >= 2  # the backlog drained after the restart, over runs of at most 200 changes
    assert_same_rows(source_url, sink_url, "users")
    assert_same_rows(source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)


# A transaction this large (about 36 MB of row images) is still being sent when the server goes away, so the read
# really breaks in the middle: a smaller backlog would already sit whole in the reader's socket buffer.
BIG_TRANSACTION = ("START TRANSACTION; UPDATE users SET bio = repeat(md5(id), 2000), balance = balance + 1; "
                   "UPDATE orders SET status = 'restarted' WHERE id <= 300; COMMIT")


def capture_only(hook: CdcHook) -> dict:
    """What a capture from the stored position holds, without staging, loading or committing anything."""
    from airflow_provider_cdc import pipeline

    source, sink = hook.get_source(), hook.get_sink()
    try:
        batch = pipeline.capture_batch(source, sink, hook.positions, hook.source_config.batch_size)
        return {"batch_id": batch.batch_id, "change_count": batch.change_count, "ops": batch.op_totals(),
                "seq_to": batch.seq_to}
    finally:
        source.close()
        sink.close()


def same_mariadb_rows(source_url: str, sink_url: str, table: str) -> int:
    """``e2e.test_mariadb_pipeline.assert_same`` with its message cut short (rows here hold 64 KB of text)."""
    from e2e.test_mariadb_pipeline import assert_same

    try:
        return assert_same(source_url, sink_url, table)
    except AssertionError as exc:
        raise AssertionError(str(exc)[:1500]) from None


@pytest.mark.parametrize(("position_mode", "kill"), [
    ("file", False), ("file", True),
    ("gtid", True),
], ids=["file-stopped", "file-killed", "gtid-killed"])
def test_mariadb_restarted_mid_capture_fails_transiently_or_reads_the_same_batch(
        position_mode, kill, private_mariadb, sink_pg, shop_pipeline, monkeypatch):
    from e2e.test_mariadb_pipeline import execute, random_changes
    from pymysqlreplication import BinLogStreamReader

    shop = shop_pipeline(private_mariadb, sink_pg, name="mrestart", users=600, orders=300, batch_size=500,
                         source_options={"position_mode": position_mode})
    source_url, sink_url, source_id, hook = shop.source_url, shop.sink_url, shop.source_id, shop.hook
    rng = random.Random(16)
    drain(hook, "snapshot")
    random_changes(source_url, rng, transactions=6)
    execute(source_url, BIG_TRANSACTION)
    random_changes(source_url, rng, transactions=6)
    stored = stored_position(source_id)
    clean = capture_only(hook)

    # Forty events into the binlog (inside the large transaction), the server goes away and comes back.
    fired = fault_before(monkeypatch, BinLogStreamReader, "fetchone", lambda: private_mariadb.restart(kill=kill),
                         at_call=40)
    try:
        summary = staged_run(hook, unique_id("restarted"))
    except SourceError as exc:
        assert not is_terminal(exc), f"a restart is transient (Airflow retries it), got a terminal {exc}"
        assert f"source {source_id!r}" in str(exc), exc
        assert stored_position(source_id) == stored
    else:
        # Read on after reconnecting: then it read exactly what a capture without the restart reads.
        assert {key: summary[key] for key in clean} == clean
    assert fired, "the capture never read that far into the binlog"
    monkeypatch.undo()

    drain(hook, "resumed")
    same_mariadb_rows(source_url, sink_url, "users")
    same_mariadb_rows(source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)


@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "killed"])
def test_mongodb_restarted_mid_capture_fails_transiently_or_reads_the_same_batch(
        kill, private_mongod, sink_pg, shop_pipeline, monkeypatch):
    from e2e.test_mongodb_pipeline import assert_same, random_changes

    from airflow_provider_cdc.connectors.mongodb import stream

    shop = shop_pipeline(private_mongod, sink_pg, name="mgrestart", users=150, orders=200, batch_size=300)
    source_url, sink_url, source_id, hook = shop.source_url, shop.sink_url, shop.source_id, shop.hook
    rng = random.Random(16)
    drain(hook, "snapshot")
    random_changes(source_url, rng, transactions=25)
    stored = stored_position(source_id)
    clean = capture_only(hook)
    assert clean["change_count"] >= 300  # the capture reads on past the first getMore

    # Forty events into the stream's first batch of events, the server goes away and comes back; the next
    # getMore meets the restarted server.
    fired = fault_before(monkeypatch, stream, "next_change", lambda: private_mongod.restart(kill=kill), at_call=40)
    try:
        summary = staged_run(hook, unique_id("restarted"))
    except SourceError as exc:
        assert not is_terminal(exc), f"a restart is transient (Airflow retries it), got a terminal {exc}"
        assert f"source {source_id!r}" in str(exc), exc
        assert stored_position(source_id) == stored
    else:
        assert {key: summary[key] for key in clean} == clean
    assert fired, "the capture never read that far into the stream"
    monkeypatch.undo()

    drain(hook, "resumed")
    assert_same(source_id, source_url, sink_url, "users")
    assert_same(source_id, source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)
