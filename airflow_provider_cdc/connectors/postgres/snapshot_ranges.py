"""A table's initial snapshot read in parallel key ranges, on Airflow's own scale-out (dynamic task mapping).

How it converges with the stream (the watermark rule of Netflix's DBLog, applied to pgoutput):

1. **Plan.** When the serial capture reaches a pending table at least ``snapshot_range_min_rows`` large, it splits
   the table's key space into ``snapshot_ranges`` ranges and writes the split keys into the position
   (``snapshot.ranges``). That batch carries only the stream, so the plan is stored by its commit like any position.
2. **Stage.** One mapped task per range (``CdcSnapshotRangeOperator``) reads its range in key order, chunk by chunk.
   Before each chunk it reads the server's flushed WAL position ``w`` (the chunk's *watermark*); the chunk is then
   read in its own REPEATABLE READ transaction, so it holds every transaction committed before ``w`` (after waiting
   for commits that wait for a synchronous standby, see ``SnapshotCapture._wait_until_visible``). Each chunk is
   written whole
   (Parquet, with a JSON sidecar naming ``w``, the keys it starts after and ends at) under the staging root:
   ``<root>/<source_id>/snapshot-ranges/<plan>/r<range>/c<chunk>.parquet``. A retried task resumes after its last
   written chunk; a ``done`` marker ends the range. A session advisory lock on the source keeps two writers of one
   range (overlapping runs) apart.
3. **Emit.** The serial capture then emits the chunks in watermark order, one a batch: the batch's stream part is read
   only up to the next chunk's ``w`` (``upto_lsn``), and the chunk's rows follow it with later ``seq`` numbers. Every
   change committed before ``w`` is in the chunk and was applied before it; every change after ``w`` comes in a
   later batch and is applied after it; so every row converges to its last change. Stream changes of keys whose chunk
   is not emitted yet are kept (the chunk overwrites them later with a newer or equal state), except that a change
   that did not resend unchanged TOAST values is read again from the source (the sink may not hold that row yet).

The plan is a snapshot of the keys, not of the rows: rows inserted into a range after the split are read by that
range's later chunks (ranges are half-open intervals that together cover every key). If no range task ran (a
hand-written DAG, fused mode), the capture stages the ranges itself, one after another: correct, just not parallel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from airflow_provider_cdc.connectors.postgres import pgoutput
from airflow_provider_cdc.connectors.postgres.values import pg_input_scalar
from airflow_provider_cdc.errors import SourceError
from airflow_provider_cdc.events import ChangeBatch, align, concat_tables, make_batch_id
from airflow_provider_cdc.staging import RANGES_DIR, _key, _object_path, _write_file, default_staging_url

if TYPE_CHECKING:
    from airflow_provider_cdc.tables import TableSchema

log = logging.getLogger("airflow_provider_cdc.source.postgres")

DONE = "done"


@dataclass(frozen=True)
class Chunk:
    """One staged chunk of a range: where its rows are, its watermark and the keys it covers."""

    range_index: int
    index: int
    watermark: str
    after: list[str] | None
    last: list[str] | None
    rows: int
    uri: str
    schema: dict[str, Any]  # the table's schema when the chunk was read (TableSchema.to_dict)

    @property
    def order(self) -> tuple[int, int, int]:
        """Emission order: by watermark, ties by range and chunk (deterministic across captures)."""
        return pgoutput.lsn_to_int(self.watermark), self.range_index, self.index


def chunk_rows(batch_size: int) -> int:
    """Rows of a staged chunk: half a batch, as the serial snapshot reads (the stream part takes the other half)."""
    return max(1, batch_size // 2)


def plan_id(source_id: str, table: str, lsn: str) -> str:
    """A plan's folder name: the table and the position it was planned at (a later re-snapshot gets a new one)."""
    digest = hashlib.sha256(f"{source_id}\0{table}\0{lsn}".encode()).hexdigest()[:12]
    return f"{_key(table)}-{digest}"


def range_bounds(plan: dict[str, Any], index: int) -> tuple[list[str] | None, list[str] | None]:
    """Range ``index`` of a plan as (exclusive lower key, inclusive upper key); None is open."""
    splits = plan["splits"]
    return (splits[index - 1] if index > 0 else None), (splits[index] if index < len(splits) else None)


def range_count(plan: dict[str, Any]) -> int:
    return len(plan["splits"]) + 1


class RangeStore:
    """The staged chunks of one plan, on the staging root (``ObjectStoragePath``: local or object storage)."""

    def __init__(self, source_id: str, plan: str, root_url: str | None = None) -> None:
        self.source_id = source_id
        self.root_url = (root_url or default_staging_url()).rstrip("/")
        self.folder = _object_path(self.root_url) / _key(source_id) / RANGES_DIR / plan
        # A range with its ``done`` marker never changes again: its chunk list is read once per store (the capture
        # asks for it at every piece of every batch, which on object storage would be a listing and a GET a chunk).
        self._finished: dict[int, list[Chunk]] = {}

    def _range_dir(self, index: int):
        return self.folder / f"r{index:03d}"

    def chunks(self, index: int) -> list[Chunk]:
        """The chunks range ``index`` has staged, in key order (a chunk counts once its sidecar is written)."""
        if index in self._finished:
            return self._finished[index]
        folder = self._range_dir(index)
        if not folder.exists():
            return []
        found = []
        for path in folder.iterdir():
            if path.name.endswith(".json"):
                meta = json.loads(path.read_text())
                found.append(Chunk(index, meta["index"], meta["watermark"], meta["after"], meta["last"],
                                   meta["rows"], str(folder / meta["file"]), meta["schema"]))
        found.sort(key=lambda chunk: chunk.index)
        done = folder / DONE
        expected = json.loads(done.read_text()).get("chunks") if done.exists() else None
        gaps = [n for n, chunk in enumerate(found) if chunk.index != n]
        if gaps or (expected is not None and len(found) < expected):
            n = gaps[0] if gaps else len(found)
            raise self.lost(index, n)
        if expected is not None:
            self._finished[index] = found
        return found

    def lost(self, index: int, n: int) -> SourceError:
        lost = SourceError(self.source_id, f"range {index} of the ranged snapshot in {self.folder} lacks "
                           f"chunk {n}: its staged files were removed (staging_retention_hours?); "
                           f"re-snapshot the table: python -m airflow_provider_cdc resnapshot {self.source_id}")
        lost.terminal = True  # a retry finds the same files missing
        return lost

    def is_done(self, index: int) -> bool:
        return index in self._finished or (self._range_dir(index) / DONE).exists()

    def write_chunk(self, index: int, n: int, table: pa.Table, schema: TableSchema, watermark: str,
                    after: list[str] | None, last: list[str] | None) -> None:
        folder = self._range_dir(index)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"c{n:06d}"
        _write_file(folder / f"{name}.parquet", lambda fh: pq.write_table(table, fh, compression="zstd"))
        meta = {"index": n, "watermark": watermark, "after": after, "last": last, "rows": table.num_rows,
                "file": f"{name}.parquet", "schema": schema.to_dict()}
        # The sidecar last: a chunk without one is not there yet (a writer died between the two files).
        _write_file(folder / f"{name}.json", lambda fh: fh.write(json.dumps(meta).encode()))

    def mark_done(self, index: int, chunks: int, rows: int) -> None:
        """The range is read to its end: ``chunks`` chunks (checked by :meth:`chunks`: none may go missing)."""
        self._range_dir(index).mkdir(parents=True, exist_ok=True)  # a range with no rows wrote no chunk
        _write_file(self._range_dir(index) / DONE, lambda fh: fh.write(json.dumps({"chunks": chunks,
                                                                                   "rows": rows}).encode()))

    def remove(self) -> None:
        self._finished.clear()
        if self.folder.exists():
            self.folder.rmdir(recursive=True)

    @staticmethod
    def read_chunk(chunk: Chunk) -> pa.Table:
        with _object_path(chunk.uri).open("rb") as fh:
            return pq.read_table(fh)


class RangeSnapshot:
    """The ranged half of :class:`~airflow_provider_cdc.connectors.postgres.source.PgSource`'s snapshot: planning,
    staging one range, and choosing the next chunk to emit."""

    source_id: str
    snapshot_ranges: int
    snapshot_range_min_rows: int
    staging_url: str | None

    def _plan_ranges(self, table: TableSchema, lsn: str, only: bool) -> dict[str, Any] | None:
        """Split ``table`` into ``snapshot_ranges`` key ranges of about equal row counts; None when it is too small
        to be worth it (fewer than ``snapshot_range_min_rows`` rows by the planner's estimate, or counted)."""
        if self.snapshot_ranges < 2:
            return None
        rows = self._estimated_rows(table)
        if rows < max(self.snapshot_range_min_rows, self.snapshot_ranges):
            return None
        splits: list[list[str]] = []
        for i in range(1, self.snapshot_ranges):
            key = self._key_at(table, rows * i // self.snapshot_ranges, only)
            if key is not None and (not splits or key != splits[-1]):
                splits.append(key)
        if not splits:
            return None
        plan = {"table": table.qualified_name, "plan": plan_id(self.source_id, table.qualified_name, lsn),
                "splits": splits}
        log.info("source %s: the snapshot of %s (about %d rows) is split into %d key ranges (plan %s); the DAG's "
                 "snapshot_range tasks read them in parallel", self.source_id, table.qualified_name, rows,
                 len(splits) + 1, plan["plan"])
        return plan

    def _estimated_rows(self, table: TableSchema) -> int:
        with self.conn.cursor() as cur:  # type: ignore[attr-defined]
            cur.execute("SELECT c.reltuples::bigint, c.relkind FROM pg_class c JOIN pg_namespace n ON "
                        "n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s", (table.schema, table.name))
            row = cur.fetchone()
            if row is not None and row[0] is not None and row[0] > 0 and row[1] != "p":
                return int(row[0])
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.schema, table.name)))
            counted = cur.fetchone()
            return int(counted[0]) if counted else 0

    def _key_at(self, table: TableSchema, offset: int, only: bool) -> list[str] | None:
        """The primary key of the row at ``offset`` in key order (portable text), None past the end."""
        order = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in table.primary_key)
        query = sql.SQL("SELECT {} FROM {}{} AS t ORDER BY {} OFFSET {} LIMIT 1").format(
            sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in table.column_names),
            sql.SQL("ONLY " if only else ""), sql.Identifier(table.schema, table.name), order, sql.Literal(offset))
        from airflow_provider_cdc.connectors.postgres.values import portable_table

        read = portable_table(self._copy_text(query, table.column_names), table)  # type: ignore[attr-defined]
        if read.num_rows == 0:
            return None
        row = read.slice(0, 1).to_pylist()[0]
        return [row[c] for c in table.primary_key]

    def range_store(self, plan: dict[str, Any]) -> RangeStore:
        """One store a plan for this source object's life (a task), so that finished ranges are listed once."""
        stores: dict[str, RangeStore] = self.__dict__.setdefault("_range_stores", {})
        if plan["plan"] not in stores:
            stores[plan["plan"]] = RangeStore(self.source_id, plan["plan"], self.staging_url)
        return stores[plan["plan"]]

    def stage_range(self, plan: dict[str, Any], index: int, chunk_rows: int) -> dict[str, Any]:
        """Read range ``index`` of ``plan`` into staged chunks, resuming after the last one staged; returns counts.

        Runs in a mapped Airflow task (or inline in the capture). Exactly once per range: chunks are written whole
        under fixed names, a retry continues after the last complete chunk, and an advisory lock on the source
        keeps a second writer of the same range waiting. A lost connection is transient: the retry resumes."""
        with self._transient(f"staging range {index} of the snapshot of {plan['table']}",  # type: ignore[attr-defined]
                             "a retry resumes after the last staged chunk"):
            return self._stage_range(plan, index, chunk_rows)

    def _stage_range(self, plan: dict[str, Any], index: int, chunk_rows: int) -> dict[str, Any]:
        store = self.range_store(plan)
        if store.is_done(index):
            chunks = store.chunks(index)
            return {"range": index, "chunks": len(chunks), "rows": sum(c.rows for c in chunks), "resumed": True}
        from airflow_provider_cdc.connectors.postgres.catalog import Catalog

        schema_name, _, table_name = plan["table"].partition(".")
        catalog = Catalog(self.conn)  # type: ignore[attr-defined]
        relid = catalog.relid(schema_name, table_name)
        lock_key = int.from_bytes(hashlib.sha256(f"{plan['plan']}:{index}".encode()).digest()[:8], "big", signed=True)
        with self.conn.cursor() as cur:  # type: ignore[attr-defined]
            cur.execute("SELECT pg_advisory_lock(%s)", (lock_key,))
        try:
            chunks = store.chunks(index)
            if store.is_done(index):  # another writer finished it while this one waited for the lock
                return {"range": index, "chunks": len(chunks), "rows": sum(c.rows for c in chunks), "resumed": True}
            low, high = range_bounds(plan, index)
            after = chunks[-1].last if chunks else low
            n, rows, started = len(chunks), 0, time.monotonic()
            if chunks:
                log.info("source %s: range %d of %s resumes after %d staged chunks", self.source_id, index,
                         plan["table"], len(chunks))
            while relid is not None:
                table = catalog.table_schema(relid)
                only = catalog.relation_info(relid)["relkind"] != "p"
                # The flushed WAL: a commit before it is flushed, and so (microseconds later) visible, or waiting for
                # a synchronous standby; the read waits for those (the stream holds them before the watermark).
                watermark = self._current_lsn(flushed=True)  # type: ignore[attr-defined]
                waiting = self._commits_waiting_for_a_standby()  # type: ignore[attr-defined]
                chunk = self._read_chunk(table, after, chunk_rows, only=only, upto=high,  # type: ignore[attr-defined]
                                         committed=waiting)
                if chunk.num_rows == 0:
                    break
                last_row = chunk.slice(chunk.num_rows - 1).to_pylist()[0]
                last = [last_row[k] for k in table.primary_key]
                store.write_chunk(index, n, chunk, table, watermark, after, last)
                n, rows, after = n + 1, rows + chunk.num_rows, last
                log.info("source %s: range %d of %s: chunk %d staged (%d rows, watermark %s; %d rows in %.1fs)",
                         self.source_id, index, plan["table"], n - 1, chunk.num_rows, watermark, rows,
                         time.monotonic() - started)
                if chunk.num_rows < chunk_rows:
                    break
            store.mark_done(index, n, sum(c.rows for c in chunks) + rows)
        finally:
            with self.conn.cursor() as cur:  # type: ignore[attr-defined]
                cur.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))
        return {"range": index, "chunks": n, "rows": rows, "resumed": bool(chunks)}

    def ranges_to_stage(self, ranges: dict[str, Any]) -> list[int]:
        """The ranges of ``ranges`` (a position's plan) not staged completely yet."""
        store = self.range_store(ranges)
        return [i for i in range(range_count(ranges)) if not store.is_done(i)]

    def next_chunk(self, ranges: dict[str, Any], chunk_rows: int) -> Chunk | None:
        """The next chunk to emit (smallest watermark among the ranges' next unemitted chunks); ranges no task
        staged are staged here first. None when every chunk is emitted."""
        store = self.range_store(ranges)
        emitted = ranges["emitted"]
        candidates = []
        for index in range(range_count(ranges)):
            if not store.is_done(index):
                log.info("source %s: range %d of %s was not staged by a snapshot_range task; staging it here",
                         self.source_id, index, ranges["table"])
                self.stage_range(ranges, index, chunk_rows)
            chunks = store.chunks(index)
            if emitted[index] < len(chunks):
                candidates.append(chunks[emitted[index]])
        return min(candidates, key=lambda chunk: chunk.order) if candidates else None


def joined(pieces: list[ChangeBatch]) -> ChangeBatch:
    """Consecutive batches of one capture (stream, chunk, stream, chunk...) as one batch: tables concatenated in
    ``seq`` order (earlier rows aligned to a later schema), positions and ids from the first start to the last end."""
    first, last = pieces[0], pieces[-1]
    tables: dict[str, pa.Table] = {}
    schemas: dict[str, TableSchema] = {}
    for piece in pieces:
        for name, table in piece.tables.items():
            schema = piece.schemas[name]
            if name in tables:
                if schemas[name].fingerprint() != schema.fingerprint():
                    tables[name] = align(tables[name], schemas[name], schema)
                tables[name] = concat_tables([tables[name], table])
            else:
                tables[name] = table
        schemas.update(piece.schemas)
    start = first.batch_id.partition(":")[2].split("-", 1)[0]
    end = last.batch_id.partition(":")[2]
    return dataclasses.replace(
        first, batch_id=make_batch_id(first.source_id, start, end.split("-", 1)[1] if "-" in end else end),
        position_to=last.position_to, seq_to=last.seq_to, tables=tables, schemas=schemas,
        schema_changes=sorted((c for piece in pieces for c in piece.schema_changes), key=lambda change: change.seq))


def keys_literal(table: TableSchema, keys: list[str]) -> sql.Composable:
    """A row of key values as typed SQL literals (for keyset bounds)."""
    return sql.SQL(", ").join(
        sql.SQL("{}::{}").format(sql.Literal(pg_input_scalar(v, table.column(c).logical_type)),
                                 sql.SQL(table.column(c).source_type)) for c, v in zip(table.primary_key, keys))
