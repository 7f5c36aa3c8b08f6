"""Example: a CDC DAG written by hand, without YAML, and a dbt-style SQL step after the load.

The pipeline's config is given inline (:func:`~airflow_provider_cdc.config.inline.cdc_config`), with Airflow
Connections for the source and the sink; the tasks are the provider's operators, wired as any Airflow DAG is, and
the last one is ordinary SQL on the sink that runs only after a batch was committed. The guarantees are the YAML
factory's: each task checks the inline config with the same loader, and load and commit keep exactly-once.

Connections (ids changeable with ``CDC_EXAMPLE_SOURCE_CONN`` and ``CDC_EXAMPLE_SINK_CONN``)::

    airflow connections add cdc_example_source --conn-uri postgresql://cdc:secret@db:5432/shop
    airflow connections add cdc_example_sink --conn-uri postgresql://cdc:secret@warehouse:5432/warehouse
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import DAG, task

from airflow_provider_cdc.config.inline import cdc_config
from airflow_provider_cdc.operators.cdc import (
    CdcCaptureOperator,
    CdcCommitOperator,
    CdcLoadOperator,
    CdcStageOperator,
)
from airflow_provider_cdc.sensors.changes import CdcChangesSensor
from airflow_provider_cdc.summaries import CommitResult, LoadResult

# The source id names the replication slot, which is per server: two deployments of this file on one server need two.
SOURCE_ID = os.environ.get("CDC_EXAMPLE_HANDWRITTEN_SOURCE", "handwritten_shop")
SOURCE_CONN = os.environ.get("CDC_EXAMPLE_SOURCE_CONN", "cdc_example_source")
SINK_CONN = os.environ.get("CDC_EXAMPLE_SINK_CONN", "cdc_example_sink")

SHOP = cdc_config(
    source_id=SOURCE_ID,
    source_conn_id=SOURCE_CONN,
    tables=["users", "orders"],
    sink_conn_id=SINK_CONN,
    target_schema="public",
    batch_size=50_000,
    rules=[{
        "rule_id": "mask_email",
        "name": "Mask Email Addresses",
        "rule_type": "map",
        "tables": ["users"],
        "source_fields": ["email"],
        "target_field": "masked_email",
        "expression": "{{ email.split('@')[0][:3] }}***@{{ email.split('@')[1] }}",
    }],
    suites=[{"id": "orders_checks", "tables": ["orders"],
             "rules": [{"type": "range", "column": "amount", "min": 0, "policy": "quarantine"}]}],
)
PIPELINE = {"source_id": SOURCE_ID, "cdc_config": SHOP}

with DAG(
    dag_id="cdc_handwritten_shop",
    schedule="@continuous",
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,  # unpause it once its Connections exist
    default_args={"retries": 3, "retry_delay": dt.timedelta(seconds=15)},
    tags=["cdc", "example"],
    doc_md=__doc__,
) as dag:
    wait = CdcChangesSensor(task_id="wait_for_changes", poke_interval=5, timeout=3600, **PIPELINE)
    capture = CdcCaptureOperator(task_id="capture", **PIPELINE)
    # One task per stage of the stage list: rules, then quality. Each takes the upstream task's summary (its XCom,
    # a small dict with the staged batch's manifest_uri), which also sets the dependency.
    transform = CdcStageOperator(task_id="transform", stage="transform", manifest_uri=capture.output, **PIPELINE)
    validate = CdcStageOperator(task_id="validate", stage="validate", manifest_uri=transform.output, **PIPELINE)
    load = CdcLoadOperator(task_id="load", manifest_uri=validate.output, **PIPELINE)
    commit = CdcCommitOperator(task_id="commit", manifest_uri=validate.output, newly_held=load.output, **PIPELINE)
    # The dbt-style step: a model rebuilt from the sink's tables once the batch is committed.
    orders_by_status = SQLExecuteQueryOperator(
        task_id="orders_by_status",
        conn_id=SINK_CONN,
        sql="""
            CREATE TABLE IF NOT EXISTS public.orders_by_status (status text PRIMARY KEY, orders bigint,
                                                                 amount numeric, refreshed_at timestamptz);
            DELETE FROM public.orders_by_status;
            INSERT INTO public.orders_by_status
            SELECT status, count(*), sum(amount), now() FROM public.orders GROUP BY status;
        """,
    )

    @task
    def batch_report(load_xcom: dict, commit_xcom: dict) -> dict:
        """A TaskFlow step reading the operators' XCom through the typed views."""
        loaded, committed = LoadResult.of(load_xcom), CommitResult.of(commit_xcom)
        return {"batch_id": loaded.batch_id, "upserted": loaded.upserted, "deleted": loaded.deleted,
                "replayed": not loaded.applied, "position_stored": committed.position_stored}

    wait >> capture
    load >> commit >> orders_by_status
    batch_report(load.output, commit.output)
