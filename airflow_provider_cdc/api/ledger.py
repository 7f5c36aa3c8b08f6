"""Recent batches of a source, read from its sink's ledger through the ``Sink`` protocol.

Every sink answers :meth:`~airflow_provider_cdc.connectors.base.Sink.ledger_rows` (its ``_cdc_ledger`` table,
collection, Delta table or batch manifests), so the recent batches and the status work the same for a PostgreSQL,
MySQL/MariaDB, MongoDB or file sink. A sink that cannot be reached or read raises :class:`LedgerUnreadable`, which
the answer reports as a problem instead of failing.

:func:`sink_rows` reads an open sink: the one the config describes (``CdcHook.get_sink()``), so a file sink's
format and storage options apply as in the tasks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.config.models import mask_url
from airflow_provider_cdc.errors import SinkError

if TYPE_CHECKING:
    from airflow_provider_cdc.connectors.base import Sink
    from airflow_provider_cdc.connectors.ledger import LedgerRow

# Driver errors of a sink that cannot be reached (psycopg and PyMySQL, PyMongo): their messages name the host.
UNREACHABLE = frozenset({"OperationalError", "ConnectionFailure"})


class LedgerUnreadable(Exception):
    """The ledger of this sink cannot be read here (unsupported sink type, or the sink failed: ``reason``)."""

    def __init__(self, sink_id: str, reason: str) -> None:
        self.sink_id, self.reason = sink_id, reason
        super().__init__(f"sink {sink_id!r}: the ledger cannot be read: {reason}")


def sink_rows(sink: Sink, *, source_id: str, limit: int) -> list[LedgerRow]:
    """The ``limit`` latest ledger rows of ``source_id`` in ``sink`` (highest ``seq_to`` first, the later commit on a
    tie, as :func:`~airflow_provider_cdc.connectors.ledger.latest` orders them); empty when the ledger does not exist
    yet."""
    try:
        return sink.ledger_rows(source_id, limit)
    except SinkError as exc:
        raise LedgerUnreadable(sink.sink_id, _reason(exc)) from exc


def hook_rows(hook: Any, *, source_id: str, limit: int) -> list[LedgerRow]:
    """:func:`sink_rows` of the sink ``hook`` (a :class:`~airflow_provider_cdc.hooks.cdc.CdcHook`) opens, closed
    after it; a sink that cannot be opened is :class:`LedgerUnreadable` too (without its host)."""
    try:
        sink = hook.get_sink()
    except SinkError as exc:
        raise LedgerUnreadable(hook.sink_config.id, _reason(exc)) from exc
    try:
        return sink_rows(sink, source_id=source_id, limit=limit)
    finally:
        sink.close()


def _reason(exc: BaseException) -> str:
    """The error's class and its first line, with anything URL-shaped masked (a server name stays out too: drivers
    name the host they failed to reach, so a connection failure is reported without its message)."""
    text = str(exc).strip()
    cause = exc.__cause__ or exc
    if "cannot connect" in text or any(kind.__name__ in UNREACHABLE for kind in type(cause).__mro__):
        return f"{type(cause).__name__} (the sink database did not answer)"
    first: Any = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {mask_url(first)}" if first else type(exc).__name__
