"""Recent batches of a source, read from its sink's ``_cdc_ledger``.

The ``Sink`` protocol has no "recent ledger rows" call yet (it asks the ledger for one batch, the high water and the
last position only). Until it has one, this module reads a PostgreSQL sink's ledger itself, with one short
read-only query; for other sink types it raises :class:`LedgerUnreadable`, which the answer reports as a problem
instead of failing.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from airflow_provider_cdc.config.models import mask_url
from airflow_provider_cdc.connectors.ledger import LEDGER_TABLE, LedgerRow

CONNECT_TIMEOUT = 5  # seconds: an answer must not hang on a sink that does not answer


class LedgerUnreadable(Exception):
    """The ledger of this sink cannot be read here (unsupported sink type, or the sink failed: ``reason``)."""

    def __init__(self, sink_id: str, reason: str) -> None:
        self.sink_id, self.reason = sink_id, reason
        super().__init__(f"sink {sink_id!r}: the ledger cannot be read: {reason}")


def recent_rows(connector_type: str, dsn: str, *, sink_id: str, ledger_schema: str, source_id: str,
                limit: int) -> list[LedgerRow]:
    """The ``limit`` latest ledger rows of ``source_id`` (highest ``seq_to`` first, the later commit on a tie, as
    :func:`~airflow_provider_cdc.connectors.ledger.latest` orders them); empty when the ledger does not exist yet."""
    if connector_type == "postgresql":
        return _postgres_rows(dsn, sink_id=sink_id, ledger_schema=ledger_schema, source_id=source_id, limit=limit)
    raise LedgerUnreadable(sink_id, f"reading recent batches of a {connector_type} sink is not supported yet")


def _postgres_rows(dsn: str, *, sink_id: str, ledger_schema: str, source_id: str, limit: int) -> list[LedgerRow]:
    try:
        with psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
            conn.read_only = True
            found = conn.execute("SELECT to_regclass(%s)",
                                 (sql.Identifier(ledger_schema, LEDGER_TABLE).as_string(conn),)).fetchone()
            if found is None or found[0] is None:
                return []
            cur = conn.execute(sql.SQL(
                "SELECT * FROM {} WHERE source_id = %s ORDER BY seq_to DESC, committed_at DESC LIMIT %s"
            ).format(sql.Identifier(ledger_schema, LEDGER_TABLE)), (source_id, limit))
            names = [column.name for column in cur.description or ()]
            return [LedgerRow.from_record(dict(zip(names, row))) for row in cur.fetchall()]
    except psycopg.Error as exc:
        raise LedgerUnreadable(sink_id, _reason(exc)) from exc


def _reason(exc: BaseException) -> str:
    """The error's class and its first line, with anything URL-shaped masked (a server name stays out too: libpq
    names the host it failed to reach, so a connection failure is reported by class only)."""
    if isinstance(exc, psycopg.OperationalError):
        return f"{type(exc).__name__} (the sink database did not answer)"
    first: Any = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {mask_url(first)}" if first else type(exc).__name__
