"""A CDC pipeline's config as arguments, for DAGs written by hand without YAML.

:func:`cdc_config` builds the four config documents (``cdc.yaml``, ``connectors.yaml``, ``transformations.yaml``,
``quality.yaml``) from keyword arguments, with Airflow Connections for the source and the sink. The operators and the
sensor take the result as ``cdc_config=``; each task checks it with the very loader the YAML goes through
(:func:`~airflow_provider_cdc.config.loader.load_config` with ``documents=``), so the pipeline is the same and every
problem is reported the same way, naming the document and key::

    from airflow_provider_cdc.config.inline import cdc_config

    shop = cdc_config(
        source_id="shop", source_conn_id="shop_db", tables=["users", "orders"],
        sink_conn_id="warehouse", target_schema="public", batch_size=10_000,
        rules=[{"rule_id": "mask_email", "rule_type": "map", "source_fields": ["email"],
                "target_field": "masked_email", "expression": "{{ email[:3] }}***"}],
    )

The documents are plain JSON-safe data (connection ids, not secrets), so they travel in serialized DAGs and trigger
arguments. The YAML files stay the shortcut for many sources; this is the way for one DAG that owns its pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


def _entries(value: Sequence[Mapping[str, Any]] | str | Path | None, key: str) -> list[dict[str, Any]]:
    """Rules or suites given inline (a list of mappings) or as a YAML file of the YAML layout (its ``key:`` list)."""
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        path = Path(value)
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        items = document.get(key) if isinstance(document, Mapping) else document
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a top-level '{key}:' list")
        return [dict(item) for item in items]
    return [dict(item) for item in value]


def cdc_config(
    *,
    source_id: str,
    tables: Sequence[str],
    source_conn_id: str | None = None,
    source_url: str | None = None,
    source_type: str = "postgresql",
    sink_conn_id: str | None = None,
    sink_url: str | None = None,
    sink_type: str = "postgresql",
    sink_id: str | None = None,
    rules: Sequence[Mapping[str, Any]] | str | Path | None = None,
    suites: Sequence[Mapping[str, Any]] | str | Path | None = None,
    schema_changes: Mapping[str, Any] | None = None,
    sink_options: Mapping[str, Any] | None = None,
    **source: Any,
) -> dict[str, Any]:
    """The config documents of one source and its sink (see the module docstring).

    :param source_id: the source's id (positions, ledger rows and batch ids carry it)
    :param tables: tables to capture (``users``, ``public.users``; MongoDB: ``collection`` or ``db.collection``)
    :param source_conn_id: the Airflow Connection of the source (or ``source_url``, a driver URL, e.g. ``${ENV}``)
    :param source_type: ``postgresql``, ``mysql`` or ``mongodb``
    :param sink_conn_id: the Airflow Connection of the sink (or ``sink_url``; a ``file`` sink: a Delta table root)
    :param sink_type: ``postgresql``, ``mysql``, ``mongodb`` or ``file``
    :param sink_id: the sink connector's id (default: ``sink_conn_id``, else ``<source_id>_sink``)
    :param rules: transformation rules as in transformations.yaml, inline or the path of such a file
    :param suites: quality suites as in quality.yaml, inline or the path of such a file
    :param schema_changes: the source's ``schema_changes:`` (mode, compatibility, table_compatibility)
    :param sink_options: the sink connector's ``options:``
    :param source: any other key of a cdc.yaml source (``batch_size``, ``target_schema``, ``mode``, ``snapshot``,
        ``delete_mode``, ``transformations``, ``quality``, ``options``, ``schedule``, ``loop_seconds``...)
    """
    sink = sink_id or sink_conn_id or f"{source_id}_sink"
    connector: dict[str, Any] = {"id": sink, "type": sink_type}
    if sink_conn_id is not None:
        connector["conn_id"] = sink_conn_id
    if sink_url is not None:
        connector["connection_string"] = sink_url
    if sink_options:
        connector["options"] = dict(sink_options)
    entry: dict[str, Any] = {"id": source_id, "type": source_type, "tables": list(tables), "sink": sink,
                             **{key: value for key, value in source.items() if value is not None}}
    if source_conn_id is not None:
        entry["conn_id"] = source_conn_id
    if source_url is not None:
        entry["connection_string"] = source_url
    if schema_changes:
        entry["schema_changes"] = dict(schema_changes)
    return {
        "cdc.yaml": {"sources": [entry]},
        "connectors.yaml": {"connectors": [connector]},
        "transformations.yaml": {"rules": _entries(rules, "rules")},
        "quality.yaml": {"suites": _entries(suites, "suites")},
    }
