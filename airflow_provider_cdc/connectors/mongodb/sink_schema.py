"""Following the source's schema in collections, which have none of their own.

A collection takes any field, so most schema changes need nothing here: a new column is a new field of the documents
written from now on, and a type change needs no migration (values are written in the new type from then on; the
documents already there keep theirs, as the source's own rows kept their values). What a collection does need, so
that every document reads as the source's row:

* a **renamed** column (same ordinal, new name) is renamed in the documents that hold it;
* an **added** column with a default (``backfill``: what rows older than the ``ADD COLUMN`` hold at the source,
  without any change event saying so) is set in the documents written before the change that lack it;
* a column the source **dropped** is removed from every document after the merge (mode ``evolve``,
  :func:`drop_fields`); a key column never is.

The schema gate (:func:`airflow_provider_cdc.schema.gate.decide`) decides first, as in every sink. On top of it,
this sink holds a table (:class:`~airflow_provider_cdc.errors.TableHeld`) whose documents cannot follow a change:
the key's shape changed (its columns, or their types: ``_id`` is immutable, the documents would be keyed twice), or a
column was added with a default the change stream does not carry (``backfill_unknown``). Both are checked before
anything of the table is written (a transaction has no savepoints to undo one table alone).

Field names reach the server only inside ``$literal`` (``$getField``/``$setField``/``$unsetField``), never as paths:
``a.b`` is one field, and ``$price`` is a name, not an expression.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection as Names
from collections.abc import Sequence
from typing import Any

from pymongo.client_session import ClientSession
from pymongo.collection import Collection

from airflow_provider_cdc.connectors.mongodb.connection import MONGODB_DIALECT
from airflow_provider_cdc.connectors.mongodb.documents import ID_FIELD
from airflow_provider_cdc.connectors.mongodb.sink_storage import BOOKKEEPING_TABLES
from airflow_provider_cdc.connectors.mongodb.sink_values import ValueRefused, bson_value
from airflow_provider_cdc.errors import SinkError, TableHeld
from airflow_provider_cdc.tables import (
    BOOKKEEPING_COLUMNS,
    SchemaChange,
    TableSchema,
    unmergeable,
)

log = logging.getLogger("airflow_provider_cdc.sink.mongodb")


# --- aggregation expressions on one field, whatever its name ------------------------------------------------------


def get_field(name: str, source: Any = "$$ROOT") -> dict[str, Any]:
    return {"$getField": {"field": {"$literal": name}, "input": source}}


def present(name: str) -> dict[str, Any]:
    """An expression: the document has field ``name`` (a null counts; only a missing field does not)."""
    return {"$ne": [{"$type": get_field(name)}, "missing"]}


def missing(name: str) -> dict[str, Any]:
    return {"$eq": [{"$type": get_field(name)}, "missing"]}


def set_field(name: str, value: Any, source: Any = "$$ROOT") -> dict[str, Any]:
    return {"$setField": {"field": {"$literal": name}, "input": source, "value": value}}


def unset_field(name: str, source: Any = "$$ROOT") -> dict[str, Any]:
    return {"$unsetField": {"field": {"$literal": name}, "input": source}}


# --- checks ---------------------------------------------------------------------------------------------------------


def check_source_table(schema: TableSchema, *, sink_id: str, label: str, batch_id: str | None,
                       ledger_here: bool) -> None:
    """Refuse a table whose rows cannot become documents of their own collection, with what to do."""
    name = schema.name
    problem = collection_name_problem(name)
    if problem:
        raise SinkError(sink_id, f"source table {schema.qualified_name} cannot be a MongoDB collection: {problem}; "
                                 f"rename it at the source or load it into another sink", table=label,
                        batch_id=batch_id, terminal=True)
    if ledger_here and name in BOOKKEEPING_TABLES:
        raise SinkError(sink_id, f"source table {schema.qualified_name} has the name of the sink's own collection "
                                 f"{name}; give the ledger its own database (ledger_schema) or rename the table",
                        table=label, batch_id=batch_id, terminal=True)
    unfit = unmergeable(schema)
    if unfit:
        raise SinkError(sink_id, unfit, table=label, batch_id=batch_id, terminal=True)
    key = schema.primary_key
    if schema.dialect == MONGODB_DIALECT:
        if key != [ID_FIELD]:
            raise SinkError(sink_id, f"source table {schema.qualified_name} of a MongoDB source has the key {key}, "
                                     f"not {ID_FIELD}", table=label, batch_id=batch_id, terminal=True)
        return
    if ID_FIELD in schema.column_names and key != [ID_FIELD]:
        raise SinkError(sink_id, f"source table {schema.qualified_name} has a column {ID_FIELD!r} that is not its "
                                 f"whole key, and MongoDB keeps the document key there; rename the column at the "
                                 f"source", table=label, batch_id=batch_id, terminal=True)
    if len(key) > 1:
        dollar = [column for column in key if column.startswith("$")]
        if dollar:
            raise SinkError(sink_id, f"key columns {dollar} of source table {schema.qualified_name} start with '$', "
                                     f"which MongoDB does not allow in a document key (_id); rename them at the "
                                     f"source", table=label, batch_id=batch_id, terminal=True)


def collection_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a collection (None: it can)."""
    if not name:
        return "the name is empty"
    if "$" in name or "\x00" in name:
        return "MongoDB collection names cannot contain '$' or NUL"
    if name.startswith("system."):
        return "names starting with 'system.' are MongoDB's own"
    return None


def database_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a database (None: it can)."""
    if not name:
        return "the name is empty"
    bad = sorted({char for char in name if char in '/\\. "$\x00'})
    if bad:
        return f"MongoDB database names cannot contain {''.join(bad)!r}"
    if len(name.encode()) >= 64:
        return "MongoDB database names have fewer than 64 bytes"
    return None


# --- migrations -----------------------------------------------------------------------------------------------------


def key_shape(schema: TableSchema) -> tuple[tuple[Any, str], ...]:
    """What the documents' ``_id`` is made of: one column's value (the column by its identity, so that a rename
    keeps it) or a document of the key columns (by name: the names are its fields), with their types. Another shape
    leaves the existing documents under keys that new events never match."""
    if schema.dialect == MONGODB_DIALECT:
        return ((ID_FIELD, ""),)
    columns = [schema.column(name) for name in schema.primary_key]
    if len(columns) == 1:
        col = columns[0]
        return ((col.ordinal if col.ordinal is not None else col.name, col.logical_type),)
    return tuple((col.name, col.logical_type) for col in columns)


@dataclasses.dataclass
class _Step:
    kind: str  # "rename" | "backfill"
    name: str
    other: str = ""  # rename: the old name
    value: Any = None  # backfill: the BSON value
    seq: int = 0
    text: str | None = None


class CollectionMigration:
    """One collection following the live schema changes of its table, within the batch's transaction."""

    def __init__(self, collection: Collection, session: ClientSession, *, sink_id: str, label: str,
                 source_id: str | None, batch_id: str | None) -> None:
        self.collection, self.session = collection, session
        self.sink_id, self.label, self.source_id, self.batch_id = sink_id, label, source_id, batch_id
        self._has_documents: bool | None = None

    def has_documents(self) -> bool:
        if self._has_documents is None:
            self._has_documents = self.collection.find_one({}, {"_id": 1}, session=self.session) is not None
        return self._has_documents

    def follow(self, changes: Sequence[SchemaChange]) -> None:
        """Plan every change (raising :class:`TableHeld` before any write), then rename and backfill."""
        steps: list[_Step] = []
        for change in changes:
            if change.before is not None:
                steps += self._plan(change.before, change.after, change.seq, change.table)
        self._carry_out(steps)

    def force(self, target: TableSchema, previous: TableSchema | None, seq: int) -> None:
        """``schema accept``: bring the documents from ``previous`` to ``target`` (renames, defaults)."""
        if previous is not None:
            self._carry_out(self._plan(previous, target, seq, target.qualified_name))

    def _plan(self, before: TableSchema, after: TableSchema, seq: int, table: str) -> list[_Step]:
        if key_shape(before) != key_shape(after) and self.has_documents():
            raise TableHeld(
                self.sink_id,
                f"the key of source table {table} changed ({_describe_key(before)} -> {_describe_key(after)}) "
                f"while collection {self.label} holds documents under the old key, which MongoDB cannot re-key "
                f"(_id is immutable), so nothing of it was written. Re-snapshot the table: python -m "
                f"airflow_provider_cdc resnapshot {self.source_id or '<source_id>'} --table {table}",
                table=self.label, batch_id=self.batch_id)
        steps = []
        old_by_ordinal = {col.ordinal: col for col in before.columns if col.ordinal is not None}
        old_names = set(before.column_names)
        for col in after.columns:
            old = old_by_ordinal.get(col.ordinal) if col.ordinal is not None else None
            if old is not None and old.name != col.name:
                if col.name != ID_FIELD and old.name != ID_FIELD:
                    steps.append(_Step("rename", col.name, other=old.name, seq=seq))
                continue
            if col.name in old_names:
                continue
            if col.backfill_unknown and self.has_documents():
                raise TableHeld(
                    self.sink_id,
                    f"column {col.name!r} was added to source table {table} in a way that rewrote existing rows "
                    f"with values the change stream does not carry (a volatile default), so the documents already "
                    f"in the sink cannot be given their values; nothing of it was written. Re-snapshot the table: "
                    f"python -m airflow_provider_cdc resnapshot {self.source_id or '<source_id>'} --table {table}",
                    table=self.label, batch_id=self.batch_id)
            if col.backfill is not None:
                try:
                    value = bson_value(col.backfill, col, after.dialect)
                except ValueRefused as exc:
                    raise SinkError(self.sink_id, f"column {col.name!r} was added to source table {table} with the "
                                                  f"default {col.backfill[:80]!r}, which cannot be stored in MongoDB: "
                                                  f"{exc}; nothing of this batch was written", table=self.label,
                                    batch_id=self.batch_id, terminal=True) from exc
                steps.append(_Step("backfill", col.name, value=value, seq=seq, text=col.backfill))
        return steps

    def _carry_out(self, steps: Sequence[_Step]) -> None:
        for step in steps:
            if step.kind == "rename":
                result = self.collection.update_many(
                    {"$expr": {"$and": [present(step.other), missing(step.name)]}},
                    [{"$replaceWith": set_field(step.name, get_field(step.other), unset_field(step.other))}],
                    session=self.session)
                log.info("sink %s: collection %s: renamed field %s to %s in %d documents (renamed at the source, "
                         "seq %d)", self.sink_id, self.label, step.other, step.name, result.modified_count, step.seq)
            else:
                # Documents written before the change (a lower _cdc_position) lack the column: the source's rows
                # hold its default without any event saying so.
                result = self.collection.update_many(
                    {"_cdc_position": {"$not": {"$gte": step.seq}}, "$expr": missing(step.name)},
                    [{"$replaceWith": set_field(step.name, {"$literal": step.value})}], session=self.session)
                log.info("sink %s: collection %s: field %s added with the default %r in %d existing documents",
                         self.sink_id, self.label, step.name, step.text, result.modified_count)


def drop_fields(collection: Collection, session: ClientSession, schema: TableSchema, names: Names[str], *,
                sink_id: str, label: str) -> list[str]:
    """Remove fields the source dropped (mode ``evolve``, after the merge) from every document; never ``_id``, a
    key column or a bookkeeping field. Returns those removed."""
    key = set(schema.primary_key)
    dropped = []
    for name in dict.fromkeys(names):
        if name == ID_FIELD or name in BOOKKEEPING_COLUMNS:
            continue
        if name in key:
            log.warning("sink %s: collection %s: source table %s dropped column %s, which is part of the key; "
                        "it is kept", sink_id, label, schema.qualified_name, name)
            continue
        collection.update_many({"$expr": present(name)}, [{"$replaceWith": unset_field(name)}], session=session)
        dropped.append(name)
    if dropped:
        log.info("sink %s: collection %s: removed fields %s (dropped at source table %s)", sink_id, label, dropped,
                 schema.qualified_name)
    return dropped


def _describe_key(schema: TableSchema) -> str:
    if schema.dialect == MONGODB_DIALECT:
        return ID_FIELD
    return ", ".join(f"{name} {schema.column(name).logical_type}" for name in schema.primary_key) or "none"
