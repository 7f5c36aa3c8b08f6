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

from airflow_provider_cdc.tables import Column

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
    """The PostgreSQL type for a column known only by its portable family (``other`` and unknowns: text); a
    decimal keeps its declared precision and scale."""
    if col.logical_type == "decimal" and col.precision is not None and 0 < col.precision <= 1000:
        return f"numeric({col.precision},{col.scale or 0})"
    return LOGICAL_TYPES.get(col.logical_type, "text")


def is_safe_type_text(type_text: str) -> bool:
    """Whether ``type_text`` looks like a PostgreSQL type name and can go into DDL as it is."""
    return bool(_SAFE_TYPE.match(type_text))


def sink_column_type(col: Column, dialect: str) -> str:
    """The column's type in a PostgreSQL sink table: the source's own type for a PostgreSQL source, else mapped.

    A PostgreSQL type that does not look like a type name (see :func:`is_safe_type_text`) falls back to the
    logical mapping rather than reaching SQL.
    """
    verbatim = dialect == POSTGRES_DIALECT and not col.derived and col.source_type
    if verbatim and is_safe_type_text(col.source_type.strip()):
        return col.source_type.strip()
    return logical_sink_type(col)


# --- type changes ---------------------------------------------------------------------------------------------

# Short spellings a source or a user may write, as format_type() prints them (the sink catalog's words).
_ALIASES = {
    "int": "integer", "int4": "integer", "int2": "smallint", "int8": "bigint",
    "float4": "real", "float8": "double precision", "float": "double precision",
    "decimal": "numeric", "varchar": "character varying", "char": "character", "bpchar": "character",
    "bool": "boolean", "timestamptz": "timestamp with time zone", "timetz": "time with time zone",
    "timestamp": "timestamp without time zone", "time": "time without time zone",
}
_TYPE_PARTS = re.compile(r"^(?P<base>[a-z_][a-z0-9_ .\"]*?)\s*(?:\((?P<mod>[\d, ]+)\))?(?P<suffix>(?: [a-z ]+)?)"
                         r"(?P<arrays>(?:\[\d*\])*)$")
# Integer types and how many decimal digits their largest value has: a numeric(p,s) with p - s at least that holds it.
_INTEGER_DIGITS = {"smallint": 5, "integer": 10, "bigint": 19}
_INTEGER_ORDER = ("smallint", "integer", "bigint")


def canonical_type(type_text: str) -> str:
    """``type_text`` as ``format_type()`` prints it, for the common spellings (``int4`` -> ``integer``,
    ``varchar(10)`` -> ``character varying(10)``, ``timestamptz`` -> ``timestamp with time zone``)."""
    text = " ".join(type_text.strip().lower().split())
    match = _TYPE_PARTS.match(text)
    if not match:
        return text
    base, mod, suffix, arrays = match["base"].strip(), match["mod"], match["suffix"].strip(), match["arrays"]
    if base in ("timestamp", "time"):
        suffix = suffix or "without time zone"
    elif base in ("timestamptz", "timetz"):
        base, suffix = base[:-2], "with time zone"
    else:
        base = _ALIASES.get(base, base)
    if base == "character" and mod is None and not suffix:
        mod = "1"  # char alone is char(1)
    mod_text = f"({','.join(part.strip() for part in mod.split(','))})" if mod else ""
    return f"{base}{mod_text}{' ' + suffix if suffix else ''}{re.sub(r'[0-9]', '', arrays)}"


def _parts(type_text: str) -> tuple[str, tuple[int, ...], str]:
    """(base with suffix, type modifiers, array brackets) of a canonical type."""
    match = _TYPE_PARTS.match(type_text)
    if not match:
        return type_text, (), ""
    base = " ".join(p for p in (match["base"].strip(), match["suffix"].strip()) if p)
    mods = tuple(int(m) for m in match["mod"].split(",")) if match["mod"] else ()
    return base, mods, re.sub(r"\d", "", match["arrays"])


def is_safe_widening(old: str, new: str) -> bool:
    """Whether every value of type ``old`` converts to type ``new`` unchanged (so a sink may ``ALTER ... TYPE``).

    The same type is trivially safe. Beyond that: ``numeric(p,s)`` to a ``numeric`` with at least as many integer
    and fractional digits or none declared; integers to larger integers and numerics that hold them; ``real`` to
    ``double precision``; ``varchar(n)`` to ``varchar(m >= n)``, unlimited ``varchar`` or ``text``; ``char(n)`` to
    ``text`` or ``varchar(m >= n)`` (both sides drop its trailing blanks the same way). Arrays follow their elements.
    """
    old, new = canonical_type(old), canonical_type(new)
    if old == new:
        return True
    old_base, old_mods, old_arrays = _parts(old)
    new_base, new_mods, new_arrays = _parts(new)
    if old_arrays != new_arrays:
        return False
    if new_base == "numeric":
        if not new_mods:
            return old_base == "numeric" or old_base in _INTEGER_DIGITS
        new_p, new_s = new_mods[0], (new_mods[1] if len(new_mods) > 1 else 0)
        if old_base in _INTEGER_DIGITS:
            return new_p - new_s >= _INTEGER_DIGITS[old_base]
        if old_base != "numeric" or not old_mods:
            return False
        old_p, old_s = old_mods[0], (old_mods[1] if len(old_mods) > 1 else 0)
        return new_p - new_s >= old_p - old_s and new_s >= old_s
    if old_base in _INTEGER_ORDER and new_base in _INTEGER_ORDER:
        return _INTEGER_ORDER.index(new_base) >= _INTEGER_ORDER.index(old_base)
    if (old_base, new_base) == ("real", "double precision"):
        return True
    if old_base in ("character varying", "character") and new_base == "text":
        return True
    if old_base in ("character varying", "text") and new_base == "character varying" and not new_mods:
        return True
    if old_base in ("character varying", "character") and new_base == "character varying":
        return bool(old_mods) and new_mods[0] >= old_mods[0]
    return False
