"""A MariaDB commit that the binlog holds but that is not visible yet, while the snapshot reads a page.

Under semi-synchronous replication with ``rpl_semi_sync_master_wait_point = AFTER_SYNC`` (MySQL's default for it),
the server writes and syncs the binlog, waits for a replica's acknowledgement, and only then commits in the engine:
the binlog stream delivers the transaction while no snapshot can see it. The snapshot drops the stream's changes of
keys it has not reached (it is to read those rows), so a page read in that window lost them: the sink silently kept
the old rows (this test fails so, row for row, when ``start_snapshot_covering`` does not wait). The page read now
waits until MariaDB's ``binlog_snapshot_position`` covers what the stream has read.

The source is a private ``mariadbd`` of its own (semi-synchronous replication is a server-wide setting: every commit
waits while it is on, so the test turns it on only around the transaction under test); the sink is a database of the
machine's PostgreSQL 15.
"""

from __future__ import annotations

import threading
import time

import pytest
from cdc_testing import unique_id
from conftest import MariaDBServer, private_mariadb
from contract.pairs import postgres_sink
from contract.test_contract_mariadb_source import MariaPair, source_connect
from visibility_testing import fresh_pg15_database, run_until_it_waits, seen_in_log

from airflow_provider_cdc import pipeline

WAIT_MESSAGE = "not visible yet"


@pytest.fixture(scope="module")
def semisync_mariadb():
    with private_mariadb("cdc-test-semisync-") as server:  # its own: semi-sync is a server-wide setting
        yield server


@pytest.fixture
def sink_url():
    with fresh_pg15_database("semisync_sink") as url:
        yield url


@pytest.fixture
def wait_seen():
    with seen_in_log("airflow_provider_cdc.source.mysql", WAIT_MESSAGE) as event:
        yield event


def _semi_sync(server: MariaDBServer, on: bool) -> None:
    """On: every commit waits (up to two minutes) for a semi-synchronous replica that is not there, after its binlog
    is written and before it is visible. Off: the waiting commits complete."""
    with server.connect() as conn, conn.cursor() as cur:
        if on:
            cur.execute("SET GLOBAL rpl_semi_sync_master_wait_point = 'AFTER_SYNC'")
            cur.execute("SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON")
            cur.execute("SET GLOBAL rpl_semi_sync_master_timeout = 120000")
        cur.execute(f"SET GLOBAL rpl_semi_sync_master_enabled = {'ON' if on else 'OFF'}")


def test_a_snapshot_page_waits_for_a_commit_the_binlog_already_sent(semisync_mariadb, sink_url, wait_seen):
    database = unique_id("semisync_src")
    with semisync_mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {database}")
    url = semisync_mariadb.url(database)
    with source_connect(url) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        cur.execute("INSERT INTO t SELECT seq, CONCAT('v', seq) FROM seq_1_to_1000")
    pair = MariaPair(url, postgres_sink(sink_url), tables=["t"], batch_size=300)
    try:
        pipeline.run_fused(pair.source, pair.sink, pair.positions, max_changes=300)
        assert pair.positions.get(pair.source_id)["snapshot"]["after"] is not None  # the snapshot is under way

        _semi_sync(semisync_mariadb, True)
        waiting = source_connect(url)
        waiting.autocommit(False)
        with waiting.cursor() as cur:
            cur.execute("UPDATE t SET v = 'changed' WHERE id > 600")
        committer = threading.Thread(target=waiting.commit, daemon=True)
        committer.start()
        time.sleep(1)
        assert committer.is_alive(), "the commit did not wait for the semi-synchronous replica"

        def release() -> None:
            _semi_sync(semisync_mariadb, False)
            committer.join(30)
            assert not committer.is_alive()
            waiting.close()

        run_until_it_waits(pair.run, wait_seen, release)
        assert wait_seen.is_set(), "the snapshot read its page without waiting for the committed transaction"
        pair.run()
        rows = {r["id"]: r["v"] for r in pair.sink_rows("t")}
        source = {r["id"]: r["v"] for r in pair.source_rows("t", pair.columns("t"))}
        assert rows == source
        assert sum(v == "changed" for v in rows.values()) == 400
    finally:
        _semi_sync(semisync_mariadb, False)
        pair.close()
