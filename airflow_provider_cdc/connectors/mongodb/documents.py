"""Documents as table rows and back: BSON values in the value contract, and ``_id`` as one canonical key string.

A collection becomes a table (DESIGN section 2): ``_id`` in its **canonical string form** is the primary key,
top-level fields become columns, nested documents and arrays become ``json``. MongoDB has no declared schema, so a
column's type is the BSON type of the values seen (:func:`bson_alias`, named as ``$type`` names them), kept in the
column's ``source_type`` (a sink of the same dialect restores the BSON type from it: :func:`to_bson`), with the
portable ``logical_type`` of the value contract:

==================  ===============  ==========================================================================
BSON (source_type)  logical type     portable form
==================  ===============  ==========================================================================
int, long           integer          ``42``
double              float            ``1.5``, ``NaN``, ``Infinity``
decimal             decimal          ``1.50`` (Decimal128 exact, its scale kept)
string              text             the string
bool                boolean          ``true`` / ``false``
date                timestamptz      ``2024-05-01T12:00:00.25Z`` (UTC; BSON dates are milliseconds)
objectId            text             the 24 hex digits
uuid                uuid             ``8-4-4-4-12`` (binary subtype 4)
binData             binary           hex (binary subtype 0)
object, array, ...  json             relaxed Extended JSON (``{"$oid": ...}``, ``{"$date": ...}``,
                                     ``{"$numberDecimal": ...}`` inside), which restores the exact BSON
==================  ===============  ==========================================================================

Values of one field may differ in type from document to document. :func:`unify` widens the column: ``int`` and
``long`` give ``long``; an integer column that meets a double becomes ``decimal`` (exact for both); a double column
keeps integers that a double holds exactly; any other mix becomes ``mixed`` (``json``: every value in Extended
JSON, so ``"5"`` and ``5`` stay different). A widening is a schema change, which the sink's schema gate follows or
holds.

**Keys.** ``_id`` is the primary key in the canonical form of :func:`canonical_key`: Extended JSON of the value,
with every number written as its exact decimal value. MongoDB's own ``_id`` index treats ``5``, ``NumberLong(5)``,
``5.0`` and ``NumberDecimal("5.00")`` as one key, and so does this form (all ``5``); a string is quoted (``"5"``),
an ObjectId is ``{"$oid":"..."}``, a document keeps its field order. Keys of different BSON types never share a
form, as in Debezium's MongoDB connector. :func:`parse_key` reads one back.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from bson import Binary, Code, Decimal128, Int64, ObjectId
from bson.codec_options import DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.json_util import CANONICAL_JSON_OPTIONS, RELAXED_JSON_OPTIONS, JSONOptions
from bson.json_util import dumps as json_util_dumps
from bson.json_util import loads as json_util_loads

from airflow_provider_cdc.tables import Column
from airflow_provider_cdc.values import format_value, parse_value

ID_FIELD = "_id"
ID_SOURCE_TYPE = "_id"
MIXED = "mixed"
INTEGER_ALIASES = frozenset({"int", "long"})
NUMERIC_ALIASES = frozenset({"int", "long", "double", "decimal"})
# Integers a double holds exactly.
_DOUBLE_EXACT = 2 ** 53
# Reading Extended JSON back: dates aware in UTC, and dates beyond years 1 to 9999 as DatetimeMS (never an error),
# as the connection's codec options decode them.
_READ_JSON = JSONOptions(json_mode=RELAXED_JSON_OPTIONS.json_mode, tz_aware=True, tzinfo=dt.timezone.utc,
                         datetime_conversion=DatetimeConversion.DATETIME_AUTO)

LOGICAL_TYPES = {
    "int": "integer",
    "long": "integer",
    "double": "float",
    "decimal": "decimal",
    "string": "text",
    "bool": "boolean",
    "date": "timestamptz",
    "objectId": "text",
    "uuid": "uuid",
    "binData": "binary",
    ID_SOURCE_TYPE: "text",
}


class UnsupportedValueError(ValueError):
    """A BSON value with no faithful portable form (a date outside years 1 to 9999 in a date column)."""


def bson_alias(value: Any) -> str:
    """The ``$type`` alias of a decoded BSON value (``null`` for None; ``json``-only kinds keep their own names)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Int64):
        return "long"
    if isinstance(value, int):
        return "int" if -2 ** 31 <= value < 2 ** 31 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, Decimal128):
        return "decimal"
    if isinstance(value, Code):  # a str subclass: JavaScript, not a string
        return "javascript"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (dt.datetime, DatetimeMS)):
        return "date"
    if isinstance(value, ObjectId):
        return "objectId"
    if isinstance(value, Binary):
        if value.subtype == 4:
            return "uuid"
        return "binData" if value.subtype == 0 else f"binData{value.subtype}"
    if isinstance(value, bytes):
        return "binData"
    if isinstance(value, uuid.UUID):
        return "uuid"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__.lower()  # timestamp, regex, code, minkey, maxkey, dbref


def logical_type(alias: str) -> str:
    """The value contract's logical type of a column of BSON type ``alias`` (anything unlisted is ``json``)."""
    return LOGICAL_TYPES.get(alias, "json")


def unify(current: str | None, alias: str, value: Any = None) -> str:
    """The column type after a value of type ``alias`` (``value``) meets a column of type ``current``."""
    if alias == "null":
        return current or "null"
    if current is None or current == "null" or current == alias:
        return alias
    if current in NUMERIC_ALIASES and alias in NUMERIC_ALIASES:
        if current in INTEGER_ALIASES and alias in INTEGER_ALIASES:
            return "long"
        if current == "double" and alias in INTEGER_ALIASES and abs(int(value)) <= _DOUBLE_EXACT:
            return "double"
        return "decimal"
    return MIXED


def column_for(name: str, alias: str, ordinal: int) -> Column:
    """A field's column: ``source_type`` is its BSON type alias, ``logical_type`` the value contract's family."""
    if name == ID_FIELD:
        return Column(ID_FIELD, ID_SOURCE_TYPE, "text", nullable=False, primary_key=True, ordinal=ordinal)
    return Column(name, alias, logical_type(alias), ordinal=ordinal)


# --- BSON -> portable text -------------------------------------------------------------------------------------


# Types that relaxed Extended JSON writes as plain JSON (exact types: a str subclass such as Code is not plain).
_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None), Int64})


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind is dict:
        return all(_plain(v) for v in value.values())
    if kind is list:
        return all(_plain(v) for v in value)
    if kind is float:
        return math.isfinite(value)
    return kind in _PLAIN_SCALARS


def relaxed_json(value: Any) -> str:
    """Relaxed Extended JSON of a value: plain JSON for plain values, ``{"$oid": ...}`` and the like for the rest.

    A document of plain values only (the usual case) is written by ``json.dumps`` directly, which gives the same
    text as ``bson.json_util`` without its conversion pass."""
    if _plain(value):
        return json.dumps(value, ensure_ascii=False)
    return json_util_dumps(value, json_options=RELAXED_JSON_OPTIONS, ensure_ascii=False)


def _date_text(value: Any) -> str:
    if isinstance(value, DatetimeMS):
        raise UnsupportedValueError(f"the date {value!r} is outside years 1 to 9999, which the value contract's "
                                    "timestamptz cannot hold")
    if value.tzinfo is None or value.tzinfo is dt.timezone.utc:  # pymongo decodes dates in UTC
        # format_value's result, without its time zone arithmetic (the hot path: every date of every document).
        text = value.replace(tzinfo=None).isoformat()
        return (text.rstrip("0") if "." in text else text) + "Z"
    return format_value(value, "timestamptz")  # type: ignore[return-value]


_COEFFICIENT_MASK = (1 << 113) - 1
_SPECIAL_FORM = 0x6000000000000000  # NaN, Infinity, and the (non-canonical) large-coefficient form


def decimal128_text(value: Decimal128) -> str:
    """``format_value(value.to_decimal(), "decimal")``, read straight from the IEEE 754 bits (the hot path: pymongo's
    ``to_decimal`` builds the digits one at a time)."""
    bits = int.from_bytes(value.bid, "little")
    high = bits >> 64
    if high & _SPECIAL_FORM == _SPECIAL_FORM:
        return format_value(value.to_decimal(), "decimal")  # type: ignore[return-value]
    sign = "-" if high >> 63 else ""
    exponent = ((high >> 49) & 0x3FFF) - 6176
    digits = str(bits & _COEFFICIENT_MASK)
    if exponent >= 0:
        return sign + (digits + "0" * exponent if digits != "0" else "0")
    point = len(digits) + exponent
    if point > 0:
        return f"{sign}{digits[:point]}.{digits[point:]}"
    return f"{sign}0.{'0' * -point}{digits}"


def _as_decimal(value: Any) -> decimal.Decimal:
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, float):
        if math.isnan(value):
            return decimal.Decimal("NaN")
        return decimal.Decimal(repr(value)) if math.isfinite(value) else decimal.Decimal(value)
    return decimal.Decimal(int(value))


def portable(value: Any, alias: str) -> str | None:
    """The portable text of ``value`` in a column of type ``alias`` (after :func:`unify`: the value may be
    narrower, such as an int in a decimal column)."""
    if value is None:
        return None
    if alias == ID_SOURCE_TYPE:
        return canonical_key(value)
    if alias in ("int", "long"):
        return str(int(value))
    if alias == "double":
        return format_value(float(value), "float")
    if alias == "decimal":
        if type(value) is Decimal128:
            return decimal128_text(value)
        return format_value(_as_decimal(value), "decimal")
    if alias == "string":
        return value
    if alias == "bool":
        return "true" if value else "false"
    if alias == "date":
        return _date_text(value)
    if alias == "objectId":
        return str(value)
    if alias == "uuid":
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(bytes=bytes(value)))
    if alias == "binData":
        return bytes(value).hex()
    return relaxed_json(value)


def _int_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _same(value: Any) -> Any:
    return value


def _object_id_text(value: Any) -> str | None:
    return None if value is None else str(value)


# Columns whose values all have one Python type (after unify), formatted without portable()'s dispatch.
_FAST_FORMATTERS: dict[str, Callable[[Any], str | None]] = {
    "int": _int_text, "long": _int_text, "string": _same, "objectId": _object_id_text,
}


def formatter(alias: str) -> Callable[[Any], str | None]:
    """:func:`portable` for one column type, as one function (the batch renderer's hot path)."""
    fast = _FAST_FORMATTERS.get(alias)
    if fast is not None:
        return fast
    if alias in LOGICAL_TYPES:
        return lambda value: portable(value, alias)
    return lambda value: None if value is None else relaxed_json(value)


# --- keys -------------------------------------------------------------------------------------------------------


# Enough digits for any double's or Decimal128's exact value: normalising never rounds.
_EXACT = decimal.Context(prec=2000, Emin=-999999, Emax=999999)


def _number_key(value: decimal.Decimal) -> str:
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    return format(value.normalize(_EXACT), "f")


def canonical_key(value: Any) -> str:
    """The canonical string form of an ``_id`` (see the module docstring): equal keys in MongoDB's eyes give the
    same string, different keys different strings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal128)):
        number = value.to_decimal() if isinstance(value, Decimal128) else decimal.Decimal(value)
        return _number_key(number)
    if isinstance(value, uuid.UUID):  # stored as binary subtype 4, which is how the server sees it
        value = Binary.from_uuid(value)
    if isinstance(value, str) and not isinstance(value, Code):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, ObjectId):
        return f'{{"$oid":"{value}"}}'
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(str(k), ensure_ascii=False)}:{canonical_key(v)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical_key(v) for v in value) + "]"
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        millis = value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return f'{{"$date":"{millis}"}}'
    # Binary, UUID, DatetimeMS, Timestamp, Regex, MinKey...: canonical Extended JSON, compact.
    return json_util_dumps(value, json_options=CANONICAL_JSON_OPTIONS, separators=(",", ":"), ensure_ascii=False)


def _number_from_key(number: decimal.Decimal) -> Any:
    if number.is_finite() and number == number.to_integral_value():
        integer = int(number)
        if -2 ** 31 <= integer < 2 ** 31:
            return integer
        if -2 ** 63 <= integer < 2 ** 63:
            return Int64(integer)
    as_float = float(number)
    if number.is_nan() or not number.is_finite() or decimal.Decimal(as_float) == number:
        return as_float
    return Decimal128(number)


def _restore_numbers(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return _number_from_key(value)
    if isinstance(value, int) and not isinstance(value, (bool, Int64)):
        return _number_from_key(decimal.Decimal(value))
    if isinstance(value, dict):
        return {k: _restore_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_numbers(v) for v in value]
    return value


def parse_key(text: str) -> Any:
    """The ``_id`` value of a canonical key string (numbers: int, Int64, double when exact, else Decimal128)."""
    if text in ("NaN", "Infinity", "-Infinity"):
        return float(text)
    # Integers stay int while parsing (Extended JSON's own {"$timestamp": {"t": 1, "i": 2}} and {"$minKey": 1}
    # need them), and become int, Int64 or a double afterwards.
    return _restore_numbers(json_util_loads(text, json_options=_READ_JSON, parse_float=decimal.Decimal))


# --- portable text -> BSON (the sink's direction) ----------------------------------------------------------------


def to_bson(text: str | None, column: Column, dialect: str) -> Any:
    """The BSON value to store for a portable ``text`` of ``column``.

    A column from a MongoDB source (``dialect == "mongodb"``) gets its BSON type back from ``source_type``; any
    other maps from the logical type: decimals become Decimal128 (an exact value with more than 34 digits raises
    ``decimal.Inexact``), timestamps and dates become BSON dates (UTC), binary becomes binary, uuid becomes binary
    subtype 4, json becomes documents and arrays, ``time`` and ``other`` stay text."""
    if text is None:
        return None
    if dialect == "mongodb" and not column.derived:
        kind = column.source_type
        if kind == ID_SOURCE_TYPE:
            return parse_key(text)
        if kind == "int":
            return int(text)
        if kind == "long":
            return Int64(int(text))
        if kind == "objectId":
            return ObjectId(text)
        if kind not in LOGICAL_TYPES:
            return json_util_loads(text, json_options=_READ_JSON)
    kind = column.logical_type
    if kind == "decimal":
        return _decimal128(text)
    if kind in ("timestamptz", "timestamp", "date"):
        value = parse_value(text, kind)
        if isinstance(value, str):
            raise UnsupportedValueError(f"{kind} {value!r} has no BSON date form")
        if isinstance(value, dt.datetime):
            return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    if kind == "time":
        return text
    if kind == "binary":
        return Binary(bytes.fromhex(text), 0)
    if kind == "uuid":
        return Binary.from_uuid(uuid.UUID(text))
    if kind == "json":
        return json.loads(text)
    if kind in ("integer", "float", "boolean"):
        return parse_value(text, kind)
    return text


_DECIMAL128_CONTEXT = decimal.Context(prec=34, Emin=-6143, Emax=6144, traps=[decimal.Inexact, decimal.Overflow,
                                                                             decimal.InvalidOperation])


def _decimal128(text: str) -> Decimal128:
    value = decimal.Decimal(text)
    if value.is_finite():
        value = _DECIMAL128_CONTEXT.create_decimal(value)  # raises on more than 34 significant digits
    return Decimal128(value)
