"""The audit trail of a deployment, from Python: what happened to a source or in a sink, when, and by whom.

:func:`read_audit` reads the ``_cdc_audit`` of a source's sink (or of every source that writes into one sink), newest
first; :func:`record` adds an entry for an operation done outside a pipeline run (the REST API records
``pipeline_started``/``pipeline_stopped`` with the Airflow user as ``actor``). Sinks are opened exactly as tasks
open them (:class:`~airflow_provider_cdc.hooks.cdc.CdcHook`), and the entries are
:class:`~airflow_provider_cdc.connectors.audit.AuditEntry` (:mod:`airflow_provider_cdc.connectors.audit` says what
each action means and who the actor is).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.connectors.audit import (
    ACTIONS,
    PIPELINE_STARTED,
    PIPELINE_STOPPED,
    SCHEMA_APPROVED,
    SOURCE_CONNECTED,
    AuditEntry,
    audit_entry,
    newest_first,
)

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig
    from airflow_provider_cdc.connectors.base import Sink

__all__ = ["ACTIONS", "PIPELINE_STARTED", "PIPELINE_STOPPED", "SCHEMA_APPROVED", "SOURCE_CONNECTED", "AuditEntry",
           "read_audit", "record"]

def _config(config: CdcConfig | str | os.PathLike[str] | None) -> CdcConfig:
    """``config`` itself, or the config loaded from that directory (None: ``$CDC_CONFIG_DIR``, else include/config)."""
    from airflow_provider_cdc.config import CdcConfig, load_config

    return config if isinstance(config, CdcConfig) else load_config(None if config is None else str(config))


@contextmanager
def _sink(config: CdcConfig, source_id: str) -> Iterator[Sink]:
    """The sink of ``source_id``, built as a task builds it (its target schema holds the audit table), closed after."""
    from airflow_provider_cdc.hooks.cdc import CdcHook

    hook = CdcHook(source_id, str(config.directory))
    hook.config = config  # the cached_property, primed: no second load of the same files
    sink = hook.get_sink()
    try:
        yield sink
    finally:
        sink.close()


def read_audit(
    config: CdcConfig | str | os.PathLike[str] | None,
    sink_id_or_source_id: str,
    *,
    source_id: str | None = None,
    batch_id: str | None = None,
    action: str | None = None,
    since: dt.datetime | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Audit entries, newest first, at most ``limit``.

    ``sink_id_or_source_id`` names a source of cdc.yaml (its entries) or a sink connector of connectors.yaml (the
    entries of every source that writes into it, each source's audit table read once); ``source_id``, ``batch_id``,
    ``action`` and ``since`` narrow them down."""
    if action is not None and action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; expected one of {', '.join(sorted(ACTIONS))}")
    cfg = _config(config)
    sources = [source for source in cfg.sources if source.id == sink_id_or_source_id]
    if sources:
        if source_id is not None and source_id != sink_id_or_source_id:
            return []
        source_id = sink_id_or_source_id
    else:
        cfg.connector(sink_id_or_source_id)  # an unknown name fails here, naming connectors.yaml
        sources = [source for source in cfg.sources if source.sink == sink_id_or_source_id
                   and (source_id is None or source.id == source_id)]
    found: list[AuditEntry] = []
    for source in sources:  # sources sharing an audit table give the same entries: newest_first keeps one each
        with _sink(cfg, source.id) as sink:
            found += sink.audit_entries(source_id, batch_id=batch_id, action=action, since=since, limit=limit)
    return newest_first(found, limit)


def record(
    config: CdcConfig | str | os.PathLike[str] | None,
    source_id: str,
    action: str,
    *,
    actor: str | None = None,
    batch_id: str | None = None,
    run_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Record ``action`` on ``source_id`` in its sink's audit trail, done now by ``actor`` (default ``$CDC_ACTOR``,
    else the OS user); returns the entry."""
    cfg = _config(config)
    cfg.source(source_id)  # an unknown source fails here, naming cdc.yaml
    entry = audit_entry(action, source_id, actor=actor, batch_id=batch_id, run_id=run_id, details=details)
    with _sink(cfg, source_id) as sink:
        sink.record_audit([entry])
    return entry
