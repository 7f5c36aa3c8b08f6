"""MongoDB source: change streams on a replica set, and a snapshot that converges with them.

Capture never acknowledges anything: MongoDB keeps its oplog by size (and ``oplogMinRetentionHours``), not for its
readers, so :meth:`MongoSource.acknowledge` has nothing to move. A resume token the oplog no longer holds is a
:class:`~airflow_provider_cdc.errors.PositionLostError` naming ``resnapshot`` (``ChangeStreamHistoryLost``), never a
silent restart from now.

Position document (Airflow Variable ``cdc.position.<source_id>``)::

    {"resume_token": {"_data": "8265..."},   # resume with start_after (the post-batch token when idle)
     "cluster_time": [1700000000, 3],         # the token's cluster time (seconds, increment), for people and lag
     "set_name": "rs0",                       # the replica set the token belongs to
     "seq": 1234,                             # last event seq: the next event gets seq + 1
     "tables": ["shop.users"],                # the collections captured so far (a new one gets a snapshot)
     "snapshot": {"pending": [...], "after": "{\"_id\": ...}"} | absent,
     "schemas": {"shop.users": {"fp": ..., "table": {...}, "ids": {"_id": 1, "name": 2}, "next_id": 3}}}

``tables`` entries are ``db.collection``; ``db.*`` captures every collection of ``db`` (those that exist at each
capture get their snapshot, and the stream follows every collection of it). The stream is read in :mod:`.stream`,
documents become rows in :mod:`.rows` (types in :mod:`.documents`), the snapshot is :mod:`.snapshot`, server and
position checks are :mod:`.checks` (shared with the probe).

EDGE_CASES rows that do not apply here: DDL inside transactions, column reorder, RENAME COLUMN and type narrowing
(a collection has no declared columns: its schema only grows, see :mod:`.rows`); replica identities and deferrable
keys (``_id`` is immutable and always there); publications and slots (nothing to bloat: the oplog is capped by size,
and a position that fell off it is reported, never skipped); non-UTF-8 encodings (BSON strings are UTF-8); JSON
nested 1,000 deep (mongod 6.0 stores documents nested at most 180 levels; they are captured whole, as JSON).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from airflow_provider_cdc.connectors.mongodb.checks import check_position, server_state, stream_has_changes
from airflow_provider_cdc.connectors.mongodb.connection import MONGODB_DIALECT, source_client
from airflow_provider_cdc.connectors.mongodb.options import MongoSourceOptions
from airflow_provider_cdc.connectors.mongodb.rows import BatchRows
from airflow_provider_cdc.connectors.mongodb.snapshot import add_snapshot_pages, drop_unread
from airflow_provider_cdc.connectors.mongodb.stream import Scope, StreamBatch, open_stream, token_time
from airflow_provider_cdc.connectors.recapture import page_tag
from airflow_provider_cdc.connectors.table_tracking import pending_work, queue_snapshot, reconcile
from airflow_provider_cdc.errors import SourceError, TableRefusedError
from airflow_provider_cdc.events import ChangeBatch, make_batch_id

log = logging.getLogger("airflow_provider_cdc.source.mongodb")


def _time_text(position: dict[str, Any]) -> str:
    ct = position.get("cluster_time") or token_time(position.get("resume_token"))
    return f"{ct[0]}.{ct[1]}" if ct else "start"


class MongoSource:
    """Captures collections of one MongoDB replica set into :class:`ChangeBatch` objects (see the module docstring)."""

    def __init__(self, url: str, *, source_id: str, tables: list[str], snapshot: str = "initial",
                 options: MongoSourceOptions | None = None) -> None:
        self.url = url
        self.source_id = source_id
        self.tables = tables
        self.snapshot_mode = snapshot
        self.options = options or MongoSourceOptions()
        self.scope = Scope(tables)
        self._client: MongoClient | None = None
        self._state: dict[str, Any] | None = None

    # -- connection -------------------------------------------------------------------------------------------

    @property
    def client(self) -> MongoClient:
        if self._client is None:
            self._client = source_client(self.url, self.source_id)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> MongoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def state(self) -> dict[str, Any]:
        if self._state is None:
            self._state = server_state(self.client, self.source_id)
        return self._state

    # -- tables -----------------------------------------------------------------------------------------------

    def _collections(self, db: str) -> dict[str, Any]:
        try:
            return {info["name"]: info for info in self.client[db].list_collections()}
        except PyMongoError as exc:
            raise SourceError(self.source_id, f"cannot list the collections of {db}: {exc}") from exc

    @property
    def qualified_tables(self) -> list[str]:
        """The listed collections, and every collection that exists now in a database captured whole."""
        out = list(self.scope.tables)
        for db in self.scope.whole:
            out += [f"{db}.{name}" for name, info in sorted(self._collections(db).items())
                    if info.get("type", "collection") == "collection" and not name.startswith("system.")]
        return out

    def prepare(self, position: dict[str, Any] | None = None) -> None:
        """Check that the server serves change streams and that every listed collection can be captured: a view or
        a time-series collection is refused before anything is read. A listed collection that does not exist yet
        is fine (MongoDB creates it on its first write; its changes flow from then on)."""
        state = self.state()
        if position is not None:
            check_position(position, state, self.source_id)
        refused: dict[str, str] = {}
        for db in self.scope.databases:
            infos = self._collections(db)
            for table in self.scope.tables:
                name_db, _, name = table.partition(".")
                if name_db != db:
                    continue
                info = infos.get(name)
                if info is None:  # a warning: it may as well be a typo in cdc.yaml
                    log.warning("source %s: collection %s does not exist (yet); its changes flow once it is created. "
                                "Check 'tables' in cdc.yaml if it should exist (names are case-sensitive)",
                                self.source_id, table)
                elif info.get("type", "collection") != "collection":
                    refused[table] = (f"it is a {info.get('type')}, which has no change stream; capture the "
                                      "collections it reads from instead")
        if refused:
            raise TableRefusedError(self.source_id, "cannot capture " + "; ".join(
                f"{name}: {reason}" for name, reason in refused.items()) + ". Nothing was read.")

    # -- positions --------------------------------------------------------------------------------------------

    def initial_position(self, *, snapshot: bool | None = None) -> dict[str, Any]:
        """The stream's point now (its resume token), with a snapshot pending if asked (``snapshot`` overrides the
        configured mode). The token is taken before anything is read, so the snapshot and stream converge."""
        self.prepare()
        with open_stream(self.client, self.scope, {}, self.options, source_id=self.source_id,
                         max_await_ms=10) as stream:
            token = stream.resume_token
        tables = self.qualified_tables
        position: dict[str, Any] = {
            "resume_token": token, "cluster_time": token_time(token), "set_name": self.state()["set_name"],
            "seq": 0, "schemas": {}, "tables": tables,
        }
        if snapshot if snapshot is not None else self.snapshot_mode == "initial":
            position["snapshot"] = {"pending": tables, "after": None}
        return position

    def resnapshot_position(self, position: dict[str, Any], tables: list[str]) -> dict[str, Any]:
        configured = self.qualified_tables
        return queue_snapshot(self._reconcile(position, configured), tables, configured, source_id=self.source_id)

    def _reconcile(self, position: dict[str, Any], configured: list[str]) -> dict[str, Any]:
        return reconcile(position, configured, snapshot_mode=self.snapshot_mode, source_id=self.source_id)

    def position_order(self, position: dict[str, Any]) -> tuple:
        """Later positions have more events (``seq``) or, for batches without events, a later resume token (its
        hex form sorts as the token does)."""
        return (position.get("seq", 0), (position.get("resume_token") or {}).get("_data", ""))

    def holds_position(self) -> bool:
        """Nothing holds a MongoDB position but the oplog's size: there is always an oplog to read."""
        return True

    def discard_position_holder(self) -> str | None:
        return None

    # -- capture ----------------------------------------------------------------------------------------------

    def capture(self, position: dict[str, Any] | None, max_changes: int) -> ChangeBatch:
        configured = self.qualified_tables
        if position is None:
            position = self.initial_position()
        else:
            check_position(position, self.state(), self.source_id)
            position = self._reconcile(dict(position), configured)
        started = time.monotonic()
        snapshot = position.get("snapshot")
        pending_at_start = bool(snapshot)
        budget = max(1, max_changes // 2) if snapshot else max_changes
        rows = BatchRows(source_id=self.source_id, seq=position.get("seq", 0),
                         schemas_seen=position.get("schemas") or {})
        reader = StreamBatch(source_id=self.source_id, client=self.client, position=position, scope=self.scope,
                             options=self.options, rows=rows, max_changes=budget)
        token = reader.read()
        position_to: dict[str, Any] = {**position, "resume_token": token, "cluster_time": token_time(token),
                                       "set_name": self.state()["set_name"]}
        if reader.queued_snapshots:
            queued = [t for t in dict.fromkeys(reader.queued_snapshots) if t in configured]
            if queued:
                position_to = queue_snapshot(position_to, queued, configured, source_id=self.source_id)
        snapshot = position_to.get("snapshot")
        if snapshot:
            drop_unread(self.client, rows, snapshot, self.source_id)
            # What the stream left of the batch. A snapshot pending from the start also gets half of it after a
            # transaction overran the stream's half, so that it always progresses; one queued by this batch's rename
            # (the stream had the whole batch) waits for the next batch when nothing is left.
            pages = max_changes - reader.events
            if pending_at_start:
                pages = max(pages, max_changes // 2)
            left = add_snapshot_pages(self.client, rows, snapshot, pages, source_id=self.source_id)
            if left is None:
                position_to.pop("snapshot", None)
            else:
                position_to["snapshot"] = left
        position_to["seq"] = rows.seq
        position_to["schemas"] = rows.schemas_seen
        batch = ChangeBatch(
            source_id=self.source_id,
            batch_id=make_batch_id(self.source_id, f"{rows.seq_from - 1}@{_time_text(position)}",
                                   f"{rows.seq}@{_time_text(position_to)}"
                                   + (f"@snapshot.{page_tag(position_to)}" if snapshot else "")),
            position_from=position,
            position_to=position_to,
            seq_from=rows.seq_from,
            seq_to=rows.seq,
            tables=rows.tables(),
            schemas=rows.schemas(),
            schema_changes=rows.schema_changes,
            connector=MONGODB_DIALECT,
            database=",".join(self.scope.databases),
        )
        log.info(
            "captured %d changes in %d transactions (%s) from %s to %s in %.2fs%s", batch.change_count,
            reader.transactions, batch.op_totals(), _time_text(position), _time_text(position_to),
            time.monotonic() - started,
            "" if not snapshot else "; snapshot complete" if "snapshot" not in position_to else
            f"; snapshot continues with {position_to['snapshot']['pending'][0]}",
        )
        return batch

    def has_changes(self, position: dict[str, Any] | None) -> bool:
        """Whether :meth:`capture` has work: a snapshot pending, an event after the position, or an idle position
        the stream has moved well past (see :func:`.checks.stream_has_changes`)."""
        if pending_work(position, self.qualified_tables):
            return True
        assert position is not None
        check_position(position, self.state(), self.source_id)
        return stream_has_changes(self.client, self.scope, position, self.options, source_id=self.source_id)

    def acknowledge(self, position: dict[str, Any]) -> None:
        """Nothing to acknowledge: the oplog is kept by size, not for readers (see the module docstring)."""

    def heartbeat(self) -> None:
        """No write needed: the replica set writes a no-op to the oplog every 10 seconds, and an empty batch
        stores the stream's post-batch resume token, so an idle source's position keeps up with the oplog."""

