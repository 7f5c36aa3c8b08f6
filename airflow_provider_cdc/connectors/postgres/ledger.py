"""Where a PostgreSQL sink keeps its ledger (``_cdc_ledger``), its audit trail (``_cdc_audit``) and the tables it
holds back (``_cdc_held``).

The ledger row itself is the shared one (:mod:`airflow_provider_cdc.connectors.ledger`): built by
:func:`~airflow_provider_cdc.connectors.ledger.ledger_row`, read by :meth:`LedgerRow.from_record`, its columns in
:data:`LEDGER_COLUMNS` order. Each row is inserted in the batch's own transaction. A ledger made by an older
version gains the columns it lacks (``stage_versions``) the first time a sink writes to it. The audit rows
(:mod:`airflow_provider_cdc.connectors.audit`) are made beside the ledger, and a batch's go in with its ledger row.
"""

from __future__ import annotations

import datetime as dt
import logging

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from airflow_provider_cdc.connectors.audit import (
    AUDIT_COLUMN_NAMES,
    AUDIT_COLUMNS,
    AUDIT_TABLE,
    AuditEntry,
    newest_first,
    since_utc,
)
from airflow_provider_cdc.connectors.ledger import (
    JSON_COLUMNS,
    LEDGER_COLUMN_NAMES,
    LEDGER_COLUMNS,
    LEDGER_TABLE,
    LedgerRow,
)
from airflow_provider_cdc.connectors.postgres.ddl import ensure_schema
from airflow_provider_cdc.quarantine import KEY_COLUMNS, QUARANTINE_TABLE, SINK_COLUMNS, sort_rows, stored_row

log = logging.getLogger("airflow_provider_cdc.sink.postgres")

HELD_TABLE = "_cdc_held"  # source tables whose changes wait: a schema change the sink cannot follow
# Storage of the ledger's logical column types.
_LEDGER_TYPES = {"text": "text", "json": "jsonb", "integer": "bigint", "timestamptz": "timestamptz DEFAULT now()"}
_QUARANTINE_TYPES = {"text": "text", "json": "jsonb", "integer": "bigint", "timestamptz": "timestamptz"}


class DuplicateBatch(Exception):
    """The ledger insert met a concurrent commit of the same batch."""


class LedgerStorage:
    """The ledger half of :class:`~airflow_provider_cdc.connectors.postgres.sink.PgSink`."""

    sink_id: str
    ledger_schema: str
    _conn: psycopg.Connection
    _ledger: sql.Identifier
    _held: sql.Identifier
    _ledger_current: bool = False

    @staticmethod
    def _force_durable_commit(cur: psycopg.Cursor) -> None:
        cur.execute("SET LOCAL synchronous_commit = on")

    def _ledger_exists(self, cur: psycopg.Cursor) -> bool:
        cur.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (self.ledger_schema, LEDGER_TABLE),
        )
        return cur.fetchone() is not None

    def _ensure_ledger(self, cur: psycopg.Cursor) -> None:
        """Create the ledger, or bring one made by an older version up to :data:`LEDGER_COLUMNS`."""
        if self._ledger_exists(cur):
            if not self._ledger_current:
                self._migrate_ledger(cur)
            self._ensure_audit(cur)
            return
        ensure_schema(cur, self.ledger_schema)
        definitions = [sql.SQL("{} {}{}").format(sql.Identifier(name), sql.SQL(_LEDGER_TYPES[kind]),
                                                 sql.SQL(" NOT NULL" if name in ("batch_id", "source_id") else ""))
                       for name, kind in LEDGER_COLUMNS]
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY (batch_id))").format(
            self._ledger, sql.SQL(", ").join(definitions)))
        cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (source_id, seq_to)").format(
            sql.Identifier(f"{LEDGER_TABLE}_source_seq_idx"), self._ledger))
        self._ledger_current = True
        self._ensure_audit(cur)

    # --- audit trail -----------------------------------------------------------------------------------------

    @property
    def _audit(self) -> sql.Identifier:
        return sql.Identifier(self.ledger_schema, AUDIT_TABLE)

    def _ensure_audit(self, cur: psycopg.Cursor) -> None:
        """Create ``_cdc_audit`` beside the ledger (also beside a ledger made before the audit trail existed).
        Looked for every time, as the ledger is: its creation rolls back with a batch that fails."""
        if self._audit_exists(cur):
            return
        definitions = [sql.SQL("{} {}{}").format(sql.Identifier(name), sql.SQL(_LEDGER_TYPES[kind].split(" ")[0]),
                                                 sql.SQL(" NOT NULL" if name in ("audit_id", "at", "action") else ""))
                       for name, kind in AUDIT_COLUMNS]
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY (audit_id))").format(
            self._audit, sql.SQL(", ").join(definitions)))
        cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (source_id, at)").format(
            sql.Identifier(f"{AUDIT_TABLE}_source_at_idx"), self._audit))
        cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (batch_id)").format(
            sql.Identifier(f"{AUDIT_TABLE}_batch_idx"), self._audit))

    def _audit_exists(self, cur: psycopg.Cursor) -> bool:
        cur.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s"
            " AND c.relname = %s", (self.ledger_schema, AUDIT_TABLE))
        return cur.fetchone() is not None

    def _insert_audit(self, cur: psycopg.Cursor, entries: list[AuditEntry]) -> int:
        """Insert ``entries``, each unless its ``audit_id`` is there (in the caller's transaction); how many were
        new."""
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (audit_id) DO NOTHING").format(
            self._audit, sql.SQL(", ").join(map(sql.Identifier, AUDIT_COLUMN_NAMES)),
            sql.SQL(", ").join(sql.Placeholder() * len(AUDIT_COLUMN_NAMES)))
        inserted = 0
        for entry in entries:  # a handful per batch: one statement each keeps the count of those new exact
            record = entry.to_record()
            cur.execute(statement, [Jsonb(record[name]) if name == "details" else record[name]
                                    for name in AUDIT_COLUMN_NAMES])
            inserted += max(cur.rowcount, 0)
        return inserted

    def _read_audit(self, cur: psycopg.Cursor, source_id: str | None, batch_id: str | None, action: str | None,
                    since: dt.datetime | None, limit: int) -> list[AuditEntry]:
        if not self._audit_exists(cur):
            return []
        filters = {"source_id": source_id, "batch_id": batch_id, "action": action}
        where: list[sql.Composable] = [sql.SQL("{} = %s").format(sql.Identifier(name))
                                       for name, value in filters.items() if value is not None]
        args: list = [value for value in filters.values() if value is not None]
        if since is not None:
            where.append(sql.SQL("at >= %s"))
            args.append(since_utc(since))
        cur.execute(sql.SQL("SELECT {} FROM {}{} ORDER BY at DESC LIMIT %s").format(
            sql.SQL(", ").join(map(sql.Identifier, AUDIT_COLUMN_NAMES)), self._audit,
            sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")), [*args, max(limit, 0)])
        return newest_first(AuditEntry.from_record(dict(zip(AUDIT_COLUMN_NAMES, row))) for row in cur.fetchall())

    def _migrate_ledger(self, cur: psycopg.Cursor) -> None:
        """Add the columns a ledger of an older version lacks (``stage_versions``); looked at once per sink."""
        cur.execute(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
            (self.ledger_schema, LEDGER_TABLE),
        )
        present = {name for (name,) in cur.fetchall()}
        missing = [(name, kind) for name, kind in LEDGER_COLUMNS if name not in present]
        if missing:
            cur.execute(sql.SQL("ALTER TABLE {} {}").format(self._ledger, sql.SQL(", ").join(
                sql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(sql.Identifier(name),
                                                                 sql.SQL(_LEDGER_TYPES[kind].split(" ")[0]))
                for name, kind in missing)))
            log.info("sink %s: ledger %s.%s: added columns %s", self.sink_id, self.ledger_schema, LEDGER_TABLE,
                     [name for name, _ in missing])
        self._ledger_current = True

    def _insert_quarantine(self, cur: psycopg.Cursor, records: list[dict]) -> None:
        """Store a batch's quarantined changes (:mod:`airflow_provider_cdc.quarantine`) in ``_cdc_quarantine``, in the
        batch's transaction; the table is made the first time one is needed."""
        if not records:
            return
        table = sql.Identifier(self.ledger_schema, QUARANTINE_TABLE)
        definitions = [sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(_QUARANTINE_TYPES[kind]))
                       for name, kind in SINK_COLUMNS]
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))").format(
            table, sql.SQL(", ").join(definitions), sql.SQL(", ").join(map(sql.Identifier, KEY_COLUMNS))))
        names = [name for name, _ in SINK_COLUMNS]
        cur.executemany(sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
            table, sql.SQL(", ").join(map(sql.Identifier, names)), sql.SQL(", ").join(sql.Placeholder() * len(names))),
            [[Jsonb(record[name]) if name == "row" else record[name] for name in names] for record in records])

    def _read_quarantine(self, cur: psycopg.Cursor, source_id: str, waiting_only: bool) -> list[dict]:
        """The rows of ``_cdc_quarantine`` of ``source_id`` (none when the table was never made)."""
        cur.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s"
            " AND c.relname = %s", (self.ledger_schema, QUARANTINE_TABLE))
        if cur.fetchone() is None:
            return []
        names = [name for name, _ in SINK_COLUMNS]
        cur.execute(sql.SQL("SELECT {} FROM {} WHERE source_id = %s{}").format(
            sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(self.ledger_schema, QUARANTINE_TABLE),
            sql.SQL(" AND replayed_batch_id IS NULL" if waiting_only else "")), (source_id,))
        return sort_rows(stored_row(dict(zip(names, row))) for row in cur.fetchall())

    def _mark_replayed(self, cur: psycopg.Cursor, source_id: str, quarantine_ids: list[str], batch_id: str) -> int:
        """Set ``replayed_batch_id`` of the waiting rows ``quarantine_ids``, in the replay's transaction."""
        if not quarantine_ids:
            return 0
        cur.execute(sql.SQL("UPDATE {} SET replayed_batch_id = %s WHERE source_id = %s AND quarantine_id = ANY(%s)"
                            " AND replayed_batch_id IS NULL").format(
            sql.Identifier(self.ledger_schema, QUARANTINE_TABLE)), (batch_id, source_id, list(quarantine_ids)))
        return max(cur.rowcount, 0)

    def _ensure_held(self, cur: psycopg.Cursor) -> None:
        cur.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (source_id text NOT NULL, source_table text NOT NULL, reason text,"
            " batch_id text, held_at timestamptz DEFAULT now(), PRIMARY KEY (source_id, source_table))"
        ).format(self._held))

    def _held_tables(self, cur: psycopg.Cursor, source_id: str) -> dict[str, str]:
        cur.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s"
            " AND c.relname = %s", (self.ledger_schema, HELD_TABLE))
        if cur.fetchone() is None:
            return {}
        cur.execute(sql.SQL("SELECT source_table, reason FROM {} WHERE source_id = %s").format(self._held),
                    (source_id,))
        return dict(cur.fetchall())

    def _ledger_has(self, cur: psycopg.Cursor, batch_id: str) -> bool:
        cur.execute(sql.SQL("SELECT 1 FROM {} WHERE batch_id = %s").format(self._ledger), (batch_id,))
        return cur.fetchone() is not None

    def _high_water(self, cur: psycopg.Cursor, source_id: str) -> int:
        cur.execute(sql.SQL("SELECT coalesce(max(seq_to), 0) FROM {} WHERE source_id = %s").format(self._ledger),
                    (source_id,))
        row = cur.fetchone()
        assert row is not None  # an aggregate returns one row
        return int(row[0])

    def _last_committed(self, cur: psycopg.Cursor, source_id: str) -> LedgerRow | None:
        # Every column there is: a ledger of an older version, not yet migrated by a write, lacks some.
        cur.execute(sql.SQL(
            "SELECT * FROM {} WHERE source_id = %s ORDER BY seq_to DESC, committed_at DESC LIMIT 1"
        ).format(self._ledger), (source_id,))
        row = cur.fetchone()
        if row is None:
            return None
        return LedgerRow.from_record(dict(zip([column.name for column in cur.description or ()], row)))

    def _recent_rows(self, cur: psycopg.Cursor, source_id: str, limit: int) -> list[LedgerRow]:
        """The ``limit`` latest rows of ``source_id``, in :meth:`_last_committed`'s order (newest first)."""
        cur.execute(sql.SQL(
            "SELECT * FROM {} WHERE source_id = %s ORDER BY seq_to DESC, committed_at DESC LIMIT %s"
        ).format(self._ledger), (source_id, max(limit, 0)))
        names = [column.name for column in cur.description or ()]
        return [LedgerRow.from_record(dict(zip(names, row))) for row in cur.fetchall()]

    def _insert_ledger(self, cur: psycopg.Cursor, row: LedgerRow) -> None:
        """Insert the batch's ledger row (:func:`~airflow_provider_cdc.connectors.ledger.ledger_row`)."""
        record = row.to_record()
        values = [Jsonb(record[name]) if name in JSON_COLUMNS and record[name] is not None else record[name]
                  for name in LEDGER_COLUMN_NAMES]
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            self._ledger, sql.SQL(", ").join(map(sql.Identifier, LEDGER_COLUMN_NAMES)),
            sql.SQL(", ").join(sql.Placeholder() * len(LEDGER_COLUMN_NAMES)),
        )
        try:
            with self._conn.transaction():  # a savepoint, so that a duplicate can be told apart from a failure
                cur.execute(statement, values)
        except psycopg.errors.UniqueViolation as exc:
            log.info("sink %s: batch %s was committed concurrently; rolling back this copy", self.sink_id,
                     row.batch_id)
            raise DuplicateBatch() from exc
