"""Documents into a collection: each table's events folded per key, guarded by ``_cdc_position``, written in the
batch's transaction.

The events are split at truncates and folded per key by the shared :func:`~airflow_provider_cdc.fold.plan_table` and
:func:`~airflow_provider_cdc.fold.fold_changes` (last write wins, keys compared as the source compares them). For
each run of folded rows the sink reads, in the transaction, the ``_cdc_position`` of the documents with those keys:
an event changes a document only when it is at least as new (the **row guard**: an older change never overwrites a
newer one, and re-applying the same change is a no-op).

* an upsert replaces the whole document: ``_id``, the row's columns (NULL: no field), ``_cdc_op``, ``_cdc_position``
  (int64 ``seq``), ``_cdc_ts``. A column the source did not resend (``_cdc_unchanged``) keeps the field the
  document has, as PostgreSQL keeps unchanged TOAST; where no document has it (nor the batch), the batch stops
  (:meth:`DocumentMerge._refuse_unresolved`), never writing a gap;
* a hard delete deletes the document; a soft one keeps it and sets ``_cdc_op`` ``d`` and ``_cdc_deleted_at``;
* a truncate deletes (soft: marks) every document written before it.

A replacement with a top-level field whose name starts with ``$`` (legal since MongoDB 5.0) is refused by the
server's replacement syntax, so such a document is written by an update pipeline, ``$replaceWith`` of its
``$literal`` (which also keeps string values such as ``"$price"`` literal); every other one by ``ReplaceOne``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import bson
import pyarrow as pa
from bson import Int64
from pymongo import DeleteOne, ReplaceOne, UpdateOne
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DocumentTooLarge, OperationFailure

from airflow_provider_cdc.connectors.mongodb.documents import canonical_key
from airflow_provider_cdc.connectors.mongodb.sink_values import DocumentMaker
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import BEFORE_PREFIX, OP_DELETE, OP_TRUNCATE, ChangeBatch
from airflow_provider_cdc.fold import MOVED_COLUMN, fold_changes, plan_table
from airflow_provider_cdc.tables import Column, TableSchema

log = logging.getLogger("airflow_provider_cdc.sink.mongodb")

CHUNK_ROWS = 1000  # folded rows read and written per round trip
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
_TOO_LARGE = frozenset({10334, 17419, 17420})  # BSONObjectTooLarge, and "document exceeds maximum size" on writes
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_GUARD_FIELDS = {"_cdc_position": 1, "_cdc_deleted_at": 1}
WriteOp = ReplaceOne | UpdateOne | DeleteOne


def at_ms(ts_ms: int | None) -> dt.datetime | None:
    return None if ts_ms is None else _EPOCH + dt.timedelta(milliseconds=ts_ms)


def replacement(filter_id: Any, document: dict[str, Any]) -> ReplaceOne | UpdateOne:
    """Replace (or insert) ``document`` under ``filter_id`` (see the module docstring for the ``$`` case)."""
    if any(name.startswith("$") for name in document):
        return UpdateOne({"_id": filter_id}, [{"$replaceWith": {"$literal": document}}], upsert=True)
    return ReplaceOne({"_id": filter_id}, document, upsert=True)


class DocumentMerge:
    """The document half of :class:`~airflow_provider_cdc.connectors.mongodb.sink.MongoSink`."""

    sink_id: str
    delete_mode: str

    def _apply_table(
        self, collection: Collection, session: ClientSession, schema: TableSchema, changes: pa.Table,
        high_water: int, batch: ChangeBatch, *, label: str, known: Mapping[str, Column] | None = None,
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Apply one table's events; returns the stats and, per column, how many timestamps lost microseconds."""
        plan = plan_table(changes, high_water)
        stats = plan.stats
        if plan.changes.num_rows == 0:
            return stats, {}
        maker = DocumentMaker(schema, plan.changes.column_names, known=known, sink_id=self.sink_id, label=label,
                              batch_id=batch.batch_id)
        for kind, part in plan.parts():
            if kind == "merge":
                self._merge_segment(collection, session, maker, part, stats, batch)
            else:
                self._truncate(collection, session, part[0], part[1], stats)
        return stats, maker.truncated

    def _truncate(self, collection: Collection, session: ClientSession, seq: int, ts_ms: int | None,
                  stats: dict[str, int]) -> None:
        """Remove (or, soft, mark) the documents older than the truncate; newer ones were written after it."""
        older = {"_cdc_position": {"$not": {"$gte": seq}}}
        if self.delete_mode == "hard":
            count = collection.delete_many(older, session=session).deleted_count
        else:
            ts = at_ms(ts_ms) or dt.datetime.now(dt.timezone.utc)
            count = collection.update_many(
                {**older, "_cdc_deleted_at": None},
                {"$set": {"_cdc_deleted_at": ts, "_cdc_op": OP_TRUNCATE, "_cdc_position": Int64(seq), "_cdc_ts": ts}},
                session=session).modified_count
        stats["truncates"] += 1
        stats["truncated_rows"] += count

    def _merge_segment(self, collection: Collection, session: ClientSession, maker: DocumentMaker,
                       segment: pa.Table, stats: dict[str, int], batch: ChangeBatch) -> None:
        folded = fold_changes(segment, maker.key, maker.schema.columns)
        stats["staged"] += folded.num_rows
        rows = folded.to_pylist()
        del folded
        # Rows whose key changed and whose missing values live in the sink under the old key: read before any write
        # of the segment (which may delete that old key's document).
        origins = self._origins(collection, session, maker, rows)
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = rows[start:start + CHUNK_ROWS]
            ids = [maker.key_of(row) for row in chunk]
            full = [id_ for row, id_ in zip(chunk, ids) if row["_cdc_op"] != OP_DELETE and row["_cdc_unchanged"]
                    and not row.get(MOVED_COLUMN)]
            current = self._current(collection, session, ids, full)
            ops: list[WriteOp] = []
            described: list[str] = []
            for row, id_ in zip(chunk, ids):
                op = self._row_op(row, id_, current.get(canonical_key(id_)), origins, maker, stats, batch)
                if op is not None:
                    ops.append(op)
                    described.append(maker.describe_key(row))
            self._write(collection, session, ops, described, maker)

    def _row_op(self, row: dict[str, Any], id_: Any, document: Mapping[str, Any] | None,
                origins: Mapping[str, Mapping[str, Any] | None], maker: DocumentMaker, stats: dict[str, int],
                batch: ChangeBatch) -> ReplaceOne | UpdateOne | DeleteOne | None:
        """The write of one folded row (None: nothing, the document is newer or a delete finds none)."""
        seq = row["_cdc_seq"]
        if document is not None:
            position = document.get("_cdc_position")
            if position is not None and position > seq:
                return None  # the row guard: the document holds a newer change
        filter_id = document["_id"] if document is not None else id_
        op = row["_cdc_op"]
        ts = at_ms(row["_cdc_ts_ms"])
        if op == OP_DELETE:
            if document is None:
                return None
            stats["deleted"] += 1
            if self.delete_mode == "hard":
                return DeleteOne({"_id": filter_id})
            return UpdateOne({"_id": filter_id}, {"$set": {"_cdc_op": op, "_cdc_position": Int64(seq), "_cdc_ts": ts,
                                                           "_cdc_deleted_at": ts}})
        fields = maker.fields_of(row)
        unchanged = row["_cdc_unchanged"] or []
        if unchanged:
            origin = _origin_key(maker, row) if row.get(MOVED_COLUMN) else None
            source = (origins.get(origin) if origin is not None else None) if row.get(MOVED_COLUMN) else document
            if source is None:
                self._refuse_unresolved(maker, row, unchanged, batch)
            else:
                fields.update({name: source[name] for name in unchanged if name in source})
                fields = {col.name: fields[col.name] for col in maker.fields if col.name in fields}
        new: dict[str, Any] = {"_id": filter_id, **fields, "_cdc_op": op, "_cdc_position": Int64(seq)}
        if ts is not None:
            new["_cdc_ts"] = ts
        stats["upserted"] += 1
        return replacement(filter_id, new)

    @staticmethod
    def _current(collection: Collection, session: ClientSession, ids: Sequence[Any],
                 full: Sequence[Any]) -> dict[str, dict[str, Any]]:
        """The documents with these keys, by canonical key: only their guard fields, except the ``full`` ones (rows
        that need the values they hold)."""
        found = {canonical_key(doc["_id"]): doc
                 for doc in collection.find({"_id": {"$in": list(ids)}}, _GUARD_FIELDS, session=session)}
        if full:
            found.update({canonical_key(doc["_id"]): doc
                          for doc in collection.find({"_id": {"$in": list(full)}}, session=session)})
        return found

    def _origins(self, collection: Collection, session: ClientSession, maker: DocumentMaker,
                 rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
        """The documents that rows whose key changed take their missing values from, by the old key's canonical
        form. In soft mode a deleted document is no origin."""
        keys = {}
        for row in rows:
            if row["_cdc_op"] != OP_DELETE and row["_cdc_unchanged"] and row.get(MOVED_COLUMN):
                origin = _origin_key(maker, row)
                if origin is not None:
                    keys[origin] = maker.key_of(row, BEFORE_PREFIX)
        if not keys:
            return {}
        found: dict[str, dict[str, Any] | None] = dict.fromkeys(keys)
        for doc in collection.find({"_id": {"$in": list(keys.values())}}, session=session):
            if self.delete_mode == "soft" and doc.get("_cdc_deleted_at") is not None:
                continue
            found[canonical_key(doc["_id"])] = doc
        return found

    def _refuse_unresolved(self, maker: DocumentMaker, row: Mapping[str, Any], unchanged: Sequence[str],
                           batch: ChangeBatch) -> None:
        """Stop before writing a document without values nobody has: columns the source did not resend, which
        neither the batch nor the sink holds. Writing it would leave fields out that the source still has."""
        schema = maker.schema
        raise SinkError(
            self.sink_id,
            f"the document with key {maker.describe_key(row)} of source table {schema.qualified_name} would be "
            f"written without the values of columns {list(unchanged)} (values the source did not resend, and neither "
            f"this batch nor the sink has them); nothing of this batch was written. Re-snapshot the table: python -m "
            f"airflow_provider_cdc resnapshot {batch.source_id} --table {schema.qualified_name}",
            table=maker.label, batch_id=batch.batch_id, terminal=True,
        )

    def _write(self, collection: Collection, session: ClientSession, ops: list[WriteOp], described: list[str],
               maker: DocumentMaker) -> None:
        """One ordered bulk write; a document the server (or the driver) refuses is named by its key."""
        if not ops:
            return
        try:
            collection.bulk_write(ops, ordered=True, session=session)
        except BulkWriteError as exc:
            if exc.has_error_label("TransientTransactionError"):
                raise  # the transaction is retried whole
            error = (exc.details.get("writeErrors") or [{}])[0]
            index = error.get("index")
            where = described[index] if isinstance(index, int) and index < len(described) else "(unknown)"
            raise SinkError(self.sink_id, f"MongoDB refused the document with key {where} of source table "
                                          f"{maker.schema.qualified_name}: {error.get('errmsg') or exc}; nothing of "
                                          f"this batch was written", table=maker.label, batch_id=maker.batch_id,
                            terminal=True) from exc
        except (DocumentTooLarge, OperationFailure) as exc:
            if isinstance(exc, OperationFailure) and exc.code not in _TOO_LARGE:
                raise  # not about one document: the transaction's own error handling decides
            sizes = [(len(bson.encode(document)), where) for op, where in zip(ops, described)
                     if (document := _document_of(op)) is not None]
            size, where = max(sizes, default=(0, "(unknown)"))
            raise SinkError(self.sink_id, f"the document with key {where} of source table "
                                          f"{maker.schema.qualified_name} is {size} bytes as BSON, more than the "
                                          f"{MAX_DOCUMENT_BYTES} bytes (16 MB) MongoDB stores in one document; "
                                          f"nothing of this batch was written. Shorten the row at the source, drop "
                                          f"the large column in a transformation rule, or load the table into "
                                          f"another sink", table=maker.label, batch_id=maker.batch_id,
                            terminal=True) from exc


def _origin_key(maker: DocumentMaker, row: Mapping[str, Any]) -> str | None:
    """The canonical form of the key a moved row's document had (None: no document can hold its values)."""
    if any(row.get(BEFORE_PREFIX + name) is None for name in maker.key):
        return None
    return canonical_key(maker.key_of(row, BEFORE_PREFIX))


def _document_of(op: WriteOp) -> dict[str, Any] | None:
    document = getattr(op, "_doc", None)
    if isinstance(document, list):  # an update pipeline: [{"$replaceWith": {"$literal": document}}]
        document = document[0].get("$replaceWith", {}).get("$literal")
    return document if isinstance(document, dict) else None
