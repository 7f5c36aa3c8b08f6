"""``python -m airflow_provider_cdc resnapshot``: the recovery after a lost position, end to end on real servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from cdc_testing import (
    assert_ledger_consistent,
    assert_same_rows,
    create_shop,
    drain,
    ledger_rows,
    slot_lsn,
    staged_run,
    table_rows,
    unique_id,
    write_config,
)
from test_pipeline import staged_run_with_policy

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.errors import PositionLostError
from airflow_provider_cdc.hooks.cdc import CdcHook

REPO_ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, config_dir: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it; the child shares this session's Airflow metadata DB and staging root."""
    environ = dict(os.environ, CDC_CONFIG_DIR=str(config_dir))
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "airflow_provider_cdc", *args], env=environ, cwd=config_dir.parent,
                          input=stdin, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def shop(pg_database_factory, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=150, orders=250)
    return unique_id("resnap"), source_url, sink_url, tmp_path / "config"


def drop_slot(url: str, slot: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def test_resnapshot_recovers_a_source_whose_slot_was_dropped(shop):
    source_id, source_url, sink_url, config_dir = shop
    slot = f"{source_id}_own_slot"  # a slot named in the connector's options, not the default one
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url,
                 tables=["users", "orders"], batch_size=100, extra=f"options: {{slot_name: {slot}}}\n")
    hook = CdcHook(source_id, str(config_dir))
    drain(hook, "before")
    assert_same_rows(source_url, sink_url, "users")
    assert slot_lsn(source_url, f"cdc_{source_id}") is None

    drop_slot(source_url, slot)
    with psycopg.connect(source_url, autocommit=True) as conn:  # changes nobody captured: only a snapshot has them
        conn.execute("UPDATE users SET name = 'lost' WHERE id <= 20")
        conn.execute("DELETE FROM orders WHERE id > 200")
        conn.execute("INSERT INTO users (id, email, name) VALUES (1000, 'new@example.com', 'New')")
    with pytest.raises(PositionLostError, match=rf"python -m airflow_provider_cdc resnapshot {source_id}\b"):
        staged_run(hook, "lost")

    refused = cli("resnapshot", source_id, "--config-dir", str(config_dir), config_dir=config_dir, stdin="y\n")
    assert refused.returncode == 1 and "pass --yes" in refused.stderr  # stdin is not a terminal: nobody to ask

    result = cli("resnapshot", source_id, "--yes", "--config-dir", str(config_dir), config_dir=config_dir)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    # Step 1 finds nothing holding the old position (the slot was dropped above), or, if a capture re-created the
    # slot meanwhile, drops it.
    first = next(line for line in result.stdout.splitlines() if line.startswith("1. "))
    assert first.startswith("1. nothing holds the old position at the source") or (
        first.startswith("1. dropped ") and slot in first), result.stdout
    for step in ("from the sink ledger", "3. truncated sink tables users", "staged batch",
                 f"5. deleted Variable cdc.position.{source_id}", "snapshot of 2 tables pending"):
        assert step in result.stdout, result.stdout
    assert slot_lsn(source_url, slot) is not None  # a fresh slot, created by the command
    assert "snapshot" in hook.positions.get(source_id)
    assert ledger_rows(sink_url, source_id) == []

    drain(hook, "after")
    assert_same_rows(source_url, sink_url, "users")
    assert_same_rows(source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)

    with psycopg.connect(source_url, autocommit=True) as conn:  # and it streams again
        conn.execute("UPDATE users SET name = 'streamed' WHERE id BETWEEN 30 AND 40")
    drain(hook, "streaming")
    assert_same_rows(source_url, sink_url, "users")


def test_resnapshot_of_one_table_keeps_the_others_streaming(shop):
    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url,
                 tables=["users", "public.orders"], batch_size=100)
    hook = CdcHook(source_id, str(config_dir))
    drain(hook, "before")
    slot_before = slot_lsn(source_url, f"cdc_{source_id}")
    ledger_before = ledger_rows(sink_url, source_id)
    with psycopg.connect(sink_url, autocommit=True) as conn:  # the sink table went wrong, say by hand
        conn.execute("DELETE FROM users WHERE id % 3 = 0")
        conn.execute("UPDATE users SET name = 'garbage' WHERE id % 3 = 1")

    result = cli("resnapshot", source_id, "--table", "users", "--yes", config_dir=config_dir)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "slot" not in result.stdout.lower()  # said in the connector's words only, never by the command
    assert "truncated sink tables users" in result.stdout and "public.users queued" in result.stdout
    assert slot_lsn(source_url, f"cdc_{source_id}") == slot_before  # the slot and the stream stay
    assert ledger_rows(sink_url, source_id) == ledger_before

    with psycopg.connect(source_url, autocommit=True) as conn:  # both tables change while users is re-read
        conn.execute("UPDATE users SET balance = balance + 1 WHERE id <= 50")
        conn.execute("INSERT INTO orders (user_id, amount, status) VALUES (1, 9.99, 'new'), (2, 1.5, 'paid')")
        conn.execute("DELETE FROM orders WHERE id <= 10")
    drain(hook, "after")
    assert_same_rows(source_url, sink_url, "users")
    assert_same_rows(source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)


def test_resnapshot_of_one_table_refuses_when_the_position_holder_is_gone(shop):
    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["users"])
    drain(CdcHook(source_id, str(config_dir)), "before")
    drop_slot(source_url, f"cdc_{source_id}")

    result = cli("resnapshot", source_id, "--table", "users", "--yes", config_dir=config_dir)

    assert result.returncode == 1
    assert (f"what holds the position of source {source_id} at the source is gone, so the stream cannot continue: "
            "re-snapshot the whole source (without --table)") in result.stderr


def test_resnapshot_refuses_unknown_source_and_table(shop):
    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["users"])

    unknown = cli("resnapshot", "nope", "--yes", config_dir=config_dir)
    assert unknown.returncode == 1 and "unknown source 'nope'" in unknown.stderr and source_id in unknown.stderr

    table = cli("resnapshot", source_id, "--table", "orders", "--yes", config_dir=config_dir)
    assert table.returncode == 1
    assert "not a configured table of this source: orders (configured: public.users)" in table.stderr


def test_resnapshot_refuses_while_a_dag_run_is_running(shop):
    import datetime as dt

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import delete

    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["users"])
    with create_session() as session:
        session.add(DagRun(dag_id=f"cdc_{source_id}", run_id="manual__busy", state=DagRunState.RUNNING,
                           run_type="manual", run_after=dt.datetime.now(dt.timezone.utc)))
    try:
        refused = cli("resnapshot", source_id, config_dir=config_dir)
        assert refused.returncode == 1
        assert f"DAG cdc_{source_id} has 1 running run (manual__busy)" in refused.stderr
        assert "Pause the DAG" in refused.stderr and "--yes" in refused.stderr
        assert "will:" not in refused.stdout  # refused before anything was planned or done

        forced = cli("resnapshot", source_id, "--yes", config_dir=config_dir)
        assert "warning: DAG" in forced.stderr and "going ahead because of --yes" in forced.stderr
        assert "will:" in forced.stdout
    finally:
        with create_session() as session:
            session.execute(delete(DagRun).where(DagRun.dag_id == f"cdc_{source_id}"))


def test_resnapshot_of_a_held_table_says_its_held_changes_are_discarded_and_names_schema_accept(shop):
    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url,
                 tables=["users", "orders"], batch_size=1000)
    hook = CdcHook(source_id, str(config_dir))
    drain(hook, "before")
    with psycopg.connect(source_url, autocommit=True) as conn:  # text -> integer: BACKWARD refuses, users is held
        conn.execute("ALTER TABLE users ALTER COLUMN name TYPE int USING length(name)")
        conn.execute("UPDATE users SET name = 1 WHERE id <= 3")
    with pytest.raises(pipeline.TablesHeldError, match=r"public\.users"):
        staged_run_with_policy(hook, "holds")
    assert table_rows(sink_url, "users", columns=["id", "name"], where="WHERE id <= 3") == [
        ("1", "User 1"), ("2", "User 2"), ("3", "User 3")]  # held: the change waits in the sink

    plan = cli("resnapshot", source_id, "--table", "users", config_dir=config_dir)  # refused: no terminal
    assert plan.returncode == 1
    assert "a table held after a schema change is released instead, and its held changes are discarded" in plan.stdout
    assert f"schema accept {source_id}.<schema>.<table> keeps them instead" in plan.stdout

    result = cli("resnapshot", source_id, "--table", "users", "--yes", config_dir=config_dir)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert ("users (was held: released, its held changes discarded, its sink table made anew by the snapshot; "
            f"python -m airflow_provider_cdc schema accept {source_id}.public.users is the alternative that keeps "
            "them)") in result.stdout, result.stdout
    assert_same_rows(source_url, sink_url, "orders")  # the other table is untouched

    _, committed = staged_run_with_policy(hook, "after")  # no longer held: the snapshot reads it anew
    assert committed["held_tables"] == {}
    drain(hook, "after_drain")
    assert_same_rows(source_url, sink_url, "users")
    assert_same_rows(source_url, sink_url, "orders")
