"""Message-by-message pgoutput decoding into per-table builders: the reference the columnar decoder matches,
and its fallback for rare shapes (key updates, relations that change within a batch).

``seq`` is assigned in commit order, one per event; a schema event precedes a table's first event in a batch when
the table's columns differ from those last seen. Events of a transaction are kept until its Commit message, so a
half-read transaction is never emitted.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from airflow_provider_cdc.connectors.postgres import pgoutput
from airflow_provider_cdc.connectors.postgres.catalog import Catalog
from airflow_provider_cdc.events import (
    OP_CREATE,
    OP_DELETE,
    OP_TRUNCATE,
    OP_UPDATE,
    ChangeBatch,
    SchemaChange,
    TableChangesBuilder,
    TableSchema,
    concat_tables,
    make_batch_id,
)

if TYPE_CHECKING:
    from airflow_provider_cdc.connectors.postgres.source import PgSource


def fingerprint_hash(table: TableSchema) -> str:
    return hashlib.sha1(table.fingerprint().encode()).hexdigest()[:16]


def commits_after(rows: list[tuple[bytes]], position: dict[str, Any]) -> bool:
    """Whether peeked messages hold a commit past ``position`` (earlier ones are loaded but not yet acknowledged)."""
    start = pgoutput.lsn_to_int(position["lsn"])
    return any(data[0] == 0x43 and pgoutput.decode_commit(bytes(data)).end_lsn > start for (data,) in rows)


class StreamDecoder:
    """Turns pgoutput messages into per-table builders, assigning ``seq`` in commit order."""

    def __init__(self, source: PgSource, position: dict[str, Any]) -> None:
        self.source = source
        self.position = position
        self.start_lsn = pgoutput.lsn_to_int(position["lsn"])
        self.seq = position.get("seq", 0)
        self.seq_from = self.seq + 1
        self.schemas_seen: dict[str, str] = dict(position.get("schemas", {}))
        self.catalog = Catalog(source.conn)
        self.relations: dict[int, tuple[TableSchema, list[int]]] = {}
        self.builders: dict[str, list[TableChangesBuilder]] = {}
        self.schemas: dict[str, TableSchema] = {}
        self.schema_changes: list[SchemaChange] = []
        self.skip = False
        self.begin: pgoutput.Begin | None = None
        self.tx_position = ""
        self.first_commit: int | None = None
        self.last_end: int | None = None
        self.transactions = 0
        self.messages = 0
        self.skipped = 0
        self.columnar_tables: dict[str, pa.Table] = {}
        # Pending transaction: events are kept until Commit so that a half-read transaction is never emitted.
        self.pending: list[tuple] = []

    def feed(self, data: bytes) -> None:
        self.messages += 1
        kind = data[0]
        if kind == 0x42:  # B
            self.begin = pgoutput.decode_begin(data)
            # A transaction whose commit record starts before the stored end LSN was loaded already.
            self.skip = self.begin.final_lsn < self.start_lsn
            self.skipped += self.skip
            self.tx_position = pgoutput.int_to_lsn(self.begin.final_lsn)
            self.pending = []
        elif kind == 0x43:  # C
            commit = pgoutput.decode_commit(data)
            if not self.skip:
                self._flush_transaction(commit)
            self.begin = None
        elif kind == 0x52:  # R
            self._relation(pgoutput.decode_relation(data))
        elif self.skip:
            return
        elif kind == 0x49:  # I
            relid, new = pgoutput.decode_insert(data)
            self.pending.append((OP_CREATE, relid, new, None, None))
        elif kind == 0x55:  # U
            relid, old_kind, old, new = pgoutput.decode_update(data)
            self.pending.append((OP_UPDATE, relid, new, old_kind, old))
        elif kind == 0x44:  # D
            relid, old_kind, old = pgoutput.decode_delete(data)
            self.pending.append((OP_DELETE, relid, None, old_kind, old))
        elif kind == 0x54:  # T
            relids, _options = pgoutput.decode_truncate(data)
            for relid in relids:
                self.pending.append((OP_TRUNCATE, relid, None, None, None))
        # Y (type), O (origin) and M (logical messages: heartbeats) carry no row change.

    def _relation(self, rel: pgoutput.Relation) -> None:
        schema = self.catalog.schema_from_relation(rel)
        previous = self.relations.get(rel.relid)
        if previous is not None and previous[0].fingerprint() == schema.fingerprint():
            return  # re-announced unchanged: keep the same builder
        self.relations[rel.relid] = (schema, [i for i, c in enumerate(schema.columns) if c.primary_key])

    def _builder(self, schema: TableSchema) -> TableChangesBuilder:
        """The current builder of ``schema``'s table; a changed relation starts a new chunk (one column set each)."""
        chunks = self.builders.setdefault(schema.qualified_name, [])
        if not chunks or chunks[-1].table is not schema:
            chunks.append(TableChangesBuilder(schema))
        return chunks[-1]

    def _note_schema(self, schema: TableSchema, ts_ms: int, position: str) -> None:
        """Emit an ``s`` event when a table's columns differ from those last seen (or it is seen first)."""
        qualified = schema.qualified_name
        digest = fingerprint_hash(schema)
        if self.schemas_seen.get(qualified) != digest:
            self.seq += 1
            self.schema_changes.append(
                SchemaChange(qualified, self.seq, schema, self.schemas.get(qualified), ts_ms, position)
            )
            self.schemas_seen[qualified] = digest
        self.schemas[qualified] = schema

    def _flush_transaction(self, commit: pgoutput.Commit) -> None:
        begin = self.begin
        ts_ms, tx_id, position = commit.ts_ms, str(begin.xid) if begin else None, self.tx_position
        for op, relid, new, old_kind, old in self.pending:
            schema, key_idx = self.relations[relid]
            if self.schemas.get(schema.qualified_name) is not schema:
                self._note_schema(schema, ts_ms, position)
            builder = self._builder(schema)
            if op == OP_TRUNCATE:
                self.seq += 1
                builder.append(OP_TRUNCATE, self.seq, ts_ms, tx_id, position, [None] * len(schema.columns))
            elif op == OP_CREATE:
                self.seq += 1
                builder.append(OP_CREATE, self.seq, ts_ms, tx_id, position, new)
            elif op == OP_DELETE:
                self.seq += 1
                full = old_kind == "O"
                builder.append(OP_DELETE, self.seq, ts_ms, tx_id, position, old, before=old if full else None)
            else:  # update
                unchanged = [schema.columns[i].name for i, v in enumerate(new) if v is pgoutput.UNCHANGED]
                if unchanged:
                    new = [None if v is pgoutput.UNCHANGED else v for v in new]
                before = None
                if old is not None:
                    before = [None if v is pgoutput.UNCHANGED else v for v in old]
                    if any(old[i] != new[i] for i in key_idx):
                        # The key changed: the old row goes away and a new one appears (as Debezium reports it).
                        self.seq += 1
                        builder.append(OP_DELETE, self.seq, ts_ms, tx_id, position, before,
                                       before=before if old_kind == "O" else None)
                        self.seq += 1
                        builder.append(OP_CREATE, self.seq, ts_ms, tx_id, position, new,
                                       unchanged=unchanged or None)
                        continue
                    if old_kind != "O":
                        before = None
                self.seq += 1
                builder.append(OP_UPDATE, self.seq, ts_ms, tx_id, position, new, before=before,
                               unchanged=unchanged or None)
        self.pending = []
        self.transactions += 1
        if self.first_commit is None:
            self.first_commit = commit.commit_lsn
        self.last_end = commit.end_lsn

    def finish(self) -> ChangeBatch:
        tables: dict[str, pa.Table] = dict(self.columnar_tables)
        for qualified, chunks in self.builders.items():
            finished = [b.finish() for b in chunks if len(b)]
            if finished:
                tables[qualified] = concat_tables(finished)
        start = self.position["lsn"]
        end = pgoutput.int_to_lsn(self.last_end) if self.last_end is not None else start
        first = pgoutput.int_to_lsn(self.first_commit) if self.first_commit is not None else start
        position_to = {"lsn": end, "seq": self.seq, "schemas": self.schemas_seen}
        return ChangeBatch(
            source_id=self.source.source_id,
            batch_id=make_batch_id(self.source.source_id, first, end),
            position_from=self.position,
            position_to=position_to,
            seq_from=self.seq_from,
            seq_to=self.seq,
            tables=tables,
            schemas=self.schemas,
            schema_changes=self.schema_changes,
            connector="postgresql",
            database=self.source.conn.info.dbname,
        )


