"""What a captured table looks like: its columns (:class:`Column`), the table (:class:`TableSchema`) and a change
of its columns (:class:`SchemaChange`, an ``s`` event).

Sources build these from their catalogs; sinks create and migrate their tables from them; the value contract
(:mod:`airflow_provider_cdc.values`) reads each column's ``logical_type``, precision and scale. Kept apart from
:mod:`airflow_provider_cdc.events` (changes and batches), which carries them.

Bookkeeping columns of a batch live in the ``_cdc_`` namespace (:data:`RESERVED_PREFIX`), which no source column
may use: :func:`reserved_columns` names offenders, and connectors refuse such tables at start.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

RESERVED_PREFIX = "_cdc_"
# Bookkeeping columns of every sink table: the row's last op, its last event's ``seq`` and time, and with soft
# deletes when it was deleted.
BOOKKEEPING_COLUMNS = ("_cdc_op", "_cdc_position", "_cdc_ts", "_cdc_deleted_at")

def reserved_columns(names: Iterable[str], *, ignore_case: bool = False) -> list[str]:
    """Source column names that fall in the bookkeeping namespace (``_cdc_*``), which no source may use (where names
    ignore case, as MySQL's do, ``_CDC_op`` too)."""
    return [name for name in names if (name.lower() if ignore_case else name).startswith(RESERVED_PREFIX)]


def unmergeable(schema: TableSchema, *, ignore_case: bool = False) -> str | None:
    """Why a sink that merges by key cannot take ``schema`` (no primary key, bookkeeping column names), with what to
    do; None when it can. Every sink refuses such a table with this message."""
    if not schema.primary_key:
        return (f"source table {schema.qualified_name} has no primary key; add a primary key at the source (the sink "
                "merges changes by key)")
    clashes = reserved_columns(schema.column_names, ignore_case=ignore_case)
    if clashes:
        case = " (column names ignore case here)" if ignore_case else ""
        return (f"source table {schema.qualified_name} has columns {clashes} in the reserved bookkeeping namespace "
                f"{RESERVED_PREFIX}*{case}; rename them at the source")
    return None


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a captured table.

    ``source_type`` is the type exactly as the source declares it (``numeric(12,2)``, ``timestamp with time
    zone``); ``logical_type`` is a portable family (``integer``, ``decimal``, ``float``, ``boolean``, ``text``,
    ``timestamptz``, ``timestamp``, ``date``, ``time``, ``json``, ``binary``, ``uuid``, ``other``) that sinks of a
    different kind map from.
    """

    name: str
    source_type: str
    logical_type: str = "text"
    nullable: bool = True
    primary_key: bool = False
    # The column's identity at the source (PostgreSQL attnum): a rename keeps it, a drop and re-add changes it.
    ordinal: int | None = None
    # What rows that existed before the column was added hold in it (PostgreSQL writes no WAL for them on
    # ``ADD COLUMN ... DEFAULT``): its text form, None for NULL. ``backfill_unknown`` when the source cannot tell
    # (a volatile default rewrote the table): a sink that must add the column then stops with an error.
    backfill: str | None = None
    backfill_unknown: bool = False
    # A decimal's declared precision and scale (None: unconstrained), which fix its Arrow type (values.arrow_type).
    precision: int | None = None
    scale: int | None = None
    # Made by a transformation rule, not read from the source: its ``source_type`` names a logical type, and a sink
    # of the source's dialect maps it from ``logical_type`` like any other sink instead of reusing it.
    derived: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Column:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclasses.dataclass(frozen=True)
class TableSchema:
    """A source table: schema-qualified name, its columns in source order, and the source's dialect.

    ``dialect`` is the connector type that declared ``source_type`` (``postgresql``, ``mysql``...): a sink of the same
    dialect may reuse those types verbatim; any other maps from ``logical_type``. Empty means unknown (map)."""

    schema: str
    name: str
    columns: tuple[Column, ...]
    dialect: str = ""

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def primary_key(self) -> list[str]:
        return [c.name for c in self.columns if c.primary_key]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"{self.qualified_name} has no column {name!r}")

    def fingerprint(self) -> str:
        """A stable text of names, types and keys: equal fingerprints mean no schema change."""
        return json.dumps([[c.name, c.source_type, c.primary_key, c.ordinal] for c in self.columns])

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "name": self.name,
            "dialect": self.dialect,
            "columns": [c.to_dict() for c in self.columns],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableSchema:
        return cls(
            schema=data["schema"],
            name=data["name"],
            dialect=data.get("dialect", ""),
            columns=tuple(Column.from_dict(c) for c in data["columns"]),
        )


@dataclasses.dataclass(frozen=True)
class SchemaChange:
    """An ``s`` event: the table's columns changed at ``seq`` (``before`` is None for a table seen first)."""

    table: str
    seq: int
    after: TableSchema
    before: TableSchema | None = None
    ts_ms: int = 0
    position: str | None = None

    @property
    def added_columns(self) -> list[Column]:
        known = set(self.before.column_names) if self.before else set()
        return [c for c in self.after.columns if c.name not in known]

    @property
    def dropped_columns(self) -> list[str]:
        if self.before is None:
            return []
        now = set(self.after.column_names)
        return [n for n in self.before.column_names if n not in now]

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "seq": self.seq,
            "ts_ms": self.ts_ms,
            "position": self.position,
            "after": self.after.to_dict(),
            "before": self.before.to_dict() if self.before else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SchemaChange:
        return cls(
            table=data["table"],
            seq=data["seq"],
            ts_ms=data.get("ts_ms", 0),
            position=data.get("position"),
            after=TableSchema.from_dict(data["after"]),
            before=TableSchema.from_dict(data["before"]) if data.get("before") else None,
        )
