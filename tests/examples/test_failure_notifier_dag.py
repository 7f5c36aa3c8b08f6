"""dags/examples/cdc_failure_notifier.py run with ``dag.test()`` against real PostgreSQL: a schema change the gate
holds fails the run once, and the notifier's message names the table and the commands that resume it; a dropped
replication slot (a lost position) fails the next run, and the message names the re-snapshot. Then
:mod:`airflow_provider_cdc.notifiers` on its own: what it reads from an exception and a callback's context."""

from __future__ import annotations

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException
from cdc_testing import assert_same_rows, create_shop

from airflow_provider_cdc.connectors.postgres.options import PgSourceOptions
from airflow_provider_cdc.errors import PositionLostError, SourceError, TableHeld
from airflow_provider_cdc.notifiers import CdcFailureNotifier, describe_failure, failure_message
from airflow_provider_cdc.pipeline import TablesHeldError

COMMAND = "python -m airflow_provider_cdc"


def failed_tasks(dag_run) -> list[str]:
    return sorted(ti.task_id for ti in dag_run.get_task_instances() if ti.state == "failed")


@pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)
def test_the_notifier_names_the_held_table_then_the_lost_position(pg_database_factory, examples, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=10, orders=20)
    alerts = tmp_path / "alerts" / "cdc.log"
    examples.use(source_url, sink_url, CDC_EXAMPLE_ALERTS_FILE=str(alerts))
    source_id = examples.notified_source
    dag = examples.load("cdc_failure_notifier").dag
    assert dag.dag_id == f"cdc_{source_id}"
    assert dag.test().state == "success"
    assert not alerts.exists()  # nothing failed, nothing said

    # bigint -> text is not BACKWARD compatible: the run holds orders, fails once, and users keep flowing.
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders ALTER COLUMN user_id TYPE text")
        conn.execute("UPDATE orders SET amount = 99, user_id = 'u-1' WHERE id = 1")
        conn.execute("UPDATE users SET name = 'still flowing' WHERE id = 1")
    held_run = dag.test()
    assert held_run.state == "failed" and failed_tasks(held_run) == ["commit"]
    message = alerts.read_text()
    assert f"DAG cdc_{source_id}, task commit, run {held_run.run_id} failed" in message
    assert f"source {source_id} paused table public.orders" in message
    assert f"{COMMAND} schema accept {source_id}.public.orders" in message
    assert f"{COMMAND} resnapshot {source_id} --table public.orders" in message
    assert_same_rows(source_url, sink_url, "users")
    with psycopg.connect(sink_url) as conn:
        assert conn.execute("SELECT amount FROM orders WHERE id = 1").fetchone()[0] != 99  # held, not applied

    slot = PgSourceOptions().effective_slot_name(source_id)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    lost_run = dag.test()
    assert lost_run.state == "failed" and failed_tasks(lost_run) == ["wait_for_changes"]
    lost = alerts.read_text()[len(message):]
    assert f"DAG cdc_{source_id}, task wait_for_changes, run {lost_run.run_id} failed" in lost
    assert f"source {source_id} lost its position (lsn=" in lost
    assert f"re-snapshot it: {COMMAND} resnapshot {source_id}." in lost and "--table" not in lost
    assert slot in lost  # the cause: the slot that is gone


# --- the notifier on its own -------------------------------------------------------------------------------------


def failed_with(error: Exception) -> BaseException:
    """``error`` as a task fails with it: an AirflowFailException whose cause is the library's error."""
    try:
        try:
            raise error
        except Exception as exc:
            raise AirflowFailException(str(exc)) from exc
    except AirflowFailException as failed:
        return failed


class Task:
    task_id = "load"
    source_id = "shop"


def test_a_held_tables_error_names_every_table_with_its_resume_commands():
    failure = describe_failure(failed_with(TablesHeldError("shop", {"public.b": "retyped", "public.a": "dropped"})))
    assert failure is not None and failure.kind == "held" and failure.tables == ("public.a", "public.b")
    lines = failure.summary().splitlines()
    assert len(lines) == 2 and lines[0].startswith("source shop paused table public.a after a schema change")
    assert f"{COMMAND} schema accept shop.public.b" in lines[1]


def test_a_sinks_table_held_takes_the_source_from_the_task():
    context = {"task": Task(), "run_id": "r1", "dag": None,
               "exception": failed_with(TableHeld("warehouse", "cannot follow", table="public.t"))}
    assert failure_message(context) == (
        "DAG ?, task load, run r1 failed: source shop paused table public.t after a schema change (its changes wait "
        f"in the sink); resume with: {COMMAND} schema accept shop.public.t (replays its held changes), or "
        f"{COMMAND} resnapshot shop --table public.t (discards them and reads the table anew)")


def test_a_lost_position_names_its_scalar_parts_and_the_resnapshot():
    error = PositionLostError("shop", {"lsn": "0/1A2B", "seq": 7, "schemas": {"x": 1}}, "slot gone")
    failure = describe_failure(failed_with(error))
    assert failure is not None and failure.kind == "position_lost"
    assert failure.summary().startswith(f"source shop lost its position (lsn=0/1A2B seq=7): the source no longer "
                                        f"has the changes after it; re-snapshot it: {COMMAND} resnapshot shop. ")
    assert "(slot gone)" in failure.summary()


def test_other_errors_give_their_first_line_and_a_dag_callback_its_reason():
    failure = describe_failure(failed_with(SourceError("shop", "connection refused\nmore detail")))
    assert failure is not None and failure.kind == "error"
    assert failure.summary() == "source 'shop': connection refused"
    assert describe_failure(ValueError("boom"), source_id="shop").summary() == "source shop: boom"
    assert describe_failure(ValueError("boom")).summary() == "boom"
    assert describe_failure(None) is None
    assert failure_message({"reason": "task_failure", "run_id": "r2"}) == "DAG ?, run r2 failed: task_failure"


def test_the_notifier_appends_each_message_to_its_rendered_path(tmp_path):
    from airflow.sdk import DAG

    notifier = CdcFailureNotifier(path=str(tmp_path / "{{ dag.dag_id }}" / "alerts.log"))
    context = {"dag": DAG("cdc_shop", schedule=None), "task": Task(), "run_id": "r3",
               "exception": failed_with(PositionLostError("shop", {"lsn": "0/1"}, "gone"))}
    notifier(context)
    notifier(context)
    lines = (tmp_path / "cdc_shop" / "alerts.log").read_text().splitlines()
    assert len(lines) == 2 and all("DAG cdc_shop, task load, run r3 failed: source shop lost its position" in line
                                   for line in lines)
