"""The triggerer's probe of a PostgreSQL source: :class:`PgChangeProbe`, async, one connection kept across polls.

It checks a position exactly as :meth:`PgSource.has_changes <.source.PgSource.has_changes>` does, with the same
queries and the same interpretation (:mod:`.checks`): a dropped slot, a position from another server or timeline, or
one the slot has passed raises :class:`~airflow_provider_cdc.errors.PositionLostError` here as there, and a pending
snapshot counts as work without a look at the slot.
"""

from __future__ import annotations

from typing import Any

import psycopg

from airflow_provider_cdc.connectors.postgres.checks import (
    HEARTBEAT_PREFIX,
    HEARTBEAT_SQL,
    IDENTITY_PRIVILEGE_SQL,
    PROBE_CHANGES,
    PROBE_SQL,
    check_position,
    commits_after,
    position_check_sql,
    publication_option,
)
from airflow_provider_cdc.connectors.table_tracking import pending_work
from airflow_provider_cdc.errors import SourceError


class PgChangeProbe:
    """:class:`~airflow_provider_cdc.connectors.base.ChangeProbe` of one PostgreSQL source."""

    def __init__(self, dsn: str, *, source_id: str, tables: list[str], slot_name: str, publication_name: str) -> None:
        self.dsn = dsn
        self.source_id = source_id
        self.tables = tables
        self.slot_name = slot_name
        self.publication_name = publication_name
        self._conn: psycopg.AsyncConnection | None = None
        self._identity_readable: bool | None = None

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, client_encoding="utf8")
            except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
                raise SourceError(self.source_id, f"cannot connect: {exc}".strip()) from exc
            self._identity_readable = None
        return self._conn

    async def has_changes_after(self, position: dict[str, Any] | None) -> bool:
        if pending_work(position, self.tables):
            return True
        assert position is not None
        position = dict(position)
        conn = await self._connection()
        async with conn.cursor() as cur:
            if self._identity_readable is None:
                await cur.execute(IDENTITY_PRIVILEGE_SQL)
                row = await cur.fetchone()
                self._identity_readable = bool(row and row[0])
            await cur.execute(position_check_sql(self._identity_readable), (self.slot_name,))
            check_position(await cur.fetchone(), position, source_id=self.source_id, slot_name=self.slot_name)
            await cur.execute(PROBE_SQL, (self.slot_name, PROBE_CHANGES, publication_option(self.publication_name)))
            return commits_after(await cur.fetchall(), position)

    async def heartbeat(self) -> None:
        """A transactional logical message: an idle source then still has a commit to advance the slot to."""
        conn = await self._connection()
        await conn.execute(HEARTBEAT_SQL, (HEARTBEAT_PREFIX,))

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
