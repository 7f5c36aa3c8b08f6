"""Example: a DAG scheduled on a CDC sink table. It runs when a batch of ``cdc_shop`` lands in the warehouse's
``public.orders`` and reports what landed, from the asset events' counts.

``cdc_sink_asset(source_id, table)`` names the sink table's asset exactly as the CDC DAG's ``load`` task declares it
(the postgres provider's ``postgres://host:port/database/schema/table``). Use it to start what depends on fresh data:
a dbt build, a report, a cache refresh.

The source and table may be changed with ``CDC_EXAMPLE_SOURCE`` and ``CDC_EXAMPLE_TABLE``; when the config has no
such source, this file defines no DAG (and says why in the DAG processor's log).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task

from airflow_provider_cdc.assets import cdc_sink_asset
from airflow_provider_cdc.dag_factory import START_DATE, default_config_dir

log = logging.getLogger(__name__)

SOURCE_ID = os.environ.get("CDC_EXAMPLE_SOURCE", "shop")
TABLE = os.environ.get("CDC_EXAMPLE_TABLE", "public.orders")


def landed(events: Any) -> dict[str, Any]:
    """What the triggering batches did to the table: batches, rows upserted and deleted (from each event's extra)."""
    extras = [event.extra or {} for event in events]
    return {
        "batches": sorted({str(extra.get("batch_id")) for extra in extras if extra.get("batch_id")}),
        "upserted": sum(int(extra.get("upserted") or 0) for extra in extras),
        "deleted": sum(int(extra.get("deleted") or 0) for extra in extras),
        "held": [extra["held"] for extra in extras if extra.get("held")],
    }


try:
    orders = cdc_sink_asset(SOURCE_ID, TABLE, default_config_dir(Path(__file__).resolve().parent.parent))
except Exception as exc:  # no such source or table in this config: nothing to schedule on
    log.info("cdc_orders_landed: no DAG (%s: %s)", type(exc).__name__, exc)
else:
    with DAG(
        dag_id="cdc_orders_landed",
        schedule=[orders],
        start_date=START_DATE,
        catchup=False,
        tags=["cdc", "example"],
        doc_md=__doc__,
    ):

        @task
        def report(**context: Any) -> dict[str, Any]:
            result = landed(context["triggering_asset_events"][orders])
            log.info("%s: %d batches landed: %d rows upserted, %d deleted%s", TABLE, len(result["batches"]),
                     result["upserted"], result["deleted"],
                     f"; held: {result['held']}" if result["held"] else "")
            return result

        report()
