"""Example: one fused CDC task mapped over several sources (dynamic task mapping), each with its inline config.

Every mapped instance is a whole pipeline of its own (its slot, position, ledger rows), loading into its own target
schema of one sink. With a Celery or Kubernetes executor the instances run on different workers.

The sources are ``[source_id, connection id, target schema]`` triples, from ``CDC_EXAMPLE_MAPPED_SOURCES`` (JSON) or
the two below; the sink's Connection id from ``CDC_EXAMPLE_SINK_CONN``.
"""

from __future__ import annotations

import datetime as dt
import json
import os

from airflow.sdk import DAG

from airflow_provider_cdc.config.inline import cdc_config
from airflow_provider_cdc.operators.cdc import CdcFusedOperator

SINK_CONN = os.environ.get("CDC_EXAMPLE_SINK_CONN", "cdc_example_sink")
SOURCES = json.loads(os.environ.get("CDC_EXAMPLE_MAPPED_SOURCES") or json.dumps([
    ["shop_east", "cdc_example_east", "east"],
    ["shop_west", "cdc_example_west", "west"],
]))

with DAG(
    dag_id="cdc_mapped_sources",
    schedule="@continuous",
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,  # unpause it once its Connections exist
    tags=["cdc", "example"],
    doc_md=__doc__,
) as dag:
    CdcFusedOperator.partial(task_id="fused", retries=3).expand_kwargs([
        {"source_id": source_id,
         "cdc_config": cdc_config(source_id=source_id, source_conn_id=conn_id, tables=["users", "orders"],
                                  sink_conn_id=SINK_CONN, target_schema=schema, mode="fused")}
        for source_id, conn_id, schema in SOURCES
    ])
