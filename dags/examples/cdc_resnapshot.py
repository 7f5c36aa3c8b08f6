"""Example: a re-snapshot DAG that a user triggers from the UI, with the table and the reason as params.

It re-snapshots the pipeline of ``cdc_fused_shop.py`` (the same source id, Connections and tables): one table, whose
sink table is truncated and read anew by the pipeline's next run while the other tables keep streaming, or the whole
source (the recovery after a lost position). The work is the ``resnapshot`` command's own
(``python -m airflow_provider_cdc resnapshot``), and the reason goes into the sink's audit trail with the user who
triggered the run.

Pause the pipeline's DAG and let its run finish first: the task refuses while a run of it is running (a run that
commits after the re-snapshot would store an old position), unless triggered with ``force``.

In a DAG bundle of your own, build the pipeline's config once in a module that the pipeline's DAG file and this one
both import. The examples are self-contained, so this file repeats the entries a re-snapshot reads: the source
id, its Connections, its tables and the sink's schema (``CDC_EXAMPLE_FUSED_SOURCE``, ``CDC_EXAMPLE_SOURCE_CONN``
and ``CDC_EXAMPLE_SINK_CONN``, as there).
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG, Param

from airflow_provider_cdc.config.inline import cdc_config
from airflow_provider_cdc.operators.resnapshot import CdcResnapshotOperator

SOURCE_ID = os.environ.get("CDC_EXAMPLE_FUSED_SOURCE", "fused_shop")
SOURCE_CONN = os.environ.get("CDC_EXAMPLE_SOURCE_CONN", "cdc_example_source")
SINK_CONN = os.environ.get("CDC_EXAMPLE_SINK_CONN", "cdc_example_sink")
TABLES = ["users", "orders"]

SHOP = cdc_config(source_id=SOURCE_ID, source_conn_id=SOURCE_CONN, tables=TABLES, sink_conn_id=SINK_CONN,
                  target_schema="public")

# [START howto_cdc_resnapshot]
with DAG(
    dag_id=f"cdc_{SOURCE_ID}_resnapshot",
    schedule=None,  # triggered by a person, from the UI or the REST API
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    params={
        "table": Param("", type="string", enum=["", *TABLES], title="Table",
                       values_display={"": "every table (the whole source)"},
                       description="The table to read anew; the others keep streaming."),
        "reason": Param(type="string", minLength=3, title="Reason",
                        description="Why: the audit trail keeps it with your user name."),
        "force": Param(False, type="boolean", title="Force",
                       description=f"Go ahead even while a run of cdc_{SOURCE_ID} is running."),
    },
    tags=["cdc", "example"],
    doc_md=__doc__,
) as dag:
    CdcResnapshotOperator(
        task_id="resnapshot",
        source_id=SOURCE_ID,
        cdc_config=SHOP,
        tables="{{ params.table }}",
        reason="{{ params.reason }}",
        force="{{ params.force }}",
    )
# [END howto_cdc_resnapshot]
