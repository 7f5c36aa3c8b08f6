"""Message-by-message pgoutput decoding into per-table builders: the reference the columnar decoder matches,
and its fallback for rare shapes (key updates, relations that change within a batch).

``seq`` is assigned in commit order, one per event; a schema event precedes a table's first event in a batch when
the table's columns differ from those last seen. Events of a transaction are kept until its Commit message, so a
half-read transaction is never emitted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from airflow_provider_cdc.connectors.postgres import pgoutput
from airflow_provider_cdc.connectors.postgres.catalog import Catalog
from airflow_provider_cdc.connectors.postgres.values import portable_table
from airflow_provider_cdc.connectors.schemas import (
    fingerprint_hash,
    remembered,
    seen_fingerprint,
    seen_schema,
)
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
    from airflow_provider_cdc.connectors.postgres.columnar import ColumnarResult

log = logging.getLogger("airflow_provider_cdc.source.postgres")


class StreamDecoder:
    """Turns pgoutput messages into per-table builders, assigning ``seq`` in commit order.

    Each change is decoded with the relation that was current when it was written: a Relation message inside a
    transaction (DDL between two changes) applies to the changes after it only. Changes of tables outside
    ``keep`` (not configured, or waiting for their snapshot) are dropped before they get a ``seq``.
    """

    def __init__(self, source_id: str, catalog: Catalog, position: dict[str, Any], keep: set[str] | None = None,
                 *, database: str = "") -> None:
        self.source_id = source_id
        self.database = database
        self.position = position
        self.keep = keep
        self.start_lsn = pgoutput.lsn_to_int(position["lsn"])
        self.seq = position.get("seq", 0)
        self.seq_from = self.seq + 1
        self.schemas_seen: dict[str, Any] = dict(position.get("schemas", {}))
        self.catalog = catalog
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
        # Whether the read reached the end of what it asked for (the slot's end, or ``upto_lsn``): a chunk of a
        # ranged snapshot is emitted only after the stream up to its watermark is read.
        self.drained = False
        # The transactions the read holds (their Begin messages' xids), whatever tables they changed: a snapshot
        # read after it must see them all (see SnapshotCapture._copy_text).
        self.xids: list[int] = []
        # How many messages a peek from the slot's confirmed position returns through the end of this read (known
        # for whole transactions read by a peek; None for a window of one large transaction).
        self.rows_through: int | None = None
        self.columnar_tables: dict[str, pa.Table] = {}
        # Pending transaction: events are kept until Commit so that a half-read transaction is never emitted
        # (unless it is too large for one batch: :meth:`flush_partial`).
        self.pending: list[tuple] = []
        self.partial: dict[str, Any] | None = None
        self.partial_from = 0
        self.warned: set[str] = set()

    def adopt(self, result: ColumnarResult) -> None:
        """Take over what :func:`~.columnar.decode_columnar` decoded of the batch, in place of :meth:`feed`."""
        self.columnar_tables = result.tables
        self.messages, self.seq = result.messages, result.seq
        self.relations, self.schemas_seen = result.relations, result.schemas_seen
        self.schemas, self.schema_changes = result.schemas, result.schema_changes
        self.transactions, self.skipped = result.transactions, result.skipped
        self.first_commit, self.last_end = result.first_commit, result.last_end

    def wanted(self, schema: TableSchema) -> bool:
        if self.keep is not None and schema.qualified_name not in self.keep:
            return False
        if not schema.primary_key:
            # Only a table dropped since (its key is gone from the catalog and was never seen) gets here: prepare()
            # refuses tables without a key. Its last changes cannot be merged by key.
            if schema.qualified_name not in self.warned:
                self.warned.add(schema.qualified_name)
                log.warning("source %s: changes of %s are skipped: the table is gone at the source and its key is "
                            "unknown", self.source_id, schema.qualified_name)
            return False
        return True

    def known_schema(self, qualified: str) -> TableSchema | None:
        """The table's columns as last seen: earlier in this batch, else as the position remembers them."""
        return self.schemas.get(qualified) or seen_schema(self.schemas_seen.get(qualified))

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
            self.pending.append((OP_CREATE, self.relations[relid], new, None, None))
        elif kind == 0x55:  # U
            relid, old_kind, old, new = pgoutput.decode_update(data)
            self.pending.append((OP_UPDATE, self.relations[relid], new, old_kind, old))
        elif kind == 0x44:  # D
            relid, old_kind, old = pgoutput.decode_delete(data)
            self.pending.append((OP_DELETE, self.relations[relid], None, old_kind, old))
        elif kind == 0x54:  # T
            relids, _options = pgoutput.decode_truncate(data)
            for relid in relids:
                self.pending.append((OP_TRUNCATE, self.relations[relid], None, None, None))
        # Y (type), O (origin) and M (logical messages: heartbeats) carry no row change.

    def _relation(self, rel: pgoutput.Relation) -> None:
        previous = self.relations.get(rel.relid)
        schema = self.catalog.schema_from_relation(
            rel, previous[0] if previous else self.known_schema(f"{rel.namespace}.{rel.name}"))
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
        if seen_fingerprint(self.schemas_seen.get(qualified)) != fingerprint_hash(schema):
            self.seq += 1
            self.schema_changes.append(
                SchemaChange(qualified, self.seq, schema, self.known_schema(qualified), ts_ms, position)
            )
            self.schemas_seen[qualified] = remembered(schema)
        self.schemas[qualified] = schema

    def _flush_transaction(self, commit: pgoutput.Commit) -> None:
        begin = self.begin
        ts_ms, tx_id, position = commit.ts_ms, str(begin.xid) if begin else None, self.tx_position
        # Under a deferred key, two rows may hold one key inside a transaction (``SET id = 3 - id``): the row that
        # moved onto a key this transaction, and the row still there, which moves away later. With whole old rows
        # (REPLICA IDENTITY FULL) an event of the row still there is told apart from the newcomer by its image; its
        # delete or update at that key is suppressed (its later move carries its whole new row), so the newcomer
        # is never deleted or overwritten at the sink.
        occupants: dict[tuple[str, tuple], list] = {}
        for op, (schema, key_idx), new, old_kind, old in self.pending:
            if not self.wanted(schema):
                continue
            name = schema.qualified_name
            displaced = False
            if old_kind == "O" and old is not None:
                old_key = (name, tuple(old[i] for i in key_idx))
                holder = occupants.get(old_key)
                if holder is not None and holder != [None if v is pgoutput.UNCHANGED else v for v in old]:
                    displaced = True
                else:
                    occupants.pop(old_key, None)
            if new is not None and (op == OP_CREATE or old_kind == "O"):
                filled = [o if v is pgoutput.UNCHANGED and old is not None else v
                          for v, o in zip(new, old or new)]
                if not any(v is pgoutput.UNCHANGED for v in filled):
                    occupants[(name, tuple(filled[i] for i in key_idx))] = list(filled)
            if displaced:
                if op == OP_DELETE or (op == OP_UPDATE and not any(old[i] != new[i] for i in key_idx)):
                    continue
                # A displaced row moving away: only its arrival at the new key is an event (its whole row: the old
                # image fills what the new one did not resend).
                new = [o if v is pgoutput.UNCHANGED else v for v, o in zip(new, old)]
                old_kind, old = None, None
                op = OP_CREATE
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
                if old_kind == "O":
                    # REPLICA IDENTITY FULL sends the whole old row, out-of-line values included: an unchanged
                    # TOAST value of the new row is the old row's.
                    new = [o if v is pgoutput.UNCHANGED and o is not pgoutput.UNCHANGED else v
                           for v, o in zip(new, old)]
                unchanged = [schema.columns[i].name for i, v in enumerate(new) if v is pgoutput.UNCHANGED]
                if unchanged:
                    new = [None if v is pgoutput.UNCHANGED else v for v in new]
                before = None
                if old is not None:
                    before = [None if v is pgoutput.UNCHANGED else v for v in old]
                    if any(old[i] != new[i] for i in key_idx):
                        # The key changed: the old row goes away and a new one appears (as Debezium reports it).
                        # The new row carries the old key as its before-image, so that a value the source did not
                        # resend (unchanged TOAST) can be taken from the row under the old key.
                        self.seq += 1
                        builder.append(OP_DELETE, self.seq, ts_ms, tx_id, position, before,
                                       before=before if old_kind == "O" else None)
                        old_key_image = before if old_kind == "O" else [
                            before[i] if i in key_idx else None for i in range(len(before))]
                        self.seq += 1
                        builder.append(OP_CREATE, self.seq, ts_ms, tx_id, position, new, before=old_key_image,
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

    def flush_partial(self, partial: dict[str, Any], done_before: int) -> None:
        """Emit the changes read so far of a transaction that continues in the next batch (too large for one):
        the position then points inside it, and the next batch goes on from there with the next ``seq``."""
        begin = self.begin
        assert begin is not None
        self.partial = partial
        self.partial_from = done_before
        fake_commit = pgoutput.Commit(begin.final_lsn, self.start_lsn, begin.ts_ms)
        self._flush_transaction(fake_commit)
        self.transactions -= 1  # not a whole transaction
        self.first_commit, self.last_end = None, None

    def table_changes(self) -> dict[str, pa.Table]:
        """Per table, its changes in ``seq`` order, aligned to the table's last schema in the batch."""
        tables: dict[str, pa.Table] = dict(self.columnar_tables)
        for qualified, chunks in self.builders.items():
            final = self.schemas[qualified]
            finished = [align(portable_table(b.finish(), b.table), b.table, final) if b.table is not final
                        else portable_table(b.finish(), final) for b in chunks if len(b)]
            if finished:
                tables[qualified] = concat_tables(finished)
        return tables

    def finish(self) -> ChangeBatch:
        tables = self.table_changes()
        start = self.position["lsn"]
        end = pgoutput.int_to_lsn(self.last_end) if self.last_end is not None else start
        first = pgoutput.int_to_lsn(self.first_commit) if self.first_commit is not None else start
        position_to = {**self.position, "lsn": end, "seq": self.seq, "schemas": self.schemas_seen}
        position_to.pop("partial", None)
        batch_id = make_batch_id(self.source_id, first, end)
        if self.position.get("partial"):  # the last part of a large transaction
            batch_id = make_batch_id(self.source_id, f"{self.position['partial']['final_lsn']}"
                                     f"#{self.position['partial']['done']}", end)
        if self.partial is not None:
            position_to["partial"] = self.partial
            batch_id = make_batch_id(self.source_id, f"{self.partial['final_lsn']}#{self.partial_from}",
                                     f"{self.partial['final_lsn']}#{self.partial['done']}")
        return ChangeBatch(
            source_id=self.source_id,
            batch_id=batch_id,
            position_from=self.position,
            position_to=position_to,
            seq_from=self.seq_from,
            seq_to=self.seq,
            tables=tables,
            schemas=self.schemas,
            schema_changes=self.schema_changes,
            connector="postgresql",
            database=self.database,
        )
