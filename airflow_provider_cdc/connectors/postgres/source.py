"""PostgreSQL source: logical decoding with ``pgoutput`` through the SQL interface.

Why ``peek`` then ``advance``: ``pg_logical_slot_peek_binary_changes`` reads without consuming, so capture can be
repeated any number of times (a cleared task replays the identical range) and the slot only moves when the commit
step calls ``pg_replication_slot_advance`` after the sink committed. ``peek`` re-decodes from the slot's
``restart_lsn`` and is bounded here by ``upto_nchanges`` (checked at transaction commits, so a transaction stays
whole) and read through a server-side cursor, so memory stays bounded by the batch size.

Position document (Airflow Variable ``cdc.position.<source_id>``)::

    {"lsn": "0/1A2B3C4",            # end LSN of the last transaction loaded; the slot is advanced to it
     "seq": 1234,                   # last event seq: the next event gets seq + 1
     "snapshot": {...} | absent,    # pending initial snapshot: table index and last key read
     "schemas": {"public.users": "<fingerprint hash>"}}

Snapshot: the slot is created first, then tables are read in key order, ``batch_size`` rows per run, each chunk in
its own REPEATABLE READ transaction. The stream is then replayed from the slot's start. Every change after the slot
was created is replayed in commit order with a higher ``seq`` than any snapshot row, and each row converges to its
last change: nothing is lost and nothing is applied twice by the sink's ``_cdc_position`` guard and ledger.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql

from airflow_provider_cdc.connectors.postgres import pgoutput
from airflow_provider_cdc.connectors.postgres.catalog import Catalog
from airflow_provider_cdc.connectors.postgres.columnar import Unsupported, decode_columnar
from airflow_provider_cdc.connectors.postgres.decoder import StreamDecoder, commits_after, fingerprint_hash
from airflow_provider_cdc.errors import PositionLostError, SourceError
from airflow_provider_cdc.events import (
    OP_READ,
    ChangeBatch,
    SchemaChange,
    TableSchema,
    concat_tables,
    make_batch_id,
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
    conn = psycopg.connect(dsn, autocommit=True, **kwargs)
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

    def prepare(self) -> None:
        """Check ``wal_level``, the tables and their keys; create the publication and slot when absent."""
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
            missing = [f"{s}.{t}" for s, t in self.tables if catalog.relid(s, t) is None]
            if missing:
                raise SourceError(self.source_id, f"tables not found: {', '.join(missing)}; check 'tables' in cdc.yaml")
            for schema, table in self.tables:
                if not catalog.primary_key(catalog.relid(schema, table)):
                    raise SourceError(
                        self.source_id,
                        "has no primary key; the sink merges by key: add a primary key to the table",
                        table=f"{schema}.{table}",
                    )
            self._ensure_publication(cur)
        self._ensure_slot()

    def _ensure_publication(self, cur: psycopg.Cursor) -> None:
        cur.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (self.publication_name,)
        )
        present = {(s, t) for s, t in cur.fetchall()}
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication_name,))
        exists = cur.fetchone() is not None
        wanted = [t for t in self.tables if t not in present]
        if exists and not wanted:
            return
        if not self.create_publication:
            raise SourceError(
                self.source_id,
                f"publication {self.publication_name!r} is missing or lacks tables "
                f"{', '.join(f'{s}.{t}' for s, t in wanted)}; create it or set create_publication: true",
            )
        names = sql.SQL(", ").join(sql.Identifier(s, t) for s, t in wanted)
        if exists:
            cur.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(self.publication_name), names))
        else:
            cur.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(self.publication_name), names))
        log.info("publication %s now covers %s", self.publication_name, ", ".join(f"{s}.{t}" for s, t in wanted))

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

    def _ensure_slot(self) -> None:
        state = self.slot_state()
        if state is not None:
            if state["plugin"] != "pgoutput" or not state["same_database"]:
                raise SourceError(
                    self.source_id,
                    f"replication slot {self.slot_name!r} exists but is not a pgoutput slot of this database; "
                    "choose another slot_name",
                )
            return
        if not self.create_slot:
            raise SourceError(
                self.source_id, f"replication slot {self.slot_name!r} does not exist; create it or set create_slot: true"
            )
        with self.conn.cursor() as cur:
            cur.execute("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (self.slot_name,))
            (lsn,) = cur.fetchone()
        log.info("created replication slot %s at %s", self.slot_name, lsn)

    # -- positions ------------------------------------------------------------------------------------------

    def initial_position(self) -> dict[str, Any]:
        """Where a source without a stored position starts: the slot's confirmed LSN, snapshot pending if asked."""
        state = self.slot_state()
        if state is None:
            self.prepare()
            state = self.slot_state()
        position: dict[str, Any] = {"lsn": state["confirmed_flush_lsn"], "seq": 0, "schemas": {}}
        if self.snapshot_mode == "initial":
            position["snapshot"] = {"table": 0, "after": None}
        return position

    def _check_position(self, position: dict[str, Any]) -> dict[str, Any]:
        state = self.slot_state()
        if state is None:
            raise PositionLostError(self.source_id, position, f"replication slot {self.slot_name!r} was dropped")
        confirmed = pgoutput.lsn_to_int(state["confirmed_flush_lsn"])
        if pgoutput.lsn_to_int(position["lsn"]) < confirmed:
            raise PositionLostError(
                self.source_id,
                position,
                f"slot {self.slot_name!r} is already at {state['confirmed_flush_lsn']}, past the stored position: "
                "changes in between were consumed elsewhere",
            )
        return state

    # -- capture --------------------------------------------------------------------------------------------

    def capture(self, position: dict[str, Any] | None, max_changes: int) -> ChangeBatch:
        if position is None:
            position = self.initial_position()
        if position.get("snapshot") is not None:
            return self._capture_snapshot(position, max_changes)
        self._check_position(position)
        return self._capture_stream(position, max_changes)

    def has_changes(self, position: dict[str, Any] | None) -> bool:
        if position is None or position.get("snapshot") is not None:
            return True
        self._check_position(position)
        with self.conn.cursor() as cur:
            cur.execute(self._peek_sql(), (self.slot_name, PROBE_CHANGES, self.publication_name))
            return commits_after(cur.fetchall(), position)

    async def has_changes_async(self, position: dict[str, Any] | None) -> bool:
        """:meth:`has_changes` without blocking the triggerer's event loop (one connection kept across polls)."""
        if position is None or position.get("snapshot") is not None:
            return True
        if self._aconn is None or self._aconn.closed:
            self._aconn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        async with self._aconn.cursor() as cur:
            await cur.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                              (self.slot_name,))
            if await cur.fetchone() is None:
                raise PositionLostError(self.source_id, position, f"replication slot {self.slot_name!r} was dropped")
            await cur.execute(self._peek_sql(), (self.slot_name, PROBE_CHANGES, self.publication_name))
            return commits_after(await cur.fetchall(), position)

    async def heartbeat_async(self) -> None:
        if self._aconn is None or self._aconn.closed:
            self._aconn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        await self._aconn.execute("SELECT pg_logical_emit_message(true, %s, now()::text)", (HEARTBEAT_PREFIX,))

    async def aclose(self) -> None:
        if self._aconn is not None:
            await self._aconn.close()
            self._aconn = None

    @staticmethod
    def _peek_sql() -> str:
        return (
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, 'proto_version', '1', "
            "'publication_names', %s, 'messages', 'true')"
        )

    def _capture_stream(self, position: dict[str, Any], max_changes: int) -> ChangeBatch:
        started = time.monotonic()
        limit = max_changes
        while True:
            decoder = self._decode(position, limit)
            # Only transactions at or before the stored position came back (the Variable was stored but the slot
            # not yet advanced): they used up the limit, so look further rather than report nothing.
            if decoder.transactions or not decoder.skipped or decoder.messages < limit:
                break
            limit = limit * 4 + decoder.messages
        batch = decoder.finish()
        log.info(
            "captured %d changes in %d transactions (%s) from %s to %s in %.2fs",
            batch.change_count, decoder.transactions, batch.op_totals(), position["lsn"], batch.position_to["lsn"],
            time.monotonic() - started,
        )
        return batch

    def _decode(self, position: dict[str, Any], limit: int) -> StreamDecoder:
        """Peek up to ``limit`` messages and decode them columnar, or message by message for rare shapes."""
        messages = self._peek_messages(limit)
        decoder = StreamDecoder(self, position)
        if self.columnar:
            try:
                decoder.columnar_tables = decode_columnar(decoder, messages)
                return decoder
            except Unsupported as exc:
                log.info("decoding this batch message by message: %s", exc)
                decoder = StreamDecoder(self, position)
        for data in messages.to_pylist():
            decoder.feed(data)
        return decoder

    def _peek_messages(self, limit: int) -> pa.LargeBinaryArray:
        """The peeked messages as one Arrow array. The server concatenates them into one value and sends their
        lengths beside it: one row instead of one per message, which is what a cursor spends its time on. A batch
        too large for one value (1 GiB) is read through a server-side cursor instead."""
        try:
            with self.conn.cursor(binary=True) as cur:
                # One plain Aggregate over the function scan: both aggregates see the rows in stream order
                # (an ORDER BY would sort, and spill, the whole batch); the decoder checks commit order anyway.
                cur.execute(
                    "SELECT coalesce(array_agg(length(data)), '{}'), coalesce(string_agg(data, ''::bytea), ''::bytea) "
                    "FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, 'proto_version', '1', "
                    "'publication_names', %s, 'messages', 'true')",
                    (self.slot_name, limit, self.publication_name),
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
            with self.conn.cursor(name=f"cdc_peek_{self.source_id}", binary=True) as cur:
                cur.itersize = 10000
                cur.execute(self._peek_sql(), (self.slot_name, limit, self.publication_name))
                return pa.array([data for (data,) in cur], pa.large_binary())

    def _capture_snapshot(self, position: dict[str, Any], max_changes: int) -> ChangeBatch:
        """Read the next ``max_changes`` rows of the pending snapshot, table by table in key order."""
        started = time.monotonic()
        state = dict(position["snapshot"])
        seq = position.get("seq", 0)
        seq_from = seq + 1
        schemas_seen = dict(position.get("schemas", {}))
        tables: dict[str, pa.Table] = {}
        schemas: dict[str, TableSchema] = {}
        schema_changes: list[SchemaChange] = []
        remaining = max_changes
        catalog = Catalog(self.conn)
        ts_ms = int(time.time() * 1000)
        while remaining > 0 and state["table"] < len(self.tables):
            schema_name, table_name = self.tables[state["table"]]
            relid = catalog.relid(schema_name, table_name)
            if relid is None:
                raise SourceError(self.source_id, "table disappeared during the snapshot", table=f"{schema_name}.{table_name}")
            table_schema = catalog.table_schema(relid)
            qualified = table_schema.qualified_name
            schemas[qualified] = table_schema
            if schemas_seen.get(qualified) != fingerprint_hash(table_schema):
                seq += 1
                schema_changes.append(SchemaChange(qualified, seq, table_schema, None, ts_ms, position["lsn"]))
                schemas_seen[qualified] = fingerprint_hash(table_schema)
            chunk = self._read_chunk(table_schema, state["after"], remaining)
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
                state["after"] = [last[k] for k in table_schema.primary_key]
            else:
                state = {"table": state["table"] + 1, "after": None}
        position_to = {"lsn": position["lsn"], "seq": seq, "schemas": schemas_seen}
        if state["table"] < len(self.tables):
            position_to["snapshot"] = state
        batch = ChangeBatch(
            source_id=self.source_id,
            batch_id=make_batch_id(self.source_id, f"snapshot.{seq_from}", f"snapshot.{seq}"),
            position_from=position,
            position_to=position_to,
            seq_from=seq_from,
            seq_to=seq,
            tables=tables,
            schemas=schemas,
            schema_changes=schema_changes,
            connector="postgresql",
            database=self.conn.info.dbname,
        )
        log.info(
            "snapshot read %d rows (%s) in %.2fs; %s",
            batch.change_count, {k: v.num_rows for k, v in tables.items()}, time.monotonic() - started,
            "snapshot complete" if "snapshot" not in position_to else f"continues at table {state['table']}",
        )
        return batch

    def _read_chunk(self, table: TableSchema, after: list[str] | None, limit: int) -> pa.Table:
        """One keyset page of ``table`` as canonical text, read with ``COPY ... CSV`` and parsed by Arrow."""
        # Qualified with the alias ``t``: an unqualified ORDER BY name would pick the ``::text`` output column of
        # the same name and sort keys as text, while the keyset WHERE compares typed values.
        cols = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in table.column_names)
        pk = table.primary_key
        order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in pk)
        where = sql.SQL("")
        if after is not None:
            bounds = sql.SQL(", ").join(
                sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(table.column(c).source_type)) for c, v in zip(pk, after)
            )
            where = sql.SQL(" WHERE ({}) > ({})").format(order, bounds)
        query = sql.SQL("SELECT {} FROM {} AS t{} ORDER BY {} LIMIT {}").format(
            cols, sql.Identifier(table.schema, table.name), where, order, sql.Literal(limit)
        )
        buf = io.BytesIO()
        conn = self.conn
        with conn.transaction():
            with conn.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                with cur.copy(sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(query)) as copy:
                    for block in copy:
                        buf.write(block)
        names = table.column_names
        if buf.tell() == 0:
            return pa.table({c: pa.array([], pa.string()) for c in names})
        buf.seek(0)
        return pacsv.read_csv(
            buf,
            read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 24),
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
        """Later positions have more events (``seq``) or, for event-less heartbeats, a later LSN."""
        return (position.get("seq", 0), pgoutput.lsn_to_int(position["lsn"]), "snapshot" not in position)

    def heartbeat(self) -> None:
        """Emit a transactional logical message: an idle source then still has a commit to advance the slot to."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_logical_emit_message(true, %s, now()::text)", (HEARTBEAT_PREFIX,))
