"""What a source does with a schema change: its policy (``schema_changes:`` in cdc.yaml) and compatibility level.

=========  ======================================================================================================
mode       what the sink does
=========  ======================================================================================================
evolve     (default) a change compatible at the subject's level migrates the sink table: columns are added
           (with the value older rows hold), renamed, widened and dropped as at the source. An incompatible one
           holds that table.
lenient    nothing is dropped or renamed in the sink: a dropped column stays (NULL in rows changed from then on),
           a renamed column becomes an added one beside the old, a NOT NULL column is added as nullable. Type
           changes must still be compatible, or the table is held.
ignore     the sink table keeps its columns: added columns are not loaded, dropped ones get NULL. A type change
           the sink's column cannot hold (values its type cannot read) holds the table.
stop       any change of an existing table's columns holds that table.
=========  ======================================================================================================

A schema registered ahead through the REST API (``POST /cdc/api/v1/schema/register``) is an approval given in
advance: a change whose new schema has that shape (:func:`~airflow_provider_cdc.schema.avro.shape_key`) is applied as
under ``evolve`` whatever the mode and level, instead of holding the table. Two things still hold it, because the
sink could not follow exactly: a column dropped and added again (its rows' old values are lost at the source; a
re-snapshot is the only exact path), and a type the sink cannot widen to without loss (``schema accept`` converts
the sink's values, with a person's say-so over the values themselves).

Compatibility levels are per subject: ``compatibility`` of the source, overridden per table by
``table_compatibility``; the global default is the top-level ``schema_changes.compatibility`` of cdc.yaml, else
BACKWARD.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, get_args

from airflow_provider_cdc.schema.compatibility import DEFAULT_LEVEL, LEVELS

SchemaMode = Literal["evolve", "lenient", "ignore", "stop"]
MODES: tuple[str, ...] = get_args(SchemaMode)


@dataclasses.dataclass(frozen=True)
class SchemaPolicy:
    mode: SchemaMode = "evolve"
    compatibility: str = DEFAULT_LEVEL
    # ``schema.table`` → level, for subjects that differ from the source's default.
    tables: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # subject → {shape key → the version number the REST API registered it as}: changes approved in advance.
    registered: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown schema_changes mode {self.mode!r}; one of {', '.join(MODES)}")
        for level in (self.compatibility, *self.tables.values()):
            if level not in LEVELS:
                raise ValueError(f"unknown compatibility level {level!r}; one of {', '.join(LEVELS)}")

    def level(self, table: str) -> str:
        """The compatibility level of source table ``table`` (``schema.table``)."""
        return self.tables.get(table, self.compatibility)

    def registration(self, subject: str, doc: Mapping[str, Any]) -> int | None:
        """The API's version number of a schema registered for ``subject`` with the shape of ``doc`` (None: none)."""
        shapes = self.registered.get(subject)
        if not shapes:
            return None
        from airflow_provider_cdc.schema.avro import shape_key

        return shapes.get(shape_key(doc))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "compatibility": self.compatibility, "tables": dict(self.tables)}
        if self.registered:
            out["registered"] = {subject: dict(shapes) for subject, shapes in self.registered.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SchemaPolicy:
        if not data:
            return cls()
        return cls(mode=data.get("mode", "evolve"), compatibility=data.get("compatibility", DEFAULT_LEVEL),
                   tables=dict(data.get("tables") or {}),
                   registered={str(subject): {str(k): int(v) for k, v in shapes.items()}
                               for subject, shapes in (data.get("registered") or {}).items()})


DEFAULT_POLICY = SchemaPolicy()
