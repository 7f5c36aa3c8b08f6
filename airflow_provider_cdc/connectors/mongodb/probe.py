"""The triggerer's view of a MongoDB source: whether the change stream has something after the stored position.

pymongo is blocking, so each check runs in a worker thread (``asyncio.to_thread``), never in the triggerer's event
loop. It is the same check as :meth:`~.source.MongoSource.has_changes` (:mod:`.checks`): a resume token the oplog
lost is a :class:`~airflow_provider_cdc.errors.PositionLostError` here as in capture.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import MongoClient

from airflow_provider_cdc.connectors.mongodb.checks import check_position, server_state, stream_has_changes
from airflow_provider_cdc.connectors.mongodb.connection import source_client
from airflow_provider_cdc.connectors.mongodb.options import MongoSourceOptions
from airflow_provider_cdc.connectors.mongodb.stream import Scope
from airflow_provider_cdc.connectors.table_tracking import pending_work


class MongoChangeProbe:
    """:class:`~airflow_provider_cdc.connectors.base.ChangeProbe` of one MongoDB source."""

    def __init__(self, url: str, *, source_id: str, tables: list[str],
                 options: MongoSourceOptions | None = None) -> None:
        self.url = url
        self.source_id = source_id
        self.tables = tables
        self.scope = Scope(tables)
        self.options = options or MongoSourceOptions()
        self._client: MongoClient | None = None
        self._advance = False

    def _connection(self) -> MongoClient:
        if self._client is None:
            self._client = source_client(self.url, self.source_id)
        return self._client

    def _check(self, position: dict[str, Any]) -> bool:
        client = self._connection()
        check_position(position, server_state(client, self.source_id), self.source_id)
        found = stream_has_changes(client, self.scope, position, self.options, source_id=self.source_id,
                                   advance=self._advance)
        if found:
            self._advance = False
        return found

    async def has_changes_after(self, position: dict[str, Any] | None) -> bool:
        # A database captured whole learns its new collections in the capture, not here.
        if position is None or position.get("snapshot") is not None:
            return True
        if not self.scope.whole and pending_work(position, self.tables):
            return True
        return await asyncio.to_thread(self._check, dict(position))

    async def heartbeat(self) -> None:
        """Nothing to write (the replica set writes a no-op to the oplog every 10 s): the next check reports the
        stream's moved resume point as work, so that the run stores it and an idle position keeps up."""
        self._advance = True

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)
