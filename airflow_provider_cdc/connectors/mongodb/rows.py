"""Documents into a batch's tables: each collection's columns grow as documents show new fields, in ``seq`` order.

A collection has no declared schema, so its table schema is inferred from the documents the source reads (the
stream's and the snapshot's alike) and remembered in the position (:mod:`airflow_provider_cdc.connectors.schemas`):
``_id`` first, then each top-level field in the order it was first seen, typed by :func:`.documents.unify`. A
column's identity (``ordinal``) is a number given to its field name once; a field that stops appearing keeps its
column (documents without it hold NULL there). When a document brings a new field or a wider type, a schema change
(an ``s`` event with its own ``seq``) comes right before that document's change, so the sink's schema gate sees
every change at the point where it happened.

Rows are rendered once, when the batch is finished, with each table's final schema (the one the batch's Arrow
columns follow): a column that widened mid-batch (an integer field meeting a double) renders every value of the
batch in the wider form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from bson import Binary

from airflow_provider_cdc.connectors.mongodb.connection import MONGODB_DIALECT
from airflow_provider_cdc.connectors.mongodb.documents import (
    ID_FIELD,
    UnsupportedValueError,
    bson_alias,
    canonical_key,
    column_for,
    formatter,
    unify,
)
from airflow_provider_cdc.connectors.schemas import remembered, seen_schema
from airflow_provider_cdc.errors import TableRefusedError
from airflow_provider_cdc.events import OP_DELETE, OP_TRUNCATE, changes_table
from airflow_provider_cdc.tables import RESERVED_PREFIX, Column, SchemaChange, TableSchema


@dataclasses.dataclass(slots=True)
class DocChange:
    """One change of one document, before rendering: ``doc`` is the image to reach (None for deletes and
    truncates), ``before`` the pre-image when the source gave one, ``unchanged`` the fields whose values the source
    did not send (the sink keeps them)."""

    op: str
    seq: int
    ts_ms: int
    tx: str | None
    pos: str | None
    key: Any = None
    doc: Mapping[str, Any] | None = None
    before: Mapping[str, Any] | None = None
    # Only the fields in ``doc`` changed; the others keep the value the sink holds (an update without a document).
    partial: bool = False


class CollectionRows:
    """The changes of one collection in one batch, with its schema as it grows."""

    def __init__(self, table: str, entry: Any, *, source_id: str) -> None:
        self.table = table
        self.source_id = source_id
        db, _, coll = table.partition(".")
        remembered_schema = seen_schema(entry)
        self.ids: dict[str, int] = dict(entry.get("ids", {})) if isinstance(entry, dict) else {}
        self.next_id: int = entry.get("next_id", 1) if isinstance(entry, dict) else 1
        if remembered_schema is None:
            remembered_schema = TableSchema(db, coll, (self._column(ID_FIELD, ID_FIELD),), dialect=MONGODB_DIALECT)
        self.first_schema: TableSchema | None = seen_schema(entry)
        self.schema = remembered_schema
        self._types = {c.name: c.source_type for c in self.schema.columns}
        # Field -> the Python type of a value known to need no change of its column (the hot path of observe).
        self._settled: dict[str, type] = {}
        self.changes: list[DocChange] = []

    def _column(self, name: str, alias: str) -> Column:
        if name not in self.ids:
            self.ids[name] = self.next_id
            self.next_id += 1
        return column_for(name, alias, self.ids[name])

    def observe(self, doc: Mapping[str, Any] | None) -> TableSchema | None:
        """The new schema when ``doc`` brings a new field or a wider type (None: no change)."""
        if not doc:
            return None
        changed: dict[str, str] = {}
        settled = self._settled
        for name, value in doc.items():
            kind = type(value)
            if settled.get(name) is kind or name == ID_FIELD:
                continue
            current = self._types.get(name)
            alias = bson_alias(value)
            wider = unify(current, alias, value)
            if wider != current and wider != "null":
                if current is None:
                    self._check_name(name, doc)
                changed[name] = wider
            elif value is not None and kind is not Binary and (kind is not int or wider in ("long", "decimal")):
                # Not for values whose type depends on more than their class: an int in an "int" column (a larger
                # one is a long) and binary (its subtype).
                settled[name] = kind
        if not changed:
            return None
        for name in changed:
            settled.pop(name, None)
        self._types.update(changed)
        columns = [c if c.name not in changed else self._column(c.name, changed[c.name])
                   for c in self.schema.columns]
        known = {c.name for c in columns}
        columns += [self._column(name, alias) for name, alias in changed.items() if name not in known]
        self.schema = dataclasses.replace(self.schema, columns=tuple(columns))
        return self.schema

    def _check_name(self, name: str, doc: Mapping[str, Any]) -> None:
        if name.startswith(RESERVED_PREFIX) or not name:
            what = "is empty" if not name else f"starts with {RESERVED_PREFIX!r}, the bookkeeping namespace"
            raise TableRefusedError(self.source_id, f"field name {name!r} {what}; the document with _id "
                                    f"{canonical_key(doc.get(ID_FIELD))} cannot be loaded. Rename the field at the "
                                    "source (a $rename update), then run again", table=self.table)

    def remembered(self) -> dict[str, Any]:
        return {**remembered(self.schema), "ids": self.ids, "next_id": self.next_id}

    def finish(self) -> pa.Table:
        """Every change rendered with the final schema, column by column."""
        changes = self.changes
        keys = [None if c.op == OP_TRUNCATE else canonical_key(c.key) for c in changes]
        images = [c.doc if c.op not in (OP_DELETE, OP_TRUNCATE) else None for c in changes]
        befores = [c.before for c in changes]
        has_before = any(b is not None for b in befores)
        values: list[list[str | None]] = []
        before_values: list[list[str | None]] | None = [] if has_before else None
        for column in self.schema.columns:
            if column.name == ID_FIELD:
                values.append(keys)
                if before_values is not None:
                    before_values.append([k if b is not None else None for k, b in zip(keys, befores)])
                continue
            fmt, name = formatter(column.source_type), column.name
            try:
                values.append([None if d is None else fmt(d.get(name)) for d in images])
                if before_values is not None:
                    before_values.append([None if d is None else fmt(d.get(name)) for d in befores])
            except UnsupportedValueError as exc:
                raise self._refusal(exc, column.name) from exc
        columns = self.schema.columns
        unchanged = [[c.name for c in columns if c.name != ID_FIELD and c.name not in ch.doc]
                     if ch.partial and ch.doc is not None else None for ch in changes]
        return changes_table(self.schema, [c.op for c in changes], [c.seq for c in changes],
                             [c.ts_ms for c in changes], [c.tx for c in changes], [c.pos for c in changes], unchanged,
                             values, before_values)

    def _refusal(self, exc: UnsupportedValueError, name: str) -> TableRefusedError:
        """The error naming the first document whose field ``name`` has no portable form."""
        fmt = formatter(self._types.get(name, "mixed"))
        for change in self.changes:
            for image in (change.doc, change.before):
                try:
                    fmt((image or {}).get(name))
                except UnsupportedValueError:
                    return TableRefusedError(self.source_id, f"{exc}: field {name!r} of the document with _id "
                                             f"{canonical_key(change.key)}", table=self.table)
        return TableRefusedError(self.source_id, f"{exc}: field {name!r}", table=self.table)


class BatchRows:
    """The tables of one batch: ``seq`` numbering, schema changes, and what the position remembers."""

    def __init__(self, *, source_id: str, seq: int, schemas_seen: Mapping[str, Any]) -> None:
        self.source_id = source_id
        self.seq = seq
        self.seq_from = seq + 1
        self.schemas_seen: dict[str, Any] = dict(schemas_seen)
        self.collections: dict[str, CollectionRows] = {}
        self.schema_changes: list[SchemaChange] = []

    def collection(self, table: str) -> CollectionRows:
        rows = self.collections.get(table)
        if rows is None:
            rows = self.collections[table] = CollectionRows(table, self.schemas_seen.get(table),
                                                            source_id=self.source_id)
        return rows

    def _schema_change(self, rows: CollectionRows, before: TableSchema | None, *, ts_ms: int,
                       pos: str | None) -> None:
        self.seq += 1
        self.schema_changes.append(SchemaChange(rows.table, self.seq, rows.schema, before, ts_ms, pos))
        self.schemas_seen[rows.table] = rows.remembered()

    def add(self, table: str, op: str, *, ts_ms: int, tx: str | None, pos: str | None, key: Any,
            doc: Mapping[str, Any] | None = None, before: Mapping[str, Any] | None = None,
            partial: bool = False) -> None:
        rows = self.collection(table)
        old = rows.schema
        rows.observe(doc)
        if before is not None:
            rows.observe(before)
        if rows.first_schema is None:  # never seen before: its first schema is a change from nothing
            rows.first_schema = rows.schema
            self._schema_change(rows, None, ts_ms=ts_ms, pos=pos)
        elif rows.schema is not old:
            self._schema_change(rows, old, ts_ms=ts_ms, pos=pos)
        self.seq += 1
        rows.changes.append(DocChange(op, self.seq, ts_ms, tx, pos, key, doc, before, partial))

    def known_tables(self) -> list[str]:
        """Collections the position or this batch has seen."""
        return sorted({*self.schemas_seen, *self.collections})

    def tables(self) -> dict[str, pa.Table]:
        return {name: rows.finish() for name, rows in self.collections.items() if rows.changes}

    def schemas(self) -> dict[str, TableSchema]:
        return {name: rows.schema for name, rows in self.collections.items()}
