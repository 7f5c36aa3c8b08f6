"""The triggerer's view of a MySQL or MariaDB source: whether the binlog grew past the stored position.

The driver is blocking, so each check runs in a worker thread (``asyncio.to_thread``), never in the triggerer's
event loop. It is the same check as :meth:`~.source.MySqlSource.has_changes` (:mod:`.checks`): a purged binlog or
another server is a :class:`~airflow_provider_cdc.errors.PositionLostError` here as in capture.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pymysql

from airflow_provider_cdc.connectors.mysql.checks import behind_end, binlog_state, check_position
from airflow_provider_cdc.connectors.mysql.connection import connect
from airflow_provider_cdc.connectors.table_tracking import pending_work
from airflow_provider_cdc.errors import SourceError


class MySqlChangeProbe:
    """:class:`~airflow_provider_cdc.connectors.base.ChangeProbe` of one MySQL or MariaDB source."""

    def __init__(self, url: str, *, source_id: str, tables: list[str]) -> None:
        self.url = url
        self.source_id = source_id
        self.tables = tables
        self._conn: pymysql.Connection | None = None

    def _connection(self) -> pymysql.Connection:
        if self._conn is None or not self._conn.open:
            try:
                self._conn = connect(self.url)
            except pymysql.err.MySQLError as exc:
                raise SourceError(self.source_id, f"cannot connect: {exc}") from exc
        return self._conn

    def _check(self, position: dict[str, Any]) -> bool:
        state = binlog_state(self._connection(), self.source_id)
        check_position(position, state, self.source_id)
        return behind_end(position, state)

    async def has_changes_after(self, position: dict[str, Any] | None) -> bool:
        if pending_work(position, self.tables):
            return True
        assert position is not None
        return await asyncio.to_thread(self._check, dict(position))

    async def heartbeat(self) -> None:
        """Nothing to write: the position follows the binlog's end through empty batches (see the source)."""

    async def aclose(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)
