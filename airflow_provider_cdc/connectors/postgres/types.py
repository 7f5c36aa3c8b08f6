"""Column types of PostgreSQL sink tables.

A PostgreSQL source declares its types in PostgreSQL's own words, so the sink takes them verbatim:
``numeric(12,2)`` keeps its scale, ``timestamp with time zone`` its zone, ``integer[]`` stays an array, and the
canonical text the source printed loads back without loss. Every other source is mapped from the portable
``logical_type`` family.

The verbatim type reaches DDL as SQL text (a type cannot be a quoted identifier: ``numeric(12,2)`` is not a name),
so it must look like a type name and nothing else; anything that does not is mapped from ``logical_type`` instead.
"""

from __future__ import annotations

import re

from airflow_provider_cdc.events import Column

POSTGRES_DIALECT = "postgresql"

LOGICAL_TYPES: dict[str, str] = {
    "integer": "bigint",
    "decimal": "numeric",
    "float": "double precision",
    "boolean": "boolean",
    "text": "text",
    "timestamptz": "timestamptz",
    "timestamp": "timestamp",
    "date": "date",
    "time": "time",
    "json": "jsonb",
    "binary": "bytea",
    "uuid": "uuid",
    "other": "text",
}

# What format_type() prints: optionally schema-qualified words (plain or double-quoted without quotes inside),
# type modifiers of numbers, words such as "with time zone", and array brackets. No ; ' -- or /* can pass.
_WORD = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"[^"]+")'
_SAFE_TYPE = re.compile(
    rf"^{_WORD}(?:\.{_WORD})?"  # name, maybe schema-qualified
    r"(?: [A-Za-z_][A-Za-z0-9_]*)*"  # more words: "double precision", "character varying"
    r"(?:\(\d+(?:, ?\d+)?\))?"  # typmod: (12,2), (3)
    r"(?: [A-Za-z_][A-Za-z0-9_]*)*"  # "with time zone" after "timestamp(3)"
    r"(?:\[\d*\])*$"  # arrays
)


def logical_sink_type(col: Column) -> str:
    """The PostgreSQL type for a column known only by its portable family (``other`` and unknowns: text)."""
    return LOGICAL_TYPES.get(col.logical_type, "text")


def is_safe_type_text(type_text: str) -> bool:
    """Whether ``type_text`` looks like a PostgreSQL type name and can go into DDL as it is."""
    return bool(_SAFE_TYPE.match(type_text))


def sink_column_type(col: Column, dialect: str) -> str:
    """The column's type in a PostgreSQL sink table: the source's own type for a PostgreSQL source, else mapped.

    A PostgreSQL type that does not look like a type name (see :func:`is_safe_type_text`) falls back to the
    logical mapping rather than reaching SQL.
    """
    if dialect == POSTGRES_DIALECT and col.source_type and is_safe_type_text(col.source_type.strip()):
        return col.source_type.strip()
    return logical_sink_type(col)
