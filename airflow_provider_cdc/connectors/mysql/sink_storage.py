"""Where a MySQL sink keeps its bookkeeping, and how it talks to the server.

Five tables in the ledger database, all InnoDB, created together the first time a sink writes (reading before that
finds nothing), so that no DDL is ever needed inside a batch's transaction (MySQL commits on DDL):

``_cdc_ledger``            one row per applied batch (:func:`~airflow_provider_cdc.connectors.ledger.ledger_row`,
                           its columns in :data:`LEDGER_COLUMNS` order), inserted in the batch's transaction
``_cdc_audit``             the audit trail (:mod:`airflow_provider_cdc.connectors.audit`): a batch's entries inserted
                           with its ledger row, in its transaction; other entries by ``record_audit``, each once by
                           ``audit_id`` (made beside a ledger of an older version the first time a sink writes)
``_cdc_held``              source tables whose changes wait (a schema change the sink cannot follow)
``_cdc_schema_versions``   the schema registry (:mod:`airflow_provider_cdc.schema.registry`); the Avro document is
                           kept as its exact JSON text (a version is identified by its hash)
``_cdc_held_changes``      the held changes, as Arrow IPC in parts of at most 4 MB (a row must fit in the
                           server's ``max_allowed_packet``, 16 MB by default on MariaDB)

and a sixth, ``_cdc_quarantine`` (:mod:`airflow_provider_cdc.quarantine`: the changes a stage took out, with their
reason), created by the first batch that has some, in the apply's DDL phase (:meth:`SinkStorage._ensure_quarantine`),
before its data transaction; its rows are inserted in that transaction, if absent by ``quarantine_id`` (source,
batch, seq and stage).

Appliers of one source queue on a named lock (``GET_LOCK``), held from before the ledger check until after the
commit or rollback. A row lock (``SELECT ... FOR UPDATE``) would not do: the table migrations a batch needs run
before its transaction, and every DDL statement commits, which releases row locks; a named lock belongs to the
session and survives that.

Every statement goes through :func:`run`, always with a parameter tuple, so pymysql always %-formats: names pass
through :func:`sql_name`, which doubles ``%`` as well as backquotes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pymysql
from pymysql.cursors import Cursor

from airflow_provider_cdc.connectors.audit import (
    AUDIT_COLUMN_NAMES,
    AUDIT_TABLE,
    AuditEntry,
    missing,
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
from airflow_provider_cdc.connectors.mysql.connection import quote_name
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.quarantine import KEY_COLUMNS, QUARANTINE_TABLE, SINK_COLUMNS, sort_rows, stored_row
from airflow_provider_cdc.schema.gate import HeldChunk
from airflow_provider_cdc.schema.registry import SchemaVersion, subject_of

log = logging.getLogger("airflow_provider_cdc.sink.mysql")

HELD_TABLE = "_cdc_held"
VERSIONS_TABLE = "_cdc_schema_versions"
HELD_CHANGES_TABLE = "_cdc_held_changes"
MAX_BATCH_ID_LENGTH = 768  # the ledger's key: 768 utf8mb4 characters are InnoDB's 3072-byte index limit
PART_BYTES = 4 * 1024 * 1024  # held changes are stored in parts of this size
DEFAULT_LOCK_TIMEOUT = 600.0  # seconds an applier waits for another applier of the same source

# Server errors that a retry can get past: lock waits, deadlocks, timeouts, lost or refused connections, a server
# shutting down or read-only during a failover. Every other error is terminal (bad values, missing privileges,
# syntax): retrying would fail the same way.
TRANSIENT_ERRORS = frozenset({
    1040, 1053, 1077, 1152, 1153, 1158, 1159, 1160, 1161, 1184, 1205, 1213, 1290, 1317, 1836, 1927, 1969, 2002,
    2003, 2006, 2013, 2055, 3024, 4031,
})
# Warnings that mean a value was changed on its way in (truncated, rounded, out of range, replaced by a default).
DATA_WARNINGS = frozenset({1048, 1101, 1261, 1262, 1263, 1264, 1265, 1292, 1300, 1366, 1367, 1406, 1411, 1441,
                           3819, 4025})
# Warnings that say nothing about the values written (deprecated syntax, statements unsafe for a statement-based
# binlog of the sink server, an absent table in DROP ... IF EXISTS).
HARMLESS_WARNINGS = frozenset({1051, 1287, 1592, 1681})

_LEDGER_TYPES = {"text": "TEXT", "json": "JSON", "integer": "BIGINT", "timestamptz": "DATETIME(6)"}
# The quarantine's text columns hold reasons and rule ids of any length; its key columns are bounded (an InnoDB key
# holds 3072 bytes: 255 + 64 utf8mb4 characters and a BIGINT fit).
_QUARANTINE_TYPES = {"text": "LONGTEXT", "json": "JSON", "integer": "BIGINT", "timestamptz": "DATETIME(6)"}
_QUARANTINE_KEY_TYPES = {"quarantine_id": "CHAR(40)"}


class DuplicateBatch(Exception):
    """The ledger insert met a concurrent commit of the same batch."""


# --- talking to the server --------------------------------------------------------------------------------------


def sql_name(name: str) -> str:
    """A quoted identifier ready for a %-formatted statement (``%`` doubled)."""
    return quote_name(name).replace("%", "%%")


def sql_type(type_text: str) -> str:
    """A column type ready for a %-formatted statement (an enum label may hold ``%``)."""
    return type_text.replace("%", "%%")


def sql_table(database: str, table: str) -> str:
    return f"{sql_name(database)}.{sql_name(table)}"


def run(cur: Cursor, statement: str, args: Sequence[Any] = ()) -> int:
    """Execute ``statement`` with ``args`` (always %-formatted by pymysql, see the module docstring)."""
    return cur.execute(statement, tuple(args))


def fetch_one(cur: Cursor, statement: str, args: Sequence[Any] = ()) -> tuple[Any, ...]:
    run(cur, statement, args)
    row = cur.fetchone()
    assert row is not None, statement  # only for statements that always return a row
    return row


def warnings_of(cur: Cursor) -> list[tuple[str, int, str]]:
    """The warnings of the statement just executed (level, code, message); none without asking when none."""
    result = getattr(cur, "_result", None)
    count = getattr(result, "warning_count", None)
    if count == 0:
        return []
    cur.execute("SHOW WARNINGS LIMIT 20")
    return [(str(level), int(code), str(message)) for level, code, message in cur.fetchall()]


def is_transient(exc: BaseException) -> bool:
    """A connection, lock or timeout problem, which a retry can get past (see :data:`TRANSIENT_ERRORS`)."""
    if isinstance(exc, pymysql.err.InterfaceError):
        return True  # the connection is gone
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0] in TRANSIENT_ERRORS
    return False


def describe(exc: BaseException) -> str:
    """The server's message with its error code (``(1406) Data too long for column ...``)."""
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) >= 2:
        return f"({exc.args[0]}) {exc.args[1]}"
    return str(exc) or type(exc).__name__


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """A DATETIME the sink wrote in UTC, read back as an aware datetime."""
    return None if value is None else value.replace(tzinfo=dt.timezone.utc)


def to_utc_naive(value: dt.datetime | None) -> dt.datetime | None:
    """An aware datetime as the naive UTC value a DATETIME column stores (pymysql would keep the offset text)."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None)


def lock_name(ledger_schema: str, source_id: str) -> str:
    """The named lock of one source's appliers on one ledger (lock names are at most 64 characters)."""
    digest = hashlib.sha256(f"{ledger_schema}.{LEDGER_TABLE}/{source_id}".encode()).hexdigest()
    return f"cdc_sink:{digest[:48]}"


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _ledger_column(name: str, kind: str, key: str) -> str:
    """The definition of one ledger column: the batch id and source id are keys (binary collation)."""
    if name == "batch_id":
        return f"VARCHAR({MAX_BATCH_ID_LENGTH}) {key} NOT NULL"
    if name == "source_id":
        return f"VARCHAR(255) {key} NOT NULL"
    return _LEDGER_TYPES[kind] + (" DEFAULT CURRENT_TIMESTAMP(6)" if name == "committed_at" else "")


def _quarantine_column(name: str, kind: str, key: str) -> str:
    """The definition of one ``_cdc_quarantine`` column: the key's text columns bounded, in binary collation."""
    if name in _QUARANTINE_KEY_TYPES:
        return f"{_QUARANTINE_KEY_TYPES[name]} {key} NOT NULL"
    return _QUARANTINE_TYPES[kind] + (" NOT NULL" if name in KEY_COLUMNS else "")


def _chunk_key(source_id: str, table: str, batch_id: str) -> bytes:
    return hashlib.sha256(f"{source_id}\x00{table}\x00{batch_id}".encode()).digest()


# --- the bookkeeping tables -------------------------------------------------------------------------------------


class SinkStorage:
    """The bookkeeping half of :class:`~airflow_provider_cdc.connectors.mysql.sink.MySqlSink` (a mixin over the
    sink's connection)."""

    sink_id: str
    ledger_schema: str
    lock_timeout: float
    _conn: pymysql.Connection
    _binary_collation: str
    _bookkeeping_ready: bool = False
    _known_tables: set[str]

    # --- existence ---------------------------------------------------------------------------------------------

    def _table_exists(self, cur: Cursor, database: str, table: str) -> bool:
        """Whether ``database.table`` exists, compared exactly (information_schema compares names without case)."""
        run(cur, "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
                 " AND TABLE_NAME = %s", (database, table))
        return any(schema == database and name == table for schema, name in cur.fetchall())

    def _bookkeeping_exists(self, cur: Cursor, table: str) -> bool:
        """Whether a bookkeeping table exists (remembered once seen: they are never dropped)."""
        if table in self._known_tables:
            return True
        if self._table_exists(cur, self.ledger_schema, table):
            self._known_tables.add(table)
            return True
        return False

    def _ledger_exists(self, cur: Cursor) -> bool:
        return self._bookkeeping_exists(cur, LEDGER_TABLE)

    def _ensure_database(self, cur: Cursor, name: str) -> None:
        # Look first: CREATE DATABASE IF NOT EXISTS needs the CREATE privilege even when the database exists.
        run(cur, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,))
        if not any(found == name for (found,) in cur.fetchall()):
            run(cur, f"CREATE DATABASE IF NOT EXISTS {sql_name(name)} CHARACTER SET utf8mb4")
            log.info("sink %s: created database %s", self.sink_id, name)

    def _ensure_bookkeeping(self, cur: Cursor) -> None:
        """Create the ledger database and the bookkeeping tables where absent (DDL: each commits on its own, so
        this runs before a batch's transaction, never inside it)."""
        if self._bookkeeping_ready:
            return
        self._ensure_database(cur, self.ledger_schema)
        key = f"CHARACTER SET utf8mb4 COLLATE {self._binary_collation}"
        columns = ", ".join(f"{sql_name(name)} {_ledger_column(name, kind, key)}" for name, kind in LEDGER_COLUMNS)
        statements = {
            LEDGER_TABLE: f"({columns}, PRIMARY KEY (batch_id), KEY {sql_name('_cdc_ledger_source_seq')}"
                          f" (source_id, seq_to))",
            HELD_TABLE: f"(source_id VARCHAR(255) {key} NOT NULL, source_table VARCHAR(255) {key} NOT NULL,"
                        f" reason LONGTEXT, batch_id TEXT, held_at DATETIME(6) DEFAULT CURRENT_TIMESTAMP(6),"
                        f" PRIMARY KEY (source_id, source_table))",
            VERSIONS_TABLE: f"(subject VARCHAR(512) {key} NOT NULL, version INT NOT NULL, id VARCHAR(64) NOT NULL,"
                            f" fingerprint VARCHAR(64), status VARCHAR(16) NOT NULL, mode VARCHAR(16), seq BIGINT,"
                            f" `position` TEXT, batch_id TEXT, registered_at DATETIME(6), `schema` LONGTEXT NOT NULL,"
                            f" source_table JSON NOT NULL, sink_table JSON NOT NULL, compatibility JSON,"
                            f" PRIMARY KEY (subject, version))",
            HELD_CHANGES_TABLE: f"(chunk_key BINARY(32) NOT NULL, part INT NOT NULL, source_id VARCHAR(255) {key}"
                                f" NOT NULL, source_table VARCHAR(255) {key} NOT NULL, batch_id TEXT NOT NULL,"
                                f" seq_from BIGINT NOT NULL, seq_to BIGINT NOT NULL, meta JSON, data LONGBLOB,"
                                f" held_at DATETIME(6) DEFAULT CURRENT_TIMESTAMP(6), PRIMARY KEY (chunk_key, part),"
                                f" KEY {sql_name('_cdc_held_changes_table')} (source_id, source_table))",
            AUDIT_TABLE: f"(audit_id VARCHAR(64) {key} NOT NULL, `at` DATETIME(6) NOT NULL, source_id VARCHAR(255)"
                         f" {key}, action VARCHAR(64) {key} NOT NULL, actor TEXT,"
                         f" batch_id VARCHAR({MAX_BATCH_ID_LENGTH}) {key}, run_id TEXT, details JSON,"
                         f" PRIMARY KEY (audit_id),"
                         f" KEY {sql_name('_cdc_audit_source_at')} (source_id, `at`),"
                         f" KEY {sql_name('_cdc_audit_batch')} (batch_id))",
        }
        for table, definition in statements.items():
            if not self._bookkeeping_exists(cur, table):
                run(cur, f"CREATE TABLE IF NOT EXISTS {sql_table(self.ledger_schema, table)} {definition}"
                         f" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
                self._known_tables.add(table)
        self._bookkeeping_ready = True

    def _ensure_quarantine(self, cur: Cursor) -> None:
        """Create ``_cdc_quarantine`` where absent (DDL: before the batch's transaction, like the other bookkeeping
        tables; made by the first batch that quarantined changes, so a sink without any has no such table)."""
        if self._bookkeeping_exists(cur, QUARANTINE_TABLE):
            return
        key = f"CHARACTER SET utf8mb4 COLLATE {self._binary_collation}"
        columns = ", ".join(f"{sql_name(name)} {_quarantine_column(name, kind, key)}" for name, kind in SINK_COLUMNS)
        run(cur, f"CREATE TABLE IF NOT EXISTS {sql_table(self.ledger_schema, QUARANTINE_TABLE)} ({columns},"
                 f" PRIMARY KEY ({', '.join(map(sql_name, KEY_COLUMNS))})) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
        self._known_tables.add(QUARANTINE_TABLE)

    # --- the source lock ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _source_lock(self, source_id: str) -> Iterator[None]:
        """Hold the named lock of ``source_id``'s appliers (module docstring); released however the block ends."""
        name = lock_name(self.ledger_schema, source_id)
        with self._conn.cursor() as cur:
            (got,) = fetch_one(cur, "SELECT GET_LOCK(%s, %s)", (name, self.lock_timeout))
        if got != 1:
            raise SinkError(self.sink_id, f"another apply or accept of source {source_id!r} on this sink held its lock "
                                          f"for more than {self.lock_timeout:g} s; nothing was written. The task "
                                          f"retries; if it keeps waiting, look for a stuck load of the same source",
                            terminal=False)
        try:
            yield
        finally:
            try:
                with self._conn.cursor() as cur:
                    run(cur, "SELECT RELEASE_LOCK(%s)", (name,))
                    cur.fetchall()
            except pymysql.err.MySQLError:  # a lost connection has released it already
                log.debug("sink %s: could not release lock %s", self.sink_id, name, exc_info=True)

    # --- ledger ------------------------------------------------------------------------------------------------

    @property
    def _ledger(self) -> str:
        return sql_table(self.ledger_schema, LEDGER_TABLE)

    def _ledger_has(self, cur: Cursor, batch_id: str) -> bool:
        run(cur, f"SELECT 1 FROM {self._ledger} WHERE batch_id = %s", (batch_id,))
        return cur.fetchone() is not None

    def _high_water(self, cur: Cursor, source_id: str) -> int:
        (value,) = fetch_one(cur, f"SELECT COALESCE(MAX(seq_to), 0) FROM {self._ledger} WHERE source_id = %s",
                             (source_id,))
        return int(value)

    def _last_committed(self, cur: Cursor, source_id: str) -> LedgerRow | None:
        run(cur, f"SELECT * FROM {self._ledger} WHERE source_id = %s ORDER BY seq_to DESC, committed_at DESC LIMIT 1",
            (source_id,))
        row = cur.fetchone()
        if row is None:
            return None
        record = dict(zip([column[0] for column in cur.description or ()], row))
        record["committed_at"] = as_utc(record.get("committed_at"))
        return LedgerRow.from_record(record)

    def _recent_rows(self, cur: Cursor, source_id: str, limit: int) -> list[LedgerRow]:
        """The ``limit`` latest rows of ``source_id``, in :meth:`_last_committed`'s order (newest first)."""
        run(cur, f"SELECT * FROM {self._ledger} WHERE source_id = %s ORDER BY seq_to DESC, committed_at DESC "
                 "LIMIT %s", (source_id, max(limit, 0)))
        names = [column[0] for column in cur.description or ()]
        rows = []
        for row in cur.fetchall():
            record = dict(zip(names, row))
            record["committed_at"] = as_utc(record.get("committed_at"))
            rows.append(LedgerRow.from_record(record))
        return rows

    def _insert_ledger(self, cur: Cursor, row: LedgerRow) -> None:
        """Insert the batch's ledger row (:func:`~airflow_provider_cdc.connectors.ledger.ledger_row`)."""
        record = row.to_record()
        values = [_json(record[name]) if name in JSON_COLUMNS else record[name] for name in LEDGER_COLUMN_NAMES]
        values[LEDGER_COLUMN_NAMES.index("committed_at")] = to_utc_naive(record["committed_at"])
        try:
            run(cur, f"INSERT INTO {self._ledger} ({', '.join(map(sql_name, LEDGER_COLUMN_NAMES))})"
                     f" VALUES ({', '.join(['%s'] * len(LEDGER_COLUMN_NAMES))})", values)
        except pymysql.err.IntegrityError as exc:
            if exc.args and exc.args[0] == 1062:  # duplicate key: the same batch committed meanwhile
                log.info("sink %s: batch %s was committed concurrently; rolling back this copy", self.sink_id,
                         row.batch_id)
                raise DuplicateBatch() from exc
            raise

    # --- audit trail -------------------------------------------------------------------------------------------

    @property
    def _audit(self) -> str:
        return sql_table(self.ledger_schema, AUDIT_TABLE)

    def _insert_audit(self, cur: Cursor, entries: list[AuditEntry]) -> int:
        """Insert those of ``entries`` whose ``audit_id`` is not there yet (in the caller's transaction); how many.
        A concurrent insert of the same id keeps the first (``ON DUPLICATE KEY``: ``INSERT IGNORE`` would also turn
        a value the column refuses into a warning)."""
        if not entries:
            return 0
        ids = [entry.audit_id for entry in entries]
        run(cur, f"SELECT audit_id FROM {self._audit} WHERE audit_id IN ({', '.join(['%s'] * len(ids))})", ids)
        new = missing(entries, (found for (found,) in cur.fetchall()))
        if new:
            records = [entry.to_record(json_as_text=True) for entry in new]
            for record in records:
                record["at"] = to_utc_naive(record["at"])
            cur.executemany(f"INSERT INTO {self._audit} ({', '.join(map(sql_name, AUDIT_COLUMN_NAMES))})"
                            f" VALUES ({', '.join(['%s'] * len(AUDIT_COLUMN_NAMES))})"
                            f" ON DUPLICATE KEY UPDATE audit_id = audit_id",
                            [[record[name] for name in AUDIT_COLUMN_NAMES] for record in records])
        return len(new)

    def _read_audit(self, cur: Cursor, source_id: str | None, batch_id: str | None, action: str | None,
                    since: dt.datetime | None, limit: int) -> list[AuditEntry]:
        if not self._bookkeeping_exists(cur, AUDIT_TABLE):
            return []
        filters = {"source_id": source_id, "batch_id": batch_id, "action": action}
        where = [f"{sql_name(name)} = %s" for name, value in filters.items() if value is not None]
        args: list[Any] = [value for value in filters.values() if value is not None]
        if since is not None:
            where.append("`at` >= %s")
            args.append(to_utc_naive(since_utc(since)))
        run(cur, f"SELECT {', '.join(map(sql_name, AUDIT_COLUMN_NAMES))} FROM {self._audit}"
                 f"{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY `at` DESC LIMIT %s",
            [*args, max(limit, 0)])
        return newest_first(AuditEntry.from_record(dict(zip(AUDIT_COLUMN_NAMES, row))) for row in cur.fetchall())

    # --- quarantine ----------------------------------------------------------------------------------------------

    def _insert_quarantine(self, cur: Cursor, records: list[dict[str, Any]]) -> None:
        """Store a batch's quarantined changes (:func:`airflow_provider_cdc.quarantine.sink_records`) in the batch's
        transaction; a change already there (same source, batch, seq and stage) keeps its first row. The table must
        exist (:meth:`_ensure_quarantine`, in the DDL phase)."""
        if not records:
            return
        names = [name for name, _ in SINK_COLUMNS]
        values = []
        for record in records:
            row = [record[name] for name in names]
            row[names.index("row")] = json.dumps(record["row"], ensure_ascii=False, sort_keys=True)
            for name in ("event_time", "quarantined_at"):
                row[names.index(name)] = to_utc_naive(record[name])
            values.append(tuple(row))
        first = sql_name(KEY_COLUMNS[0])
        # pymysql sends these as multi-row INSERTs (its executemany), each under max_allowed_packet.
        cur.executemany(f"INSERT INTO {sql_table(self.ledger_schema, QUARANTINE_TABLE)}"
                        f" ({', '.join(map(sql_name, names))}) VALUES ({', '.join(['%s'] * len(names))})"
                        f" ON DUPLICATE KEY UPDATE {first} = {first}", values)

    def _read_quarantine(self, cur: Cursor, source_id: str, waiting_only: bool) -> list[dict[str, Any]]:
        """The rows of ``_cdc_quarantine`` of ``source_id`` (none when the table was never made); its DATETIMEs
        hold UTC."""
        if not self._bookkeeping_exists(cur, QUARANTINE_TABLE):
            return []
        names = [name for name, _ in SINK_COLUMNS]
        run(cur, f"SELECT {', '.join(map(sql_name, names))} FROM {sql_table(self.ledger_schema, QUARANTINE_TABLE)}"
                 f" WHERE source_id = %s{' AND replayed_batch_id IS NULL' if waiting_only else ''}", (source_id,))
        return sort_rows(stored_row(dict(zip(names, row))) for row in cur.fetchall())

    def _mark_replayed(self, cur: Cursor, source_id: str, quarantine_ids: list[str], batch_id: str) -> int:
        """Set ``replayed_batch_id`` of the waiting rows ``quarantine_ids``, in the replay's transaction."""
        if not quarantine_ids:
            return 0
        return run(cur, f"UPDATE {sql_table(self.ledger_schema, QUARANTINE_TABLE)} SET replayed_batch_id = %s"
                        f" WHERE source_id = %s AND replayed_batch_id IS NULL AND quarantine_id IN"
                        f" ({', '.join(['%s'] * len(quarantine_ids))})", (batch_id, source_id, *quarantine_ids))

    # --- held tables -------------------------------------------------------------------------------------------

    @property
    def _held(self) -> str:
        return sql_table(self.ledger_schema, HELD_TABLE)

    def _held_tables(self, cur: Cursor, source_id: str) -> dict[str, str]:
        if not self._bookkeeping_exists(cur, HELD_TABLE):
            return {}
        run(cur, f"SELECT source_table, reason FROM {self._held} WHERE source_id = %s", (source_id,))
        return {table: reason for table, reason in cur.fetchall()}

    def _store_held(self, cur: Cursor, source_id: str, held: dict[str, str], batch_id: str | None) -> None:
        """Mark tables held (one already marked keeps its first reason)."""
        for table, reason in held.items():
            run(cur, f"INSERT INTO {self._held} (source_id, source_table, reason, batch_id) VALUES (%s, %s, %s, %s)"
                     f" ON DUPLICATE KEY UPDATE source_id = source_id", (source_id, table, reason, batch_id))

    def _delete_held(self, cur: Cursor, source_id: str, table: str) -> None:
        run(cur, f"DELETE FROM {self._held} WHERE source_id = %s AND source_table = %s", (source_id, table))

    # --- schema versions ---------------------------------------------------------------------------------------

    _VERSION_NAMES = ("subject", "version", "id", "fingerprint", "status", "mode", "seq", "position", "batch_id",
                      "registered_at", "schema", "source_table", "sink_table", "compatibility")

    @property
    def _versions(self) -> str:
        return sql_table(self.ledger_schema, VERSIONS_TABLE)

    def _read_versions(self, cur: Cursor, source_id: str) -> list[SchemaVersion]:
        """Every version of ``source_id``'s subjects (``<source_id>.<schema>.<table>``), in subject and version
        order. A prefix compared exactly, not ``LIKE``: a source id may hold ``_``, which LIKE reads as a wildcard."""
        if not self._bookkeeping_exists(cur, VERSIONS_TABLE):
            return []
        prefix = f"{source_id}."
        run(cur, f"SELECT {', '.join(map(sql_name, self._VERSION_NAMES))} FROM {self._versions}"
                 f" WHERE LEFT(subject, %s) = %s ORDER BY subject, version", (len(prefix), prefix))
        return [_version_of(dict(zip(self._VERSION_NAMES, row))) for row in cur.fetchall()]

    def _store_versions(self, cur: Cursor, versions: Iterable[SchemaVersion]) -> int:
        """Insert new versions, or update one of the same (subject, version): its status can change (held ->
        accepted), nothing else of a version does."""
        versions = list(versions)
        names = self._VERSION_NAMES
        updates = ", ".join(f"{sql_name(name)} = VALUES({sql_name(name)})" for name in names
                            if name not in ("subject", "version"))
        for version in versions:
            run(cur, f"INSERT INTO {self._versions} ({', '.join(map(sql_name, names))})"
                     f" VALUES ({', '.join(['%s'] * len(names))}) ON DUPLICATE KEY UPDATE {updates}",
                _version_record(version))
        return len(versions)

    def _accept_held_versions(self, cur: Cursor, source_id: str, table: str) -> int:
        """Mark the held versions of ``table`` accepted (a re-snapshot follows the source's schema as it is)."""
        if not self._bookkeeping_exists(cur, VERSIONS_TABLE):
            return 0
        return run(cur, f"UPDATE {self._versions} SET status = 'accepted' WHERE subject = %s AND status = 'held'",
                   (subject_of(source_id, table),))

    # --- held changes ------------------------------------------------------------------------------------------

    @property
    def _held_changes(self) -> str:
        return sql_table(self.ledger_schema, HELD_CHANGES_TABLE)

    def _store_chunks(self, cur: Cursor, chunks: Iterable[HeldChunk]) -> int:
        """Insert held chunks, each in parts; one already there (same source, table and batch) stays as it is.
        Returns how many were new."""
        inserted = 0
        for chunk in chunks:
            key = _chunk_key(chunk.source_id, chunk.table, chunk.batch_id)
            run(cur, f"SELECT 1 FROM {self._held_changes} WHERE chunk_key = %s AND part = 0", (key,))
            if cur.fetchone() is not None:
                continue
            data = chunk.data_bytes()
            parts = [data[start:start + PART_BYTES] for start in range(0, len(data), PART_BYTES)] if data else [None]
            for number, part in enumerate(parts):
                run(cur, f"INSERT INTO {self._held_changes} (chunk_key, part, source_id, source_table, batch_id,"
                         f" seq_from, seq_to, meta, data) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (key, number, chunk.source_id, chunk.table, chunk.batch_id, chunk.seq_from, chunk.seq_to,
                     _json(chunk.meta()) if number == 0 else None, part))
            inserted += 1
        return inserted

    def _read_chunks(self, cur: Cursor, source_id: str, table: str) -> list[HeldChunk]:
        """The held chunks of ``table`` in ``seq`` order (the order a replay must follow)."""
        if not self._bookkeeping_exists(cur, HELD_CHANGES_TABLE):
            return []
        run(cur, f"SELECT chunk_key, part, batch_id, seq_from, seq_to, meta, data FROM {self._held_changes}"
                 f" WHERE source_id = %s AND source_table = %s ORDER BY seq_from, seq_to, batch_id, part",
            (source_id, table))
        stored: dict[bytes, dict[str, Any]] = {}
        for key, part, batch_id, seq_from, seq_to, meta, data in cur.fetchall():
            entry = stored.setdefault(bytes(key), {"batch_id": batch_id, "seq_from": seq_from, "seq_to": seq_to,
                                                   "meta": None, "parts": []})
            if part == 0:
                entry["meta"] = meta
            if data is not None:
                entry["parts"].append(bytes(data))
        return [HeldChunk.from_stored(source_id=source_id, table=table, batch_id=entry["batch_id"],
                                      seq_from=entry["seq_from"], seq_to=entry["seq_to"], meta=entry["meta"],
                                      data=b"".join(entry["parts"]) if entry["parts"] else None)
                for entry in stored.values()]

    def _delete_chunks(self, cur: Cursor, source_id: str, table: str) -> int:
        """Delete the held changes of ``table``; returns how many chunks went."""
        if not self._bookkeeping_exists(cur, HELD_CHANGES_TABLE):
            return 0
        (chunks,) = fetch_one(cur, f"SELECT COUNT(*) FROM {self._held_changes} WHERE source_id = %s"
                                   f" AND source_table = %s AND part = 0", (source_id, table))
        run(cur, f"DELETE FROM {self._held_changes} WHERE source_id = %s AND source_table = %s", (source_id, table))
        return int(chunks)


def _version_record(version: SchemaVersion) -> list[Any]:
    """The row of ``version`` in ``SinkStorage._VERSION_NAMES`` order (documents as JSON text)."""
    registered = dt.datetime.fromisoformat(version.registered_at) if version.registered_at else None
    return [
        version.subject, version.version, version.id, version.fingerprint, version.status, version.mode, version.seq,
        version.position, version.batch_id, to_utc_naive(registered), json.dumps(version.schema),
        _json(version.table.to_dict()), _json(version.sink_table.to_dict()), _json(version.compatibility),
    ]


def _version_of(row: dict[str, Any]) -> SchemaVersion:
    registered = as_utc(row["registered_at"])
    return SchemaVersion.from_dict({
        **row, "schema": json.loads(row["schema"]), "table": json.loads(row["source_table"]),
        "sink_table": json.loads(row["sink_table"]),
        "compatibility": None if row["compatibility"] is None else json.loads(row["compatibility"]),
        "registered_at": registered.isoformat() if registered is not None else "",
    })
