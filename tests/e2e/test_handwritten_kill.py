"""The kill tests over a hand-written DAG (dags/examples/cdc_handwritten_shop.py: inline config, Airflow Connections,
no YAML): ``dag.test()`` in a child process SIGKILLed mid-load, between load and commit, and between storing the
position and acknowledging the source; the next clean run converges, source equal to sink row for row, no batch
twice in the ledger."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from cdc_testing import assert_ledger_consistent, assert_same_rows, create_shop

RUNNER = Path(__file__).with_name("kill_runner.py")
EXAMPLE = Path(__file__).resolve().parents[2] / "dags" / "examples" / "cdc_handwritten_shop.py"
POINTS = ["load:after-first-merge", "load:after-commit", "commit:after-position"]

pytestmark = [pytest.mark.timeout(900), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]


def run_child(env: dict[str, str], point: str, runs: int = 1) -> str:
    proc = subprocess.Popen([sys.executable, str(RUNNER), "--dag", str(EXAMPLE), point, str(runs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"dag.test() ({point}) did not finish in 300 s: {out[-4000:]}") from None
    if point == "none":
        assert proc.returncode == 0 and "RUN 0 success" in out, out[-4000:]
    else:
        assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, out[-4000:])
    return out


def fail_killed_runs(dag_id: str) -> None:
    """What the scheduler does when a worker dies: its running task instances and run fail (a killed dag.test()
    leaves them running in the metadata DB, and the DAG allows one active run)."""
    from airflow.models import DagRun, TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag_id,
            TaskInstance.state.in_(["running", "queued", "scheduled", "deferred", "up_for_retry"]),
        ).update({"state": "failed"}, synchronize_session=False)
        session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.state.in_(["running", "queued"])).update(
            {"state": "failed"}, synchronize_session=False)


def test_a_handwritten_dag_killed_at_each_point_converges_exactly_once(pg_server, pg_database_factory, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=30, orders=60)
    suffix = uuid.uuid4().hex[:8]
    source_conn, sink_conn = f"kill_source_{suffix}", f"kill_sink_{suffix}"
    no_yaml = tmp_path / "no_yaml"
    no_yaml.mkdir()
    env = {**os.environ, f"AIRFLOW_CONN_{source_conn.upper()}": source_url,
           f"AIRFLOW_CONN_{sink_conn.upper()}": sink_url, "CDC_EXAMPLE_SOURCE_CONN": source_conn,
           "CDC_EXAMPLE_SINK_CONN": sink_conn, "CDC_CONFIG_DIR": str(no_yaml),
           "CDC_EXAMPLE_HANDWRITTEN_SOURCE": f"handwritten_{suffix}"}
    run_child(env, "none")  # the snapshot
    for step, point in enumerate(POINTS):
        with psycopg.connect(source_url, autocommit=True) as conn:
            conn.execute("INSERT INTO orders (user_id, amount, status) SELECT 1 + g %% 30, g, 'k' || %s "
                         "FROM generate_series(1, 25) g", (step,))
            conn.execute("UPDATE users SET name = name || '!' WHERE id %% 4 = %s", (step,))
            conn.execute("DELETE FROM orders WHERE id %% 9 = %s", (step,))
        run_child(env, point)
        fail_killed_runs("cdc_handwritten_shop")
        # A change after the kill, so that the clean run has work whatever the killed one finished (a batch loaded
        # but not committed is already in the sink: the sensor would wait for news, as it should).
        with psycopg.connect(source_url, autocommit=True) as conn:
            conn.execute("UPDATE users SET name = name || '+' WHERE id = %s", (step + 1,))
        run_child(env, "none")
        for table in ("users", "orders"):
            assert_same_rows(source_url, sink_url, table)
        assert_ledger_consistent(sink_url, f"handwritten_{suffix}")
