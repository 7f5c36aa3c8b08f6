"""The snapshot of a PostgreSQL source, and how it converges with the stream.

The slot is created first, then tables are read in key order, each chunk in its own REPEATABLE READ transaction,
while the stream keeps flowing: a run reads the stream first (half the batch when a snapshot is pending), then the
next snapshot chunk. Stream changes of a table whose snapshot has not started yet, or of keys its snapshot has not
reached, are dropped: the snapshot reads those rows later, with the changes in them. Every other change is applied
in commit order, and each row converges to its last change: nothing is lost, and nothing is applied twice thanks to
the sink's ``_cdc_position`` guard and ledger.

Snapshot text goes through the types' output functions exactly as pgoutput's does, then into the portable form
(:mod:`.values`), so a row read by the snapshot equals the same row sent by the stream. Keys and bounds go back into
SQL as PostgreSQL input (:func:`~.values.pg_input_scalar`).
"""

from __future__ import annotations

import io
import logging
import time
from typing import TYPE_CHECKING, Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from airflow_provider_cdc.connectors.postgres import pgoutput
from airflow_provider_cdc.connectors.postgres.catalog import Catalog
from airflow_provider_cdc.connectors.postgres.snapshot_ranges import (
    Chunk,
    RangeSnapshot,
    keys_literal,
    range_bounds,
    range_count,
)
from airflow_provider_cdc.connectors.postgres.values import pg_input_scalar, portable_table, to_pg_input
from airflow_provider_cdc.connectors.recapture import page_tag
from airflow_provider_cdc.connectors.schemas import (
    fingerprint_hash,
    remembered,
    seen_fingerprint,
    seen_schema,
)
from airflow_provider_cdc.connectors.visibility import wait_until_visible
from airflow_provider_cdc.events import BEFORE_PREFIX, OP_READ, ChangeBatch, align, concat_tables, make_batch_id
from airflow_provider_cdc.tables import SchemaChange, TableSchema

log = logging.getLogger("airflow_provider_cdc.source.postgres")


class SnapshotCapture(RangeSnapshot):
    """The snapshot half of :class:`~airflow_provider_cdc.connectors.postgres.source.PgSource`."""

    source_id: str
    if TYPE_CHECKING:
        @property
        def conn(self) -> psycopg.Connection: ...  # PgSource's connection
    _row_filters: dict[str, str]

    def _wait_until_visible(self, xids: list[int] | tuple[int, ...]) -> None:
        """Wait until no session still runs one of ``xids``, transactions whose commits the stream has delivered.

        PostgreSQL writes a commit record, then (with ``synchronous_standby_names``) waits for a standby, and only
        then makes the transaction visible: logical decoding streams it in between. A snapshot taken in that window
        misses changes the stream has already delivered, and the rows it reads would lose them (the stream's
        changes of keys the snapshot had not reached are dropped: the snapshot was to read them). A transaction
        leaves ``pg_stat_activity.backend_xid`` when it becomes visible, and never comes back: a snapshot taken
        after this returns sees every one of them (``backend_xid`` needs no privilege to read)."""
        wanted = [str(x) for x in sorted(set(xids))]

        def invisible() -> str | None:
            with self.conn.cursor() as cur:
                cur.execute("SELECT backend_xid::text FROM pg_stat_activity WHERE backend_xid = ANY(%s::text[]::xid[])",
                            (wanted,))
                running = [row[0] for row in cur.fetchall()]
            return f"transaction(s) {', '.join(running)}" if running else None

        wait_until_visible(self.source_id, invisible, log=log, cause="commits waiting for a synchronous standby? "
                           "see synchronous_standby_names and pg_stat_replication")

    def _commits_waiting_for_a_standby(self) -> list[int]:
        """The xids of commits written but waiting for a synchronous standby now (not visible yet), for a chunk
        read that has no stream part of its own to take them from (a range of the parallel snapshot). Seeing other
        sessions' waits takes ``pg_read_all_stats`` (or a superuser); without it, and with synchronous standbys
        configured, this warns once and returns none."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT current_setting('synchronous_standby_names') <> '', "
                        "pg_has_role('pg_read_all_stats', 'USAGE') OR "
                        "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)")
            row = cur.fetchone()
            assert row is not None  # a SELECT without FROM returns one row
            standbys, can_see = row
            if not standbys:
                return []
            if not can_see:
                if not getattr(self, "_warned_waits", False):
                    self._warned_waits = True
                    log.warning("source %s: synchronous standbys are configured, but this role cannot see other "
                                "sessions' waits (grant it pg_read_all_stats): a commit waiting for a standby while "
                                "a snapshot range is read could be missed by that range", self.source_id)
                return []
            cur.execute("SELECT backend_xid::text::bigint FROM pg_stat_activity WHERE wait_event = 'SyncRep' "
                        "AND backend_xid IS NOT NULL")
            return [int(xid) for (xid,) in cur.fetchall()]

    def _read_intervals(self, after: list[str] | None, ranges: dict[str, Any] | None) -> list[list[list[str] | None]]:
        """The key intervals ([exclusive low, inclusive high]) a table's snapshot has read into the sink: up to
        ``after`` (serial), or each range up to its last emitted chunk (ranged)."""
        if ranges is None:
            return [[None, after]] if after is not None else []
        store = self.range_store(ranges)
        return [[range_bounds(ranges, i)[0], store.chunks(i)[emitted - 1].last]
                for i, emitted in enumerate(ranges["emitted"]) if emitted]

    def _current_lsn(self, *, flushed: bool = False) -> str:
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT pg_current_wal_{'flush_' if flushed else ''}lsn()::text")
            row = cur.fetchone()
            assert row is not None  # a SELECT without FROM returns one row
            return row[0]

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
        elif snapshot and snapshot.get("ranges") is not None:
            # Keys of chunks not emitted yet keep their changes (the chunk overwrites them later), but the sink may
            # not hold their rows: changes that did not resend some values are read again.
            name = snapshot["pending"][0]
            if name in batch.tables and batch.tables[name].num_rows:
                batch.tables[name] = self._reread_moved_rows(batch.schemas[name], batch.tables[name])
        for name, until in list(settling.items()):
            if name in batch.tables and batch.tables[name].num_rows:
                batch.tables[name] = self._reread_moved_rows(batch.schemas[name], batch.tables[name])
            if pgoutput.lsn_to_int(batch.position_to["lsn"]) > pgoutput.lsn_to_int(until):
                del settling[name]
        gone = dict(batch.position_to.get("gone", {}))
        for name, state in list(gone.items()):
            # A table dropped or renamed during its snapshot stops flowing: the sink holds the rows the snapshot
            # read, and their changes until the table went are applied; changes of keys it never read would land on
            # rows the sink never had (and cannot be read again: the table is gone).
            table = batch.tables.get(name)
            if table is not None and table.num_rows:
                # Serial: the stream's changes of unread keys were dropped while it ran, and still are. Ranged: they
                # were applied (and rows that did not resend a value read again); now only those stay out.
                kept = self._keep_keys(batch.schemas[name], table, state["read"], moved_too=True,
                                       partial_only=state.get("ranged", False))
                if kept.num_rows < table.num_rows:
                    log.warning("source %s: %d changes of %s, of keys its snapshot never read before the table went, "
                                "are not loaded", self.source_id, table.num_rows - kept.num_rows, name)
                batch.tables[name] = kept
            if pgoutput.lsn_to_int(batch.position_to["lsn"]) > pgoutput.lsn_to_int(state["lsn"]):
                del gone[name]
        for key, value in (("settling", settling), ("gone", gone)):
            if value:
                batch.position_to[key] = value
            else:
                batch.position_to.pop(key, None)
        return batch

    def _drop_unread_keys(self, batch: ChangeBatch, snapshot: dict[str, Any]) -> ChangeBatch:
        """Drop stream changes of the table being snapshotted whose keys the snapshot has not read yet: it reads
        them later, with these changes in them."""
        name, after = snapshot["pending"][0], snapshot.get("after")
        table = batch.tables.get(name)
        if after is None or table is None or table.num_rows == 0:
            return batch
        schema = batch.schemas[name]
        kept = self._keep_keys(schema, table, [[None, after]])
        if kept.num_rows < table.num_rows:
            log.info("source %s: %d changes of %s are past its snapshot's last key; the snapshot reads them later",
                     self.source_id, table.num_rows - kept.num_rows, name)
        batch.tables[name] = self._reread_moved_rows(schema, kept)
        return batch

    def _keep_keys(self, schema: TableSchema, table: pa.Table, read: list[list[list[str] | None]], *,
                   moved_too: bool = False, partial_only: bool = False) -> pa.Table:
        """The changes of ``table`` whose keys lie in one of the ``read`` key intervals ([exclusive low, inclusive
        high], None open), and its truncates. Keys compare as the server orders them, typed and collated.
        ``moved_too``: a change that did not resend some values (unchanged TOAST) must also come from a key in an
        interval (a key update from a key never read: the sink has no row to take those values from).
        ``partial_only``: only changes that did not resend some values need a key in an interval."""
        is_row = pc.invert(pc.equal(table["_cdc_op"], "t"))
        partial = pc.fill_null(pc.greater(pc.list_value_length(table["_cdc_unchanged"]), 0), False)
        if partial_only:
            candidates = pc.indices_nonzero(partial).to_pylist()
            outside = self._keys_outside(schema, table.take(candidates), schema.primary_key, read) \
                if candidates else set()
            unread = {candidates[i] for i in outside}
        else:
            unread = self._keys_outside(schema, table, schema.primary_key, read)
        if moved_too and all(BEFORE_PREFIX + c in table.column_names for c in schema.primary_key):
            before = pc.fill_null(pc.invert(pc.is_null(table[BEFORE_PREFIX + schema.primary_key[0]])), False)
            suspects = pc.indices_nonzero(pc.and_(partial, before)).to_pylist()
            if suspects:
                picked = table.take(suspects)
                outside = self._keys_outside(schema, picked, [BEFORE_PREFIX + c for c in schema.primary_key], read)
                unread |= {suspects[i] for i in outside}
        if not unread:
            return table
        kept = pc.invert(pc.is_in(pa.array(range(table.num_rows), pa.int64()), value_set=pa.array(sorted(unread))))
        return table.filter(pc.or_(kept, pc.invert(is_row)))

    def _keys_outside(self, schema: TableSchema, table: pa.Table, columns: list[str],
                      read: list[list[list[str] | None]]) -> set[int]:
        """Row numbers of ``table`` whose key (in ``columns``, portable text) is in none of the ``read`` intervals."""
        key = schema.primary_key
        names = [sql.Identifier(f"k{i}") for i in range(len(key))]
        typed = sql.SQL(", ").join(
            sql.SQL("u.{}::{}").format(name, sql.SQL(schema.column(c).source_type)) for name, c in zip(names, key))
        inside: list[sql.Composable] = []
        for low, high in read:
            bounds = [sql.SQL("({}) > ({})").format(typed, keys_literal(schema, low)) if low is not None else None,
                      sql.SQL("({}) <= ({})").format(typed, keys_literal(schema, high)) if high is not None else None]
            present = [b for b in bounds if b is not None]
            inside.append(sql.SQL("({})").format(sql.SQL(" AND ").join(present)) if present else sql.SQL("true"))
        condition = sql.SQL(" OR ").join(inside) if inside else sql.SQL("false")
        query = sql.SQL("SELECT u.n FROM unnest({}) WITH ORDINALITY AS u({}, n) WHERE u.{} IS NOT NULL AND NOT ({})"
                        ).format(sql.SQL(", ").join(sql.SQL("%s::text[]") for _ in key), sql.SQL(", ").join(names),
                                 names[0], condition)
        values = [to_pg_input(table[c], schema.column(base).logical_type).to_pylist() for c, base in zip(columns, key)]
        with self.conn.cursor() as cur:
            cur.execute(query, values)
            return {n - 1 for (n,) in cur.fetchall()}

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
        """Current rows for the given keys (portable text, one list per key column), by the keys' position in the
        lists; values in the portable form."""
        pg_keys = [[pg_input_scalar(v, schema.column(c).logical_type) for v in values]
                   for c, values in zip(schema.primary_key, keys)]
        names = [f"k{i}" for i in range(len(pg_keys))]
        joined = sql.SQL(" AND ").join(
            sql.SQL("t.{} = u.{}::{}").format(sql.Identifier(c), sql.Identifier(k),
                                              sql.SQL(schema.column(c).source_type))
            for c, k in zip(schema.primary_key, names))
        query = sql.SQL("SELECT u.n, {} FROM unnest({}) WITH ORDINALITY AS u({}, n) JOIN {} AS t ON {}").format(
            sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in schema.column_names),
            sql.SQL(", ").join(sql.Literal(values) + sql.SQL("::text[]") for values in pg_keys),
            sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(schema.schema, schema.name), joined)
        read = portable_table(self._copy_text(query, ["_n", *schema.column_names]), schema)
        return {int(row.pop("_n")) - 1: row for row in read.to_pylist()}

    def _capture_snapshot(self, stream: ChangeBatch, max_changes: int, chunk: Chunk | None = None, *,
                          committed: list[int] | tuple[int, ...] = ()) -> ChangeBatch:
        """Add the next ``max_changes`` rows of the pending snapshot to ``stream``'s batch, table by table in key
        order, with ``seq`` numbers after the stream's (the rows are read after those changes were written, and
        after every transaction of ``committed``, the xids the stream part holds, is visible).

        A table split into key ranges (:mod:`.snapshot_ranges`) adds one staged ``chunk`` instead, which the caller
        chose and read the stream up to; None when every chunk of it is emitted."""
        position = stream.position_to
        state = dict(position["snapshot"])
        ranges = state.get("ranges")
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
        gone = dict(position.get("gone", {}))
        while pending and (remaining > 0 or chunk is not None):  # a staged chunk is emitted whole
            qualified = pending[0]
            schema_name, _, table_name = qualified.partition(".")
            relid = catalog.relid(schema_name, table_name)
            if relid is None:
                log.warning("source %s: table %s is gone at the source (dropped or renamed) during its snapshot; "
                            "it stops flowing and its sink table keeps the rows read so far", self.source_id,
                            qualified)
                # Its changes written before it went are still ahead in the stream: only those of keys the snapshot
                # read are loaded (see _settle).
                gone[qualified] = {"lsn": self._current_lsn(), "read": self._read_intervals(after, ranges),
                                   "ranged": ranges is not None}
                pending.pop(0)
                after = ranges = chunk = None
                continue
            info = catalog.relation_info(relid)
            only = info["relkind"] != "p"
            if ranges is None and after is None:
                plan = self._plan_ranges(catalog.table_schema(relid), position["lsn"], only)
                if plan is not None:
                    # The ranges are read by the DAG's snapshot_range tasks once this position is stored.
                    ranges = {**plan, "emitted": [0] * range_count(plan)}
                    break
            if ranges is not None and chunk is None:  # every chunk of its ranges is emitted
                log.info("source %s: the ranged snapshot of %s is complete (%s chunks)", self.source_id, qualified,
                         "+".join(map(str, ranges["emitted"])))
                ranges = None
                pending.pop(0)
                settling[qualified] = self._current_lsn()
                continue
            table_schema = TableSchema.from_dict(chunk.schema) if chunk is not None else catalog.table_schema(relid)
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
            if chunk is not None:
                assert ranges is not None and ranges["table"] == qualified  # the caller chose it from these ranges
                store = self.range_store(ranges)
                try:
                    rows = store.read_chunk(chunk)
                except FileNotFoundError:  # removed after its sidecar was listed
                    raise store.lost(chunk.range_index, chunk.index) from None
                ranges = {**ranges, "emitted": [e + (i == chunk.range_index) for i, e in enumerate(ranges["emitted"])]}
            else:
                rows = self._read_chunk(table_schema, after, remaining, only=only, committed=committed)
            n = rows.num_rows
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
                    list(meta.values()) + rows.columns, names=list(meta) + rows.column_names
                )
                tables[qualified] = concat_tables([tables[qualified], piece]) if qualified in tables else piece
                seq += n
                remaining -= n
            if chunk is not None:
                break  # one chunk a batch: the next one's watermark needs the stream read up to it first
            if n and remaining <= 0:
                last = rows.slice(n - 1).to_pylist()[0]
                after = [last[k] for k in table_schema.primary_key]
            else:
                pending.pop(0)
                after = None
                # Its rows were read up to now; the stream catches up with them once it passes this point.
                settling[qualified] = self._current_lsn()
        position_to = {**position, "seq": seq, "schemas": schemas_seen}
        if settling:
            position_to["settling"] = settling
        if gone:
            position_to["gone"] = gone
        position_to.pop("snapshot", None)
        if pending:
            position_to["snapshot"] = {"pending": pending, "after": after}
            if ranges is not None:
                position_to["snapshot"]["ranges"] = ranges
        # Where the page ended is part of the id: two captures that read as many rows may end them at other keys.
        tag = page_tag(position_to)
        if stream.seq_to >= stream.seq_from:  # the stream part had changes
            batch_id = make_batch_id(self.source_id, stream.batch_id.partition(":")[2],
                                     f"snapshot.{snap_from}-{seq}@{tag}")
        else:
            batch_id = make_batch_id(self.source_id, f"snapshot.{snap_from}", f"snapshot.{seq}@{tag}")
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

    def _read_chunk(self, table: TableSchema, after: list[str] | None, limit: int, *, only: bool = True,
                    upto: list[str] | None = None, committed: list[int] | tuple[int, ...] = ()) -> pa.Table:
        """One keyset page of ``table`` in the portable form, read with ``COPY ... CSV`` and parsed by Arrow.

        Values go through their types' output functions, as pgoutput's do (no ``::text`` cast: it would drop the
        padding of ``char(n)``, print booleans as ``true`` and inet with its mask), so snapshot text equals stream
        text. ``only`` reads an inheritance parent without its children (the children are tables of their own)."""
        cols = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in table.column_names)
        pk = table.primary_key
        order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in pk)
        conditions = []
        if after is not None:
            conditions.append(sql.SQL("({}) > ({})").format(order, keys_literal(table, after)))
        if upto is not None:  # the end of a range of a ranged snapshot (inclusive)
            conditions.append(sql.SQL("({}) <= ({})").format(order, keys_literal(table, upto)))
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
        return portable_table(self._copy_text(query, table.column_names, committed), table)

    def _copy_text(self, query: sql.Composable, names: list[str],
                   committed: list[int] | tuple[int, ...] = ()) -> pa.Table:
        """Rows of ``query`` as canonical text, read with ``COPY ... CSV`` in one REPEATABLE READ transaction and
        parsed by Arrow (every column a string; an unquoted empty field is NULL, a quoted one ``''``).

        ``committed``: xids of transactions the stream has delivered before these rows; the read waits until each
        is visible (see :meth:`_wait_until_visible`)."""
        if committed:
            self._wait_until_visible(committed)
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
