"""Operators of a CDC DAG. Staged mode: capture, one task per stage of the stage list, load, commit. Fused mode: all
of it in one task.

Each is a thin, templated call into :mod:`airflow_provider_cdc.pipeline`; nothing here touches a database
directly. ``__init__`` only stores arguments (it runs at DAG parse); connections are opened in ``execute``. Every
``execute`` runs under :func:`~airflow_provider_cdc.operators.intent.fail_terminal_errors`: a terminal error fails
the task at once, a transient one is retried.

Schema changes: load and fused pass the source's schema policy (``schema_changes:`` of cdc.yaml) to the sink; load's
summary carries the tables its batch held (``newly_held``) to commit, which fails the run for them once the
position is stored (:class:`~airflow_provider_cdc.pipeline.TablesHeldError`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_cdc import fused_loop, pipeline
from airflow_provider_cdc.assets import assets_or_none, record_asset_events
from airflow_provider_cdc.connectors.base import Sink, Source
from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.lineage.gate_impact import impact_in_hold_messages
from airflow_provider_cdc.metrics import emit_batch_metrics, emit_quality_stats
from airflow_provider_cdc.operators.intent import fail_terminal_errors
from airflow_provider_cdc.operators.lineage import CdcLineageMixin
from airflow_provider_cdc.stages import build_stages


class _CdcOperator(CdcLineageMixin, BaseOperator):
    """Base of the CDC operators.

    :param source_id: the source's id in the config
    :param config_dir: the YAML config's directory (default: ``$CDC_CONFIG_DIR``, else include/config)
    :param cdc_config: the config given inline instead, as
        :func:`~airflow_provider_cdc.config.inline.cdc_config` builds it (not templated: rule expressions are
        Jinja of their own)
    """

    template_fields: Sequence[str] = ("source_id", "config_dir")
    ui_color = "#e8f6f3"

    def __init__(self, *, source_id: str, config_dir: str | None = None,
                 cdc_config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source_id = source_id
        self.config_dir = config_dir
        self.cdc_config = cdc_config

    @property
    def hook(self) -> CdcHook:
        return CdcHook(self.source_id, self.config_dir, documents=self.cdc_config)

    @contextmanager
    def connected(self) -> Iterator[tuple[CdcHook, Source, Sink]]:
        """The hook with its source and sink, closed whatever happens."""
        hook = self.hook
        with hook.connected() as (source, sink):
            yield hook, source, sink


class CdcCaptureOperator(_CdcOperator):
    """Captures the next micro-batch after the stored position and stages it; returns the manifest summary.

    A cleared capture task of the same run returns the batch it captured before (the identical change range).
    """

    def __init__(self, *, max_changes: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_changes = max_changes

    def execute(self, context: Any) -> dict[str, Any]:
        with fail_terminal_errors(), self.connected() as (hook, source, sink):
            return pipeline.capture_stage(
                source, sink, hook.positions, hook.store,
                max_changes=self.max_changes or hook.source_config.batch_size,
                run_id=context["run_id"],
            )


class CdcStageOperator(_CdcOperator):
    """Runs one stage of the source's stage list (:func:`airflow_provider_cdc.stages.build_stages`) over the
    upstream staged batch, and stages what it makes; returns the new manifest summary.

    :param stage: the stage's name (also its task id in the DAG)
    :param manifest_uri: the upstream task's manifest: its URI (templated), or the upstream task's summary itself
        (``capture.output`` in a hand-written DAG)
    """

    template_fields: Sequence[str] = (*_CdcOperator.template_fields, "manifest_uri")

    def __init__(self, *, stage: str, manifest_uri: str | Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.manifest_uri = manifest_uri

    def execute(self, context: Any) -> dict[str, Any]:
        with fail_terminal_errors():
            hook = self.hook
            found = [s for s in build_stages(hook.source_config, hook.config) if s.name == self.stage]
            if not found:
                # The config changed since the DAG was parsed and this stage has nothing to do any more: hand the
                # upstream batch on unchanged (the next parse drops the task).
                self.log.warning("source %s no longer has a stage %r; passing the batch on unchanged",
                                 self.source_id, self.stage)
                uri = manifest_uri_of(self.manifest_uri)
                return pipeline.summarize(hook.store.read(uri), uri)
            summary = pipeline.run_stage(manifest_uri_of(self.manifest_uri), found[0], hook.store)
            emit_quality_stats(self.source_id, summary.get("stage_versions"))
            return summary


class CdcLoadOperator(_CdcOperator):
    """Applies a staged batch to the sink with its ledger row in one transaction (a replay is a no-op)."""

    template_fields: Sequence[str] = (*_CdcOperator.template_fields, "manifest_uri")

    def __init__(self, *, manifest_uri: str | Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.manifest_uri = manifest_uri

    def execute(self, context: Any) -> dict[str, Any]:
        with fail_terminal_errors():
            hook = self.hook
            sink = hook.get_sink()
            try:
                with impact_in_hold_messages(hook.config, hook.lineage_urls, hook.registered_schemas):
                    summary = pipeline.load_stage(manifest_uri_of(self.manifest_uri), sink, run_id=context["run_id"],
                                                  policy=hook.schema_policy)
            finally:
                sink.close()
            emit_asset_events(self, hook, context, summary)
            emit_batch_metrics(self.source_id, summary, manifest_uri_of(self.manifest_uri))
            return summary


class CdcCommitOperator(_CdcOperator):
    """Stores the batch's end position in ``cdc.position.<source_id>``, then acknowledges the source; then fails
    the task (terminal) when the load held a table from this batch on, and warns for each table still held.

    :param manifest_uri: the manifest load applied (templated), or the summary of the task that made it
    :param newly_held: the load task's ``newly_held`` (table -> reason), as a mapping or as its JSON text (templated:
        the DAG renders it from the load task's XCom), or the load task's summary itself (``load.output``)
    """

    template_fields: Sequence[str] = (*_CdcOperator.template_fields, "manifest_uri", "newly_held")

    def __init__(self, *, manifest_uri: str | Mapping[str, Any], newly_held: Mapping[str, Any] | str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.manifest_uri = manifest_uri
        self.newly_held = newly_held

    def execute(self, context: Any) -> dict[str, Any]:
        with fail_terminal_errors(), self.connected() as (hook, source, sink):
            return pipeline.commit_stage(
                manifest_uri_of(self.manifest_uri), source, sink, hook.positions, hook.store,
                retention_hours=hook.source_config.staging_retention_hours,
                newly_held=held_tables_of(self.newly_held),
            )


def manifest_uri_of(value: str | Mapping[str, Any]) -> str:
    """The manifest URI an operator was given: the URI, or the upstream task's summary (its XCom) holding it."""
    if isinstance(value, Mapping):
        if "manifest_uri" not in value:
            raise ValueError(f"manifest_uri: expected a manifest URI or a CDC task's summary with 'manifest_uri', "
                             f"got a mapping with {sorted(value)[:10]}")
        return str(value["manifest_uri"])
    return value


def held_tables_of(value: Mapping[str, Any] | str | None) -> dict[str, str]:
    """``newly_held`` as a mapping: rendered templates are text (JSON; empty or ``None`` when load had nothing); the
    load task's whole summary gives its ``newly_held``."""
    if isinstance(value, Mapping) and "batch_id" in value and "newly_held" in value:
        value = value["newly_held"]
    if value is None or isinstance(value, Mapping):
        return {str(table): str(reason) for table, reason in (value or {}).items()}
    text = value.strip()
    if text in ("", "None", "null"):
        return {}
    parsed = json.loads(text)
    if not isinstance(parsed, dict):
        raise ValueError(f"newly_held should be a JSON object of table -> reason, not {text[:200]!r}")
    return {str(table): str(reason) for table, reason in parsed.items()}


class CdcFusedOperator(_CdcOperator):
    """Fused mode: capture, the stage list, load and commit in one task, without staging (lowest latency).

    With ``loop_seconds`` (cdc.yaml, or this argument) the task goes on batch after batch, polling the source
    between them, until that many seconds have passed (:mod:`airflow_provider_cdc.fused_loop`); each batch commits
    on its own."""

    def __init__(self, *, max_changes: int | None = None, loop_seconds: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_changes = max_changes
        self.loop_seconds = loop_seconds

    def execute(self, context: Any) -> dict[str, Any]:
        with fail_terminal_errors(), self.connected() as (hook, source, sink), \
                impact_in_hold_messages(hook.config, hook.lineage_urls, hook.registered_schemas):
            config = hook.source_config
            stages = build_stages(config, hook.config)

            budget = config.loop_seconds if self.loop_seconds is None else self.loop_seconds
            max_changes = self.max_changes or config.batch_size
            # A loop captures each batch while the one before it loads (one batch a run has no next batch).
            ahead = pipeline.CaptureAhead(source, max_changes) if budget else None

            def run_once() -> dict[str, Any]:
                return pipeline.run_fused(source, sink, hook.positions, max_changes=max_changes,
                                          run_id=context["run_id"], stages=stages, policy=hook.schema_policy,
                                          ahead=ahead)

            def has_changes() -> bool:
                return source.has_changes(pipeline.start_position(source, sink, hook.positions))

            try:
                summary = fused_loop.run_for(
                    budget, run_once, has_changes, poll_interval=config.poll_interval,
                    on_batch=lambda batch: emit_batch_metrics(self.source_id, batch))
            except BaseException:
                if ahead is not None:  # tried, and only logged on failure: the loop's own error is the one raised
                    try:
                        ahead.settle()
                    except Exception as exc:
                        self.log.warning("source %s: the last committed batch was not acknowledged (%s: %s); the "
                                         "next run does it", self.source_id, type(exc).__name__, exc)
                raise
            if ahead is not None:
                ahead.settle()  # the last batch's acknowledgement
            emit_asset_events(self, hook, context, summary)
            return summary


def emit_asset_events(operator: BaseOperator, hook: CdcHook, context: Any, summary: Mapping[str, Any]) -> None:
    """Each sink table's counts on its asset event (:mod:`airflow_provider_cdc.assets`). The batch is loaded by
    now: a failure here is logged, never raised (a retry would only replay a no-op load)."""
    if not operator.outlets:
        return
    try:
        record_asset_events(context, assets_or_none(hook.config, hook.source_config), operator.source_id,  # type: ignore[attr-defined]
                            summary, list(operator.outlets))
    except Exception as exc:
        operator.log.warning("source %s: the asset events carry no counts (%s: %s)",
                             operator.source_id, type(exc).__name__, exc)  # type: ignore[attr-defined]
