"""PostgreSQL source: logical decoding with ``pgoutput`` through the SQL interface.

Why ``peek`` then ``advance``: ``pg_logical_slot_peek_binary_changes`` reads without consuming, so capture can be
repeated any number of times (a cleared task replays the identical range) and the slot only moves when the commit
step calls ``pg_replication_slot_advance`` after the sink committed. ``peek`` re-decodes from the slot's
``restart_lsn`` and is bounded here by ``upto_nchanges`` (checked at transaction commits, so a transaction stays
whole) and read through a server-side cursor, so memory stays bounded by the batch size.

Position document (Airflow Variable ``cdc.position.<source_id>``)::

    {"lsn": "0/1A2B3C4",            # end LSN of the last transaction loaded; the slot is advanced to it
     "seq": 1234,                   # last event seq: the next event gets seq + 1
     "tables": ["public.users"],    # the tables captured so far (a configured table not in it is new: snapshot)
     "snapshot": {"pending": ["public.orders"], "after": [...]} | absent,   # tables still to read, last key read
     "system_id": "7712...", "timeline": 1,   # the server the LSNs belong to (failover, restore: position lost)
     "schemas": {"public.users": {"fp": "<fingerprint>", "table": {...}}}}

Snapshot: the slot is created first, then tables are read in key order, each chunk in its own REPEATABLE READ
transaction, while the stream keeps flowing: a run reads the stream first (half the batch when a snapshot is
pending), then the next snapshot chunk. Stream changes of a table whose snapshot has not started yet, or of keys its
snapshot has not reached, are dropped: the snapshot reads those rows later, with the changes in them. Every other
change is applied in commit order, and each row converges to its last change: nothing is lost, and nothing is
applied twice thanks to the sink's ``_cdc_position`` guard and ledger. A table added to ``tables`` later is
snapshotted the same way while the others keep streaming; a table removed from it stops flowing.

What this connector refuses at start, before anything is published: tables without a usable row identity
(REPLICA IDENTITY NOTHING, no primary key and no identity index, a DEFERRABLE primary key) and source columns in
the reserved ``_cdc_`` namespace. Partitioned tables are published through their root
(``publish_via_partition_root``); inheritance parents are published and read ``ONLY``.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from airflow_provider_cdc.connectors.postgres import pgoutput
from airflow_provider_cdc.connectors.postgres.catalog import Catalog
from airflow_provider_cdc.connectors.postgres.columnar import Unsupported, decode_columnar
from airflow_provider_cdc.connectors.postgres.decoder import StreamDecoder, align, commits_after
from airflow_provider_cdc.connectors.postgres.schemas import (
    fingerprint_hash,
    remembered,
    seen_fingerprint,
    seen_schema,
)
from airflow_provider_cdc.errors import PositionLostError, SourceError
from airflow_provider_cdc.events import (
    OP_READ,
    ChangeBatch,
    SchemaChange,
    TableSchema,
    concat_tables,
    make_batch_id,
    reserved_columns,
)

log = logging.getLogger("airflow_provider_cdc.source.postgres")

HEARTBEAT_PREFIX = "cdc_heartbeat"
# A probe decodes only the first transactions after the slot's position (``upto_nchanges`` stops at a commit).
PROBE_CHANGES = 64
# Session settings that make every text value canonical, whoever reads it (snapshot and stream alike).
SESSION_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection:
    # Autocommit: catalog look-ups never hold a snapshot open, and each snapshot chunk opens its own transaction.
    # UTF-8 whatever the database's encoding: the server converts snapshot text and pgoutput's tuples (both go
    # through the session's client encoding) from LATIN1 or any other server encoding.
    conn = psycopg.connect(dsn, autocommit=True, client_encoding="utf8", **kwargs)
    with conn.cursor() as cur:
        for name, value in SESSION_SETTINGS.items():
            cur.execute(sql.SQL("SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    return conn


class PgSource:
    """Captures one PostgreSQL database's tables into :class:`ChangeBatch` objects (see module docstring)."""

    def __init__(
        self,
        dsn: str,
        *,
        source_id: str,
        tables: list[tuple[str, str]],
        slot_name: str,
        publication_name: str,
        snapshot: str = "initial",
        create_slot: bool = True,
        create_publication: bool = True,
    ) -> None:
        self.dsn = dsn
        self.source_id = source_id
        self.tables = tables
        self.slot_name = slot_name
        self.publication_name = publication_name
        self.snapshot_mode = snapshot
        self.create_slot = create_slot
        self.create_publication = create_publication
        self._conn: psycopg.Connection | None = None
        self._aconn: psycopg.AsyncConnection | None = None
        # Columnar decoding is the fast path; the per-message decoder is its reference (and the fallback).
        self.columnar = True

    # -- connection -----------------------------------------------------------------------------------------

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = connect(self.dsn)
            except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
                raise SourceError(self.source_id, f"cannot connect: {exc}".strip()) from exc
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> PgSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- preparation ----------------------------------------------------------------------------------------

    @property
    def qualified_tables(self) -> list[str]:
        return [f"{s}.{t}" for s, t in self.tables]

    def prepare(self, position: dict[str, Any] | None = None) -> None:
        """Check ``wal_level``, the tables and their row identity; create the publication and slot when absent.

        Everything is checked before anything is published: a table the sink could not merge, or whose
        application writes a publication would break (REPLICA IDENTITY NOTHING, a deferrable key), is refused and
        never added. With a ``position`` (the source ran before), a missing slot is a lost position, never
        recreated, and a configured table that is gone (dropped or renamed at the source) is a warning: the other
        tables keep flowing.
        """
        conn = self.conn
        with conn.cursor() as cur:
            cur.execute("SHOW wal_level")
            (wal_level,) = cur.fetchone()
            if wal_level != "logical":
                raise SourceError(
                    self.source_id,
                    f"wal_level is {wal_level!r}, logical decoding needs 'logical': run ALTER SYSTEM SET "
                    "wal_level = logical and restart the server",
                )
            catalog = Catalog(conn)
            known = set((position or {}).get("tables", []))
            present: dict[tuple[str, str], dict[str, Any]] = {}
            missing = []
            for schema, table in self.tables:
                relid = catalog.relid(schema, table)
                if relid is None:
                    missing.append(f"{schema}.{table}")
                else:
                    present[(schema, table)] = {"relid": relid, **catalog.relation_info(relid)}
            never_seen = [name for name in missing if name not in known]
            if never_seen:
                raise SourceError(self.source_id, f"tables not found: {', '.join(never_seen)}; check 'tables' in cdc.yaml")
            for name in missing:
                log.warning(
                    "source %s: table %s no longer exists at the source (dropped or renamed); it stops flowing, its "
                    "sink table is kept, and the other tables keep flowing. Remove it from 'tables' in cdc.yaml.",
                    self.source_id, name,
                )
            refused = {name: reason for name, reason in
                       ((f"{s}.{t}", self._refusal(catalog, info)) for (s, t), info in present.items()) if reason}
            self._ensure_publication(cur, present, refused)
            if refused:
                raise SourceError(
                    self.source_id,
                    "cannot capture " + "; ".join(f"{name}: {reason}" for name, reason in refused.items())
                    + ". Nothing was published for these tables.",
                )
        self._ensure_slot(position)

    @staticmethod
    def _refusal(catalog: Catalog, info: dict[str, Any]) -> str | None:
        """Why a table cannot be captured faithfully, or None."""
        identity = info["replica_identity"]
        if identity == "n":
            return ("REPLICA IDENTITY NOTHING: its updates and deletes carry no key, and publishing it would make "
                    "the application's own UPDATE and DELETE fail; set REPLICA IDENTITY DEFAULT (with a primary "
                    "key) or USING INDEX")
        if info["pk_deferrable"] and identity != "f":
            return ("its primary key is DEFERRABLE, which cannot identify rows for logical replication (publishing "
                    "it would make the application's UPDATE and DELETE fail); make the key NOT DEFERRABLE, or set "
                    "REPLICA IDENTITY FULL")
        if identity == "i" and not info["identity_index"]:
            return "REPLICA IDENTITY USING INDEX names no index"
        if identity in ("d", "f") and not info["primary_key"]:
            return ("has no primary key; the sink merges changes by key: add a primary key, or a unique index on "
                    "NOT NULL columns with REPLICA IDENTITY USING INDEX")
        schema = catalog.table_schema(info["relid"])
        clashes = reserved_columns(schema.column_names)
        if clashes:
            return (f"columns {clashes} are in the _cdc_ namespace that the pipeline reserves for its bookkeeping; "
                    "rename them at the source")
        return None

    def _ensure_publication(self, cur: psycopg.Cursor, present: dict[tuple[str, str], dict[str, Any]],
                            refused: dict[str, str]) -> None:
        """Make the publication cover exactly the configured tables we can capture (when it is ours), or check
        that the user's publication covers them, with no column list and a row filter the snapshot can apply."""
        pub = sql.Identifier(self.publication_name)
        cur.execute("SELECT oid, puballtables, pubviaroot FROM pg_publication WHERE pubname = %s",
                    (self.publication_name,))
        row = cur.fetchone()
        wanted = {key: info for key, info in present.items() if f"{key[0]}.{key[1]}" not in refused}
        partitioned = any(info["relkind"] == "p" for info in wanted.values())

        def target(key: tuple[str, str]) -> sql.Composable:
            # ONLY: an inheritance parent's children are tables of their own (its snapshot reads it ONLY too).
            only = sql.SQL("" if present[key]["relkind"] == "p" else "ONLY ")
            return sql.SQL("{}{}").format(only, sql.Identifier(*key))

        if row is None:
            if not self.create_publication:
                raise SourceError(self.source_id, f"publication {self.publication_name!r} does not exist; create it "
                                  "or set create_publication: true")
            if not wanted:
                return
            cur.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)").format(
                pub, sql.SQL(", ").join(target(k) for k in wanted)))
            log.info("created publication %s for %s", self.publication_name,
                     ", ".join(f"{s}.{t}" for s, t in wanted))
            return
        pub_oid, all_tables, via_root = row
        cur.execute(
            "SELECT n.nspname, c.relname FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.prpubid = %s",
            (pub_oid,),
        )
        members = {(s, t) for s, t in cur.fetchall()}
        cur.execute("SELECT n.nspname FROM pg_publication_namespace p JOIN pg_namespace n ON n.oid = p.pnnspid "
                    "WHERE p.pnpubid = %s", (pub_oid,))
        schemas = {s for (s,) in cur.fetchall()}
        covered = {k for k in wanted if all_tables or k in members or k[0] in schemas}
        if self.create_publication:
            added = [k for k in wanted if k not in covered]
            removed = [k for k in members if k not in wanted]
            if added:
                cur.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    pub, sql.SQL(", ").join(target(k) for k in added)))
                log.info("publication %s now covers %s", self.publication_name,
                         ", ".join(f"{s}.{t}" for s, t in added))
            if removed:
                cur.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
                    pub, sql.SQL(", ").join(sql.Identifier(*k) for k in removed)))
                log.info("publication %s no longer covers %s (not configured, or refused)", self.publication_name,
                         ", ".join(f"{s}.{t}" for s, t in removed))
            if partitioned and not via_root:
                cur.execute(sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = true)").format(pub))
            return
        problems = [f"{s}.{t} is not in it" for s, t in wanted if (s, t) not in covered]
        if partitioned and not via_root:
            problems.append("it does not set publish_via_partition_root = true, which partitioned tables need")
        cur.execute("SELECT schemaname, tablename, attnames, rowfilter FROM pg_publication_tables WHERE pubname = %s",
                    (self.publication_name,))
        self._row_filters = {}
        for schema, table, attnames, rowfilter in cur.fetchall():
            key = (schema, table)
            if key not in wanted:
                continue
            columns = Catalog(self.conn).table_schema(wanted[key]["relid"]).column_names
            if attnames is not None and sorted(attnames) != sorted(columns):
                problems.append(f"{schema}.{table} has a column list ({', '.join(attnames)}); the sink needs every "
                                "column: remove the column list")
            if rowfilter:
                self._row_filters[f"{schema}.{table}"] = rowfilter
        if problems:
            raise SourceError(self.source_id, f"publication {self.publication_name!r} (create_publication: false): "
                              + "; ".join(problems))

    def slot_state(self) -> dict[str, Any] | None:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT confirmed_flush_lsn::text, restart_lsn::text, plugin, database = current_database() "
                "FROM pg_replication_slots WHERE slot_name = %s",
                (self.slot_name,),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return {"confirmed_flush_lsn": row[0], "restart_lsn": row[1], "plugin": row[2], "same_database": row[3]}

    def _ensure_slot(self, position: dict[str, Any] | None = None) -> None:
        state = self.slot_state()
        if state is not None:
            if state["plugin"] != "pgoutput" or not state["same_database"]:
                raise SourceError(
                    self.source_id,
                    f"replication slot {self.slot_name!r} exists but is not a pgoutput slot of this database; "
                    "choose another slot_name",
                )
            return
        if position is not None:
            # A new slot would start now: every change since the position would be skipped without a word.
            raise PositionLostError(self.source_id, position, f"replication slot {self.slot_name!r} was dropped "
                                    "(it is not recreated: the changes since the position are gone)")
        if not self.create_slot:
            raise SourceError(
                self.source_id, f"replication slot {self.slot_name!r} does not exist; create it or set create_slot: true"
            )
        with self.conn.cursor() as cur:
            cur.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (self.slot_name,))
            (lsn,) = cur.fetchone()
        log.info("created replication slot %s at %s", self.slot_name, lsn)

    def drop_slot(self) -> bool:
        """Drop the replication slot (re-snapshot); True when there was one."""
        if self.slot_state() is None:
            return False
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_drop_replication_slot(%s)", (self.slot_name,))
        log.info("dropped replication slot %s", self.slot_name)
        return True

    # -- positions ------------------------------------------------------------------------------------------

    def server_identity(self) -> dict[str, Any]:
        """The server's system identifier and timeline: LSNs mean something only on the server that wrote them."""
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT system_identifier::text FROM pg_control_system()")
                (system_id,) = cur.fetchone()
                cur.execute("SELECT timeline_id FROM pg_control_checkpoint()")
                (timeline,) = cur.fetchone()
        except psycopg.errors.InsufficientPrivilege:
            log.warning("source %s: cannot read pg_control_system() (grant EXECUTE on it, or pg_monitor); a "
                        "failover or restore cannot be detected", self.source_id)
            return {}
        return {"system_id": system_id, "timeline": int(timeline)}

    def initial_position(self, snapshot: bool | None = None) -> dict[str, Any]:
        """Where a source without a stored position starts: the slot's confirmed LSN, snapshot pending if asked
        (``snapshot`` overrides the configured mode: a re-snapshot always reads the tables)."""
        state = self.slot_state()
        if state is None:
            self.prepare()
            state = self.slot_state()
        position: dict[str, Any] = {"lsn": state["confirmed_flush_lsn"], "seq": 0, "schemas": {},
                                    "tables": self.qualified_tables, **self.server_identity()}
        if snapshot if snapshot is not None else self.snapshot_mode == "initial":
            position["snapshot"] = {"pending": self.qualified_tables, "after": None}
        return position

    def resnapshot_position(self, position: dict[str, Any], tables: list[str]) -> dict[str, Any]:
        """``position`` with ``tables`` queued for a new snapshot (the other tables keep streaming)."""
        position = self._reconcile(position)
        pending = list(position.get("snapshot", {}).get("pending", []))
        after = position.get("snapshot", {}).get("after")
        for name in tables:
            if name not in self.qualified_tables:
                raise SourceError(self.source_id, f"table {name} is not in this source's 'tables'")
            if name in pending:
                if pending[0] == name:
                    after = None  # start that table over
                continue
            pending.append(name)
        position["snapshot"] = {"pending": pending, "after": after}
        return position

    def _reconcile(self, position: dict[str, Any]) -> dict[str, Any]:
        """Bring a stored position in line with the configured tables: new ones get a snapshot, removed ones stop.

        Pending snapshots are remembered by table name, so editing ``tables`` mid-snapshot skips nothing."""
        position = {k: v for k, v in position.items() if k != "from_ledger"}
        configured = self.qualified_tables
        captured = position.get("tables")
        snapshot = position.get("snapshot")
        if snapshot is not None and "pending" not in snapshot:  # older positions: a list index
            snapshot = {"pending": configured[snapshot.get("table", 0):], "after": snapshot.get("after")}
        if captured is None:
            captured = [t for t in configured]
        pending = list(snapshot["pending"]) if snapshot else []
        after = snapshot["after"] if snapshot else None
        added = [t for t in configured if t not in captured]
        removed = [t for t in captured if t not in configured]
        if added:
            if self.snapshot_mode == "initial":
                log.info("source %s: tables %s were added to the configuration: each gets its own snapshot while "
                         "the other tables keep streaming", self.source_id, ", ".join(added))
                pending += [t for t in added if t not in pending]
            else:
                log.info("source %s: tables %s were added (snapshot: never): streaming their changes from now on",
                         self.source_id, ", ".join(added))
        if removed:
            log.info("source %s: tables %s were removed from the configuration: they stop flowing (their sink tables "
                     "are kept)", self.source_id, ", ".join(removed))
        if pending and pending[0] not in configured:
            after = None
        pending = [t for t in pending if t in configured]
        position["tables"] = configured
        if pending:
            position["snapshot"] = {"pending": pending, "after": after}
        else:
            position.pop("snapshot", None)
        return position

    def _check_position(self, position: dict[str, Any]) -> dict[str, Any]:
        """The slot's state once ``position`` is known to be valid on this server; else PositionLostError."""
        state = self.slot_state()
        if state is None:
            raise PositionLostError(self.source_id, position, f"replication slot {self.slot_name!r} was dropped")
        identity = self.server_identity()
        if position.get("system_id") and identity and position["system_id"] != identity["system_id"]:
            raise PositionLostError(
                self.source_id, position, f"the position was taken on another server (system identifier "
                f"{position['system_id']}, this server is {identity['system_id']}): a restore or a move to "
                "another server")
        if position.get("timeline") and identity and position["timeline"] != identity["timeline"]:
            raise PositionLostError(
                self.source_id, position, f"the server's timeline changed from {position['timeline']} to "
                f"{identity['timeline']} (a failover or a point-in-time restore): LSNs after the switch may name "
                "other changes")
        current = self._current_lsn()
        if pgoutput.lsn_to_int(position["lsn"]) > pgoutput.lsn_to_int(current):
            raise PositionLostError(
                self.source_id, position, f"the position is ahead of the server's WAL ({current}): it belongs to "
                "another server or to a state before a restore")
        confirmed = pgoutput.lsn_to_int(state["confirmed_flush_lsn"])
        if pgoutput.lsn_to_int(position["lsn"]) < confirmed:
            if position.get("from_ledger"):
                # The Variable was lost and the ledger's last batch is behind the slot: the slot moved on only
                # through batches without changes (heartbeats, which leave no ledger row), so nothing is skipped.
                log.warning("source %s: resuming from the sink ledger at %s; the slot is at %s after batches "
                            "without changes", self.source_id, position["lsn"], state["confirmed_flush_lsn"])
                position["lsn"] = state["confirmed_flush_lsn"]
                return state
            raise PositionBehindSlot(
                self.source_id,
                position,
                f"slot {self.slot_name!r} is already at {state['confirmed_flush_lsn']}, past the stored position: "
                "changes in between were consumed elsewhere",
            )
        return state

    def _current_lsn(self) -> str:
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_lsn()::text")
            return cur.fetchone()[0]

    # -- capture --------------------------------------------------------------------------------------------

    def capture(self, position: dict[str, Any] | None, max_changes: int) -> ChangeBatch:
        if position is None:
            position = self.initial_position()
        else:
            position = dict(position)
            self._check_position(position)
            position = self._reconcile(position)
        if not position.get("system_id"):
            position.update(self.server_identity())
        snapshot = position.get("snapshot")
        started = time.monotonic()
        stream_budget = max(1, max_changes // 2) if snapshot else max_changes
        decoder = self._capture_stream(position, stream_budget, self._streamed_tables(position))
        stream = decoder.finish()
        stream = self._settle(stream, snapshot)
        if snapshot:
            batch = self._capture_snapshot(stream, max(max_changes - stream.change_count, max_changes // 2))
        else:
            batch = stream
        log.info(
            "captured %d changes in %d transactions (%s) from %s to %s in %.2fs%s",
            batch.change_count, decoder.transactions, batch.op_totals(), position["lsn"], batch.position_to["lsn"],
            time.monotonic() - started,
            "" if not snapshot else "; snapshot complete" if "snapshot" not in batch.position_to else
            f"; snapshot continues with {batch.position_to['snapshot']['pending'][0]}",
        )
        return batch

    def has_changes(self, position: dict[str, Any] | None) -> bool:
        if position is None or position.get("snapshot") is not None or self._has_new_tables(position):
            return True
        self._check_position(position)
        with self.conn.cursor() as cur:
            cur.execute(self._probe_sql(), (self.slot_name, PROBE_CHANGES, self._publication_option))
            return commits_after(cur.fetchall(), position)

    def _has_new_tables(self, position: dict[str, Any]) -> bool:
        return "tables" in position and sorted(position["tables"]) != sorted(self.qualified_tables)

    async def has_changes_async(self, position: dict[str, Any] | None) -> bool:
        """:meth:`has_changes` without blocking the triggerer's event loop (one connection kept across polls)."""
        if position is None or position.get("snapshot") is not None or self._has_new_tables(position):
            return True
        if self._aconn is None or self._aconn.closed:
            self._aconn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, client_encoding="utf8")
        async with self._aconn.cursor() as cur:
            await cur.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                              (self.slot_name,))
            if await cur.fetchone() is None:
                raise PositionLostError(self.source_id, position, f"replication slot {self.slot_name!r} was dropped")
            await cur.execute(self._probe_sql(), (self.slot_name, PROBE_CHANGES, self._publication_option))
            return commits_after(await cur.fetchall(), position)

    async def heartbeat_async(self) -> None:
        if self._aconn is None or self._aconn.closed:
            self._aconn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, client_encoding="utf8")
        await self._aconn.execute("SELECT pg_logical_emit_message(true, %s, now()::text)", (HEARTBEAT_PREFIX,))

    async def aclose(self) -> None:
        if self._aconn is not None:
            await self._aconn.close()
            self._aconn = None

    @property
    def _publication_option(self) -> str:
        """``publication_names`` is parsed as a list of identifiers: quoted, so that case and commas survive."""
        return '"' + self.publication_name.replace('"', '""') + '"'

    @staticmethod
    def _peek_sql() -> str:
        return (
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, 'proto_version', '1', "
            "'publication_names', %s, 'messages', 'true')"
        )

    @staticmethod
    def _probe_sql() -> str:
        # Only commit messages reach the client: a probe that meets one huge transaction still holds a few rows.
        return (
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, 'proto_version', '1', "
            "'publication_names', %s, 'messages', 'true') WHERE get_byte(data, 0) = 67"
        )

    def _streamed_tables(self, position: dict[str, Any]) -> set[str]:
        """Tables whose stream changes are applied: configured, and not waiting for a snapshot that has not started
        (that snapshot will read the rows with these changes in them)."""
        snapshot = position.get("snapshot")
        waiting: list[str] = []
        if snapshot:
            waiting = snapshot["pending"] if snapshot.get("after") is None else snapshot["pending"][1:]
        return {t for t in self.qualified_tables if t not in waiting}

    def _capture_stream(self, position: dict[str, Any], max_changes: int, keep: set[str]) -> StreamDecoder:
        if position.get("partial"):
            return self._capture_window(position, max_changes, keep)
        limit = max_changes
        cap: int | None = 4 * max_changes + 1000  # messages: B, C and R count too
        while True:
            messages = self._peek_messages(limit, cap)
            if cap is not None and len(messages) >= cap:
                whole = self._whole_transactions(messages, position)
                if whole is None:
                    # The first new transaction alone is larger than a batch: read it in windows.
                    first = self._first_new_transaction(messages, position)
                    if first is not None:
                        return self._capture_window({**position, "partial": {"final_lsn": first, "done": 0}},
                                                    max_changes, keep)
                    cap = None  # cut inside transactions loaded already: read on without the cap
                    continue
                messages = whole
            decoder = self._decode(position, messages, keep)
            # Only transactions at or before the stored position came back (the Variable was stored but the slot
            # not yet advanced): they used up the limit, so look further rather than report nothing.
            if decoder.transactions or not decoder.skipped or decoder.messages < limit:
                return decoder
            limit = limit * 4 + decoder.messages
            cap = None if cap is None else 4 * limit + 1000

    @staticmethod
    def _kinds_and_lsns(messages: pa.LargeBinaryArray) -> tuple[np.ndarray, np.ndarray]:
        _, offsets_buf, data = messages.buffers()
        buf = np.frombuffer(data, np.uint8)
        starts = np.frombuffer(offsets_buf, np.int64, count=len(messages) + 1, offset=messages.offset * 8)[:-1]
        return buf[starts], starts

    def _whole_transactions(self, messages: pa.LargeBinaryArray, position: dict[str, Any]) -> pa.LargeBinaryArray | None:
        """The messages up to the last commit, when they hold a transaction not loaded yet; else None."""
        kinds, _ = self._kinds_and_lsns(messages)
        commits = np.flatnonzero(kinds == ord("C"))
        start = pgoutput.lsn_to_int(position["lsn"])
        for i in commits[::-1].tolist():
            if pgoutput.decode_commit(messages[i].as_py()).end_lsn > start:
                return messages.slice(0, i + 1)
        return None

    def _first_new_transaction(self, messages: pa.LargeBinaryArray, position: dict[str, Any]) -> str | None:
        kinds, _ = self._kinds_and_lsns(messages)
        start = pgoutput.lsn_to_int(position["lsn"])
        for i in np.flatnonzero(kinds == ord("B")).tolist():
            begin = pgoutput.decode_begin(messages[i].as_py())
            if begin.final_lsn >= start:
                return pgoutput.int_to_lsn(begin.final_lsn)
        return None

    def _capture_window(self, position: dict[str, Any], max_changes: int, keep: set[str]) -> StreamDecoder:
        """The next ``max_changes`` messages of one transaction too large for a batch (memory stays bounded by
        the batch size, whatever the transaction's size). The position then points inside the transaction
        (``partial``: its final LSN and how many of its messages are loaded); the slot stays before it until its
        last window is loaded. The server filters: of the messages already loaded only Begin, Relation and Type
        come back, which the decoder needs to read the rest."""
        partial = position["partial"]
        done = int(partial["done"])
        final_lsn = pgoutput.lsn_to_int(partial["final_lsn"])
        begin_prefix = bytes([0x42]) + final_lsn.to_bytes(8, "big")
        query = (
            "WITH p AS MATERIALIZED (SELECT data, n FROM pg_logical_slot_peek_binary_changes(%(slot)s, %(upto)s::pg_lsn, NULL, "
            "'proto_version', '1', 'publication_names', %(pub)s, 'messages', 'true') WITH ORDINALITY AS p(lsn, xid, data, n)),"
            " b AS (SELECT min(n) AS n0 FROM p WHERE substr(data, 1, 9) = %(begin)s)"
            " SELECT p.n - b.n0, p.data FROM p, b WHERE p.n >= b.n0 AND ("
            "  (p.n < b.n0 + %(done)s AND get_byte(p.data, 0) IN (66, 82, 89))"
            "  OR (p.n >= b.n0 + %(done)s AND p.n < b.n0 + %(done)s + %(window)s)) ORDER BY p.n"
        )
        # Decoding stops after the transaction's commit (a Begin message's final LSN is where its commit record
        # is; upto_lsn keeps transactions that commit before it).
        params = {"slot": self.slot_name, "pub": self._publication_option, "begin": begin_prefix, "done": done,
                  "upto": pgoutput.int_to_lsn(final_lsn + 1),
                  "window": max(max_changes, 1)}
        with self.conn.transaction():
            with self.conn.cursor(name=f"cdc_window_{self.slot_name}", binary=True) as cur:
                cur.itersize = 10000
                cur.execute(query, params)
                rows = [(int(offset), bytes(data)) for offset, data in cur]
        if not rows:
            raise PositionLostError(self.source_id, position, f"transaction {partial['final_lsn']} that the position "
                                    "points into is no longer in the slot")
        decoder = StreamDecoder(self, position, keep)
        last = done
        for offset, data in rows:
            decoder.feed(data)
            last = offset
            if data[0] == 0x43:  # its commit: the transaction is complete
                break
        if decoder.begin is not None:  # no commit yet: more windows to come
            decoder.flush_partial({"final_lsn": partial["final_lsn"], "done": last + 1}, done)
        log.info("source %s: read messages %d to %d of the large transaction %s%s", self.source_id, done, last,
                 partial["final_lsn"], "" if decoder.begin is not None else " (its last part)")
        return decoder

    def _decode(self, position: dict[str, Any], messages: pa.LargeBinaryArray, keep: set[str]) -> StreamDecoder:
        """Decode peeked messages columnar, or message by message for rare shapes."""
        decoder = StreamDecoder(self, position, keep)
        if self.columnar:
            try:
                decoder.columnar_tables = decode_columnar(decoder, messages)
                return decoder
            except Unsupported as exc:
                log.info("decoding this batch message by message: %s", exc)
                decoder = StreamDecoder(self, position, keep)
        for data in messages.to_pylist():
            decoder.feed(data)
        return decoder

    def _peek_messages(self, limit: int, cap: int | None = None) -> pa.LargeBinaryArray:
        """The peeked messages as one Arrow array, at most ``cap`` of them. The server concatenates them into one
        value and sends their lengths beside it: one row instead of one per message, which is what a cursor spends
        its time on. A batch too large for one value (1 GiB) is read through a server-side cursor instead."""
        source = ("pg_logical_slot_peek_binary_changes(%s, NULL, %s, 'proto_version', '1', 'publication_names', %s, "
                  "'messages', 'true')")
        if cap is not None:
            source += f" WITH ORDINALITY AS p(lsn, xid, data, n) WHERE n <= {int(cap)}"
        try:
            with self.conn.cursor(binary=True) as cur:
                # One plain Aggregate over the function scan: both aggregates see the rows in stream order
                # (an ORDER BY would sort, and spill, the whole batch); the decoder checks commit order anyway.
                cur.execute(
                    "SELECT coalesce(array_agg(length(data)), '{}'), coalesce(string_agg(data, ''::bytea), ''::bytea) "
                    f"FROM {source}",
                    (self.slot_name, limit, self._publication_option),
                )
                lengths, data = cur.fetchone()
            offsets = np.zeros(len(lengths) + 1, np.int64)
            np.cumsum(lengths, out=offsets[1:])
            return pa.Array.from_buffers(
                pa.large_binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
            )
        except psycopg.errors.ProgramLimitExceeded:
            log.info("batch larger than one value can hold; reading it row by row")
        with self.conn.transaction():
            with self.conn.cursor(name=f"cdc_peek_{self.slot_name}", binary=True) as cur:
                cur.itersize = 10000
                cur.execute(f"SELECT data FROM {source}", (self.slot_name, limit, self._publication_option))
                return pa.array([data for (data,) in cur], pa.large_binary())

    def _settle(self, batch: ChangeBatch, snapshot: dict[str, Any] | None) -> ChangeBatch:
        """Reconcile stream changes with snapshot reads of the same time span.

        While a table's snapshot runs, and until the stream has passed the point where it ended ("settling"), the
        stream may bring changes older than the rows the snapshot read. Changes of keys the snapshot has not read
        yet are dropped (it reads them later); rows that moved to a new key without resending their out-of-line
        values are read again from the source (their old key may never have reached the sink). Once the stream is
        past a snapshot's end, every row it changes is in the sink as the stream left it."""
        settling = dict(batch.position_to.get("settling", {}))
        if snapshot and snapshot.get("after") is not None:
            batch = self._drop_unread_keys(batch, snapshot)
        for name, until in list(settling.items()):
            if name in batch.tables and batch.tables[name].num_rows:
                batch.tables[name] = self._reread_moved_rows(batch.schemas[name], batch.tables[name])
            if pgoutput.lsn_to_int(batch.position_to["lsn"]) > pgoutput.lsn_to_int(until):
                del settling[name]
        if settling:
            batch.position_to["settling"] = settling
        else:
            batch.position_to.pop("settling", None)
        return batch

    def _drop_unread_keys(self, batch: ChangeBatch, snapshot: dict[str, Any]) -> ChangeBatch:
        """Drop stream changes of the table being snapshotted whose keys the snapshot has not read yet: it reads
        them later, with these changes in them (keys compare as the server orders them, typed and collated)."""
        name, after = snapshot["pending"][0], snapshot.get("after")
        table = batch.tables.get(name)
        if after is None or table is None or table.num_rows == 0:
            return batch
        schema = batch.schemas[name]
        key = schema.primary_key
        is_row = pc.invert(pc.equal(table["_cdc_op"], "t"))
        arrays = [sql.SQL("%s::text[]") for _ in key]
        typed = sql.SQL(", ").join(
            sql.SQL("u.{}::{}").format(sql.Identifier(f"k{i}"), sql.SQL(schema.column(c).source_type))
            for i, c in enumerate(key))
        bounds = sql.SQL(", ").join(
            sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(schema.column(c).source_type)) for c, v in zip(key, after))
        query = sql.SQL("SELECT u.n FROM unnest({}) WITH ORDINALITY AS u({}, n) WHERE ({}) > ({})").format(
            sql.SQL(", ").join(arrays), sql.SQL(", ").join(sql.Identifier(f"k{i}") for i in range(len(key))),
            typed, bounds)
        with self.conn.cursor() as cur:
            cur.execute(query, [table[c].to_pylist() for c in key])
            unread = {n - 1 for (n,) in cur.fetchall()}
        if unread:
            kept = pc.invert(pc.is_in(pa.array(range(table.num_rows), pa.int64()), value_set=pa.array(sorted(unread))))
            table = table.filter(pc.or_(kept, pc.invert(is_row)))
            log.info("source %s: %d changes of %s are past its snapshot's last key; the snapshot reads them later",
                     self.source_id, len(unread), name)
        batch.tables[name] = self._reread_moved_rows(schema, table)
        return batch

    def _reread_moved_rows(self, schema: TableSchema, table: pa.Table) -> pa.Table:
        """Changes that did not resend some values (unchanged TOAST), in a table whose snapshot the stream has not
        caught up with: the sink may not hold the row they change. It moved onto its key from one the snapshot
        read before it came, or it was there when the change was written but gone before the snapshot read its
        key. Their values are read again from the source, as the snapshot would read them (the row as it is now;
        later changes converge on it as on any snapshot row); a row no longer there becomes a delete of its key."""
        moved = pc.fill_null(pc.and_(pc.is_in(table["_cdc_op"], pa.array(["c", "u"])),
                                     pc.greater(pc.list_value_length(table["_cdc_unchanged"]), 0)), False)
        rows = pc.indices_nonzero(moved).to_pylist()
        if not rows:
            return table
        affected = table.filter(moved)
        found = self._read_rows_by_key(schema, [affected[c].to_pylist() for c in schema.primary_key])
        records = affected.to_pylist()  # only the few rows that did not resend values
        for n, record in enumerate(records):
            current = found.get(n)
            if current is None:
                record["_cdc_op"] = "d"
            else:
                record.update(current)
            record["_cdc_unchanged"] = None
        table = pa.concat_tables([table.filter(pc.invert(moved)), pa.Table.from_pylist(records, schema=table.schema)])
        table = table.sort_by("_cdc_seq")
        log.info("source %s: %d changes of %s did not resend some values while its snapshot settles; read those rows "
                 "again from the source", self.source_id, len(rows), schema.qualified_name)
        return table

    def _read_rows_by_key(self, schema: TableSchema, keys: list[list[str]]) -> dict[int, dict[str, str | None]]:
        """Current rows for the given keys (text, one list per key column), by the keys' position in the lists."""
        names = [f"k{i}" for i in range(len(keys))]
        joined = sql.SQL(" AND ").join(
            sql.SQL("t.{} = u.{}::{}").format(sql.Identifier(c), sql.Identifier(k), sql.SQL(schema.column(c).source_type))
            for c, k in zip(schema.primary_key, names))
        query = sql.SQL("SELECT u.n, {} FROM unnest({}) WITH ORDINALITY AS u({}, n) JOIN {} AS t ON {}").format(
            sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in schema.column_names),
            sql.SQL(", ").join(sql.Literal(values) + sql.SQL("::text[]") for values in keys),
            sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(schema.schema, schema.name), joined)
        read = self._copy_text(query, ["_n", *schema.column_names])
        return {int(row.pop("_n")) - 1: row for row in read.to_pylist()}

    def _capture_snapshot(self, stream: ChangeBatch, max_changes: int) -> ChangeBatch:
        """Add the next ``max_changes`` rows of the pending snapshot to ``stream``'s batch, table by table in key
        order, with ``seq`` numbers after the stream's (the rows are read after those changes were written)."""
        position = stream.position_to
        state = dict(position["snapshot"])
        pending = list(state["pending"])
        seq = position.get("seq", 0)
        snap_from = seq + 1
        schemas_seen = dict(position.get("schemas", {}))
        tables = dict(stream.tables)
        schemas = dict(stream.schemas)
        schema_changes = list(stream.schema_changes)
        remaining = max_changes
        catalog = Catalog(self.conn)
        ts_ms = int(time.time() * 1000)
        after = state.get("after")
        settling = dict(position.get("settling", {}))
        while remaining > 0 and pending:
            qualified = pending[0]
            schema_name, _, table_name = qualified.partition(".")
            relid = catalog.relid(schema_name, table_name)
            if relid is None:
                log.warning("source %s: table %s is gone at the source; its snapshot is skipped", self.source_id,
                            qualified)
                pending.pop(0)
                after = None
                continue
            info = catalog.relation_info(relid)
            table_schema = catalog.table_schema(relid)
            if schemas.get(qualified) is not None and qualified in tables and \
                    schemas[qualified].fingerprint() != table_schema.fingerprint():
                tables[qualified] = align(tables[qualified], schemas[qualified], table_schema)
            if seen_fingerprint(schemas_seen.get(qualified)) != fingerprint_hash(table_schema):
                seq += 1
                schema_changes.append(SchemaChange(qualified, seq, table_schema,
                                                   schemas.get(qualified) or seen_schema(schemas_seen.get(qualified)),
                                                   ts_ms, position["lsn"]))
                schemas_seen[qualified] = remembered(table_schema)
            schemas[qualified] = table_schema
            chunk = self._read_chunk(table_schema, after, remaining, only=info["relkind"] != "p")
            n = chunk.num_rows
            if n:
                meta = {
                    "_cdc_op": pa.array([OP_READ] * n, pa.string()),
                    "_cdc_seq": pa.array(range(seq + 1, seq + n + 1), pa.int64()),
                    "_cdc_ts_ms": pa.array([ts_ms] * n, pa.int64()),
                    "_cdc_tx_id": pa.nulls(n, pa.string()),
                    "_cdc_pos": pa.array([position["lsn"]] * n, pa.string()),
                    "_cdc_unchanged": pa.nulls(n, pa.list_(pa.string())),
                }
                piece = pa.Table.from_arrays(
                    list(meta.values()) + chunk.columns, names=list(meta) + chunk.column_names
                )
                tables[qualified] = concat_tables([tables[qualified], piece]) if qualified in tables else piece
                seq += n
                remaining -= n
            if n and remaining <= 0:
                last = chunk.slice(n - 1).to_pylist()[0]
                after = [last[k] for k in table_schema.primary_key]
            else:
                pending.pop(0)
                after = None
                # Its rows were read up to now; the stream catches up with them once it passes this point.
                settling[qualified] = self._current_lsn()
        position_to = {**position, "seq": seq, "schemas": schemas_seen}
        if settling:
            position_to["settling"] = settling
        position_to.pop("snapshot", None)
        if pending:
            position_to["snapshot"] = {"pending": pending, "after": after}
        if stream.seq_to >= stream.seq_from:  # the stream part had changes
            batch_id = make_batch_id(self.source_id, stream.batch_id.partition(":")[2],
                                     f"snapshot.{snap_from}-{seq}")
        else:
            batch_id = make_batch_id(self.source_id, f"snapshot.{snap_from}", f"snapshot.{seq}")
        batch = ChangeBatch(
            source_id=self.source_id,
            batch_id=batch_id,
            position_from=stream.position_from,
            position_to=position_to,
            seq_from=stream.seq_from,
            seq_to=seq,
            tables=tables,
            schemas=schemas,
            schema_changes=sorted(schema_changes, key=lambda change: change.seq),
            connector="postgresql",
            database=self.conn.info.dbname,
        )
        return batch

    def _read_chunk(self, table: TableSchema, after: list[str] | None, limit: int, *, only: bool = True) -> pa.Table:
        """One keyset page of ``table`` as canonical text, read with ``COPY ... CSV`` and parsed by Arrow.

        Values go through their types' output functions, as pgoutput's do (no ``::text`` cast: it would drop the
        padding of ``char(n)``, print booleans as ``true`` and inet with its mask), so snapshot text equals stream
        text. ``only`` reads an inheritance parent without its children (the children are tables of their own)."""
        cols = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in table.column_names)
        pk = table.primary_key
        order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in pk)
        conditions = []
        if after is not None:
            bounds = sql.SQL(", ").join(
                sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(table.column(c).source_type)) for c, v in zip(pk, after)
            )
            conditions.append(sql.SQL("({}) > ({})").format(order, bounds))
        row_filter = getattr(self, "_row_filters", {}).get(table.qualified_name)
        if row_filter:
            # The publication's own row filter (server-deparsed SQL from its catalog), so the snapshot holds the
            # rows the stream will send changes for.
            conditions.append(sql.SQL("({})").format(sql.SQL(row_filter)))
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
        query = sql.SQL("SELECT {} FROM {}{} AS t{} ORDER BY {} LIMIT {}").format(
            cols, sql.SQL("ONLY " if only else ""), sql.Identifier(table.schema, table.name), where, order,
            sql.Literal(limit)
        )
        return self._copy_text(query, table.column_names)

    def _copy_text(self, query: sql.Composable, names: list[str]) -> pa.Table:
        """Rows of ``query`` as canonical text, read with ``COPY ... CSV`` in one REPEATABLE READ transaction and
        parsed by Arrow (every column a string; an unquoted empty field is NULL, a quoted one ``''``)."""
        buf = io.BytesIO()
        conn = self.conn
        with conn.transaction():
            with conn.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                with cur.copy(sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(query)) as copy:
                    for block in copy:
                        buf.write(block)
        size = buf.tell()
        if size == 0:
            return pa.table({c: pa.array([], pa.string()) for c in names})
        buf.seek(0)
        return pacsv.read_csv(
            buf,
            # A block must hold the largest row (a 100 MB text value is one field); the text is in memory anyway.
            read_options=pacsv.ReadOptions(column_names=names, block_size=max(1 << 24, min(size + 1, 2**31 - 1))),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in names},
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                null_values=[""],
            ),
        )

    # -- acknowledgement and heartbeat ----------------------------------------------------------------------

    def acknowledge(self, position: dict[str, Any]) -> None:
        """Advance the slot to ``position['lsn']`` (called only after the sink committed); never backwards."""
        state = self.slot_state()
        if state is None:
            raise PositionLostError(self.source_id, position, f"replication slot {self.slot_name!r} was dropped")
        if pgoutput.lsn_to_int(position["lsn"]) <= pgoutput.lsn_to_int(state["confirmed_flush_lsn"]):
            return
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot_name, position["lsn"]))
        log.info("advanced slot %s to %s", self.slot_name, position["lsn"])

    def position_order(self, position: dict[str, Any]) -> tuple:
        """Later positions have more events (``seq``) or, for event-less heartbeats, a later LSN. Positions that
        tie differ only in bookkeeping (tables queued for a snapshot, say): the newer document wins."""
        return (position.get("seq", 0), pgoutput.lsn_to_int(position["lsn"]))

    def heartbeat(self) -> None:
        """Emit a transactional logical message: an idle source then still has a commit to advance the slot to."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_logical_emit_message(true, %s, now()::text)", (HEARTBEAT_PREFIX,))


class PositionBehindSlot(PositionLostError):
    """The slot is past the position: lost, unless another run of the same source just committed (overlapping
    runs), which the pipeline checks by reading the position again."""
