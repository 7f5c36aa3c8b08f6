"""Example: a CDC DAG that says, when it stops, which table is paused or which position was lost, and how to resume.

Every task gets :class:`~airflow_provider_cdc.notifiers.CdcFailureNotifier` as its failure callback. Two failures
need a person: a schema change the source's policy refuses holds its table (the run fails once, the other tables
keep flowing; the message names the table and the commands that resume it), and a lost position (the replication
slot was dropped, say; the message names the position and the re-snapshot command). The notifier logs the
message and appends it to a file; subclass it and override ``send`` to deliver it elsewhere.

Connections (ids changeable with ``CDC_EXAMPLE_SOURCE_CONN`` and ``CDC_EXAMPLE_SINK_CONN``)::

    airflow connections add cdc_example_source --conn-uri postgresql://cdc:secret@db:5432/shop
    airflow connections add cdc_example_sink --conn-uri postgresql://cdc:secret@warehouse:5432/warehouse

The messages go to ``CDC_EXAMPLE_ALERTS_FILE`` (default ``$AIRFLOW_HOME/cdc_alerts.log``). The source id
(``CDC_EXAMPLE_NOTIFIED_SOURCE``, default ``notified_shop``) names the DAG, the position Variable and the replication
slot. The DAG is paused when it first appears: unpause it once the Connections exist.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import DAG

from airflow_provider_cdc.config.inline import cdc_config
from airflow_provider_cdc.notifiers import CdcFailureNotifier
from airflow_provider_cdc.operators.cdc import CdcCaptureOperator, CdcCommitOperator, CdcLoadOperator
from airflow_provider_cdc.sensors.changes import CdcChangesSensor

SOURCE_ID = os.environ.get("CDC_EXAMPLE_NOTIFIED_SOURCE", "notified_shop")
SOURCE_CONN = os.environ.get("CDC_EXAMPLE_SOURCE_CONN", "cdc_example_source")
SINK_CONN = os.environ.get("CDC_EXAMPLE_SINK_CONN", "cdc_example_sink")
ALERTS_FILE = os.environ.get("CDC_EXAMPLE_ALERTS_FILE",
                             os.path.join(os.environ.get("AIRFLOW_HOME", "~/airflow"), "cdc_alerts.log"))

NOTIFIED_SHOP = cdc_config(
    source_id=SOURCE_ID,
    source_conn_id=SOURCE_CONN,
    tables=["users", "orders"],
    sink_conn_id=SINK_CONN,
    target_schema="public",
    # The schema gate's defaults, spelled out: a change that BACKWARD compatibility refuses (a column retyped from
    # bigint to text, say) holds its table.
    schema_changes={"mode": "evolve", "compatibility": "BACKWARD"},
)

# [START howto_cdc_failure_notifier]
with DAG(
    dag_id=f"cdc_{SOURCE_ID}",
    schedule="@continuous",
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    default_args={
        "retries": 3,
        "retry_delay": dt.timedelta(seconds=15),
        # Held tables and lost positions fail their task at once (no retries): the callback runs then.
        "on_failure_callback": CdcFailureNotifier(path=ALERTS_FILE),
    },
    tags=["cdc", "example"],
    doc_md=__doc__,
) as dag:
    pipeline = {"source_id": SOURCE_ID, "cdc_config": NOTIFIED_SHOP}
    wait = CdcChangesSensor(task_id="wait_for_changes", poke_interval=5, timeout=365 * 24 * 3600, **pipeline)
    capture = CdcCaptureOperator(task_id="capture", **pipeline)
    load = CdcLoadOperator(task_id="load", manifest_uri=capture.output, **pipeline)
    commit = CdcCommitOperator(task_id="commit", manifest_uri=capture.output, newly_held=load.output, **pipeline)
    wait >> capture
    load >> commit
# [END howto_cdc_failure_notifier]
