"""dags/examples/cdc_resnapshot.py run with ``dag.test(run_conf=...)`` against real PostgreSQL: after the sink of the
fused example's pipeline diverged, the re-snapshot DAG (table and reason as params) truncates the table and queues
it for a new snapshot, refusing while a run of the pipeline's DAG is running; the pipeline's next run makes the sink
equal to the source again, and the audit trail keeps the reason. Then the operator's checks that need no server."""

from __future__ import annotations

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException
from cdc_testing import assert_same_rows, create_shop

from airflow_provider_cdc.config.inline import cdc_config
from airflow_provider_cdc.operators.resnapshot import CdcResnapshotOperator, is_true, tables_of

REASON = "rows deleted in the warehouse by hand"


def set_run_state(dag_id: str, run_id: str, state: str) -> None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id == run_id).one()
        run.state = state


def sink_count(sink_url: str, query: str) -> int:
    with psycopg.connect(sink_url) as conn:
        return conn.execute(query).fetchone()[0]


def test_the_resnapshot_example_reads_the_fused_examples_pipeline(examples):
    fused, again = examples.load("cdc_fused_shop"), examples.load("cdc_resnapshot")
    assert again.SHOP["connectors.yaml"] == fused.FUSED_SHOP["connectors.yaml"]
    pipeline, resnapshot = fused.FUSED_SHOP["cdc.yaml"]["sources"][0], again.SHOP["cdc.yaml"]["sources"][0]
    for key in ("id", "type", "conn_id", "tables", "sink", "target_schema", "options", "snapshot"):
        assert resnapshot.get(key) == pipeline.get(key), key
    assert again.dag.dag_id == f"{fused.dag.dag_id}_resnapshot" and again.dag.schedule is None
    assert again.dag.params.get_param("table").schema["enum"] == ["", *pipeline["tables"]]


@pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)
def test_a_diverged_table_is_read_anew_after_the_resnapshot_dag(pg_database_factory, examples):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=20, orders=40)
    examples.use(source_url, sink_url, CDC_EXAMPLE_LOOP_SECONDS="0")
    source_id = examples.fused_source
    pipeline, resnapshot = examples.load("cdc_fused_shop").dag, examples.load("cdc_resnapshot").dag
    first = pipeline.test()
    assert first.state == "success"
    assert_same_rows(source_url, sink_url, "orders")

    with psycopg.connect(sink_url, autocommit=True) as conn:  # the sink diverges
        conn.execute("DELETE FROM orders WHERE id <= 5")
        conn.execute("UPDATE orders SET amount = -1 WHERE id = 10")
    with psycopg.connect(source_url, autocommit=True) as conn:  # and users keep changing
        conn.execute("UPDATE users SET name = 'renamed' WHERE id = 2")

    # While a run of the pipeline's DAG is running, the re-snapshot refuses and changes nothing.
    set_run_state(pipeline.dag_id, first.run_id, "running")
    try:
        refused = resnapshot.test(run_conf={"table": "orders", "reason": REASON})
    finally:
        set_run_state(pipeline.dag_id, first.run_id, "success")
    assert refused.state == "failed"
    assert sink_count(sink_url, "SELECT count(*) FROM orders") == 35
    assert sink_count(sink_url, "SELECT count(*) FROM _cdc_audit WHERE action = 'resnapshot_started'") == 0

    done = resnapshot.test(run_conf={"table": "orders", "reason": REASON})
    assert done.state == "success"
    assert sink_count(sink_url, "SELECT count(*) FROM orders") == 0  # truncated, queued for a new snapshot
    assert sink_count(sink_url, "SELECT count(*) FROM users") == 20  # the other table untouched
    with psycopg.connect(sink_url) as conn:
        entries = conn.execute("SELECT actor, run_id, details FROM _cdc_audit WHERE source_id = %s AND action = "
                               "'resnapshot_started' ORDER BY at", (source_id,)).fetchall()
    [(actor, run_id, details)] = entries  # one entry per re-snapshot, with who asked, why, and the steps done
    assert actor == "dag_test" and run_id == done.run_id  # the user who triggered it (dag.test's)
    assert {key: details[key] for key in ("reason", "tables", "whole_source", "requested_by_dag")} == {
        "reason": REASON, "tables": ["public.orders"], "whole_source": False,
        "requested_by_dag": f"cdc_{source_id}_resnapshot"}
    assert details["steps"]

    assert pipeline.test().state == "success"
    for table in ("users", "orders"):
        assert_same_rows(source_url, sink_url, table)


# --- the operator's checks before any server -----------------------------------------------------------------------

SHOP = cdc_config(source_id="shop", source_conn_id="src", tables=["users", "orders"], sink_conn_id="wh")


def test_a_resnapshot_without_a_reason_or_of_an_unknown_table_is_refused_before_any_step():
    blank = CdcResnapshotOperator(task_id="r", source_id="shop", cdc_config=SHOP, reason="  ", tables="orders")
    with pytest.raises(AirflowFailException, match="give a reason"):
        blank.execute({})
    unknown = CdcResnapshotOperator(task_id="u", source_id="shop", cdc_config=SHOP, reason="why", tables="nope")
    with pytest.raises(AirflowFailException, match=r"not a configured table of this source: nope \(configured: "
                                                   r"public.orders, public.users\)"):
        unknown.execute({})


def test_rendered_params_become_tables_and_flags():
    assert tables_of("") is None and tables_of(None) is None and tables_of("None") is None
    assert tables_of("orders") == ["orders"] and tables_of(" users, public.orders ") == ["users", "public.orders"]
    assert tables_of(["users"]) == ["users"]
    assert is_true("True") and is_true(True) and not is_true("False") and not is_true("")
