"""An idle source on a busy server (issue 16, item 1): the WAL its replication slot retains stays bounded, thanks to
the heartbeat, while another database of the same server writes a lot.

Logical decoding reads only the changes of the slot's own database, so a source whose tables do not change sees no
commit and its run never fires; its slot keeps ``restart_lsn`` where it is and the server keeps every WAL segment
written since: the WAL of the *other* databases. The heartbeat (``heartbeat_interval``; the trigger emits
``pg_logical_emit_message`` in the source's database once it has been idle that long) gives the slot a commit to be
advanced to. The slot's ``restart_lsn`` can only move to a running-transactions record that an advance decoded (the
background writer logs one every 15 s while there is activity), so the WAL retained rises and falls in a sawtooth:
it stays within what the server writes in two such intervals plus two heartbeat cycles (one to decode the record,
one to confirm past it), whatever the total written.

Measured here for ``MEASURE_SECONDS`` on a private PostgreSQL 18: ``pg_wal_lsn_diff(pg_current_wal_lsn(),
restart_lsn)`` of the heartbeat source's slot, and of a second source of the same idle database without a heartbeat,
every half second, while a writer fills a third database. The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import psycopg
import pytest
from cdc_testing import assert_ledger_consistent, assert_same_rows, drain, staged_run, unique_id, write_config

from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.triggers.changes import ChangesAvailableTrigger

pytestmark = [pytest.mark.timeout(300), pytest.mark.fault_matrix]

HEARTBEAT_INTERVAL = 2.0  # seconds
MEASURE_SECONDS = 45.0  # three of the server's 15 s running-transactions intervals
RUNNING_XACTS_INTERVAL = 15.0  # PostgreSQL's LOG_SNAPSHOT_INTERVAL_MS: how often the background writer logs one
MB = 1024 * 1024


@dataclass
class Sample:
    at: float  # seconds since the measurement started
    written: int  # WAL bytes written since it started
    retained: int  # WAL the heartbeat source's slot retains
    retained_quiet: int  # WAL the slot of the source without a heartbeat retains


@dataclass
class Busy:
    """Writes about ``rows`` rows of 200 bytes per transaction into another database until stopped."""

    url: str
    rows: int = 1000
    stop: threading.Event = field(default_factory=threading.Event)
    transactions: int = 0

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE busy (id bigserial PRIMARY KEY, payload text)")
            while not self.stop.is_set():
                conn.execute("INSERT INTO busy (payload) SELECT repeat(md5(g::text), 6) "
                             "FROM generate_series(1, %s) g", (self.rows,))
                self.transactions += 1
                if self.transactions % 20 == 0:
                    conn.execute("DELETE FROM busy")
                time.sleep(0.1)


def retained(url: str, slot: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
                           "FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    assert row is not None, f"slot {slot} is gone"
    return int(row[0])


def wal_now(url: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint").fetchone()[0])


async def first_event(trigger: ChangesAvailableTrigger) -> dict:
    """What the triggerer does with a deferred sensor's trigger: run it until its one event."""
    gen = trigger.run()
    event = await asyncio.wait_for(anext(gen), 60)
    await gen.aclose()
    return dict(event.payload)


def continuous_runs(hook: CdcHook, config_dir: str, until: float) -> int:
    """The continuous DAG, its tasks in this process: the deferred sensor's trigger waits (and heartbeats), then
    capture, load and commit, which acknowledges the slot; again until ``until``. Returns the number of runs."""
    runs = 0
    while time.monotonic() < until:
        trigger = ChangesAvailableTrigger(source_id=hook.source_id, position=hook.positions.get(hook.source_id),
                                          config_dir=config_dir, poll_interval=0.2,
                                          heartbeat_interval=HEARTBEAT_INTERVAL)
        event = asyncio.run(first_event(trigger))
        assert event["status"] == "ready", event
        summary = staged_run(hook, unique_id("continuous"))
        assert summary["change_count"] == 0, summary  # only heartbeats: the source's tables stay as they are
        runs += 1
    return runs


def test_an_idle_source_on_a_busy_server_retains_bounded_wal_thanks_to_the_heartbeat(source_pg, sink_pg, tmp_path):
    # Three databases of one server: the heartbeat source's, another idle source's (without a heartbeat: in a
    # database of its own, since a heartbeat is a commit for every slot of its database), and the busy one.
    idle_url, quiet_url = source_pg.database("idle_src"), source_pg.database("idle_quiet")
    busy_url, sink_url = source_pg.database("busy_other"), sink_pg.database("idle_sink")
    for url in (idle_url, quiet_url):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, name text)")
            conn.execute("INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 50) g")
    beating, quiet = unique_id("beating"), unique_id("quiet")
    beating_dir = write_config(tmp_path / "beating", source_id=beating, source_url=idle_url, sink_url=sink_url,
                               tables=["users"], heartbeat_interval=HEARTBEAT_INTERVAL)
    quiet_dir = write_config(tmp_path / "quiet", source_id=quiet, source_url=quiet_url,
                             sink_url=sink_pg.database("quiet_sink"), tables=["users"], heartbeat_interval=0)
    hook, quiet_hook = CdcHook(beating, str(beating_dir)), CdcHook(quiet, str(quiet_dir))
    drain(hook, "snapshot")
    drain(quiet_hook, "snapshot")
    slot, quiet_slot = f"cdc_{beating}", f"cdc_{quiet}"

    busy = Busy(busy_url)
    writer = threading.Thread(target=busy.run, daemon=True)
    samples: list[Sample] = []
    sampling = threading.Event()
    start_wal = wal_now(idle_url)
    started = time.monotonic()

    def sample() -> None:
        while not sampling.wait(0.5):
            samples.append(Sample(time.monotonic() - started, wal_now(idle_url) - start_wal,
                                  retained(idle_url, slot), retained(quiet_url, quiet_slot)))

    sampler = threading.Thread(target=sample, daemon=True)
    writer.start()
    sampler.start()
    try:
        runs = continuous_runs(hook, str(beating_dir), until=started + MEASURE_SECONDS)
    finally:
        busy.stop.set()
        sampling.set()
        writer.join(30)
        sampler.join(30)

    seconds = samples[-1].at
    written = samples[-1].written
    rate = written / seconds  # bytes per second the other database wrote
    cycle = seconds / runs  # one heartbeat interval plus one run (trigger, capture, load, commit)
    peak = max(s.retained for s in samples)
    bound = rate * (2 * RUNNING_XACTS_INTERVAL + 2 * cycle)
    releases = sum(1 for a, b in zip(samples, samples[1:]) if b.retained < a.retained - MB)
    print(f"\nidle source, heartbeat every {HEARTBEAT_INTERVAL:g} s, {runs} runs in {seconds:.0f} s, while another "
          f"database wrote {written / MB:.0f} MB of WAL ({rate / MB:.1f} MB/s, {busy.transactions} transactions):\n"
          f"  retained by the heartbeat source's slot: peak {peak / MB:.1f} MB, at the end "
          f"{samples[-1].retained / MB:.1f} MB, released {releases} times (bound {bound / MB:.1f} MB)\n"
          f"  retained by the slot of the source without a heartbeat: {samples[-1].retained_quiet / MB:.1f} MB\n"
          "  samples (s, MB written, MB retained with heartbeat, MB retained without): "
          + ", ".join(f"({s.at:.0f}, {s.written / MB:.0f}, {s.retained / MB:.1f}, {s.retained_quiet / MB:.0f})"
                      for s in samples[::6]))

    assert runs >= MEASURE_SECONDS / (HEARTBEAT_INTERVAL + 10), f"only {runs} runs: the heartbeat did not drive them"
    assert written > 30 * MB, f"the other database wrote only {written / MB:.1f} MB: not a busy server"
    assert releases >= 2, f"the heartbeat source's slot released WAL {releases} times in {seconds:.0f} s"
    assert peak <= bound, f"the heartbeat source's slot retained {peak / MB:.1f} MB, over {bound / MB:.1f} MB"
    # The slot without a heartbeat never moved: it retains everything the other database wrote, more than the
    # heartbeat source's slot ever did.
    assert samples[-1].retained_quiet >= written > peak
    with quiet_hook.connected() as (source, _sink):
        assert source.has_changes(quiet_hook.positions.get(quiet)) is False  # and its run would never fire

    assert_same_rows(idle_url, sink_url, "users")
    assert_ledger_consistent(sink_url, beating)
