"""MySQL and MariaDB source: the row binlog through pymysqlreplication, and a snapshot that converges with it.

Capture never acknowledges anything: MySQL keeps its binlog for its own retention (``binlog_expire_logs_seconds``,
``expire_logs_days``), not for its readers, so :meth:`MySqlSource.acknowledge` has nothing to move. A position
that the server purged meanwhile is a :class:`~airflow_provider_cdc.errors.PositionLostError` naming ``resnapshot``.

Position document (Airflow Variable ``cdc.position.<source_id>``)::

    {"file": "mysql-bin.000042", "pos": 1234,   # where the next transaction starts
     "gtid": "0-1-42" | "3e11fa47-...:1-42",    # the GTIDs executed up to there (MariaDB or MySQL form)
     "gtid_kind": "mariadb" | "mysql" | None,
     "mode": "file" | "gtid",                   # how the reader resumes (options.position_mode)
     "server_id": "1",                          # the server the offsets belong to (MySQL: its server_uuid)
     "seq": 1234,                               # last event seq: the next event gets seq + 1
     "tables": ["shop.users"],                  # the tables captured so far (a new one gets a snapshot)
     "snapshot": {"pending": [...], "after": [...]} | absent,
     "schemas": {"shop.users": {"fp": ..., "table": {...}, "ids": {"id": 1, ...}, "next_id": 4}}}

``schemas`` remembers each table's columns and their identities (:mod:`.stream`). The stream is read in
:mod:`.stream`, the snapshot in :mod:`.snapshot`, settings and positions are checked in :mod:`.checks` (shared with
the probe), tables and types come from :mod:`.catalog` and :mod:`.types`.

EDGE_CASES rows that do not apply here: unchanged TOAST values (the binlog sends whole rows: ``binlog_row_image``
must be FULL), replica identities, deferrable keys (MySQL has none) and slots (nothing to bloat: the server purges
its binlog by age, and a purged position is reported, never skipped).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pymysql

from airflow_provider_cdc.connectors.mysql.catalog import caveats, read_catalog, read_tables, refusals
from airflow_provider_cdc.connectors.mysql.checks import (
    BinlogState,
    behind_end,
    binlog_state,
    check_position,
    check_settings,
    file_index,
)
from airflow_provider_cdc.connectors.mysql.connection import connect
from airflow_provider_cdc.connectors.mysql.options import MySqlSourceOptions
from airflow_provider_cdc.connectors.mysql.snapshot import add_snapshot_pages, drop_unread_keys
from airflow_provider_cdc.connectors.mysql.stream import BinlogBatch, identified, remember
from airflow_provider_cdc.connectors.table_tracking import pending_work, queue_snapshot, reconcile
from airflow_provider_cdc.errors import SourceError, TableRefusedError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.tables import TableSchema

log = logging.getLogger("airflow_provider_cdc.source.mysql")


class MySqlSource:
    """Captures tables of one MySQL or MariaDB server into :class:`ChangeBatch` objects (see module docstring)."""

    def __init__(self, url: str, *, source_id: str, tables: list[tuple[str, str]], snapshot: str = "initial",
                 options: MySqlSourceOptions | None = None) -> None:
        self.url = url
        self.source_id = source_id
        self.tables = tables
        self.snapshot_mode = snapshot
        self.options = options or MySqlSourceOptions()
        self.server_id = self.options.effective_server_id(source_id)
        self._conn: pymysql.Connection | None = None

    # -- connection -------------------------------------------------------------------------------------------

    @property
    def conn(self) -> pymysql.Connection:
        if self._conn is None or not self._conn.open:
            try:
                self._conn = connect(self.url)
            except pymysql.err.MySQLError as exc:
                raise SourceError(self.source_id, f"cannot connect: {exc}") from exc
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except pymysql.err.Error:
                pass
            self._conn = None

    def __enter__(self) -> MySqlSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def qualified_tables(self) -> list[str]:
        return [f"{s}.{t}" for s, t in self.tables]

    # -- preparation ------------------------------------------------------------------------------------------

    def prepare(self, position: dict[str, Any] | None = None) -> None:
        """Check the server's binlog settings and the tables: every table must be capturable, before anything is
        read. A configured table that is gone since the source ran is a warning (the others keep flowing)."""
        check_settings(self.conn, self.source_id)
        state = binlog_state(self.conn, self.source_id)
        if position is not None:
            check_position(position, state, self.source_id)
        catalog = read_catalog(self.conn, self.tables)
        found = {name: entry.schema for name, entry in catalog.items()}
        known = set((position or {}).get("tables", []))
        missing = [name for name in self.qualified_tables if name not in found]
        never_seen = [name for name in missing if name not in known]
        if never_seen:
            raise SourceError(self.source_id, f"tables not found: {', '.join(never_seen)}; check 'tables' in cdc.yaml "
                              "(MySQL table names are case-sensitive on Linux)")
        for name in missing:
            log.warning("source %s: table %s no longer exists at the source (dropped or renamed); it stops flowing, "
                        "its sink table is kept, and the other tables keep flowing. Remove it from 'tables' in "
                        "cdc.yaml.", self.source_id, name)
        refused = refusals(catalog.values())
        if refused:
            raise TableRefusedError(self.source_id, "cannot capture " + "; ".join(
                f"{name}: {reason}" for name, reason in refused.items()) + ". Nothing was read.")
        for entry in catalog.values():
            for note in caveats(entry.schema, entry.info):
                log.warning("source %s: %s", self.source_id, note)

    # -- positions --------------------------------------------------------------------------------------------

    def _state(self) -> BinlogState:
        return binlog_state(self.conn, self.source_id)

    def initial_position(self, *, snapshot: bool | None = None) -> dict[str, Any]:
        """The binlog's end now, with a snapshot pending if asked (``snapshot`` overrides the configured mode)."""
        self.prepare()
        state = self._state()
        file, pos = state.end
        gtid_kind = "mariadb" if state.mariadb else ("mysql" if state.gtid else None)
        position: dict[str, Any] = {
            "file": file, "pos": pos, "gtid": state.gtid, "gtid_kind": gtid_kind, "mode": self.options.position_mode,
            "server_id": state.server_id, "seq": 0, "schemas": {}, "tables": self.qualified_tables,
        }
        if self.options.position_mode == "gtid" and gtid_kind is None:
            raise SourceError(self.source_id, "position_mode is gtid but the server has no GTIDs (MySQL: set "
                              "gtid_mode=ON and enforce_gtid_consistency=ON, or use position_mode: file)")
        if snapshot if snapshot is not None else self.snapshot_mode == "initial":
            position["snapshot"] = {"pending": self.qualified_tables, "after": None}
        return position

    def resnapshot_position(self, position: dict[str, Any], tables: list[str]) -> dict[str, Any]:
        return queue_snapshot(self._reconcile(position), tables, self.qualified_tables, source_id=self.source_id)

    def _reconcile(self, position: dict[str, Any]) -> dict[str, Any]:
        return reconcile(position, self.qualified_tables, snapshot_mode=self.snapshot_mode, source_id=self.source_id)

    def position_order(self, position: dict[str, Any]) -> tuple:
        """Later positions have more events (``seq``) or, for batches without events, a later binlog offset."""
        return (position.get("seq", 0), file_index(position.get("file", "")), position.get("pos", 0))

    def holds_position(self) -> bool:
        """Nothing holds a MySQL position but the server's binlog retention: there is always a binlog to read."""
        return True

    def discard_position_holder(self) -> str | None:
        return None

    # -- capture ----------------------------------------------------------------------------------------------

    def _streamed_tables(self, position: dict[str, Any]) -> set[str]:
        """Configured tables whose binlog changes are applied: not waiting for a snapshot that has not started."""
        snapshot = position.get("snapshot")
        waiting: list[str] = []
        if snapshot:
            waiting = snapshot["pending"] if snapshot.get("after") is None else snapshot["pending"][1:]
        return {t for t in self.qualified_tables if t not in waiting}

    def _read_schema(self, name: str, entry: dict[str, Any] | None) -> tuple[TableSchema, dict[str, Any]] | None:
        """A table's current schema with its column identities, and how the position remembers it."""
        db, _, table = name.partition(".")
        found = read_tables(self.conn, [(db, table)]).get(name)
        if found is None:
            return None
        schema, identities = identified(found, entry if isinstance(entry, dict) else None)
        return schema, remember(schema, identities)

    def capture(self, position: dict[str, Any] | None, max_changes: int) -> ChangeBatch:
        if position is None:
            position = self.initial_position()
        else:
            check_position(position, self._state(), self.source_id)
            position = self._reconcile(dict(position))
        snapshot = position.get("snapshot")
        started = time.monotonic()
        budget = max(1, max_changes // 2) if snapshot else max_changes
        reader = BinlogBatch(
            source_id=self.source_id, url=self.url, conn=self.conn, position=position,
            keep=self._streamed_tables(position), configured=self.qualified_tables, server_id=self.server_id,
            zero_dates=self.options.zero_dates, max_changes=budget,
        )
        batch = reader.read()
        if reader.queued_snapshots:
            batch.position_to = queue_snapshot(batch.position_to, reader.queued_snapshots, self.qualified_tables,
                                               source_id=self.source_id)
        snapshot = batch.position_to.get("snapshot")
        if snapshot:
            drop_unread_keys(self.conn, batch, snapshot, self.source_id)
            batch = add_snapshot_pages(self.conn, batch, max(max_changes - batch.change_count, max_changes // 2),
                                       source_id=self.source_id, read_schema=self._read_schema,
                                       zero_dates=self.options.zero_dates)
        log.info(
            "captured %d changes in %d transactions (%s) from %s:%s to %s:%s in %.2fs%s", batch.change_count,
            reader.transactions, batch.op_totals(), position["file"], position["pos"], batch.position_to["file"],
            batch.position_to["pos"], time.monotonic() - started,
            "" if not snapshot else "; snapshot complete" if "snapshot" not in batch.position_to else
            f"; snapshot continues with {batch.position_to['snapshot']['pending'][0]}",
        )
        return batch

    def has_changes(self, position: dict[str, Any] | None) -> bool:
        """Whether :meth:`capture` has work: a snapshot pending, or a binlog that grew past the position (the
        same check as the probe's; growth from other databases counts, so that an idle source's position keeps
        up with the binlog)."""
        if pending_work(position, self.qualified_tables):
            return True
        assert position is not None
        state = self._state()
        check_position(position, state, self.source_id)
        return behind_end(position, state)

    def acknowledge(self, position: dict[str, Any]) -> None:
        """Nothing to acknowledge: MySQL keeps its binlog by age, not for readers (see the module docstring)."""

    def heartbeat(self) -> None:
        """No write needed: a binlog that grows (from any database) makes capture run, and an empty batch still
        moves the stored position to the binlog's end, so an idle source never falls behind the retention."""
