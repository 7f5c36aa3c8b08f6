"""Example: a fused, low-latency CDC DAG. One task captures, transforms, loads and commits batch after batch.

A staged DAG pays the scheduler for every batch: a new DAG run, the sensor, one task start per stage. With
``mode="fused"`` and ``loop_seconds`` one run does all of it in a single task, and that task keeps going, polling the
source every ``poll_interval`` and committing each batch on its own, until ``loop_seconds`` have passed. A change
then waits only for the next poll and its own batch. The guarantees stay the staged DAG's: every batch has its
ledger row and stored position before the next one is captured.

Connections (ids changeable with ``CDC_EXAMPLE_SOURCE_CONN`` and ``CDC_EXAMPLE_SINK_CONN``)::

    airflow connections add cdc_example_source --conn-uri postgresql://cdc:secret@db:5432/shop
    airflow connections add cdc_example_sink --conn-uri postgresql://cdc:secret@warehouse:5432/warehouse

The source id (``CDC_EXAMPLE_FUSED_SOURCE``, default ``fused_shop``) names the DAG (``cdc_<source id>``), the
position Variable and the replication slot. A slot is named for the whole PostgreSQL server, so two deployments
of this DAG on one server need two source ids. ``CDC_EXAMPLE_LOOP_SECONDS`` sets the loop (default 120 seconds).
The DAG is paused when it first appears: unpause it once the Connections exist.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG

from airflow_provider_cdc.config.inline import cdc_config
from airflow_provider_cdc.operators.cdc import CdcFusedOperator
from airflow_provider_cdc.sensors.changes import CdcChangesSensor

SOURCE_ID = os.environ.get("CDC_EXAMPLE_FUSED_SOURCE", "fused_shop")
SOURCE_CONN = os.environ.get("CDC_EXAMPLE_SOURCE_CONN", "cdc_example_source")
SINK_CONN = os.environ.get("CDC_EXAMPLE_SINK_CONN", "cdc_example_sink")
LOOP_SECONDS = float(os.environ.get("CDC_EXAMPLE_LOOP_SECONDS", "120"))
TABLES = ["users", "orders"]

# [START howto_cdc_fused]
FUSED_SHOP = cdc_config(
    source_id=SOURCE_ID,
    source_conn_id=SOURCE_CONN,
    tables=TABLES,
    sink_conn_id=SINK_CONN,
    target_schema="public",
    mode="fused",
    loop_seconds=LOOP_SECONDS,  # one run loads batch after batch this long
    poll_interval=0.5,  # seconds between looks at the source while the loop is idle
    batch_size=10_000,
    rules=[{
        "rule_id": "mask_email",
        "rule_type": "map",
        "tables": ["users"],
        "source_fields": ["email"],
        "target_field": "masked_email",
        "expression": "{{ email.split('@')[0][:3] }}***@{{ email.split('@')[1] }}",
    }],
)

with DAG(
    dag_id=f"cdc_{SOURCE_ID}",
    schedule="@continuous",
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    default_args={"retries": 3, "retry_delay": dt.timedelta(seconds=15), "retry_exponential_backoff": True},
    tags=["cdc", "example"],
    doc_md=__doc__,
) as dag:
    wait = CdcChangesSensor(task_id="wait_for_changes", source_id=SOURCE_ID, cdc_config=FUSED_SHOP,
                            poke_interval=1, timeout=365 * 24 * 3600)
    fused = CdcFusedOperator(task_id="fused", source_id=SOURCE_ID, cdc_config=FUSED_SHOP)
    wait >> fused
# [END howto_cdc_fused]
