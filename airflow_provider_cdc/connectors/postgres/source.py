"""PostgreSQL source: logical decoding with ``pgoutput`` through the SQL interface.

Capture never acknowledges: the slot moves only when the commit step calls :meth:`PgSource.acknowledge`
(``pg_replication_slot_advance``) after the sink committed, so a cleared task replays the identical range.

Position document (Airflow Variable ``cdc.position.<source_id>``)::

    {"lsn": "0/1A2B3C4",            # end LSN of the last transaction loaded; the slot is advanced to it
     "seq": 1234,                   # last event seq: the next event gets seq + 1
     "tables": ["public.users"],    # the tables captured so far (a configured table not in it is new: snapshot)
     "snapshot": {"pending": ["public.orders"], "after": [...]} | absent,   # tables still to read, last key read
     "system_id": "7712...", "timeline": 1,   # the server the LSNs belong to (failover, restore: position lost)
     "schemas": {"public.users": {"fp": "<fingerprint>", "table": {...}}}}

The stream is read in :mod:`.stream`, the snapshot in :mod:`.snapshot` (which converge without loss), the
publication and the refusal of tables that cannot be captured in :mod:`.publication`; the position check that
capture, :meth:`PgSource.has_changes` and the triggerer's probe share is in :mod:`.checks`. Every value that enters a
batch is in the portable form of the value contract (:mod:`.values`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from airflow_provider_cdc.connectors.postgres import pgoutput
from airflow_provider_cdc.connectors.postgres.catalog import Catalog
from airflow_provider_cdc.connectors.postgres.checks import (
    HEARTBEAT_PREFIX,
    HEARTBEAT_SQL,
    IDENTITY_PRIVILEGE_SQL,
    PROBE_CHANGES,
    PROBE_SQL,
    PositionBehindSlot,
    SlotState,
    check_position,
    commits_after,
    position_check_sql,
    publication_option,
    slot_state_of,
)
from airflow_provider_cdc.connectors.postgres.publication import PublicationSetup
from airflow_provider_cdc.connectors.postgres.snapshot import SnapshotCapture
from airflow_provider_cdc.connectors.postgres.snapshot_ranges import Chunk, chunk_rows, joined
from airflow_provider_cdc.connectors.postgres.stream import StreamCapture
from airflow_provider_cdc.connectors.table_tracking import pending_work, queue_snapshot, reconcile
from airflow_provider_cdc.errors import PositionLostError, SourceError, TableRefusedError
from airflow_provider_cdc.events import ChangeBatch

__all__ = ["HEARTBEAT_PREFIX", "SESSION_SETTINGS", "PgSource", "PositionBehindSlot", "connect"]

log = logging.getLogger("airflow_provider_cdc.source.postgres")

# Text the server cannot hand over in UTF-8 (our session's client encoding): bytes that are invalid in the database's
# own encoding, which a SQL_ASCII database never checks, or characters with no UTF-8 form.
UNCONVERTIBLE_TEXT = (psycopg.errors.CharacterNotInRepertoire, psycopg.errors.UntranslatableCharacter)

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


class PgSource(PublicationSetup, StreamCapture, SnapshotCapture):
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
        snapshot_ranges: int = 1,
        snapshot_range_min_rows: int = 100_000,
        staging_url: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.source_id = source_id
        self.tables = tables
        self.slot_name = slot_name
        self.publication_name = publication_name
        self.snapshot_mode = snapshot
        self.create_slot = create_slot
        self.create_publication = create_publication
        self.snapshot_ranges = snapshot_ranges  # key ranges of a large table's snapshot (snapshot_ranges.py)
        self.snapshot_range_min_rows = snapshot_range_min_rows
        self.staging_url = staging_url  # where the ranges' chunks are staged (None: the batches' staging root)
        self._conn: psycopg.Connection | None = None
        self._row_filters: dict[str, str] = {}
        self._identity_readable: bool | None = None
        # Columnar decoding is the fast path; the per-message decoder is its reference (and the fallback).
        self.columnar = True
        self._rows_through = {}

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

    @contextmanager
    def _transient(self, doing: str, retry: str = "a retry reads again from the stored position") -> Iterator[None]:
        """A server restart, crash or dropped connection in the middle of ``doing`` (or a statement cancelled, the slot
        in use by another run: psycopg's OperationalError) is transient: a :class:`SourceError` that names the source,
        so that Airflow retries the task and the log says which source failed and how, instead of a bare driver
        error. The broken connection is dropped; the next call connects again. Capture acknowledges nothing, so a
        retry reads from the stored position."""
        try:
            yield
        except psycopg.OperationalError as exc:
            self.close()
            detail = " ".join(str(exc).split()) or type(exc).__name__
            why = "a server restart, a lost connection, another run using the slot at this moment"
            raise SourceError(self.source_id, f"{doing} failed: {detail}. Transient ({why}): {retry}") from exc

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
        with self._transient("preparing the source", "a retry checks again"):
            self._prepare(position)

    def _prepare(self, position: dict[str, Any] | None) -> None:
        conn = self.conn
        with conn.cursor() as cur:
            cur.execute("SHOW wal_level")
            row = cur.fetchone()
            assert row is not None  # SHOW returns one row
            (wal_level,) = row
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
                raise SourceError(self.source_id,
                                  f"tables not found: {', '.join(never_seen)}; check 'tables' in cdc.yaml")
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
                raise TableRefusedError(
                    self.source_id,
                    "cannot capture " + "; ".join(f"{name}: {reason}" for name, reason in refused.items())
                    + ". Nothing was published for these tables.",
                )
        self._ensure_slot(position)

    def slot_state(self) -> SlotState | None:
        """The replication slot (None when it does not exist)."""
        with self.conn.cursor() as cur:
            cur.execute(position_check_sql(False), (self.slot_name,))
            return slot_state_of(cur.fetchone())

    def _ensure_slot(self, position: dict[str, Any] | None = None) -> None:
        state = self.slot_state()
        if state is not None:
            if state.plugin != "pgoutput" or not state.same_database:
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
                self.source_id,
                f"replication slot {self.slot_name!r} does not exist; create it or set create_slot: true",
            )
        with self.conn.cursor() as cur:
            cur.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (self.slot_name,))
            row = cur.fetchone()
            assert row is not None  # the function returns one row (or raises)
            (lsn,) = row
        log.info("created replication slot %s at %s", self.slot_name, lsn)

    # -- recovery after a lost position (python -m airflow_provider_cdc resnapshot) ---------------------------

    def holds_position(self) -> bool:
        """Whether the replication slot exists."""
        return self.slot_state() is not None

    def discard_position_holder(self) -> str | None:
        """Drop the replication slot; says where it was (None: there was none)."""
        state = self.slot_state()
        if state is None:
            return None
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_drop_replication_slot(%s)", (self.slot_name,))
        log.info("dropped replication slot %s", self.slot_name)
        return f"replication slot {self.slot_name} (it was at {state.confirmed_flush_lsn})"

    # -- positions ------------------------------------------------------------------------------------------

    def server_identity(self) -> dict[str, Any]:
        """The server's system identifier and timeline: LSNs mean something only on the server that wrote them."""
        if not self._can_read_identity():
            return {}
        with self.conn.cursor() as cur:
            cur.execute(position_check_sql(True), (self.slot_name,))
            row = cur.fetchone()
        assert row is not None  # position_check_sql returns one row, the slot or not
        return {"system_id": row[5], "timeline": int(row[6])}

    def _can_read_identity(self) -> bool:
        if self._identity_readable is None:
            with self.conn.cursor() as cur:
                cur.execute(IDENTITY_PRIVILEGE_SQL)
                row = cur.fetchone()
                assert row is not None  # a SELECT without FROM returns one row
                self._identity_readable = bool(row[0])
            if not self._identity_readable:
                log.warning("source %s: cannot read pg_control_system() (grant EXECUTE on it, or pg_monitor); a "
                            "failover or restore cannot be detected", self.source_id)
        return self._identity_readable

    def initial_position(self, *, snapshot: bool | None = None) -> dict[str, Any]:
        """Where a source without a stored position starts: the slot's confirmed LSN, snapshot pending if asked
        (``snapshot`` overrides the configured mode: a re-snapshot always reads the tables)."""
        state = self.slot_state()
        if state is None:
            self.prepare()
            state = self.slot_state()
            if state is None:  # prepare() created it: dropped again since
                raise SourceError(self.source_id, f"replication slot {self.slot_name!r} was dropped while the source "
                                  "was being prepared")
        position: dict[str, Any] = {"lsn": state.confirmed_flush_lsn, "seq": 0, "schemas": {},
                                    "tables": self.qualified_tables, **self.server_identity()}
        if snapshot if snapshot is not None else self.snapshot_mode == "initial":
            position["snapshot"] = {"pending": self.qualified_tables, "after": None}
        return position

    def resnapshot_position(self, position: dict[str, Any], tables: list[str]) -> dict[str, Any]:
        """``position`` with ``tables`` queued for a new snapshot (the other tables keep streaming)."""
        return queue_snapshot(self._reconcile(position), tables, self.qualified_tables, source_id=self.source_id)

    def _reconcile(self, position: dict[str, Any]) -> dict[str, Any]:
        """Bring a stored position in line with the configured tables: new ones get a snapshot, removed ones stop."""
        return reconcile(position, self.qualified_tables, snapshot_mode=self.snapshot_mode, source_id=self.source_id)

    def _check_position(self, position: dict[str, Any]) -> SlotState:
        """The slot's state once ``position`` is known to be valid on this server; else PositionLostError."""
        with self.conn.cursor() as cur:
            cur.execute(position_check_sql(self._can_read_identity()), (self.slot_name,))
            row = cur.fetchone()
        return check_position(row, position, source_id=self.source_id, slot_name=self.slot_name)

    # -- capture --------------------------------------------------------------------------------------------

    def capture(self, position: dict[str, Any] | None, max_changes: int) -> ChangeBatch:
        with self._transient("capture"):
            return self._capture(position, max_changes)

    def _capture(self, position: dict[str, Any] | None, max_changes: int) -> ChangeBatch:
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
        batch, transactions, chunk = self._capture_piece(position, max_changes, max_changes)
        pieces = [batch]
        # A ranged snapshot emits chunks while the batch has room for another (each after the stream up to its
        # watermark): batches as large as the serial snapshot's, not half of them.
        while chunk is not None and (batch.position_to.get("snapshot") or {}).get("ranges") is not None:
            room = max_changes - sum(piece.change_count for piece in pieces) - chunk_rows(max_changes)
            if room < 0:
                break
            batch, more, chunk = self._capture_piece(batch.position_to, max_changes, room)
            pieces.append(batch)
            transactions += more
        batch = joined(pieces) if len(pieces) > 1 else batch
        log.info(
            "captured %d changes in %d transactions (%s) from %s to %s in %.2fs%s",
            batch.change_count, transactions, batch.op_totals(), position["lsn"], batch.position_to["lsn"],
            time.monotonic() - started,
            "" if not snapshot else "; snapshot complete" if "snapshot" not in batch.position_to else
            f"; snapshot continues with {batch.position_to['snapshot']['pending'][0]}",
        )
        return batch

    def _capture_piece(self, position: dict[str, Any], max_changes: int,
                       budget: int) -> tuple[ChangeBatch, int, Chunk | None]:
        """The stream from ``position`` (``budget`` changes at most), then the next page of a pending snapshot:
        the batch, its transactions, and the staged chunk of a ranged snapshot it emitted (None: none)."""
        snapshot = position.get("snapshot")
        stream_budget = max(1, budget // 2) if snapshot else budget
        ranges = snapshot.get("ranges") if snapshot else None
        chunk = None
        if ranges is not None and not position.get("partial"):
            # A ranged snapshot: the next staged chunk, and the stream read only up to its watermark.
            chunk = self.next_chunk(ranges, chunk_rows(max_changes))
        try:
            decoder = self._capture_stream(position, stream_budget, self._streamed_tables(position),
                                           upto=chunk.watermark if chunk is not None else None)
        except UNCONVERTIBLE_TEXT as exc:
            raise self._unconvertible_text(exc, None) from exc
        stream = decoder.finish()
        if decoder.rows_through is not None and not stream.position_to.get("partial"):
            self._note_rows_through(stream.position_to["lsn"], decoder.rows_through)
        stream = self._settle(stream, snapshot)
        if ranges is not None and (position.get("partial") or (chunk is not None and not decoder.drained)):
            return stream, decoder.transactions, None  # the stream is not at the chunk's watermark yet: it waits
        if not snapshot:
            return stream, decoder.transactions, None
        try:
            batch = self._capture_snapshot(stream, max(budget - stream.change_count, budget // 2), chunk,
                                           committed=decoder.xids)
        except UNCONVERTIBLE_TEXT as exc:
            raise self._unconvertible_text(exc, stream.position_to.get("snapshot") or snapshot) from exc
        after = (batch.position_to.get("snapshot") or {}).get("ranges")
        emitted = chunk is not None and ranges is not None and after is not None and \
            sum(after["emitted"]) > sum(ranges["emitted"])
        return batch, decoder.transactions, chunk if emitted else None

    def _unconvertible_text(self, exc: psycopg.Error, snapshot: dict[str, Any] | None) -> TableRefusedError:
        """The clear, terminal error for text the server cannot hand over in UTF-8 (a retry would read the same
        bytes again): which table and rows (snapshot) or which change (stream), and what to do."""
        with self.conn.cursor() as cur:
            cur.execute("SHOW server_encoding")
            row = cur.fetchone()
        encoding = row[0] if row else "?"
        table: str | None = None
        if snapshot:
            table = snapshot["pending"][0]
            after = snapshot.get("after")
            where = f"its rows after key {after}" if after is not None else "its first rows"
            remedy = "fix those values at the source (or keep raw bytes in a bytea column), then run again"
        else:
            lsn = re.search(r"LSN ([0-9A-F]+/[0-9A-F]+)", exc.diag.context or "")
            where = (f"the change at LSN {lsn.group(1)}" if lsn else "a streamed change") + \
                f" of one of {', '.join(self.qualified_tables)}"
            # The change stays in the log as it was written: only a re-snapshot of the fixed rows passes it.
            remedy = ("fix those values at the source (or keep raw bytes in a bytea column), then re-snapshot: "
                      f"python -m airflow_provider_cdc resnapshot {self.source_id}")
        checks = " (SQL_ASCII stores any bytes unchecked)" if encoding == "SQL_ASCII" else ""
        return TableRefusedError(
            self.source_id,
            f"text that has no UTF-8 form in {where}: {exc.diag.message_primary or exc}; the database's encoding is "
            f"{encoding}{checks}. Nothing of this batch was captured and the position did not move: {remedy}",
            table=table,
        )

    def has_changes(self, position: dict[str, Any] | None) -> bool:
        """Whether :meth:`capture` would return something; the same check as :class:`~.probe.PgChangeProbe`."""
        if pending_work(position, self.qualified_tables):
            return True
        assert position is not None
        position = dict(position)
        with self._transient("the check for changes", "a retry checks again"):
            self._check_position(position)
            with self.conn.cursor() as cur:
                cur.execute(PROBE_SQL, (self.slot_name, PROBE_CHANGES, publication_option(self.publication_name)))
                return commits_after(cur.fetchall(), position)

    # -- acknowledgement and heartbeat ----------------------------------------------------------------------

    def acknowledge(self, position: dict[str, Any]) -> None:
        """Advance the slot to ``position['lsn']`` (called only after the sink committed); never backwards. When this
        fails the position is stored already: the sensor's next check acknowledges it."""
        stored = "the position is stored, and the next run's sensor acknowledges it"
        with self._transient(f"acknowledging {position['lsn']}", stored):
            state = self.slot_state()
            if state is None:
                raise PositionLostError(self.source_id, position, f"replication slot {self.slot_name!r} was dropped")
            if pgoutput.lsn_to_int(position["lsn"]) <= pgoutput.lsn_to_int(state.confirmed_flush_lsn):
                return
            with self.conn.cursor() as cur:
                cur.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.slot_name, position["lsn"]))
            self._slot_moved_to(position["lsn"])
        log.info("advanced slot %s to %s", self.slot_name, position["lsn"])

    def position_order(self, position: dict[str, Any]) -> tuple:
        """Later positions have more events (``seq``) or, for event-less heartbeats, a later LSN. Positions that
        tie differ only in bookkeeping (tables queued for a snapshot, say): the newer document wins."""
        return (position.get("seq", 0), pgoutput.lsn_to_int(position["lsn"]))

    def heartbeat(self) -> None:
        """Emit a transactional logical message: an idle source then still has a commit to advance the slot to."""
        with self._transient("the heartbeat", "the next heartbeat tries again"), self.conn.cursor() as cur:
            cur.execute(HEARTBEAT_SQL, (HEARTBEAT_PREFIX,))
