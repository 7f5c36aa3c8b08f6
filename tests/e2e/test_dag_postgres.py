"""End to end through Airflow: ``dag.test()`` runs the real DAG ``cdc_<id>`` from PostgreSQL to PostgreSQL, and
errors with intent: a lost position fails its task on the first try, a transient error is retried.
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest
from cdc_testing import (
    assert_ledger_consistent,
    assert_same_rows,
    create_shop,
    ledger_rows,
    slot_lsn,
    unique_id,
    write_config,
)


def run_dag(source_id: str, config_dir, monkeypatch, *, expect: str = "success", **task_overrides):
    """One ``dag.test()`` run of ``cdc_<source_id>``; ``task_overrides`` are set on every task (e.g. retries)."""
    from airflow_provider_cdc.dag_factory import build_dags

    monkeypatch.setenv("CDC_CONFIG_DIR", str(config_dir))
    dag = build_dags(config_dir)[f"cdc_{source_id}"]
    for task in dag.tasks:
        for name, value in task_overrides.items():
            setattr(task, name, value)
    dag_run = dag.test()
    assert dag_run.state == expect, f"run of cdc_{source_id} ended {dag_run.state}"
    return dag_run


def task_instances(dag_run) -> dict[str, tuple[str, int]]:
    """task id → (state, try_number) of a finished run, read back from the metadata DB."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance.task_id, TaskInstance.state, TaskInstance.try_number).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id).all()
    return {task_id: (str(state), try_number) for task_id, state, try_number in rows}


def position(source_id: str) -> dict | None:
    from airflow_provider_cdc.positions import PositionStore

    return PositionStore().get_document(source_id)


@pytest.fixture
def shop(pg_database_factory, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url)
    source_id = unique_id("shop")
    return source_id, source_url, sink_url, tmp_path / "config"


@pytest.mark.parametrize("mode", ["staged", "fused"])
def test_snapshot_then_every_kind_of_change_lands_exactly_once(shop, monkeypatch, mode):
    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url,
                 tables=["users", "public.orders"], mode=mode)

    run_dag(source_id, config_dir, monkeypatch)
    assert assert_same_rows(source_url, sink_url, "users") == 100
    assert assert_same_rows(source_url, sink_url, "orders") == 200
    stored = position(source_id)
    assert stored["batch_id"].startswith(f"{source_id}:snapshot.")
    assert "snapshot" not in stored

    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, name, balance) VALUES (1001, 'new@example.com', 'New', 0.10)")
        conn.execute("UPDATE users SET balance = balance + 0.01, name = 'Tab\tand\nnewline' WHERE id <= 10")
        # A value large enough to be TOASTed out of line, then an update that leaves it unchanged.
        conn.execute("UPDATE users SET bio = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g) "
                     "WHERE id = 20")
        conn.execute("UPDATE users SET email = 'changed@example.com' WHERE id = 20")
        conn.execute("DELETE FROM users WHERE id BETWEEN 50 AND 59")
        conn.execute("UPDATE users SET id = 5000 WHERE id = 60")  # key change: delete + insert
        conn.execute("TRUNCATE orders")
        conn.execute("INSERT INTO orders (user_id, amount, status) VALUES (1, 99.99, 'after truncate')")
    run_dag(source_id, config_dir, monkeypatch)

    assert assert_same_rows(source_url, sink_url, "users") == 100 + 1 - 10
    assert assert_same_rows(source_url, sink_url, "orders") == 1
    with psycopg.connect(sink_url) as conn:
        bio_len, op = conn.execute("SELECT length(bio), _cdc_op FROM users WHERE id = 20").fetchone()
        assert (bio_len, op) == (4000 * 32, "u")
        assert conn.execute("SELECT balance::text FROM users WHERE id = 1").fetchone() == ("1.26",)
        types = dict(conn.execute(
            "SELECT column_name, data_type || coalesce('(' || numeric_precision || ',' || numeric_scale || ')', '') "
            "FROM information_schema.columns WHERE table_name = 'users'"
        ).fetchall())
    assert types["balance"] == "numeric(12,2)"
    assert types["created_at"] == "timestamp with time zone"
    assert_ledger_consistent(sink_url, source_id)
    # Committed position and acknowledged slot agree: the source was acknowledged after the sink commit.
    assert position(source_id)["lsn"] == slot_lsn(source_url, f"cdc_{source_id}")


def test_backlog_drains_over_consecutive_runs(shop, monkeypatch):
    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url,
                 tables=["users", "orders"], batch_size=120)
    runs = 0
    while True:
        run_dag(source_id, config_dir, monkeypatch)
        runs += 1
        if "snapshot" not in position(source_id):
            break
    assert runs == 3  # 300 rows at 120 per run
    with psycopg.connect(source_url, autocommit=True) as conn:
        for i in range(5):  # five transactions of 50 updates
            conn.execute("UPDATE users SET balance = balance + 1 WHERE id > %s AND id <= %s", (i * 20, i * 20 + 50))
    stream_runs = 0
    while stream_runs < 10:
        run_dag(source_id, config_dir, monkeypatch)
        stream_runs += 1
        if position(source_id)["seq"] == ledger_rows(sink_url, source_id)[-1][2] and \
                position(source_id)["lsn"] == slot_lsn(source_url, f"cdc_{source_id}"):
            with psycopg.connect(source_url) as conn:
                pending = conn.execute(
                    "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1', "
                    "'publication_names', %s)", (f"cdc_{source_id}", f"cdc_{source_id}_pub")).fetchone()[0]
            if pending == 0:
                break
    # 250 changes in whole transactions of 50, at most ~120 per run: more than one run, fewer than ten.
    assert 2 <= stream_runs < 10
    assert_same_rows(source_url, sink_url, "users")
    assert_ledger_consistent(sink_url, source_id)


def test_airflow_dags_test_cli_moves_snapshot_and_changes(shop):
    """What a user types: ``airflow dags test cdc_<id>``, twice, with the bundle's DAG file and a config dir."""
    import os
    import subprocess
    import sys

    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["users", "orders"])
    env = {**os.environ, "CDC_CONFIG_DIR": str(config_dir)}

    def dags_test() -> None:
        proc = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", f"cdc_{source_id}"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "state=success" in proc.stdout + proc.stderr

    dags_test()
    assert assert_same_rows(source_url, sink_url, "users") == 100
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email) VALUES (777, 'cli@example.com')")
        conn.execute("UPDATE users SET name = 'cli' WHERE id < 5")
        conn.execute("DELETE FROM users WHERE id = 99")
        conn.execute("TRUNCATE orders")
    dags_test()
    assert assert_same_rows(source_url, sink_url, "users") == 100
    assert assert_same_rows(source_url, sink_url, "orders") == 0
    assert_ledger_consistent(sink_url, source_id)


def test_rerunning_a_runs_capture_and_load_replays_the_same_range(shop, monkeypatch):
    """A cleared task re-runs in its run's context: capture returns the batch that run captured (not newer
    changes), load finds it in the ledger. ``airflow tasks test <dag> <task> <run_id>`` runs exactly that."""
    import os
    import subprocess
    import sys

    from airflow.models import DagRun
    from airflow.utils.session import create_session

    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["users"])
    run_dag(source_id, config_dir, monkeypatch)  # snapshot
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET name = 'run two' WHERE id <= 7")
    run_dag(source_id, config_dir, monkeypatch)
    with create_session() as session:
        run_id = session.query(DagRun.run_id).filter(DagRun.dag_id == f"cdc_{source_id}") \
            .order_by(DagRun.start_date.desc()).first()[0]
    ledger_before = ledger_rows(sink_url, source_id)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET name = 'later' WHERE id = 50")  # must not sneak into the replay

    env = {**os.environ, "CDC_CONFIG_DIR": str(config_dir)}
    outputs = {}
    for task in ("capture", "load"):
        proc = subprocess.run([sys.executable, "-m", "airflow", "tasks", "test", f"cdc_{source_id}", task, run_id],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outputs[task] = proc.stdout + proc.stderr
    assert f"run {run_id} already captured" in outputs["capture"]
    assert f"already captured batch {ledger_before[-1][0]} " in outputs["capture"]  # the same batch id
    assert "already in the sink ledger" in outputs["load"]
    assert ledger_rows(sink_url, source_id) == ledger_before
    with psycopg.connect(sink_url) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE name = 'run two'").fetchone()[0] == 7
        assert conn.execute("SELECT name FROM users WHERE id = 50").fetchone()[0] != "later"


@pytest.mark.parametrize("mode", ["staged", "fused"])
def test_a_dropped_slot_fails_the_run_at_once_without_retrying(shop, monkeypatch, mode):
    """A lost position is terminal: the first task that meets it fails on its first try, though the DAG's tasks
    have retries (the default three), and nothing downstream runs."""
    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["users"],
                 mode=mode)
    run_dag(source_id, config_dir, monkeypatch)  # snapshot: the position is stored
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (f"cdc_{source_id}",))
        conn.execute("UPDATE users SET name = 'lost' WHERE id <= 3")
    stored = position(source_id)

    dag_run = run_dag(source_id, config_dir, monkeypatch, expect="failed")

    tis = task_instances(dag_run)
    assert tis["wait_for_changes"] == ("failed", 1)
    downstream = {"staged": ("capture", "load", "commit"), "fused": ("fused",)}[mode]
    assert all(tis[task][0] == "upstream_failed" for task in downstream)
    assert position(source_id) == stored  # nothing moved
    assert slot_lsn(source_url, f"cdc_{source_id}") is None  # and the slot was not silently re-created


def test_a_transient_error_is_retried_and_the_run_then_succeeds(shop, monkeypatch, tmp_path):
    """An unreachable sink is transient: the task fails, is retried, and succeeds once the sink is back."""
    source_id, source_url, sink_url, config_dir = shop
    unreachable = "postgresql://postgres@127.0.0.1:1/warehouse"
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=unreachable, tables=["users"])
    tries: list[str] = []

    def sink_back(context) -> None:  # called when a try failed and a retry is scheduled
        tries.append(context["ti"].task_id)
        write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["users"])

    dag_run = run_dag(source_id, config_dir, monkeypatch, retry_delay=dt.timedelta(0),
                      retry_exponential_backoff=False, on_retry_callback=[sink_back])

    tis = task_instances(dag_run)
    assert tis["wait_for_changes"] == ("success", 2)  # failed once (the sink was down), retried, succeeded
    assert tries == ["wait_for_changes"]
    assert all(tis[task] == ("success", 1) for task in ("capture", "load", "commit"))
    assert assert_same_rows(source_url, sink_url, "users") == 100
    assert_ledger_consistent(sink_url, source_id)
