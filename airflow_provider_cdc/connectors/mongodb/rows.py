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
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa

from airflow_provider_cdc.connectors.mongodb.connection import MONGODB_DIALECT
from airflow_provider_cdc.connectors.mongodb.documents import (
    ID_FIELD,
    UnsupportedValueError,
    bson_alias,
    canonical_key,
    column_for,
    portable,
    unify,
)
from airflow_provider_cdc.connectors.schemas import remembered, seen_schema
from airflow_provider_cdc.errors import TableRefusedError
from airflow_provider_cdc.events import OP_DELETE, OP_TRUNCATE, TableChangesBuilder
from airflow_provider_cdc.tables import RESERVED_PREFIX, Column, SchemaChange, TableSchema


@dataclasses.dataclass
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


def _formatter(alias: str) -> Callable[[Any], str | None]:
    return lambda value: portable(value, alias)


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
        for name, value in doc.items():
            if name == ID_FIELD:
                continue
            current = self._types.get(name)
            alias = bson_alias(value)
            wider = unify(current, alias, value)
            if wider != current and wider != "null":
                if current is None:
                    self._check_name(name, doc)
                changed[name] = wider
        if not changed:
            return None
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
        """Every change rendered with the final schema."""
        columns = self.schema.columns
        formats = [(c.name, _formatter(c.source_type)) for c in columns]
        builder = TableChangesBuilder(self.schema)
        for change in self.changes:
            try:
                row, before = self._render(change, formats)
            except UnsupportedValueError as exc:
                raise TableRefusedError(self.source_id, f"{exc}: the document with _id {canonical_key(change.key)}",
                                        table=self.table) from exc
            unchanged = None
            if change.partial and change.doc is not None:
                unchanged = [c.name for c in columns if c.name != ID_FIELD and c.name not in change.doc]
            builder.append(change.op, change.seq, change.ts_ms, change.tx, change.pos, row, before=before,
                           unchanged=unchanged)
        return builder.finish()

    def _render(self, change: DocChange, formats: list[tuple[str, Callable[[Any], str | None]]],
                ) -> tuple[list[str | None], list[str | None] | None]:
        key = canonical_key(change.key)
        before = None
        if change.before is not None:
            before = [key if name == ID_FIELD else fmt(change.before.get(name)) for name, fmt in formats]
        if change.op == OP_TRUNCATE:
            return [None] * len(formats), None
        if change.op == OP_DELETE or change.doc is None:
            return [key if name == ID_FIELD else None for name, _ in formats], before
        doc = change.doc
        return [key if name == ID_FIELD else fmt(doc.get(name)) for name, fmt in formats], before


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
