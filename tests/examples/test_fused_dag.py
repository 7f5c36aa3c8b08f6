"""dags/examples/cdc_fused_shop.py run with ``dag.test()`` against real PostgreSQL: one run of its fused task loops
over batches for ``loop_seconds`` (a short loop here), and changes made while it runs reach the sink in the same
run, each batch committed on its own."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from cdc_testing import assert_ledger_consistent, assert_same_rows, create_shop, ledger_rows

LOOP_SECONDS = "15"


def change_once_loaded(source_url: str, sink_url: str, source_id: str, done: threading.Event) -> None:
    """Once the snapshot batch is committed (a ledger row), change the source while the loop is still running."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if ledger_rows(sink_url, source_id):
                break
        except psycopg.Error:
            pass  # no ledger table yet
        time.sleep(0.2)
    else:
        return
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, name, balance) VALUES (101, 'late@example.org', 'Late', 3)")
        conn.execute("UPDATE orders SET status = 'paid', amount = amount + 1 WHERE id <= 10")
        conn.execute("DELETE FROM orders WHERE id > 50")
    done.set()


@pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)
def test_one_fused_run_loads_the_snapshot_and_the_changes_made_while_it_loops(pg_database_factory, examples):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=30, orders=60)
    examples.use(source_url, sink_url, CDC_EXAMPLE_LOOP_SECONDS=LOOP_SECONDS)
    source_id = examples.fused_source
    dag = examples.load("cdc_fused_shop").dag
    assert dag.dag_id == f"cdc_{source_id}"
    assert [task.task_id for task in dag.topological_sort()] == ["wait_for_changes", "fused"]

    changed = threading.Event()
    writer = threading.Thread(target=change_once_loaded, args=(source_url, sink_url, source_id, changed), daemon=True)
    writer.start()
    dag_run = dag.test()
    writer.join(10)
    assert changed.is_set(), "the snapshot batch was never committed"
    assert dag_run.state == "success"

    for table in ("users", "orders"):
        assert_same_rows(source_url, sink_url, table)  # the changes made while the loop ran are in
    with psycopg.connect(sink_url) as conn:
        assert conn.execute("SELECT masked_email FROM users WHERE id = 101").fetchone() == ("lat***@example.org",)
        run_ids = {run_id for (run_id,) in conn.execute(
            "SELECT DISTINCT run_id FROM _cdc_ledger WHERE source_id = %s", (source_id,))}
    assert run_ids == {dag_run.run_id}  # one DAG run
    assert len(ledger_rows(sink_url, source_id)) >= 2  # the snapshot, then the later changes: batches of their own
    assert_ledger_consistent(sink_url, source_id)
