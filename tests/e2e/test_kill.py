"""Exactly-once under SIGKILL: a child process runs the stages and is killed at a stage boundary, inside the sink
transaction, or at a random moment; a clean run afterwards must make source and sink equal row for row, with no
batch twice in the ledger. The cases are randomised (changes, batch size, kill point) from a seed per case.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from cdc_testing import (
    assert_ledger_consistent,
    assert_same_rows,
    create_shop,
    drain,
    random_changes,
    unique_id,
    write_config,
)

RUNNER = Path(__file__).with_name("kill_runner.py")
KILL_POINTS = [
    "capture:before-staging",
    "capture:after-staging",
    "load:after-first-merge",
    "load:after-ledger-insert",
    "load:before-commit",
    "load:after-commit",
    "commit:after-position",
    "commit:after-ack",
    "random",
]
CASES_PER_SERVER = 12  # x 2 servers = 24 randomised cases


def run_child(config_dir: Path, source_id: str, point: str, sink_db: str, rng: random.Random) -> int:
    env = {**os.environ, "CDC_KILL_SINK_DB": sink_db}
    if point != "random":
        proc = subprocess.run([sys.executable, str(RUNNER), str(config_dir), source_id, point, "3"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
        return proc.returncode
    proc = subprocess.Popen([sys.executable, str(RUNNER), str(config_dir), source_id, "none", "5"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(rng.uniform(1.5, 6.0))  # imports take ~1.5 s; then somewhere inside capture, load or commit
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
    return proc.returncode


@pytest.mark.parametrize("case", range(CASES_PER_SERVER))
def test_sigkill_then_clean_run_converges_exactly_once(case, pg_server, pg_database_factory, tmp_path):
    rng = random.Random(f"{pg_server.name}-{case}")
    point = KILL_POINTS[case % len(KILL_POINTS)] if case < len(KILL_POINTS) else rng.choice(KILL_POINTS)
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=rng.randint(50, 400), orders=rng.randint(50, 600))
    source_id = unique_id("kill")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users", "orders"], batch_size=rng.choice([40, 150, 1000, 50000]))
    sink_db = psycopg.conninfo.conninfo_to_dict(sink_url)["dbname"]

    # Killed during the snapshot ...
    first = run_child(config_dir, source_id, point, sink_db, rng)
    # ... and, after more changes, during streaming.
    random_changes(source_url, rng, transactions=rng.randint(3, 15))
    second = run_child(config_dir, source_id, point, sink_db, rng)
    random_changes(source_url, rng, transactions=rng.randint(1, 5))

    from airflow_provider_cdc.hooks.cdc import CdcHook

    drain(CdcHook(source_id, str(config_dir)), "clean", max_runs=40)
    assert assert_same_rows(source_url, sink_url, "users") >= 0
    assert_same_rows(source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)
    if point != "random":
        assert -signal.SIGKILL in (first, second), f"kill point {point} was never reached"
