"""Reading one micro-batch from the binlog: row events into per-table builders, DDL from query events.

The reader is pymysqlreplication's, non-blocking (the server sends what it has, then an end-of-file: that is one
batch), started at the stored position: a binlog file and offset, or the GTIDs executed so far. A batch ends only
between transactions (after an ``XID`` event, a ``COMMIT`` query, a DDL statement, or before the next GTID event),
so a batch boundary never splits or repeats a transaction's rows; a transaction larger than the batch size makes
one larger batch.

**Reconnects.** mysql-replication reconnects by itself when the binlog connection breaks (a server restart, a killed
connection). By file and offset it resumes right after the last event read, so the batch is the one a read without
the break gives. By GTID it would ask again from the GTIDs the read started at, reading transactions twice: such a
read fails with a transient :class:`~airflow_provider_cdc.errors.SourceError` instead (nothing stored or
acknowledged; the retry reads from the stored position). See :meth:`BinlogBatch._reconnected`; the reader also
corrects the library's MariaDB dump command, whose wrong length broke such reads at their end
(:class:`BinLogStreamReader`).

**Schemas.** With ``binlog_row_metadata=FULL`` every table map event names its columns as they were when the rows
were written. The table's schema comes from the catalog (exact declared types, defaults) as long as the catalog
agrees with the table map event; when it does not (the table changed again since), it is built from the event
itself (:func:`~.types.column_from_binlog`). Columns have no identity in MySQL, so the stream gives them one: the
position remembers, per table, a number for each column name; a DDL statement that renames a column
(``RENAME COLUMN``, ``CHANGE``) moves the number to the new name, one that drops it forgets it, and a new name
gets a new number. A rename thus stays a rename, a drop and re-add is a new column, and a column moved with
``AFTER``/``FIRST`` keeps its identity.

**DDL.** ``TRUNCATE`` is a ``t`` event. ``DROP TABLE`` and ``RENAME TABLE`` of a captured table stop its flow (the
sink table is kept, a warning says so). A ``RENAME TABLE`` that puts another table in place of a captured one (the
cut-over of gh-ost or pt-online-schema-change: the shadow table was altered and filled outside the stream) queues
the captured table for a new snapshot: it is read again under its new schema, while the other tables keep flowing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pymysqlreplication import BinLogStreamReader as LibraryReader
from pymysqlreplication.event import GtidEvent, MariadbGtidEvent, QueryEvent, XidEvent
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from airflow_provider_cdc.connectors.mysql import ddl_parse
from airflow_provider_cdc.connectors.mysql.catalog import read_tables
from airflow_provider_cdc.connectors.mysql.checks import is_position_lost
from airflow_provider_cdc.connectors.mysql.connection import MYSQL_DIALECT, connect_kwargs
from airflow_provider_cdc.connectors.mysql.types import (
    ZeroDateError,
    bind_table_map,
    binlog_formatter,
    restore_binlog_values,
    schema_from_binlog,
    table_map_matches,
)
from airflow_provider_cdc.connectors.schemas import fingerprint_hash, remembered, seen_fingerprint, seen_schema
from airflow_provider_cdc.errors import PositionLostError, SourceError, TableRefusedError
from airflow_provider_cdc.events import (
    OP_CREATE,
    OP_DELETE,
    OP_TRUNCATE,
    OP_UPDATE,
    ChangeBatch,
    TableChangesBuilder,
    align,
    concat_tables,
    make_batch_id,
)
from airflow_provider_cdc.tables import SchemaChange, TableSchema

if TYPE_CHECKING:
    import pymysql

log = logging.getLogger("airflow_provider_cdc.source.mysql")

ROW_EVENTS = (WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent)
READ_EVENTS = [GtidEvent, MariadbGtidEvent, QueryEvent, XidEvent, *ROW_EVENTS]


class BinLogStreamReader(LibraryReader):
    """mysql-replication's reader (under its own name: the one this module opens), with MariaDB's
    ``COM_BINLOG_DUMP`` sent at its true length.

    For a MariaDB GTID start the library (1.0.17) declares a 14-byte command but sends 15 (it leaves the command
    byte out of the count). The server never reads the extra byte, and when it closes the connection
    after the last event of a non-blocking dump, that unread byte makes the kernel answer with a reset instead of
    an orderly close: the events still on their way to the reader are lost, and the library reconnects (seen here:
    every GTID read of the few MB written after a 36 MB transaction broke that way, while a read by file and offset
    never did; with the true length none broke). Only the length header changes, so with a library that counts
    right this is a no-op."""

    def _BinLogStreamReader__set_mariadb_settings(self) -> bytes:
        prelude: bytes = super()._BinLogStreamReader__set_mariadb_settings()
        payload = prelude[4:]  # a packet: 3-byte little-endian length, 1-byte sequence id, payload
        return len(payload).to_bytes(3, "little") + prelude[3:4] + payload


def identified(schema: TableSchema, entry: dict[str, Any] | None) -> tuple[TableSchema, dict[str, Any]]:
    """``schema`` with each column's identity (``ordinal``) from the position's ``entry`` for the table; new names
    get new numbers. Returns the schema and the updated identity map (``ids``, ``next_id``)."""
    ids, next_id = identity_map(entry)
    columns = []
    for col in schema.columns:
        if col.name not in ids:
            ids[col.name] = next_id
            next_id += 1
        columns.append(dataclasses.replace(col, ordinal=ids[col.name]))
    known = {c.name for c in schema.columns}
    ids = {name: number for name, number in ids.items() if name in known}
    return dataclasses.replace(schema, columns=tuple(columns)), {"ids": ids, "next_id": next_id}


def identity_map(entry: dict[str, Any] | None) -> tuple[dict[str, int], int]:
    """The column-name -> identity map a position remembers for a table (and the next free number)."""
    if not entry:
        return {}, 1
    if "ids" in entry:
        return dict(entry["ids"]), int(entry.get("next_id", 1))
    table = seen_schema(entry)
    ids = {c.name: c.ordinal for c in table.columns if c.ordinal is not None} if table else {}
    return ids, max(ids.values(), default=0) + 1


def remember(schema: TableSchema, identities: dict[str, Any]) -> dict[str, Any]:
    return {**remembered(schema), **identities}


@dataclasses.dataclass
class _Row:
    op: str
    table: str
    schema: TableSchema
    after: list[str | None] | None
    before: list[str | None] | None


class BinlogBatch:
    """Reads one batch after ``position`` (see the module docstring). ``keep``: the tables whose changes are
    captured now (configured, and not waiting for their snapshot)."""

    def __init__(self, *, source_id: str, url: str, conn: pymysql.Connection, position: dict[str, Any],
                 keep: set[str], configured: list[str], server_id: int, zero_dates: str,
                 max_changes: int) -> None:
        self.source_id = source_id
        self.url = url
        self.conn = conn
        self.position = position
        self.keep = keep
        self.configured = configured
        self.server_id = server_id
        self.zero_dates = zero_dates
        self.max_changes = max_changes
        self.seq = position.get("seq", 0)
        self.seq_from = self.seq + 1
        self.schemas_seen: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v
                                              for k, v in position.get("schemas", {}).items()}
        self.schemas: dict[str, TableSchema] = {}  # the schema each table's latest changes follow
        self.current: dict[str, TableSchema] = {}  # the schema of the table as the stream now knows it
        self.builders: dict[str, list[TableChangesBuilder]] = {}
        self.schema_changes: list[SchemaChange] = []
        self.formatters: dict[int, list[Callable[[Any], str | None]]] = {}
        self.pending: list[_Row] = []
        self.pending_ddl: list[Callable[[], None]] = []
        self.queued_snapshots: list[str] = []
        self.stopped_tables: list[str] = []
        self.in_tx = False
        self.tx_id: str | None = None
        self.tx_ts = 0
        self.gtid_domains = _gtid_domains(position.get("gtid", "")) if position.get("gtid_kind") == "mariadb" else {}
        self.mysql_gtids = position.get("gtid", "") if position.get("gtid_kind") == "mysql" else ""
        self.file, self.pos = position["file"], position["pos"]
        self.first_tx: str | None = None
        self.transactions = 0
        self.events = 0
        self.zero_dates_seen: dict[tuple[str, str], int] = {}

    # -- reading ----------------------------------------------------------------------------------------------

    def _by_gtid(self) -> bool:
        return self.position.get("mode") == "gtid" and bool(self.position.get("gtid"))

    def _reader(self) -> BinLogStreamReader:
        settings = connect_kwargs(self.url)
        settings["charset"] = "utf8mb4"
        databases = sorted({t.partition(".")[0] for t in self.configured})
        tables = sorted({t.partition(".")[2] for t in self.configured})
        common: dict[str, Any] = dict(
            connection_settings=settings, server_id=self.server_id, blocking=False, resume_stream=True,
            only_events=READ_EVENTS, only_schemas=databases, only_tables=tables, freeze_schema=True,
        )
        if self._by_gtid():
            if self.position.get("gtid_kind") == "mariadb":
                return BinLogStreamReader(**common, auto_position=self.position["gtid"], is_mariadb=True)
            return BinLogStreamReader(**common, auto_position=self.position["gtid"])
        # By file and offset: is_mariadb stays unset (with it the library resumes only by GTID).
        return BinLogStreamReader(**common, log_file=self.file, log_pos=self.pos)

    def read(self) -> ChangeBatch:
        reader = self._reader()
        started = time.monotonic()
        stream: object | None = None  # the binlog connection this read started on
        try:
            while True:
                before = (reader.log_file or self.file, reader.log_pos or self.pos)
                event = reader.fetchone()
                current = _stream_connection(reader)
                if stream is None:
                    stream = current
                elif current is not stream:  # the library reconnected inside fetchone()
                    self._reconnected(before)
                    stream = current
                if event is None:
                    # End of the binlog. A statement outside any transaction framing (no XID) ends here too.
                    if self.in_tx and not self.pending:
                        self._end_transaction(before)
                    break
                self.events += 1
                if isinstance(event, (GtidEvent, MariadbGtidEvent)):
                    if self.in_tx:  # the previous "transaction" had no commit event (a standalone statement)
                        self._end_transaction(before)
                        if self._full():
                            break
                    self._begin(event)
                elif isinstance(event, XidEvent):
                    self._end_transaction((reader.log_file, reader.log_pos))
                    if self._full():
                        break
                elif isinstance(event, QueryEvent):
                    if self._query(event, (reader.log_file, reader.log_pos)) and self._full():
                        break
                elif isinstance(event, ROW_EVENTS):
                    self._rows(event)
        except Exception as exc:
            if is_position_lost(exc):
                raise PositionLostError(self.source_id, self.position, f"the server cannot send the binlog from "
                                        f"there: {exc.args[1] if len(exc.args) > 1 else exc}") from exc
            if isinstance(exc, (PositionLostError, SourceError)):
                raise
            import pymysql

            if isinstance(exc, pymysql.err.MySQLError):
                raise SourceError(self.source_id, f"reading the binlog failed: {exc}") from exc
            raise
        finally:
            reader.close()
        log.debug("read %d binlog events in %.2fs", self.events, time.monotonic() - started)
        return self.finish()

    def _reconnected(self, last: tuple[str, int]) -> None:
        """The binlog connection broke and mysql-replication opened a new one by itself (``fetchone`` does so on
        errors 2006 and 2013: a server restart, a killed or timed-out connection).

        By file and offset the library asks from the end of the last event it read (``resume_stream``), so the
        read goes on exactly where it was, even inside a transaction. By GTID it asks again from the GTIDs the
        read *started* at (its ``auto_position`` never moves): the transactions read since would come twice and
        the one in progress would look ended half-way. Such a read stops with a transient error instead: nothing
        is stored or acknowledged, and the task's retry reads again from the stored position."""
        if self._by_gtid():
            raise SourceError(
                self.source_id,
                f"the binlog connection broke after {self.events} events of this read (the server restarted, or the "
                f"connection was killed or timed out) and mysql-replication reconnected from the GTID the read "
                f"started at ({self.position['gtid']}), which would read its transactions again. The read stops: "
                f"nothing was stored or acknowledged, and the next run (the task's retry) reads again from the "
                f"stored position")
        log.warning("source %s: the binlog connection broke after %d events of this read (the server restarted, or "
                    "the connection was killed or timed out); mysql-replication reconnected and reads on from %s:%s, "
                    "right after the last event read, so nothing is read twice", self.source_id, self.events,
                    *last)

    def _full(self) -> bool:
        return sum(len(b) for chunks in self.builders.values() for b in chunks) >= self.max_changes

    def _begin(self, event: Any) -> None:
        self.in_tx = True
        self.pending = []
        self.pending_ddl = []
        self.tx_ts = int(event.timestamp) * 1000
        gtid = event.gtid
        self.tx_id = gtid
        if isinstance(event, MariadbGtidEvent):
            self.gtid_domains[event.domain_id] = gtid
        else:
            self.mysql_gtids = _add_mysql_gtid(self.mysql_gtids, gtid)

    def _query(self, event: QueryEvent, end: tuple[str, int]) -> bool:
        """A query event; True when it ended a transaction."""
        query = event.query if isinstance(event.query, str) else event.query.decode("utf-8", "replace")
        head = query.lstrip()[:16].upper()
        if head.startswith("BEGIN") or head.startswith("XA START"):
            self.in_tx = True
            if not self.tx_ts:
                self.tx_ts = int(event.timestamp) * 1000
            return False
        if head.startswith("COMMIT") or head.startswith("XA COMMIT"):
            self._end_transaction(end)
            return True
        effect = ddl_parse.parse(query)
        if effect.kind == "other":
            return False  # SAVEPOINT, GRANT, CREATE INDEX...: nothing for the stream
        default_db = event.schema.decode() if isinstance(event.schema, bytes) else str(event.schema or "")
        self.tx_ts = self.tx_ts or int(event.timestamp) * 1000
        self._ddl(effect, default_db, query)
        self._end_transaction(end)  # DDL commits implicitly
        return True

    def _qualify(self, name: tuple[str | None, str], default_db: str) -> str:
        return f"{name[0] or default_db}.{name[1]}"

    def _ddl(self, effect: ddl_parse.DdlEffect, default_db: str, query: str) -> None:
        tables = [self._qualify(n, default_db) for n in effect.tables]
        if effect.kind == "truncate":
            name = tables[0]
            if name in self.keep:
                self.pending.append(_Row(OP_TRUNCATE, name, self._known(name), None, None))
            return
        if effect.kind == "alter":
            name = tables[0]
            if name not in self.configured:
                return
            entry = self.schemas_seen.get(name)
            if isinstance(entry, dict):
                ids, next_id = identity_map(entry)
                for old, new in effect.renamed_columns:
                    if old in ids:
                        ids[new] = ids.pop(old)
                for dropped in effect.dropped_columns:
                    ids.pop(dropped, None)
                self.schemas_seen[name] = {**entry, "ids": ids, "next_id": next_id}
            self.current.pop(name, None)  # read it again at its next row event
        renamed = [(self._qualify(old, default_db), self._qualify(new, default_db))
                   for old, new in effect.renamed_tables]
        for old, new in renamed:
            if new in self.configured:
                log.warning(
                    "source %s: table %s was replaced by RENAME of %s (%s): the cut-over of an online schema "
                    "change (gh-ost, pt-online-schema-change) or a swap. Its new rows were written outside the "
                    "stream, so it is read again by a snapshot under its new schema; the other tables keep "
                    "flowing.", self.source_id, new, old, _brief(query))
                if new not in self.queued_snapshots:
                    self.queued_snapshots.append(new)
                self.current.pop(new, None)
            if old in self.configured and old not in [n for _, n in renamed]:
                self._stop(old, f"it was renamed to {new}")
        if effect.kind == "drop":
            for name in tables:
                if name in self.configured:
                    self._stop(name, "it was dropped")
        if effect.kind == "create":
            name = tables[0]
            if name in self.configured:
                self.current.pop(name, None)
                if name in self.stopped_tables:
                    self.stopped_tables.remove(name)

    def _stop(self, name: str, why: str) -> None:
        log.warning("source %s: table %s stops flowing: %s at the source. Its sink table is kept; the other tables "
                    "keep flowing. Remove it from 'tables' in cdc.yaml (or re-create it: its new rows then flow).",
                    self.source_id, name, why)
        self.current.pop(name, None)
        if name not in self.stopped_tables:
            self.stopped_tables.append(name)

    def _known(self, name: str) -> TableSchema:
        known = self.current.get(name) or self.schemas.get(name) or seen_schema(self.schemas_seen.get(name))
        if known is None:
            found = read_tables(self.conn, [tuple(name.split(".", 1))])  # type: ignore[list-item]
            if name not in found:
                raise SourceError(self.source_id, "a change of the table arrived but the table is unknown",
                                  table=name)
            known, identities = identified(found[name], self.schemas_seen.get(name))
        return known

    # -- rows -------------------------------------------------------------------------------------------------

    def _schema_for(self, name: str, columns: list[Any]) -> TableSchema:
        """The schema rows of ``name`` were written under (see the module docstring)."""
        entry = self.schemas_seen.get(name)
        current = self.current.get(name) or seen_schema(entry)
        ids, _ = identity_map(entry if isinstance(entry, dict) else None)
        # A DDL statement may have renamed or dropped columns since the schema was remembered (``ids`` then no
        # longer agrees with it): a column dropped and added again looks the same in a table map, yet is new.
        if current is not None and all(ids.get(c.name) == c.ordinal for c in current.columns) and \
                table_map_matches(current, columns):
            self.current[name] = current
            return current
        db, _, table = name.partition(".")
        catalog = read_tables(self.conn, [(db, table)]).get(name)
        known_names, _ = identity_map(entry if isinstance(entry, dict) else None)
        if catalog is not None and table_map_matches(catalog, columns):
            base = catalog
        else:
            # The table changed again since these rows were written: only the table map tells their columns. A
            # column added in between has a default the binlog does not tell (a sink must stop, not guess).
            binlog_columns = schema_from_binlog(db, table, columns).columns
            key = {c.name for c in (catalog.columns if catalog else ()) if c.primary_key}
            base = TableSchema(db, table, tuple(
                dataclasses.replace(c, primary_key=c.name in key or c.primary_key,
                                    backfill_unknown=bool(known_names) and c.name not in known_names)
                for c in binlog_columns), MYSQL_DIALECT)
            log.info("source %s: %s changed again since these rows were written; their columns come from the "
                     "binlog's table map", self.source_id, name)
        schema, identities = identified(base, entry if isinstance(entry, dict) else None)
        self.schemas_seen[name] = {**(entry if isinstance(entry, dict) else {}), **identities}
        self.current[name] = schema
        return schema

    def _formatters(self, schema: TableSchema) -> list[Callable[[Any], str | None]]:
        found = self.formatters.get(id(schema))
        if found is None:
            found = [binlog_formatter(c, zero_dates=self.zero_dates,
                                      on_zero_date=self._zero_date(schema.qualified_name)) for c in schema.columns]
            self.formatters[id(schema)] = found
        return found

    def _zero_date(self, table: str) -> Callable[[str, Any], None]:
        def note(column: str, raw: Any) -> None:
            key = (table, column)
            self.zero_dates_seen[key] = self.zero_dates_seen.get(key, 0) + 1
        return note

    def _rows(self, event: Any) -> None:
        name = f"{event.schema}.{event.table}"
        if name not in self.keep or name in self.stopped_tables:
            return
        if not self.in_tx:
            self.in_tx = True
            self.tx_ts = int(event.timestamp) * 1000
        schema = self._schema_for(name, event.columns)
        # Before the rows are parsed (lazily, on the first read of ``rows``): exact codecs, the catalog's labels.
        bind_table_map(schema, event.columns)
        formats = self._formatters(schema)
        names = schema.column_names

        def image(values: dict[str, Any], none_sources: dict[str, str]) -> list[str | None]:
            restore_binlog_values(values, none_sources)
            try:
                return [fmt(values.get(col)) for fmt, col in zip(formats, names)]
            except ZeroDateError as exc:
                key = {c: values.get(c) for c in schema.primary_key}
                raise TableRefusedError(self.source_id, f"{exc} in the row with key {key} (binlog {self.file}, "
                                        f"transaction {self.tx_id}); options.zero_dates: null loads NULL instead",
                                        table=name) from exc

        try:
            rows = event.rows
        except ValueError as exc:  # a value the library cannot decode (an invalid date such as 2024-02-31)
            raise TableRefusedError(self.source_id, f"the binlog has a value that cannot be read ({exc}) near "
                                    f"{self.file}, transaction {self.tx_id}; fix the row at the source, then "
                                    f"re-snapshot the table (python -m airflow_provider_cdc resnapshot "
                                    f"{self.source_id} --table {name})", table=name) from exc
        if isinstance(event, WriteRowsEvent):
            for row in rows:
                self.pending.append(_Row(OP_CREATE, name, schema, image(row["values"], row["none_sources"]), None))
        elif isinstance(event, DeleteRowsEvent):
            for row in rows:
                self.pending.append(_Row(OP_DELETE, name, schema, image(row["values"], row["none_sources"]), None))
        else:
            for row in rows:
                self.pending.append(_Row(OP_UPDATE, name, schema,
                                         image(row["after_values"], row["after_none_sources"]),
                                         image(row["before_values"], row["before_none_sources"])))

    # -- transactions -----------------------------------------------------------------------------------------

    def _end_transaction(self, end: tuple[str, int]) -> None:
        self.file, self.pos = end
        position = f"{end[0]}:{end[1]}"
        for row in self.pending:
            self._emit(row, position)
        if self.pending:
            self.transactions += 1
            if self.first_tx is None:
                self.first_tx = position
        self.pending = []
        self.in_tx = False
        self.tx_id = None
        self.tx_ts = 0

    def _emit(self, row: _Row, position: str) -> None:
        schema = row.schema
        name = row.table
        if self.schemas.get(name) is not schema:
            self._note_schema(schema, position)
        chunks = self.builders.setdefault(name, [])
        if not chunks or chunks[-1].table is not schema:
            chunks.append(TableChangesBuilder(schema))
        builder = chunks[-1]
        ts, tx = self.tx_ts, self.tx_id
        if row.op == OP_TRUNCATE:
            self.seq += 1
            builder.append(OP_TRUNCATE, self.seq, ts, tx, position, [None] * len(schema.columns))
            return
        if row.op == OP_UPDATE:
            assert row.before is not None and row.after is not None
            key = [i for i, c in enumerate(schema.columns) if c.primary_key]
            if any(row.before[i] != row.after[i] for i in key):
                # The key changed: the old row goes away and a new one appears (as Debezium reports it).
                self.seq += 1
                builder.append(OP_DELETE, self.seq, ts, tx, position, row.before)
                self.seq += 1
                builder.append(OP_CREATE, self.seq, ts, tx, position, row.after, before=row.before)
                return
            self.seq += 1
            builder.append(OP_UPDATE, self.seq, ts, tx, position, row.after)
            return
        assert row.after is not None  # inserts and deletes carry their row
        self.seq += 1
        builder.append(row.op, self.seq, ts, tx, position, row.after)

    def _note_schema(self, schema: TableSchema, position: str) -> None:
        name = schema.qualified_name
        entry = self.schemas_seen.get(name)
        if seen_fingerprint(entry) != fingerprint_hash(schema):
            self.seq += 1
            before = self.schemas.get(name) or seen_schema(entry)
            self.schema_changes.append(SchemaChange(name, self.seq, schema, before, self.tx_ts, position))
            ids, next_id = identity_map(entry if isinstance(entry, dict) else None)
            ids.update({c.name: c.ordinal for c in schema.columns if c.ordinal is not None})
            self.schemas_seen[name] = remember(schema, {"ids": ids, "next_id": next_id})
        self.schemas[name] = schema

    # -- the batch --------------------------------------------------------------------------------------------

    def gtid_position(self) -> str:
        if self.position.get("gtid_kind") == "mariadb":
            return ",".join(self.gtid_domains[d] for d in sorted(self.gtid_domains))
        return self.mysql_gtids

    def finish(self) -> ChangeBatch:
        for (table, column), count in sorted(self.zero_dates_seen.items()):
            log.warning("source %s: %d zero dates (0000-00-00 or a zero month or day) in %s.%s became NULL "
                        "(options.zero_dates: null; 'refuse' stops at the first one instead)", self.source_id,
                        count, table, column)
        tables = {}
        for name, chunks in self.builders.items():
            final = self.schemas[name]
            finished = [align(b.finish(), b.table, final) if b.table is not final else b.finish()
                        for b in chunks if len(b)]
            if finished:
                tables[name] = concat_tables(finished)
        start = f"{self.position['file']}:{self.position['pos']}"
        end = f"{self.file}:{self.pos}"
        position_to = {**self.position, "file": self.file, "pos": self.pos, "seq": self.seq,
                       "schemas": self.schemas_seen}
        if self.position.get("gtid_kind"):
            position_to["gtid"] = self.gtid_position()
        return ChangeBatch(
            source_id=self.source_id,
            batch_id=make_batch_id(self.source_id, self.first_tx or start, end),
            position_from=self.position,
            position_to=position_to,
            seq_from=self.seq_from,
            seq_to=self.seq,
            tables=tables,
            schemas=self.schemas,
            schema_changes=self.schema_changes,
            connector=MYSQL_DIALECT,
            database=",".join(sorted({t.partition(".")[0] for t in self.configured})),
        )


def _stream_connection(reader: BinLogStreamReader) -> object | None:
    """The connection ``reader`` reads the binlog on: mysql-replication replaces it when it reconnects by itself,
    and tells nobody (it only logs a warning), so its identity is how a read notices (None before it connects)."""
    return getattr(reader, "_stream_connection", None)


def _brief(query: str) -> str:
    flat = " ".join(query.split())
    return flat if len(flat) <= 120 else flat[:117] + "..."


def _gtid_domains(text: str) -> dict[int, str]:
    """MariaDB ``0-1-42,1-2-7`` -> {domain: gtid}."""
    out: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        out[int(part.split("-", 1)[0])] = part
    return out


def _add_mysql_gtid(executed: str, gtid: str) -> str:
    """A MySQL GTID set (``uuid:1-41``) with one more GTID (``uuid:42``), in MySQL's own text form."""
    from pymysqlreplication.gtid import Gtid, GtidSet

    gtids = GtidSet(executed) if executed else GtidSet(None)
    gtids += Gtid(gtid)
    return str(gtids)
