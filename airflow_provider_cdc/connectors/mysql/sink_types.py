"""Column types of MySQL and MariaDB sink tables, and the portable text of the value contract as MySQL input.

**Types.** A MySQL source declares its types in MySQL's own words (``information_schema.COLUMNS.COLUMN_TYPE``), so
a sink of the same dialect takes them verbatim: ``decimal(65,30)``, ``enum('a','b')``, ``bit(3)``, ``datetime(6)``
and ``bigint(20) unsigned`` keep what they hold. Every other source is mapped from the portable ``logical_type``:

================  ==============================  =================================================================
logical type      column                          key column (an index needs a bounded length)
================  ==============================  =================================================================
``integer``       ``bigint``                      ``bigint``
``decimal(p,s)``  ``decimal(p,s)`` (p <= 65,      ``varchar(n)`` when not a ``decimal(p,s)``
                  s <= 30); else ``longtext``:
                  MySQL's DECIMAL stops at 65
                  digits and 30 decimals, text
                  keeps every digit (and NaN)
``float``         ``double``                      ``double``
``boolean``       ``tinyint(1)``                  ``tinyint(1)``
``text``          ``longtext``                    ``varchar(n)``, binary collation (below)
``timestamptz``   ``datetime(6)`` (UTC)           ``datetime(6)``
``timestamp``     ``datetime(6)``                 ``datetime(6)``
``date``          ``date``                        ``date``
``time``          ``time(6)``                     ``time(6)``
``json``          ``json``                        ``varchar(n)``
``binary``        ``longblob``                    ``varbinary(n)``
``uuid``          ``char(36)``                    ``char(36)``
``other``         ``longtext`` (the source's      ``varchar(n)``
                  own text)
================  ==============================  =================================================================

``n`` is 255, less when several such key columns would pass InnoDB's 3072-byte index limit. A key value longer
than its column is refused by the sink, naming it (MySQL would truncate it, and two keys could become one).

Text keys use a binary **no-pad** collation (``utf8mb4_nopad_bin`` on MariaDB, ``utf8mb4_0900_bin`` on MySQL 8):
keys that differ only in case, accents or trailing spaces stay distinct rows, as they are at the source. (The
plain ``utf8mb4_bin`` is a PAD SPACE collation: ``'a'`` and ``'a '`` would be one key.)

A MySQL source's geometry arrives as the hex of MySQL's internal value (SRID, then WKB), which the sink loads back
with ``UNHEX`` into the same geometry type; YEAR and BIT are staged as numbers (the text ``'0'`` would be the year
2000 and ``'5'`` the bytes of a character).

**Values.** Batches carry the portable text of :mod:`airflow_provider_cdc.values`. MySQL reads most of it as it is;
:func:`to_mysql_input` converts the rest, vectorised: ``true``/``false`` -> ``1``/``0``;
``2024-05-01T12:00:00.25Z`` -> ``2024-05-01 12:00:00.25`` (the sink session runs in UTC, so a DATETIME holds the
UTC instant); binary hex stays hex and the loader applies ``UNHEX`` (:func:`needs_unhex`). :func:`check_values`
refuses, before anything is written, what MySQL cannot hold or would change: ``NaN`` and ``Infinity`` in a DOUBLE
or DECIMAL, a decimal with more digits than its column (MySQL would round it with only a note), timestamps
``infinity``, dates before year 1 or after 9999, bad hex; on MariaDB, whose JSON column validates its
documents, json nested deeper than :data:`MARIADB_JSON_MAX_DEPTH` (:func:`first_too_deep`, called by the sink).
Values of a MySQL source are left to the server (strict mode, plus the loader's check that no value was converted
with a warning): a zero date or a TIME of ``-838:59:59`` is theirs to keep.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_cdc.connectors.mysql.connection import MYSQL_DIALECT
from airflow_provider_cdc.tables import Column, TableSchema
from airflow_provider_cdc.values import UntypedValueError, typed_column

MAX_IDENTIFIER_LENGTH = 64  # characters, for databases, tables and columns alike
KEY_TEXT_LENGTH = 255  # characters of a text key column (varchar), or bytes of a binary one (varbinary)
INDEX_KEY_BYTES = 3072  # InnoDB's limit for one index (DYNAMIC and COMPRESSED row formats)
MAX_DECIMAL_PRECISION, MAX_DECIMAL_SCALE = 65, 30
# Binary collations that do not pad: 'a' and 'a ' are two keys (preferred first; the first the server has wins).
NOPAD_BINARY_COLLATIONS = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin", "utf8mb4_bin")

LOGICAL_TYPES: dict[str, str] = {
    "integer": "bigint",
    "decimal": "longtext",
    "float": "double",
    "boolean": "tinyint(1)",
    "text": "longtext",
    "timestamptz": "datetime(6)",
    "timestamp": "datetime(6)",
    "date": "date",
    "time": "time(6)",
    "json": "json",
    "binary": "longblob",
    "uuid": "char(36)",
    "other": "longtext",
}
# Logical types whose key columns need a bounded length (varchar / varbinary) when not reused verbatim.
_VARIABLE_KEY_KINDS = frozenset({"text", "json", "other", "binary", "decimal"})

INTEGER_BASES = ("tinyint", "smallint", "mediumint", "int", "bigint")
FLOAT_BASES = frozenset({"double", "float"})
TEXT_BASES = frozenset({"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "json", "enum", "set"})
BLOB_BASES = frozenset({"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"})
TEMPORAL_BASES = frozenset({"datetime", "timestamp", "date", "time", "year"})
_UNBOUNDED = frozenset({"tinytext", "text", "mediumtext", "longtext", "json", "tinyblob", "blob", "mediumblob",
                        "longblob"})
SPATIAL_BASES = frozenset({"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring",
                           "multipolygon", "geometrycollection", "geomcollection"})

# What COLUMN_TYPE prints: a name ("double precision" at most two words), then a modifier of numbers or of quoted
# enum/set members (quotes doubled or backslash-escaped), then unsigned/zerofill. Nothing else (no ; -- /*, no
# second statement, no column attribute such as UNIQUE or DEFAULT) can pass into DDL.
_QUOTED = r"'(?:[^'\\]|''|\\.)*'"
_SAFE_TYPE = re.compile(
    rf"^[a-z][a-z0-9_]*(?: (?:precision|varying|varchar))?(?:\((?:\d+(?:, ?\d+)?|{_QUOTED}(?:, ?{_QUOTED})*)\))?"
    r"(?: (?:unsigned|signed|zerofill))*$",
    re.IGNORECASE,
)
_TYPE_PARTS = re.compile(r"^(?P<base>[a-z][a-z0-9_ ]*?)\s*(?:\((?P<mod>.*)\))?(?P<suffix>(?:\s+(?:unsigned|signed|"
                         r"zerofill))*)$", re.DOTALL)
_ALIASES = {
    "integer": "int", "int1": "tinyint", "int2": "smallint", "int3": "mediumint", "int4": "int", "int8": "bigint",
    "middleint": "mediumint", "dec": "decimal", "numeric": "decimal", "fixed": "decimal", "real": "double",
    "double precision": "double", "float8": "double", "float4": "float", "character": "char",
    "character varying": "varchar", "long": "mediumtext", "long varchar": "mediumtext",
    # MariaDB's JSON is LONGTEXT with a validity check, and reports itself as longtext.
    "json": "longtext",
}


# --- names ------------------------------------------------------------------------------------------------------


def identifier_problem(name: str) -> str | None:
    """Why ``name`` cannot be a MySQL database, table or column name (None when it can)."""
    if not name:
        return "it is empty"
    if len(name) > MAX_IDENTIFIER_LENGTH:
        return f"it has {len(name)} characters, and MySQL allows at most {MAX_IDENTIFIER_LENGTH}"
    if name.endswith(" "):
        return "it ends with a space, which MySQL does not allow in names"
    if "\x00" in name or any(ord(char) > 0xFFFF for char in name):
        return "it has a character MySQL does not allow in names (NUL, or one outside the Basic Multilingual Plane)"
    return None


# --- types ------------------------------------------------------------------------------------------------------


def is_safe_type_text(type_text: str) -> bool:
    """Whether ``type_text`` looks like a MySQL column type and nothing else, so it may go into DDL as it is."""
    return bool(_SAFE_TYPE.match(type_text.strip()))


def base_of(type_text: str) -> str:
    """The type's name without modifiers, canonical (``bigint(20) unsigned`` -> ``bigint``)."""
    match = _TYPE_PARTS.match(canonical_type(type_text))
    return match["base"].strip() if match else type_text.strip().lower()


def _verbatim(col: Column, dialect: str) -> str | None:
    """The source's own type, when the sink may reuse it (same dialect, a plain type name, not spatial)."""
    if dialect != MYSQL_DIALECT or col.derived or not col.source_type or not is_safe_type_text(col.source_type):
        return None
    return " ".join(col.source_type.strip().split()) if "'" not in col.source_type else col.source_type.strip()


def _variable_key(col: Column, dialect: str) -> str | None:
    """``text`` or ``binary`` when the key column needs a bounded varchar / varbinary in the sink, else None."""
    verbatim = _verbatim(col, dialect)
    if verbatim is not None:
        base = base_of(verbatim)
        if base not in _UNBOUNDED:
            return None
        return "binary" if base in BLOB_BASES else "text"
    if col.logical_type not in _VARIABLE_KEY_KINDS or _decimal_type(col) is not None:
        return None
    return "binary" if col.logical_type == "binary" else "text"


def key_text_length(schema: TableSchema) -> int:
    """Characters (bytes for binary) of the bounded key columns of ``schema``: 255, or less when the key's bounded
    columns and the others together would pass InnoDB's 3072-byte index limit (utf8mb4: 4 bytes a character)."""
    text = binary = fixed = 0
    for col in schema.columns:
        if not col.primary_key:
            continue
        kind = _variable_key(col, schema.dialect)
        if kind == "text":
            text += 1
        elif kind == "binary":
            binary += 1
        else:
            fixed += _index_bytes(sink_column_type(col, schema.dialect))
    per_char = 4 * text + binary
    if not per_char:
        return KEY_TEXT_LENGTH
    return max(1, min(KEY_TEXT_LENGTH, (INDEX_KEY_BYTES - fixed) // per_char))


def _index_bytes(type_text: str) -> int:
    match = re.match(r"^(var)?(char|binary)\((\d+)\)", canonical_type(type_text))
    if match:
        return int(match[3]) * (4 if match[2] == "char" else 1)
    return 32  # numbers, dates, enums: generously


def _decimal_type(col: Column) -> str | None:
    precision, scale = col.precision, col.scale or 0
    if precision is None or not 0 < precision <= MAX_DECIMAL_PRECISION or not 0 <= scale <= MAX_DECIMAL_SCALE:
        return None
    if scale > precision:
        return None
    return f"decimal({precision},{scale})"


def logical_sink_type(col: Column, *, key_length: int | None = None) -> str:
    """The MySQL type of a column known only by its portable family (see the module table); ``key_length`` for a
    key column whose type must be bounded."""
    kind = col.logical_type
    if kind == "decimal":
        exact = _decimal_type(col)
        if exact is not None:
            return exact
    if key_length is not None and kind in _VARIABLE_KEY_KINDS:
        return f"varbinary({key_length})" if kind == "binary" else f"varchar({key_length})"
    return LOGICAL_TYPES.get(kind, "longtext")


def sink_column_type(col: Column, dialect: str, *, key_length: int | None = None) -> str:
    """The column's type in a MySQL sink table: the source's own type for a MySQL source, else mapped.

    A key column's type is bounded: ``key_length`` (:func:`key_text_length`) for text and binary kinds, also when a
    MySQL source declared ``text`` or ``blob`` (a prefix index the sink cannot copy)."""
    verbatim = _verbatim(col, dialect)
    if verbatim is not None:
        if col.primary_key and base_of(verbatim) in _UNBOUNDED:
            length = key_length or KEY_TEXT_LENGTH
            return f"varbinary({length})" if base_of(verbatim) in BLOB_BASES else f"varchar({length})"
        return verbatim
    return logical_sink_type(col, key_length=key_length if col.primary_key else None)


def table_column_types(schema: TableSchema) -> dict[str, str]:
    """Every column of ``schema`` with its sink type (key columns bounded together, see :func:`key_text_length`)."""
    length = key_text_length(schema)
    return {col.name: sink_column_type(col, schema.dialect, key_length=length) for col in schema.columns}


def needs_binary_collation(type_text: str) -> bool:
    """Whether a key column of this type compares text (and so gets the binary no-pad collation)."""
    return base_of(type_text) in TEXT_BASES and base_of(type_text) != "json"


def canonical_type(type_text: str) -> str:
    """``type_text`` as MySQL prints it for comparisons: lower case, aliases resolved (``integer`` -> ``int``,
    ``numeric`` -> ``decimal``, ``bool`` -> ``tinyint(1)``, ``json`` -> ``longtext``), integer display widths
    dropped (``bigint(20)`` -> ``bigint``; ``tinyint(1)`` stays, it means boolean), ``(0)`` fractions dropped."""
    text = type_text.strip()
    if "'" in text and "(" in text:  # enum and set members keep their case and spaces
        head, _, rest = text.partition("(")
        members, _, tail = rest.rpartition(")")
        text = f"{' '.join(head.lower().split())}({members}){' '.join(tail.lower().split())}"
    else:
        text = " ".join(text.lower().split())
    match = _TYPE_PARTS.match(text)
    if not match:
        return text
    base, mod = match["base"].strip(), match["mod"]
    suffix = " ".join(match["suffix"].split())
    if base in ("bool", "boolean"):
        base, mod = "tinyint", "1"
    base = _ALIASES.get(base, base)
    if mod is not None and "'" not in mod:
        mod = ",".join(part.strip() for part in mod.split(","))
    if base in INTEGER_BASES and mod is not None and not (base == "tinyint" and mod == "1"):
        mod = None
    if base == "decimal":
        parts = (mod or "10").split(",")
        mod = f"{parts[0]},{parts[1] if len(parts) > 1 else '0'}"
    if base in ("datetime", "timestamp", "time") and mod == "0":
        mod = None
    if (base in ("char", "binary", "bit") and mod is None) or (base == "year" and mod == "4"):
        mod = None if base == "year" else "1"
    if base == "float" and mod is not None:  # float(p): p > 24 is a double
        digits = mod.split(",")[0]
        base, mod = ("double" if digits.isdigit() and int(digits) > 24 else "float"), None
    if base == "double" and mod is not None:
        mod = None  # double(m,d) is deprecated display formatting; values are the same doubles
    return f"{base}{f'({mod})' if mod is not None else ''}{' ' + suffix if suffix else ''}"


def _parts(type_text: str) -> tuple[str, list[str], bool]:
    """(base, modifiers, unsigned) of a canonical type."""
    match = _TYPE_PARTS.match(type_text)
    if not match:
        return type_text, [], False
    mod = match["mod"]
    mods = re.findall(_QUOTED, mod) if mod and "'" in mod else (mod.split(",") if mod else [])
    return match["base"].strip(), mods, "unsigned" in (match["suffix"] or "")


_INTEGER_RANGES = {
    "tinyint": 2**7, "smallint": 2**15, "mediumint": 2**23, "int": 2**31, "bigint": 2**63,
}
_TEXT_CAPACITY = {"tinytext": 255, "text": 65_535, "mediumtext": 16_777_215, "longtext": 4_294_967_295}
_BLOB_CAPACITY = {"tinyblob": 255, "blob": 65_535, "mediumblob": 16_777_215, "longblob": 4_294_967_295}


def _integer_range(base: str, unsigned: bool) -> tuple[int, int]:
    half = _INTEGER_RANGES[base]
    return (0, 2 * half - 1) if unsigned else (-half, half - 1)


def is_safe_widening(old: str, new: str) -> bool:
    """Whether every value of type ``old`` converts to type ``new`` unchanged (so the sink may ``MODIFY`` it).

    Integers to integers and decimals with the range; ``decimal(p,s)`` to one with at least as many integer and
    fractional digits; ``float`` to ``double``; ``varchar(n)`` / ``char(n)`` to a longer varchar or a text type
    that holds n characters of utf8mb4; text types and blobs to larger ones; ``varbinary(n)`` / ``binary(n)`` to a
    longer varbinary or a blob; ``datetime``, ``timestamp`` and ``time`` to more fractional digits; ``bit(n)`` to
    more bits; ``enum`` and ``set`` to a list that starts with the old members (their order is their value)."""
    old, new = canonical_type(old), canonical_type(new)
    if old == new:
        return True
    old_base, old_mods, old_unsigned = _parts(old)
    new_base, new_mods, new_unsigned = _parts(new)
    if old_base in _INTEGER_RANGES and not (old_base == "tinyint" and old_mods == ["1"] and new_base != "tinyint"):
        low, high = _integer_range(old_base, old_unsigned)
        if new_base in _INTEGER_RANGES:
            new_low, new_high = _integer_range(new_base, new_unsigned)
            return new_low <= low and high <= new_high
        if new_base == "decimal":
            precision, scale = int(new_mods[0]), int(new_mods[1])
            return precision - scale >= len(str(max(abs(low), high))) and not (new_unsigned and low < 0)
        return False
    if old_base == "decimal" and new_base == "decimal":
        old_p, old_s, new_p, new_s = (int(old_mods[0]), int(old_mods[1]), int(new_mods[0]), int(new_mods[1]))
        return new_p - new_s >= old_p - old_s and new_s >= old_s and (old_unsigned or not new_unsigned)
    if (old_base, new_base) == ("float", "double"):
        return True
    if old_base in ("char", "varchar") and old_mods:
        chars = int(old_mods[0])
        if new_base == "varchar" and new_mods:
            return int(new_mods[0]) >= chars
        return new_base in _TEXT_CAPACITY and _TEXT_CAPACITY[new_base] >= 4 * chars
    if old_base in _TEXT_CAPACITY and new_base in _TEXT_CAPACITY:
        return _TEXT_CAPACITY[new_base] >= _TEXT_CAPACITY[old_base]
    if old_base in ("binary", "varbinary") and old_mods:
        size = int(old_mods[0])
        if new_base == "varbinary" and new_mods:
            return int(new_mods[0]) >= size
        return new_base in _BLOB_CAPACITY and _BLOB_CAPACITY[new_base] >= size
    if old_base in _BLOB_CAPACITY and new_base in _BLOB_CAPACITY:
        return _BLOB_CAPACITY[new_base] >= _BLOB_CAPACITY[old_base]
    if old_base == new_base and old_base in ("datetime", "timestamp", "time"):
        return int(new_mods[0] if new_mods else 0) >= int(old_mods[0] if old_mods else 0)
    if old_base == new_base == "bit":
        return int(new_mods[0] if new_mods else 1) >= int(old_mods[0] if old_mods else 1)
    if old_base == new_base and old_base in ("enum", "set"):
        return new_mods[:len(old_mods)] == old_mods
    return False


# --- values -----------------------------------------------------------------------------------------------------

_TIMESTAMP = r"^(-?\d{4,}-\d\d-\d\d)T(\d\d:\d\d:\d\d(?:\.\d+)?)Z?$"
_TIMESTAMP_RE = re.compile(_TIMESTAMP)
_FLOAT_SPECIALS = ("NaN", "Infinity", "-Infinity", "+Infinity", "nan", "inf", "-inf", "+inf", "infinity",
                   "-infinity")
_DECIMAL = r"^[-+]?0*(?P<int>\d*)(?:\.(?P<frac>\d*?)0*)?$"
_NUMERIC_BASES = frozenset({*INTEGER_BASES, "decimal", "bit", "double", "float"})


def needs_unhex(logical_type: str, sink_type: str) -> bool:
    """Whether a value arrives as hex that the loader turns into bytes (``UNHEX``): binary into a binary column, and
    a MySQL source's geometry (hex of the internal value) into a geometry column."""
    base = base_of(sink_type)
    return (logical_type == "binary" and base in (BLOB_BASES | {"bit"})) or (
        logical_type == "other" and base in SPATIAL_BASES)


def stage_type(sink_type: str, logical_type: str) -> str:
    """The type a value is staged as before it goes into a column of ``sink_type``: the same, except ``bit(n)`` and
    ``year``, which read numbers (the text ``'5'`` would be the bytes of a character, ``'0'`` the year 2000), and
    geometry, staged as its bytes."""
    base = base_of(sink_type)
    if base == "bit":
        return "longblob" if logical_type == "binary" else "bigint unsigned"
    if base == "year":
        return "smallint"
    if base in SPATIAL_BASES:
        return "longblob"
    return sink_type


def is_common_type(type_text: str) -> bool:
    """A type every MySQL and MariaDB version has (others, such as MariaDB's ``uuid`` and ``inet6``, are checked
    on the sink server before use)."""
    base = base_of(type_text)
    return base in _INTEGER_RANGES or base in FLOAT_BASES or base in TEXT_BASES or base in BLOB_BASES or base in (
        TEMPORAL_BASES | {"decimal", "bit"})


def _string_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values if pa.types.is_string(values.type) or pa.types.is_large_string(values.type) else pc.cast(
        values, pa.string())


def to_mysql_input(values: pa.Array | pa.ChunkedArray, logical_type: str, sink_type: str) -> pa.Array:
    """Portable text of one column as text MySQL reads into ``sink_type`` as the same value (module docstring).

    Idempotent, and a value that does not have the expected shape passes unchanged (the server, or
    :func:`check_values` before it, says what is wrong with it)."""
    values = _string_array(values)
    if len(values) == 0 or values.null_count == len(values):
        return values
    base = base_of(sink_type)
    if logical_type == "boolean" and base in _NUMERIC_BASES:
        return pc.if_else(pc.equal(values, "true"), "1", pc.if_else(pc.equal(values, "false"), "0", values))
    if base in ("datetime", "timestamp"):
        return pc.replace_substring_regex(values, _TIMESTAMP, r"\1 \2")
    return values  # into a text column (a policy kept one), the portable text is the value


def mysql_input_scalar(text: str | None, logical_type: str, sink_type: str) -> str | bytes | None:
    """:func:`to_mysql_input` of one value, as a query parameter (binary as bytes): a backfill default."""
    if text is None:
        return None
    base = base_of(sink_type)
    if needs_unhex(logical_type, sink_type):
        return bytes.fromhex(text)
    if logical_type == "boolean" and base in _NUMERIC_BASES:
        return {"true": "1", "false": "0"}.get(text, text)
    if base in ("datetime", "timestamp"):
        return _TIMESTAMP_RE.sub(r"\1 \2", text)
    return text


def check_values(values: pa.Array | pa.ChunkedArray, column: Column, sink_type: str, dialect: str) -> None:
    """Refuse (:class:`UnstorableValue`) a value that a ``sink_type`` column cannot hold exactly.

    Floats and decimals are checked whatever the source; the portable forms of other types only for sources of
    another dialect (a MySQL source's values are MySQL's own: the server judges them in strict mode)."""
    values = _string_array(values)
    if len(values) == 0 or values.null_count == len(values):
        return
    base = base_of(sink_type)
    if base in FLOAT_BASES:
        _check_float(values, column, sink_type)
    elif base == "decimal":
        _check_decimal(values, column, sink_type)
    elif dialect != MYSQL_DIALECT and column.logical_type in ("integer", "boolean", "timestamptz", "timestamp",
                                                              "date"):
        # The value contract's own check: 'infinity', years before 1 or after 9999, text that is no number.
        try:
            typed_column(values, column)
        except UntypedValueError as exc:
            raise UnstorableValue(column.name, column.logical_type, exc.value,
                                  f"it has no {column.logical_type} value MySQL can hold (no infinity, years 1 to 9999 "
                                  f"only, and it must be the value contract's {column.logical_type} text)") from exc
    if needs_unhex(column.logical_type, sink_type):
        bad = pc.invert(pc.match_substring_regex(values, r"^(?:[0-9a-fA-F]{2})*$"))
        _refuse_first(values, bad, column, "it is not hex (binary values travel as hex)")


# MariaDB's JSON is LONGTEXT with CHECK (json_valid(col)), and json_valid refuses documents nested deeper than this
# (measured on MariaDB 10.11: 31 levels of arrays and objects pass, 32 fail, whatever is inside them).
MARIADB_JSON_MAX_DEPTH = 31
# A JSON string (possessive: no backtracking) or a bracket; brackets inside strings are part of the string token.
_JSON_NESTING = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')


def json_depth(text: str) -> int:
    """How many levels of arrays and objects the JSON ``text`` nests (a scalar 0, ``[1]`` 1, ``{"a": [1]}`` 2), as
    MariaDB's json_valid counts them. A scan, not a parse: no recursion, whatever the depth."""
    depth = deepest = 0
    for match in _JSON_NESTING.finditer(text):
        token = match.group()
        if token == "[" or token == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif token == "]" or token == "}":
            depth -= 1
    return deepest


def first_too_deep(values: pa.Array | pa.ChunkedArray, limit: int) -> tuple[str, int] | None:
    """The first JSON value nested more than ``limit`` levels deep, with its depth (None when there is none). Only
    values with more than ``limit`` opening brackets (counted by Arrow for the whole column) are scanned."""
    values = _string_array(values)
    opening = pc.count_substring_regex(values, r"[\[{]")
    candidates = pc.fill_null(pc.greater(opening, limit), False)
    if not pc.any(candidates).as_py():
        return None
    for text in values.filter(candidates).to_pylist():
        depth = json_depth(text)
        if depth > limit:
            return text, depth
    return None


class UnstorableValue(UntypedValueError):
    """A value a MySQL column cannot hold exactly; ``reason`` says why (for the sink's error message)."""

    def __init__(self, column: str, logical_type: str, value: str, reason: str) -> None:
        super().__init__(column, logical_type, value, reason)
        self.reason = reason


def _refuse_first(values: pa.Array, bad: pa.Array, column: Column, reason: str) -> None:
    bad = pc.fill_null(bad, False)
    if pc.any(bad).as_py():
        raise UnstorableValue(column.name, column.logical_type, str(values.filter(bad)[0].as_py()), reason)


def _check_float(values: pa.Array, column: Column, sink_type: str) -> None:
    _refuse_first(values, pc.is_in(values, value_set=pa.array(_FLOAT_SPECIALS)), column,
                  f"a MySQL {sink_type.upper()} holds no NaN or infinity")
    try:
        numbers = pc.cast(values, pa.float64())
    except pa.ArrowInvalid:
        for value in values.to_pylist():
            try:
                float(value) if value is not None else None
            except ValueError:
                raise UnstorableValue(column.name, column.logical_type, str(value), "it is not a number") from None
        raise
    _refuse_first(values, pc.invert(pc.is_finite(numbers)), column,
                  f"it is beyond the range of a MySQL {sink_type.upper()}")


def _check_decimal(values: pa.Array, column: Column, sink_type: str) -> None:
    _, mods, unsigned = _parts(canonical_type(sink_type))
    precision, scale = int(mods[0]), int(mods[1])
    parts = pc.extract_regex(values, _DECIMAL)
    shaped = pc.and_(pc.is_valid(parts), pc.match_substring_regex(values, r"\d"))
    _refuse_first(values, pc.invert(shaped), column,
                  f"a MySQL {sink_type.upper()} holds numbers only (no NaN or infinity)")
    integer_digits = pc.utf8_length(pc.struct_field(parts, "int"))
    fraction_digits = pc.utf8_length(pc.struct_field(parts, "frac"))
    _refuse_first(values, pc.greater(fraction_digits, scale), column,
                  f"it has more than {scale} decimal places, and a MySQL {sink_type.upper()} would round it")
    _refuse_first(values, pc.greater(integer_digits, precision - scale), column,
                  f"it has more than {precision - scale} digits before the decimal point, the most a MySQL "
                  f"{sink_type.upper()} holds")
    if unsigned:
        negative = pc.and_(pc.starts_with(values, "-"), pc.match_substring_regex(values, r"[1-9]"))
        _refuse_first(values, negative, column, f"a MySQL {sink_type.upper()} holds no negative numbers")


def over_length(values: pa.Array | pa.ChunkedArray, sink_type: str) -> str | None:
    """The first value longer than a ``varchar(n)`` / ``varbinary(n)`` (hex: two digits a byte) column holds."""
    match = re.match(r"^var(char|binary)\((\d+)\)$", canonical_type(sink_type))
    if not match:
        return None
    values = _string_array(values)
    limit = int(match[2]) * (2 if match[1] == "binary" else 1)
    too_long = pc.fill_null(pc.greater(pc.utf8_length(values), limit), False)
    return str(values.filter(too_long)[0].as_py()) if pc.any(too_long).as_py() else None


def case_clashes(names: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of names MySQL takes for the same column (column names are case-insensitive)."""
    seen: dict[str, str] = {}
    clashes = []
    for name in names:
        folded = name.lower()
        if folded in seen:
            clashes.append((seen[folded], name))
        else:
            seen[folded] = name
    return clashes
