"""Result typing: which logical type a rule's output has, and converting Python values to it exactly.

A rule's output column gets a logical type of the value contract (:mod:`airflow_provider_cdc.values`), from the
rule's ``target_type:`` when it declares one, else from what the expression gives. Values reach the batch as
portable text through :func:`to_text`, which is :func:`~airflow_provider_cdc.values.format_value` after an exact
conversion: a value that would need rounding or truncating to fit (``1.234`` into ``decimal(10,2)``, ``1.5`` into
``integer``) is an error, never silently changed, so a rule cannot corrupt data on the way to the sink.

Decimal arithmetic in rules runs under :data:`DECIMAL_CONTEXT` (76 significant digits): ``+``, ``-`` and ``*`` on
any ``decimal(38, s)`` values are exact, where Python's default context (28 digits) would round them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import math
import re
import uuid
from collections.abc import Iterable
from typing import Any

from airflow_provider_cdc.tables import Column
from airflow_provider_cdc.values import LOGICAL_TYPES, MAX_DECIMAL128_PRECISION, SPECIAL_VALUES, format_value

DECIMAL_CONTEXT = decimal.Context(
    prec=2 * MAX_DECIMAL128_PRECISION,
    rounding=decimal.ROUND_HALF_EVEN,
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)
"""The decimal context rules run in: products of two 38-digit decimals stay exact."""

_ALIASES = {
    "int": "integer", "bigint": "integer", "string": "text", "str": "text", "bool": "boolean",
    "numeric": "decimal", "double": "float", "jsonb": "json", "bytes": "binary",
}
_DECIMAL = re.compile(r"(?:decimal|numeric)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)", re.IGNORECASE)
_INTEGER_TEXT = re.compile(r"\s*[+-]?\d+\s*")
_TRUE_TEXT = frozenset({"true", "t", "yes", "y", "1"})
_FALSE_TEXT = frozenset({"false", "f", "no", "n", "0"})


class ConversionError(ValueError):
    """A value that does not convert to a logical type exactly."""


@dataclasses.dataclass(frozen=True)
class OutType:
    """A logical type of the value contract, with a decimal's precision and scale (None: unconstrained)."""

    logical: str
    precision: int | None = None
    scale: int | None = None

    @property
    def name(self) -> str:
        """``decimal(13,2)``, ``decimal`` or the logical type: what a new column's ``source_type`` says."""
        if self.logical == "decimal" and self.precision is not None:
            return f"decimal({self.precision},{self.scale or 0})"
        return self.logical

    def column(self, name: str) -> Column:
        """A rule's target column of this type (it has no identity at the source: ``ordinal`` None)."""
        return Column(name, self.name, self.logical, precision=self.precision,
                      scale=self.scale if self.precision is not None else None, ordinal=None, derived=True)

    @classmethod
    def of_column(cls, column: Column) -> OutType:
        if column.logical_type == "decimal":
            return cls("decimal", column.precision, column.scale if column.precision is not None else None)
        return cls(column.logical_type)

    def __str__(self) -> str:
        return self.name


def parse_type(text: str) -> OutType:
    """``integer``, ``decimal(10,2)``, ``text``... (a logical type of the value contract, or a common alias)."""
    if not isinstance(text, str):
        raise ValueError(f"a type is a name such as 'integer' or 'decimal(10,2)', not {text!r}")
    spec = text.strip()
    match = _DECIMAL.fullmatch(spec)
    if match:
        precision, scale = int(match.group(1)), int(match.group(2) or 0)
        if precision < 1 or scale > precision:
            raise ValueError(f"{text!r}: a decimal needs 1 <= precision and scale <= precision")
        return OutType("decimal", precision, scale)
    name = _ALIASES.get(spec.lower(), spec.lower())
    if name not in LOGICAL_TYPES:
        raise ValueError(f"unknown type {text!r}; use one of {', '.join(LOGICAL_TYPES)} or decimal(p,s)")
    return OutType(name)


def type_of_value(value: Any) -> OutType | None:
    """The logical type a Python result has (None for None, and for objects no logical type holds)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return OutType("boolean")
    if isinstance(value, int):
        return OutType("integer")
    if isinstance(value, float):
        return OutType("float")
    if isinstance(value, decimal.Decimal):
        return OutType("decimal")
    if isinstance(value, str):
        return OutType("text")
    if isinstance(value, dt.datetime):
        return OutType("timestamptz" if value.tzinfo is not None else "timestamp")
    if isinstance(value, dt.date):
        return OutType("date")
    if isinstance(value, dt.time):
        return OutType("time")
    if isinstance(value, (dict, list, tuple)):
        return OutType("json")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return OutType("binary")
    if isinstance(value, uuid.UUID):
        return OutType("uuid")
    return None


def unify(types: Iterable[OutType]) -> OutType:
    """One type for a column whose rows gave ``types`` (in row order): numbers widen (integer < decimal, and a
    float among decimals stays decimal, since a decimal holds every printed float exactly); decimals of different
    precision become unconstrained; anything else mixed keeps the first type, and rows that do not convert to it
    fail."""
    seen: list[OutType] = []
    for t in types:
        if t not in seen:
            seen.append(t)
    if not seen:
        return OutType("text")
    if len(seen) == 1:
        return seen[0]
    kinds = {t.logical for t in seen}
    if kinds <= {"integer", "decimal", "float"}:
        if "decimal" in kinds:
            return OutType("decimal")
        return OutType("float")
    return seen[0]


# --- conversion ---------------------------------------------------------------------------------------------------


def convert(value: Any, out: OutType) -> Any:
    """``value`` as the Python value of logical type ``out`` (what :func:`values.parse_value` would give), exactly;
    :class:`ConversionError` when it does not fit."""
    if value is None:
        return None
    kind = out.logical
    specials = SPECIAL_VALUES.get(kind)
    if specials and isinstance(value, str) and value in specials and kind != "decimal":
        return value  # timestamps and dates keep infinity as their portable text
    try:
        converter = _CONVERTERS.get(kind, _to_text)
        return converter(value, out)
    except ConversionError:
        raise
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise ConversionError(f"{_show(value)} is not a {out.name}: {exc}") from exc


def to_text(value: Any, out: OutType) -> str | None:
    """The portable text of ``value`` as type ``out`` (after :func:`convert`)."""
    converted = convert(value, out)
    if converted is None:
        return None
    if out.logical == "json":
        return _json_text(converted)
    if isinstance(converted, str) and out.logical in SPECIAL_VALUES and out.logical != "decimal":
        return converted
    return format_value(converted, out.logical)


def canonical_text(value: Any) -> str:
    """The portable text of any typed value (the text ``cast(x, 'text')``, ``hash`` and ``mask`` work on).

    Decimals drop trailing zeros, so ``1.5`` and ``1.50`` (one value) give one text."""
    if isinstance(value, str):
        return value
    if isinstance(value, decimal.Decimal) and value.is_finite():
        return format(value.normalize(DECIMAL_CONTEXT), "f")
    kind = type_of_value(value)
    if kind is None:
        raise ConversionError(f"a {type(value).__name__} has no text form in the value contract")
    if kind.logical == "json":
        return _json_text(value)
    text = format_value(value, kind.logical)
    assert text is not None
    return text


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _to_integer(value: Any, out: OutType) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, decimal.Decimal):
        if not value.is_finite() or value != value.to_integral_value():
            raise ConversionError(f"{_show(value)} is not an integer (it has a fraction); round it first")
        return int(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ConversionError(f"{_show(value)} is not an integer (it has a fraction); round it first")
        return int(value)
    if isinstance(value, str):
        if _INTEGER_TEXT.fullmatch(value):
            return int(value)
        try:
            return _to_integer(decimal.Decimal(value.strip()), out)  # "7.0" is an integer, "7.5" is not
        except decimal.InvalidOperation:
            pass
    raise ConversionError(f"{_show(value)} is not an integer")


def _to_decimal(value: Any, out: OutType) -> decimal.Decimal:
    if isinstance(value, bool):
        raise ConversionError(f"{_show(value)} is a boolean, not a decimal")
    if isinstance(value, decimal.Decimal):
        number = value
    elif isinstance(value, int):
        number = decimal.Decimal(value)
    elif isinstance(value, float):
        number = decimal.Decimal(repr(value)) if math.isfinite(value) else decimal.Decimal(str(value))
    elif isinstance(value, str):
        try:
            number = decimal.Decimal(value.strip())
        except decimal.InvalidOperation as exc:
            raise ConversionError(f"{_show(value)} is not a decimal") from exc
    else:
        raise ConversionError(f"a {type(value).__name__} is not a decimal")
    if not number.is_finite():
        return number
    if out.scale is not None and out.precision is not None:
        try:
            exact = number.quantize(decimal.Decimal(1).scaleb(-out.scale), context=DECIMAL_CONTEXT)
        except decimal.InvalidOperation as exc:
            raise ConversionError(f"{_show(value)} does not fit {out.name}") from exc
        if exact != number:
            raise ConversionError(f"{_show(value)} has more than {out.scale} decimal places for {out.name}; "
                                  "round it in the expression if that is meant")
        number = exact
        if number and number.adjusted() + 1 > out.precision - out.scale:
            raise ConversionError(f"{_show(value)} has more than {out.precision - out.scale} digits before the "
                                  f"point for {out.name}")
    if number.is_zero() and number.is_signed():
        number = number.copy_abs()  # -0.00 and 0.00 are one value; Arrow's decimals have no negative zero
    return number


def _to_float(value: Any, out: OutType) -> float:
    if isinstance(value, bool):
        raise ConversionError(f"{_show(value)} is a boolean, not a float")
    if isinstance(value, (int, float, decimal.Decimal)):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise ConversionError(f"a {type(value).__name__} is not a float")


def _to_boolean(value: Any, out: OutType) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE_TEXT:
            return True
        if lowered in _FALSE_TEXT:
            return False
    raise ConversionError(f"{_show(value)} is not a boolean (true/false)")


def _to_text(value: Any, out: OutType) -> str:
    return value if isinstance(value, str) else canonical_text(value)


def _to_json(value: Any, out: OutType) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{_show(value)} is not JSON text: {exc}") from exc
    if isinstance(value, tuple):
        return list(value)
    return value


def _to_timestamptz(value: Any, out: OutType) -> dt.datetime:
    if isinstance(value, str):
        text = value.strip()
        value = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    if not isinstance(value, dt.datetime):
        raise ConversionError(f"a {type(value).__name__} is not a timestamptz")
    if value.tzinfo is None:
        raise ConversionError(f"{_show(value)} has no time zone, so it names no instant; use target_type timestamp "
                              "or attach a zone in the expression")
    return value.astimezone(dt.timezone.utc)


def _to_timestamp(value: Any, out: OutType) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.strip())
    if not isinstance(value, dt.datetime):
        raise ConversionError(f"a {type(value).__name__} is not a timestamp")
    if value.tzinfo is not None:
        raise ConversionError(f"{_show(value)} has a time zone; use target_type timestamptz")
    return value


def _to_date(value: Any, out: OutType) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        return dt.date.fromisoformat(value.strip())
    raise ConversionError(f"a {type(value).__name__} is not a date")


def _to_time(value: Any, out: OutType) -> dt.time:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, str):
        return dt.time.fromisoformat(value.strip())
    raise ConversionError(f"a {type(value).__name__} is not a time")


def _to_binary(value: Any, out: OutType) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ConversionError(f"a {type(value).__name__} is not binary")


def _to_uuid(value: Any, out: OutType) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        return uuid.UUID(value.strip())
    raise ConversionError(f"a {type(value).__name__} is not a uuid")


_CONVERTERS = {
    "integer": _to_integer,
    "decimal": _to_decimal,
    "float": _to_float,
    "boolean": _to_boolean,
    "text": _to_text,
    "json": _to_json,
    "timestamptz": _to_timestamptz,
    "timestamp": _to_timestamp,
    "date": _to_date,
    "time": _to_time,
    "binary": _to_binary,
    "uuid": _to_uuid,
    "other": _to_text,
}


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        as_float = float(value)
        if math.isfinite(as_float) and decimal.Decimal(repr(as_float)) == value:
            return as_float
        return canonical_text(value)  # keeps every digit, as a JSON string
    return canonical_text(value)


def _json_text(value: Any) -> str:
    """JSON text as :func:`values.format_value` writes it, with typed values inside in their portable form."""
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=_json_default)
