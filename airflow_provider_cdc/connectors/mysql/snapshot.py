"""The snapshot of a MySQL or MariaDB source, and how it converges with the binlog.

The position is taken first (the binlog's end), then tables are read in key order, one keyset page per batch, each
page one statement (a consistent read), while the stream keeps flowing: a run reads the binlog first (half the
batch while a snapshot is pending), then the next page. Binlog changes of a table whose snapshot has not started,
or of keys its snapshot has not reached, are dropped: the snapshot reads those rows later, with the changes in
them. Every other change is applied in binlog order, and each row converges to its last change: nothing is lost,
and nothing is applied twice thanks to the sink's ``_cdc_position`` guard and ledger. The binlog carries whole row
images (``binlog_row_image=FULL``), so no row needs reading again.

Keys compare as the server orders them (collations: ``'a' = 'A'`` under a case-insensitive one): the stream's keys
are compared with the snapshot's last key by the server, in a temporary table with the key columns' own types.
Snapshot values go through :func:`~.types.snapshot_formatter`, which gives the same portable text as the binlog.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pymysql

from airflow_provider_cdc.connectors.mysql.connection import MYSQL_DIALECT, qualified, quote_name
from airflow_provider_cdc.connectors.mysql.types import ZeroDateError, snapshot_formatter, snapshot_select_expr
from airflow_provider_cdc.connectors.recapture import page_tag
from airflow_provider_cdc.connectors.schemas import fingerprint_hash, seen_fingerprint, seen_schema
from airflow_provider_cdc.connectors.visibility import wait_until_visible
from airflow_provider_cdc.errors import TableRefusedError
from airflow_provider_cdc.events import OP_READ, ChangeBatch, TableChangesBuilder, align, concat_tables, make_batch_id
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema

log = logging.getLogger("airflow_provider_cdc.source.mysql")

_KEYS_TABLE = "_cdc_snapshot_keys"


def key_input(text: str | None, column: Column) -> Any:
    """A key value in the portable form as MySQL input (keys are integers, decimals, text, dates or binary)."""
    if text is None:
        return None
    kind = column.logical_type
    if kind == "binary":
        return bytes.fromhex(text)
    if kind == "timestamptz":  # sessions run in UTC
        return text[:-1].replace("T", " ") if text.endswith("Z") else text
    if kind == "timestamp":
        return text.replace("T", " ")
    return text


def _binlog_position(file: str, pos: int) -> tuple[str, int]:
    return file, int(pos)  # binlog file names end in a zero-padded number: they compare as text


def start_snapshot_covering(conn: pymysql.Connection, streamed_upto: tuple[str, int] | None, *,
                            source_id: str = "") -> None:
    """Open a consistent-snapshot transaction that sees every transaction the stream has delivered up to
    ``streamed_upto`` (the end of the last one read: binlog file, position).

    The binlog is written, and read by the stream, before the engine makes a transaction visible: for microseconds
    in a group commit, and for as long as a replica takes to acknowledge under semi-synchronous replication with
    ``rpl_semi_sync_master_wait_point = AFTER_SYNC`` (MySQL's default for it). Rows read in that window would lose the
    changes the stream delivered before them (its changes of keys the snapshot had not reached are dropped: the
    snapshot was to read them). MariaDB names the binlog position its snapshot corresponds to
    (``binlog_snapshot_position``); while that is before ``streamed_upto``, this waits and takes the snapshot again.
    MySQL has no such status: there it reads without the check."""
    wanted = _binlog_position(*streamed_upto) if streamed_upto is not None else None

    def invisible() -> str | None:
        with conn.cursor() as cur:
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            if wanted is None:
                return None
            cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
            status = {name.lower(): value for name, value in cur.fetchall()}
            if not status.get("binlog_snapshot_file"):
                return None
            covered = _binlog_position(status["binlog_snapshot_file"], status["binlog_snapshot_position"])
            if covered >= wanted:
                return None
            cur.execute("COMMIT")
        return (f"transactions up to {wanted[0]}:{wanted[1]} (the snapshot is at {covered[0]}:{covered[1]})")

    wait_until_visible(source_id, invisible, log=log, cause="a commit waiting for a semi-synchronous replica? "
                       "rpl_semi_sync_master_wait_point = AFTER_SYNC")


def read_page(conn: pymysql.Connection, table: TableSchema, after: list[str] | None, limit: int, *,
              zero_dates: str, on_zero_date: Any = None, source_id: str = "",
              streamed_upto: tuple[str, int] | None = None) -> list[list[str | None]]:
    """One keyset page of ``table`` in the portable form: the rows after key ``after``, in key order, read in a
    snapshot that holds every transaction the stream has delivered up to ``streamed_upto``
    (:func:`start_snapshot_covering`)."""
    key = [c for c in table.columns if c.primary_key]
    order = ", ".join(quote_name(c.name) for c in key)
    where = ""
    params: list[Any] = []
    if after is not None:
        where = f" WHERE ({order}) > ({', '.join(['%s'] * len(key))})"
        params = [key_input(v, c) for v, c in zip(after, key)]
    columns = ", ".join(snapshot_select_expr(c) for c in table.columns)
    query = (f"SELECT {columns} FROM {qualified(table.schema, table.name)}{where} ORDER BY {order} "
             f"LIMIT {int(limit)}")
    formats = [snapshot_formatter(c, zero_dates=zero_dates,
                                  on_zero_date=on_zero_date) for c in table.columns]
    key_at = [i for i, c in enumerate(table.columns) if c.primary_key]
    out: list[list[str | None]] = []
    start_snapshot_covering(conn, streamed_upto, source_id=source_id)
    try:
        with conn.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute(query, params)
            for row in cur:
                try:
                    out.append([fmt(v) for fmt, v in zip(formats, row)])
                except ZeroDateError as exc:
                    row_key = {table.columns[i].name: row[i] for i in key_at}
                    raise TableRefusedError(source_id, f"{exc} in the row with key {row_key} (snapshot); "
                                            "options.zero_dates: null loads NULL instead",
                                            table=table.qualified_name) from exc
    finally:
        conn.rollback()  # a read-only transaction: nothing to keep
    return out


def unread_rows(conn: pymysql.Connection, schema: TableSchema, changes: pa.Table, after: list[str]) -> list[int]:
    """Indexes of ``changes`` rows whose key sorts after ``after`` as the server orders keys."""
    key = [c for c in schema.columns if c.primary_key]
    values = [changes[c.name].to_pylist() for c in key]
    if all(c.logical_type == "integer" for c in key):
        bound = tuple(int(v) for v in after)
        return [i for i, row in enumerate(zip(*values))
                if None not in row and tuple(int(v) for v in row) > bound]
    names = ", ".join(quote_name(c.name) for c in key)
    keys_table = quote_name(_KEYS_TABLE)
    with conn.cursor() as cur:
        cur.execute(f"DROP TEMPORARY TABLE IF EXISTS {keys_table}")
        # The key columns' own types and collations, copied from the table itself.
        cur.execute(f"CREATE TEMPORARY TABLE {keys_table} (_n INT NOT NULL) "
                    f"SELECT {names} FROM {qualified(schema.schema, schema.name)} LIMIT 0")
        rows = [(i, *[key_input(v, c) for v, c in zip(row, key)]) for i, row in enumerate(zip(*values))]
        placeholders = ", ".join(["%s"] * (len(key) + 1))
        cur.executemany(f"INSERT INTO {keys_table} (_n, {names}) VALUES ({placeholders})", rows)
        cur.execute(f"SELECT _n FROM {keys_table} WHERE ({names}) > ({', '.join(['%s'] * len(key))})",
                    [key_input(v, c) for v, c in zip(after, key)])
        found = [int(r[0]) for r in cur.fetchall()]
        cur.execute(f"DROP TEMPORARY TABLE {keys_table}")
    return found


def drop_unread_keys(conn: pymysql.Connection, batch: ChangeBatch, snapshot: dict[str, Any], source_id: str) -> None:
    """Drop binlog changes of the table being snapshotted whose keys the snapshot has not read yet."""
    name, after = snapshot["pending"][0], snapshot.get("after")
    table = batch.tables.get(name)
    if after is None or table is None or table.num_rows == 0:
        return
    schema = batch.schemas[name]
    is_row = pc.invert(pc.equal(table["_cdc_op"], "t"))
    unread = unread_rows(conn, schema, table, after)
    if unread:
        kept = pc.invert(pc.is_in(pa.array(range(table.num_rows), pa.int64()), value_set=pa.array(unread)))
        batch.tables[name] = table.filter(pc.or_(kept, pc.invert(is_row)))
        log.info("source %s: %d changes of %s are past its snapshot's last key; the snapshot reads them later",
                 source_id, len(unread), name)


def add_snapshot_pages(conn: pymysql.Connection, stream: ChangeBatch, max_changes: int, *, source_id: str,
                       read_schema: Any, zero_dates: str) -> ChangeBatch:
    """Add the next ``max_changes`` rows of the pending snapshot to ``stream``'s batch, table by table in key
    order, with ``seq`` numbers after the stream's (the rows are read after those changes were written).

    ``read_schema(name)`` gives a table's current schema with its column identities (None: the table is gone)."""
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
    ts_ms = int(time.time() * 1000)
    after = state.get("after")
    where = f"{position['file']}:{position['pos']}"
    while remaining > 0 and pending:
        name = pending[0]
        found = read_schema(name, schemas_seen.get(name))
        if found is None:
            log.warning("source %s: table %s is gone at the source; its snapshot is skipped", source_id, name)
            pending.pop(0)
            after = None
            continue
        table_schema, entry = found
        if schemas.get(name) is not None and name in tables and \
                schemas[name].fingerprint() != table_schema.fingerprint():
            tables[name] = align(tables[name], schemas[name], table_schema)
        if seen_fingerprint(schemas_seen.get(name)) != fingerprint_hash(table_schema):
            seq += 1
            schema_changes.append(SchemaChange(name, seq, table_schema,
                                               schemas.get(name) or seen_schema(schemas_seen.get(name)), ts_ms, where))
        schemas_seen[name] = entry
        schemas[name] = table_schema
        zeros: dict[str, int] = {}

        def count_zero(column: str, raw: Any, zeros: dict[str, int] = zeros) -> None:
            zeros[column] = zeros.get(column, 0) + 1

        rows = read_page(conn, table_schema, after, remaining, zero_dates=zero_dates, source_id=source_id,
                         on_zero_date=count_zero, streamed_upto=(position["file"], position["pos"]))
        for column, count in sorted(zeros.items()):
            log.warning("source %s: %d zero dates (0000-00-00 or a zero month or day) in %s.%s became NULL "
                        "(options.zero_dates: null; 'refuse' stops at the first one instead)", source_id, count,
                        name, column)
        if rows:
            builder = TableChangesBuilder(table_schema)
            for row in rows:
                seq += 1
                builder.append(OP_READ, seq, ts_ms, None, where, row)
            piece = builder.finish()
            tables[name] = concat_tables([tables[name], piece]) if name in tables else piece
            remaining -= len(rows)
        if rows and remaining <= 0:
            last = rows[-1]
            after = [last[i] for i, c in enumerate(table_schema.columns) if c.primary_key]
        else:
            log.info("source %s: snapshot of %s complete", source_id, name)
            pending.pop(0)
            after = None
    position_to = {**position, "seq": seq, "schemas": schemas_seen}
    position_to.pop("snapshot", None)
    if pending:
        position_to["snapshot"] = {"pending": pending, "after": after}
    # Where the page ended is part of the id: two captures that read as many rows may end them at other keys.
    tag = page_tag(position_to)
    if stream.seq_to >= stream.seq_from:  # the stream part had changes
        batch_id = make_batch_id(source_id, stream.batch_id.partition(":")[2], f"snapshot.{snap_from}-{seq}@{tag}")
    else:
        batch_id = make_batch_id(source_id, f"snapshot.{snap_from}", f"snapshot.{seq}@{tag}")
    return ChangeBatch(
        source_id=source_id, batch_id=batch_id, position_from=stream.position_from, position_to=position_to,
        seq_from=stream.seq_from, seq_to=seq, tables=tables, schemas=schemas,
        schema_changes=sorted(schema_changes, key=lambda change: change.seq), connector=MYSQL_DIALECT,
        database=stream.database,
    )
