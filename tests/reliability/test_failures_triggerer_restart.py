"""The triggerer restarts while the sensor is deferred (issue 16, item 1): the run continues.

Real Airflow, as its users run it: ``api-server``, ``scheduler`` (LocalExecutor), ``dag-processor`` and ``triggerer``
in their own process groups on a private AIRFLOW_HOME and metadata database (the harness of
``tests/e2e/test_asset_graph_ui.py``). The continuous DAG ``cdc_<source>`` snapshots its source; its next run's sensor
finds nothing and defers to ``ChangesAvailableTrigger``. Then the triggerer is killed (SIGKILL: no goodbye), the
source changes while no triggerer runs, and a new triggerer starts. It takes over the orphaned trigger, rebuilt from
the kwargs ``serialize()`` stored in the metadata database; the trigger finds the changes and the *same* run goes on
(the sensor's first try, not a retry) through capture, load and commit: the sink equals the source row for row.

The triggerers heartbeat every second and count as gone after 5 s without one (Airflow's defaults are 5 s and 30 s),
so that the takeover does not wait half a minute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cdc_testing import assert_ledger_consistent, assert_same_rows, create_shop, unique_id, write_config
from conftest import REPO_ROOT
from e2e.test_asset_graph_ui import Airflow

pytestmark = [pytest.mark.timeout(400), pytest.mark.fault_matrix]

BUDGET = 240.0  # seconds for everything Airflow has to do, start to the continued run's end


def restart_triggerer(airflow: Airflow) -> subprocess.Popen[bytes]:
    """SIGKILL the triggerer's process group (its trigger runner with it), then start a new triggerer."""
    old = airflow.procs["triggerer"]
    os.killpg(old.pid, signal.SIGKILL)
    old.wait(30)
    with open(airflow.log("triggerer-after-restart"), "wb") as out:
        new = subprocess.Popen([sys.executable, "-m", "airflow", "triggerer"], env=airflow.env, cwd=REPO_ROOT,
                               stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    airflow.procs["triggerer"] = new
    return new


def test_a_deferred_sensor_survives_a_triggerer_restart_and_its_run_goes_on(source_pg, sink_pg, tmp_path: Path):
    source_url, sink_url = source_pg.database("trig_src"), sink_pg.database("trig_sink")
    create_shop(source_url, users=20, orders=30)
    source_id = unique_id("trig")
    dag_id = f"cdc_{source_id}"
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users", "orders"])  # no heartbeat: only the changes below fire the trigger
    airflow = Airflow(tmp_path / "airflow", sink_pg.database("trig_airflow"), config_dir, source_id)
    airflow.env.update({"AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                        "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "5"})
    airflow.migrate()
    airflow.start()
    deadline = time.monotonic() + BUDGET
    try:
        airflow.wait("the API server", lambda: airflow.get_or_none("/api/v2/monitor/health"), deadline)
        airflow.wait(f"{dag_id} to be parsed", lambda: airflow.get_or_none(f"/api/v2/dags/{dag_id}"), deadline)
        airflow.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

        def sensor(run_id: str) -> dict[str, Any]:
            return airflow.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/wait_for_changes")

        def deferred_run() -> tuple[str, int] | None:
            """A run after the snapshot whose sensor is deferred, and the triggerer running its trigger."""
            runs = airflow.get_or_none(f"/api/v2/dags/{dag_id}/dagRuns", order_by="-run_after") or {}
            done = [r for r in runs.get("dag_runs", []) if r["state"] == "success"]
            for run in runs.get("dag_runs", []):
                if run["state"] != "running" or not done:
                    continue
                waiting = sensor(run["dag_run_id"])
                trigger = waiting.get("trigger") or {}
                if waiting["state"] == "deferred" and trigger.get("triggerer_id"):
                    assert trigger["classpath"] == "airflow_provider_cdc.triggers.changes.ChangesAvailableTrigger"
                    return str(run["dag_run_id"]), int(trigger["triggerer_id"])
            return None

        # The first run snapshots; the next one waits for changes, deferred to the triggerer, which runs its trigger.
        run_id, first_triggerer = airflow.wait("a run deferred after the snapshot", deferred_run, deadline)
        assert_same_rows(source_url, sink_url, "users")

        restart = restart_triggerer(airflow)
        with psycopg.connect(source_url, autocommit=True) as conn:  # changes while no triggerer watches
            conn.execute("UPDATE users SET name = 'changed', balance = balance * 2 WHERE id <= 5")
            conn.execute("DELETE FROM orders WHERE id > 25")
            conn.execute("INSERT INTO users (id, email, name) VALUES (100, 'new@example.com', 'New')")

        def finished() -> dict[str, Any] | None:
            run = airflow.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            assert run["state"] != "failed", f"run {run_id} failed\n{airflow.tails()}"
            return run if run["state"] == "success" else None

        airflow.wait(f"run {run_id} to go on after the restart", finished, deadline)
        waited = sensor(run_id)
        assert (waited["state"], waited["try_number"]) == ("success", 1), waited  # resumed, not retried
        assert restart.poll() is None, "the new triggerer died"
        # The trigger's own log (one file per triggerer that ran it): the new triggerer fired it, with the changes.
        logs = airflow.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / "task_id=wait_for_changes"
        fired = {path.name.split(".trigger.")[1].split(".")[0]: path.read_text(errors="replace")
                 for path in logs.glob("attempt=1.log.trigger.*.log")
                 if "Trigger fired event" in path.read_text(errors="replace")}
        assert len(fired) == 1 and str(first_triggerer) not in fired, (first_triggerer, sorted(fired))
        assert "'status': 'ready'" in next(iter(fired.values())), fired
    finally:
        airflow.stop()

    assert_same_rows(source_url, sink_url, "users")
    assert_same_rows(source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)
