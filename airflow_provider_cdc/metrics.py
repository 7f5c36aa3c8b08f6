"""The CDC metrics, sent through Airflow's ``Stats`` (StatsD or OpenTelemetry, as Airflow's ``[metrics]`` says).

One call per loaded batch, :func:`emit_batch_metrics`, from the load task (staged mode) and after each batch of a
fused run; the validate stage's :func:`emit_quality_stats` runs where the stage runs. Each metric is sent twice: with
tags ``source`` (and ``table``), and under a name suffixed ``.<source_id>[.<schema.table>]`` made StatsD-safe, for
StatsD without tags.

=============================  =======  ===================================================================
``cdc.events_processed``       counter  changes the sink applied, per table (the load's per-table counts)
``cdc.events_per_second``      gauge    the batch's changes over the seconds from its capture to the end of its
                                        load (staged: the capture time the manifest noted; fused: the load)
``cdc.transform.failures``     counter  changes the transform stage quarantined or failed in the batch (staged:
                                        the manifest's facts; fused: the summary's ``quarantined``)
``cdc.lag_seconds``            gauge    now minus the newest source commit time of the batch (``_cdc_ts_ms``;
                                        fused: the summary's ``newest_ts_ms``)
``cdc.quality.*``              both     the validate stage's counts and ``cdc.quality.score`` per table
=============================  =======  ===================================================================

A metric fails nothing: the batch is loaded by the time they are sent, so anything going wrong here is logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from airflow_provider_cdc.connectors.audit import CAPTURE, FACTS_KEY

log = logging.getLogger("airflow_provider_cdc.metrics")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _suffix(*parts: str) -> str:
    """``.<source_id>.<schema.table>`` with the characters StatsD refuses replaced."""
    return _UNSAFE.sub("_", ".".join(parts))[:200]


def _stats() -> Any:
    from airflow.sdk.observability.stats import Stats

    return Stats


def emit_quality_stats(source_id: str, stage_versions: Mapping[str, Any] | None) -> None:
    """The validate stage's metrics of one batch as Airflow metrics: counters ``cdc.quality.evaluated``,
    ``.passed``, ``.failed`` and ``.warned``, and the gauge ``cdc.quality.score``, each per table (tags ``source``
    and ``table``, and the same names suffixed ``.<source_id>.<schema.table>`` for StatsD without tags)."""
    metrics = ((stage_versions or {}).get("validate") or {}).get("metrics") or {}
    if not metrics:
        return
    stats = _stats()
    for table, counts in metrics.items():
        tags = {"source": source_id, "table": table}
        suffix = _suffix(source_id, table)
        for name in ("evaluated", "passed", "failed", "warned"):
            count = int(counts.get(name) or 0)
            stats.incr(f"cdc.quality.{name}", count, tags=tags)
            stats.incr(f"cdc.quality.{name}.{suffix}", count)
        stats.gauge("cdc.quality.score", float(counts.get("score", 1.0)), tags=tags)
        stats.gauge(f"cdc.quality.score.{suffix}", float(counts.get("score", 1.0)))


def batch_metrics(summary: Mapping[str, Any], manifest: Mapping[str, Any] | None = None, *,
                  newest_ts_ms: int | None = None, now: float | None = None) -> dict[str, Any]:
    """What :func:`emit_batch_metrics` sends for one batch, as plain values (None: not known for this batch).

    ``summary``: the load's (staged) or a fused batch's summary (:func:`~airflow_provider_cdc.pipeline.run_fused`'s:
    ``newest_ts_ms`` and the per-stage ``quarantined`` counts); ``manifest``: the staged batch's manifest (its audit
    facts: capture time, the transform stage's quarantined changes)."""
    now = time.time() if now is None else now
    nested = summary.get("load")
    load: Mapping[str, Any] = nested if isinstance(nested, Mapping) else summary
    applied = bool(load.get("applied"))
    tables = {str(t): int((s or {}).get("events") or 0) for t, s in (load.get("tables") or {}).items()} \
        if applied else {}
    events = sum(tables.values())
    facts = (manifest or {}).get(FACTS_KEY) or {}
    captured_at = _epoch((facts.get(CAPTURE) or {}).get("at"))
    seconds = now - captured_at if captured_at is not None else float(load.get("seconds") or 0.0)
    transform = facts.get("transform") if isinstance(facts.get("transform"), Mapping) else None
    # A fused batch has no manifest: its summary carries what each stage quarantined and its newest commit time.
    by_stage = summary.get("quarantined")
    if transform is None and isinstance(by_stage, Mapping) and "transform" in by_stage:
        transform = {"quarantined": by_stage["transform"]}
    if newest_ts_ms is None and isinstance(summary.get("newest_ts_ms"), int):
        newest_ts_ms = summary["newest_ts_ms"]
    return {
        "events_processed": tables,
        "events_per_second": events / seconds if applied and seconds > 0 else None,
        "transform_failures": int(transform.get("quarantined") or 0) if transform is not None else None,
        "lag_seconds": max(0.0, now - newest_ts_ms / 1000.0) if newest_ts_ms else None,
    }


def emit_batch_metrics(source_id: str, summary: Mapping[str, Any] | None, manifest_uri: str | None = None) -> None:
    """Send the metrics of one loaded batch (see the module docstring): ``summary`` is the load task's (with the
    ``manifest_uri`` it loaded) or a fused batch's (its quality metrics too: the validate stage ran in that task)."""
    if not summary:
        return
    try:
        manifest = _read_manifest(manifest_uri) if manifest_uri else None
        values = batch_metrics(summary, manifest, newest_ts_ms=_newest_ts_ms(manifest_uri, manifest))
        stats = _stats()
        source_tags = {"source": source_id}
        for table, count in values["events_processed"].items():
            stats.incr("cdc.events_processed", count, tags={**source_tags, "table": table})
            stats.incr(f"cdc.events_processed.{_suffix(source_id, table)}", count)
        for name, key, send in (("cdc.events_per_second", "events_per_second", stats.gauge),
                                ("cdc.transform.failures", "transform_failures", stats.incr),
                                ("cdc.lag_seconds", "lag_seconds", stats.gauge)):
            value = values[key]
            if value is not None:
                send(name, value, tags=source_tags)
                send(f"{name}.{_suffix(source_id)}", value)
        emit_quality_stats(source_id, summary.get("stage_versions"))
    except Exception as exc:  # the batch is loaded: a metric must not fail (or retry) the task
        log.warning("source %s: metrics of batch %s not sent (%s: %s)", source_id, summary.get("batch_id"),
                    type(exc).__name__, exc)


def _epoch(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)).timestamp()


def _read_manifest(uri: str) -> dict[str, Any] | None:
    from airflow_provider_cdc.staging import BatchStore

    try:
        return BatchStore.read_manifest(uri)
    except Exception as exc:
        log.info("metrics: manifest %s not read (%s)", uri, type(exc).__name__)
        return None


def _newest_ts_ms(uri: str | None, manifest: Mapping[str, Any] | None) -> int | None:
    """The newest ``_cdc_ts_ms`` (source commit time) of a staged batch: Parquet's column statistics, else the
    column itself."""
    if not uri or not manifest or not manifest.get("files"):
        return None
    import pyarrow.compute as pc
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    from airflow_provider_cdc.staging import _object_path

    folder = _object_path(uri).parent
    newest: int | None = None
    for name in manifest["files"].values():
        with (folder / name).open("rb") as fh:
            if manifest.get("format") == "parquet":
                found = _parquet_max(pq.ParquetFile(fh), "_cdc_ts_ms")
            else:
                found = pc.max(feather.read_table(fh, columns=["_cdc_ts_ms"]).column(0)).as_py()
        if found is not None:
            newest = found if newest is None else max(newest, found)
    return newest


def _parquet_max(file: Any, column: str) -> int | None:
    index = file.schema_arrow.get_field_index(column)
    values: list[int] = []
    for group in range(file.metadata.num_row_groups):
        stats = file.metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max:
            import pyarrow.compute as pc

            found = pc.max(file.read(columns=[column]).column(0)).as_py()
            return int(found) if found is not None else None
        values.append(int(stats.max))
    return max(values) if values else None
