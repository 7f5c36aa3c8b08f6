"""No concurrent capture of one source applies a range twice (issue 16, item 1): a manual trigger beside the
continuous run, i.e. two processes running capture, load and commit of the same source at the same time, while the
source keeps changing.

Airflow alone runs one run of a continuous DAG at a time (``max_active_runs=1``); but a cleared task, a cron schedule
with more active runs, or a hand-written DAG can overlap, and then both capture from the same stored position. The
sink serialises the appliers of one source (PostgreSQL: a transaction-level advisory lock per source, see
``_lock_source`` in ``connectors/postgres/sink.py``), and the ledger and the ``seq`` high water turn the second apply
of a range into a no-op.

Two captures of one range stage it in the same folder, and one may rewrite it while the other's load reads it:
staging writes each file under a temporary name and renames it into place, so the load reads whole files (a
deterministic test below makes the load read at the moment the rewrite has opened the table file).

Two captures from one position while a snapshot is pending number their changes differently (the stream part
before the snapshot pages is longer in the later one, and the pages are read at another moment), so the second must
not be applied from the first one's ``seq`` high water on: it is stale, and load and commit leave it out
(``airflow_provider_cdc/connectors/recapture.py``); the next run captures from the committed position. A
deterministic test below loads both.

The two processes below start once the snapshot is done and stage under their own roots; the two overlaps above are
made deterministic by the tests after them.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from cdc_testing import assert_ledger_consistent, assert_same_rows, create_shop, drain, random_changes, unique_id

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.hooks.cdc import CdcHook
from reliability.conftest import fault_before, write_pipeline_config

pytestmark = [pytest.mark.timeout(300)]

TESTS = Path(__file__).parents[1]
RUNS_EACH = 8
TRIES = 4  # the DAG's retries (3) plus the first try

# One DAG run after another, each the stages as the DAG's tasks run them; a transient error is retried after a
# second (the same run id: a retried task replays what its run captured), a terminal one fails the process.
RUNS = f"""
import sys, time
sys.path.insert(0, {str(TESTS)!r})
from cdc_testing import staged_run
from airflow_provider_cdc.errors import is_terminal
from airflow_provider_cdc.hooks.cdc import CdcHook

config_dir, source_id, name, runs = sys.argv[1:5]
hook = CdcHook(source_id, config_dir)
for i in range(int(runs)):
    for attempt in range(1, {TRIES} + 1):
        try:
            summary = staged_run(hook, f"{{name}}_{{i}}")
        except Exception as exc:
            if is_terminal(exc) or attempt == {TRIES}:
                raise
            print("RETRY", i, type(exc).__name__, str(exc).splitlines()[0][:300], flush=True)
            time.sleep(1)
        else:
            print("RUN", i, summary["change_count"], flush=True)
            break
"""


def start_runs(config_dir: Path, source_id: str, name: str, staging: Path) -> subprocess.Popen[str]:
    """A process that runs the source's stages ``RUNS_EACH`` times, one DAG run after another."""
    env = {**os.environ, "CDC_STAGING_URL": f"file://{staging}"}
    return subprocess.Popen([sys.executable, "-c", RUNS, str(config_dir), source_id, name, str(RUNS_EACH)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def shop_source(source_pg, sink_pg, tmp_path: Path, batch_size: int) -> tuple[str, str, str, Path]:
    source_url, sink_url = source_pg.database("concurrent_src"), sink_pg.database("concurrent_sink")
    create_shop(source_url, users=100, orders=100)
    source_id = unique_id("concurrent")
    config_dir = write_pipeline_config(tmp_path / "config", source_id=source_id, source_type="postgresql",
                                       source_url=source_url, sink_type="postgresql", sink_url=sink_url,
                                       tables=["users", "orders"], batch_size=batch_size)
    return source_id, source_url, sink_url, config_dir


@pytest.mark.fault_matrix
def test_two_processes_running_one_source_at_once_apply_each_range_once(source_pg, sink_pg, tmp_path):
    source_id, source_url, sink_url, config_dir = shop_source(source_pg, sink_pg, tmp_path, batch_size=60)
    drain(CdcHook(source_id, str(config_dir)), "snapshot")
    rng = random.Random(16)

    continuous = start_runs(config_dir, source_id, "continuous", tmp_path / "staging_continuous")
    manual = start_runs(config_dir, source_id, "manual", tmp_path / "staging_manual")
    while continuous.poll() is None or manual.poll() is None:  # the source keeps changing under both
        random_changes(source_url, rng, transactions=2, allow_truncate=False)
        time.sleep(0.2)
    outputs = {name: proc.communicate() for name, proc in (("continuous", continuous), ("manual", manual))}
    for name, proc in (("continuous", continuous), ("manual", manual)):
        out, err = outputs[name]
        assert proc.returncode == 0, f"the {name} run failed:\n{err[-3000:]}"
        assert out.count("RUN ") == RUNS_EACH, out
    captured = {name: sum(int(line.split()[2]) for line in out.splitlines() if line.startswith("RUN "))
                for name, (out, _) in outputs.items()}
    retried = [line for out, _ in outputs.values() for line in out.splitlines() if line.startswith("RETRY ")]
    assert all(captured.values()), f"each process must have captured changes: {captured}"

    drain(CdcHook(source_id, str(config_dir)), "after")
    assert_same_rows(source_url, sink_url, "users")
    assert_same_rows(source_url, sink_url, "orders")
    ledger = assert_ledger_consistent(sink_url, source_id)
    print(f"\ntwo processes, {RUNS_EACH} runs each at once: changes captured {captured}; the ledger has "
          f"{len(ledger)} batches, each range once; {len(retried)} tries retried: {retried}")


def capture(hook: CdcHook, run_id: str) -> dict:
    with hook.connected() as (source, sink):
        return pipeline.capture_stage(source, sink, hook.positions, hook.store,
                                      max_changes=hook.source_config.batch_size, run_id=run_id)


def load_and_commit(hook: CdcHook, summary: dict, run_id: str) -> None:
    with hook.connected() as (source, sink):
        loaded = pipeline.load_stage(summary["manifest_uri"], sink, run_id=run_id, policy=hook.schema_policy)
        pipeline.commit_stage(summary["manifest_uri"], source, sink, hook.positions, hook.store,
                              newly_held=loaded["newly_held"])


def test_two_captures_from_one_position_during_a_snapshot_lose_no_change(source_pg, sink_pg, tmp_path):
    """The interleaving the processes above can meet while a snapshot is pending, made deterministic: both runs
    capture from the same position, the second after more changes arrived; the first loads and commits first."""
    source_id, source_url, sink_url, config_dir = shop_source(source_pg, sink_pg, tmp_path, batch_size=60)
    hook = CdcHook(source_id, str(config_dir))
    load_and_commit(hook, capture(hook, "first"), "first")  # the first page of the snapshot
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, name) VALUES (5000, 'early@example.com', 'early')")
    continuous = capture(hook, "continuous")
    with psycopg.connect(source_url, autocommit=True) as conn:
        for key in range(6000, 6020):
            conn.execute("INSERT INTO users (id, email, name) VALUES (%s, 'late@example.com', 'late')", (key,))
    manual = capture(hook, "manual")  # from the same stored position: the snapshot is still pending
    assert continuous["seq_from"] == manual["seq_from"] and continuous["batch_id"] != manual["batch_id"]
    load_and_commit(hook, continuous, "continuous")
    load_and_commit(hook, manual, "manual")

    drain(hook, "after")
    assert_same_rows(source_url, sink_url, "users")
    assert_same_rows(source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)


def test_rewriting_a_staged_batch_never_shows_a_reader_a_half_written_file(source_pg, sink_pg, tmp_path,
                                                                          monkeypatch):
    """Two runs that captured the same range stage it in the same folder. Here the second run rewrites it while
    the first run's load reads it: the load is made to read at the moment the rewrite has opened the table file."""
    import pyarrow.parquet as pq

    from airflow_provider_cdc import staging

    source_id, source_url, sink_url, config_dir = shop_source(source_pg, sink_pg, tmp_path, batch_size=60)
    hook = CdcHook(source_id, str(config_dir))
    first = capture(hook, "first")
    seen: list[str] = []

    def a_load_reads_now() -> None:
        try:
            batch = staging.BatchStore.read(first["manifest_uri"])
            seen.append(f"read {batch.change_count} changes")
        except Exception as exc:  # what the overlapping load would get
            seen.append(f"{type(exc).__name__}: {exc}")

    original = pq.write_table
    fault_before(monkeypatch, staging.pq, "write_table", a_load_reads_now)
    assert staging.pq.write_table is not original
    second = capture(hook, "second")  # the same position: the same batch, staged again in the same folder
    assert second["manifest_uri"] == first["manifest_uri"] and seen
    assert seen == [f"read {first['change_count']} changes"], seen
