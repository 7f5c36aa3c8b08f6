"""Airflow Assets of a CDC pipeline: its sink tables are outlets of ``load`` (staged) and ``fused``, its source tables
inlets of ``capture`` and ``fused``, each with the URI its database provider registers
(:func:`airflow_provider_cdc.lineage.naming.asset_uri`: ``postgres://host:port/database/schema/table``, ...). So the
Airflow UI's asset graph shows ``cdc_<source>`` feeding its sink tables, and a DAG can be scheduled on a sink table::

    from airflow_provider_cdc.assets import cdc_sink_asset

    with DAG("orders_report", schedule=[cdc_sink_asset("shop", "public.orders")]): ...

Every successful load emits one asset event per sink table, whose ``extra`` carries that table's counts in the batch
(:func:`table_event_extra`; zeros when the batch did not touch it: Airflow emits an event for every outlet of a task
that succeeds), so a consumer can tell what landed.

The URIs need the sink's and the source's host, port and database at DAG parse time: a ``connection_string`` gives
them, an Airflow Connection (``conn_id``) is looked up. When that fails the DAG still loads, without assets, and the
reason is logged: lineage never stops a pipeline. No URI holds a credential.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset

from airflow_provider_cdc.lineage.naming import asset_uri, sink_asset_uri

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig, SourceConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PipelineAssets:
    """A source's assets: source table, qualified as its batches name it (``public.users``, ``shop.users``) -> its
    source asset and its sink asset; ``names``: each ``tables`` entry of cdc.yaml -> that qualified name."""

    sources: dict[str, Asset]
    sinks: dict[str, Asset]
    names: dict[str, str]

    @property
    def inlets(self) -> list[Asset]:
        return list(self.sources.values())

    @property
    def outlets(self) -> list[Asset]:
        return list(self.sinks.values())


def pipeline_assets(config: CdcConfig, source: SourceConfig) -> PipelineAssets:
    """The assets of ``source``'s tables. Raises when a connection cannot be resolved or names no database."""
    from airflow_provider_cdc.hooks.cdc import entry_dsn
    from airflow_provider_cdc.lineage.naming import qualified_table

    source_url = entry_dsn(config, source)
    sink = config.connector(source.sink)
    sink_url = entry_dsn(config, sink)
    sources: dict[str, Asset] = {}
    sinks: dict[str, Asset] = {}
    names: dict[str, str] = {}
    for table in source.tables:
        if "*" in table:  # a pattern (MongoDB's db.*) names no one table: its tables appear as they are captured
            continue
        qualified = names[table] = qualified_table(source.type, source_url, table)
        sources[qualified] = Asset(uri=asset_uri(source.type, source_url, table), group="cdc")
        sinks[qualified] = Asset(uri=sink_asset_uri(sink.type, sink_url, source.target_schema, qualified),
                                 group="cdc")
    return PipelineAssets(sources, sinks, names)


def assets_or_none(config: CdcConfig, source: SourceConfig) -> PipelineAssets | None:
    """:func:`pipeline_assets`, or None (logged) when they cannot be named at parse time."""
    try:
        return pipeline_assets(config, source)
    except Exception as exc:
        from airflow_provider_cdc.config.models import mask_url

        log.warning("source %s: its tables are not declared as Airflow assets (%s: %s); the pipeline runs as usual",
                    source.id, type(exc).__name__, " ".join(mask_url(word) for word in str(exc).split()))
        return None


def cdc_sink_asset(source_id: str, table: str, config_dir: str | None = None) -> Asset:
    """The asset of the sink table that ``source_id``'s ``table`` (as in its ``tables``) lands in: schedule a DAG on
    it to run when a batch lands. ``config_dir`` defaults as for the CDC DAGs (``CDC_CONFIG_DIR``, else
    ``include/config``)."""
    from airflow_provider_cdc.config import load_config
    from airflow_provider_cdc.dag_factory import default_config_dir

    config = load_config(config_dir or default_config_dir())
    source = config.source(source_id)
    assets = pipeline_assets(config, source)
    qualified = assets.names.get(table, table)
    if qualified not in assets.sinks:
        raise KeyError(f"source {source_id!r} captures no table {table!r}; its tables: "
                       f"{', '.join(assets.names) or 'none'} (as written in cdc.yaml)")
    return assets.sinks[qualified]


def table_event_extra(source_id: str, summary: Mapping[str, Any], table: str) -> dict[str, Any]:
    """The ``extra`` of one sink table's asset event after a load: the batch and what it did to that table.

    ``summary``: load's result (``ApplyResult.to_dict()`` plus ``empty``), or fused's summary (which holds it under
    ``load``); ``table`` qualified as the batch names it (``public.users``)."""
    nested = summary.get("load")
    load: Mapping[str, Any] = nested if isinstance(nested, Mapping) else summary
    stats = (load.get("tables") or {}).get(table) or {}
    held = (load.get("held_tables") or {}).get(table)
    extra: dict[str, Any] = {
        "source_id": source_id,
        "table": table,
        "batch_id": load.get("batch_id") or summary.get("batch_id"),
        "applied": bool(load.get("applied")),
        "upserted": int(stats.get("upserted") or 0),
        "deleted": int(stats.get("deleted") or 0),
        "truncated": bool(stats.get("truncates")),
        "skipped_replayed": int(stats.get("skipped_replayed") or 0),
    }
    if held:
        extra["held"] = held
    return extra


def record_asset_events(context: Mapping[str, Any], assets: PipelineAssets | None, source_id: str,
                        summary: Mapping[str, Any], outlets: list[Any]) -> None:
    """Put each declared sink asset's counts (:func:`table_event_extra`) on its asset event of this task."""
    if assets is None or not outlets or "outlet_events" not in context:
        return
    declared = {getattr(outlet, "uri", None) for outlet in outlets}
    events = context["outlet_events"]
    for table, asset in assets.sinks.items():
        if asset.uri in declared:
            events[asset].extra.update(table_event_extra(source_id, summary, table))
