"""The value contract: one portable text form per logical type, and one Arrow type for rules, checks and typed sinks.

Every source declares each column's ``logical_type`` and puts values into a batch in that type's **portable
form**, so that the same logical value is the same string whatever database it came from: a ``timestamptz``
from PostgreSQL, a MySQL ``TIMESTAMP`` and a MongoDB ``Date`` all read ``2024-05-01T12:00:00.25Z``. Batches carry
text (it measured faster than typed Arrow on the PostgreSQL path, whose decoder and ``COPY`` both speak text, and it
keeps ``numeric(38,10)`` exact); :func:`typed_table` gives the fixed Arrow types when a stage or sink needs numbers
and dates.

================  =============================================  ==========================================
logical type      portable form (text)                           Arrow type (:func:`arrow_type`)
================  =============================================  ==========================================
``integer``       ``-42``                                        ``int64``
``decimal``       ``-1234.5600`` (plain, no exponent; ``NaN``,   ``decimal128(p, s)``; ``string`` when the
                  ``Infinity``, ``-Infinity`` where the source   source declares no precision or p > 38
                  has them)
``float``         ``1.5``, ``1e+100``, ``NaN``, ``Infinity``,    ``float64``
                  ``-Infinity`` (shortest round-trip digits)
``boolean``       ``true`` / ``false``                           ``bool``
``text``          the string                                     ``string``
``timestamptz``   ``2024-05-01T12:00:00.25Z``: UTC, fraction     ``timestamp[us, UTC]``
                  trimmed of trailing zeros and omitted when
                  zero; ``infinity`` / ``-infinity``
``timestamp``     ``2024-05-01T12:00:00.25`` (no zone)           ``timestamp[us]``
``date``          ``2024-05-01``; ``infinity`` / ``-infinity``   ``date32``
``time``          ``12:00:00.25`` (no zone)                      ``time64[us]``
``json``          JSON text                                      ``string``
``binary``        lowercase hex, no prefix: ``deadbeef``         ``binary``
``uuid``          lowercase ``8-4-4-4-12``                       ``string``
``other``         the source's own text, for a sink of the       ``string``
                  same dialect (arrays, ranges, intervals...)
================  =============================================  ==========================================

Values outside what the Arrow type holds (``infinity``, a numeric ``NaN``, a year before 1 or after 9999) keep
their portable text. :func:`typed_table` refuses them with :class:`UntypedValueError` naming the column and value,
unless asked to turn them into NULL: a typed sink stops rather than silently storing something else, and a sink of
the source's own dialect stores the text exactly.

Sources format Python values with :func:`format_value`; sinks that bind Python values read them with
:func:`parse_value`. Both are the reference for what each form means; the vectorised paths must agree with them.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from airflow_provider_cdc.tables import Column, TableSchema

LOGICAL_TYPES = (
    "integer", "decimal", "float", "boolean", "text", "timestamptz", "timestamp", "date", "time", "json", "binary",
    "uuid", "other",
)
MAX_DECIMAL128_PRECISION = 38
# Special values that some logical types have at their source but no Arrow type holds.
SPECIAL_VALUES = {
    "decimal": frozenset({"NaN", "Infinity", "-Infinity"}),
    "timestamptz": frozenset({"infinity", "-infinity"}),
    "timestamp": frozenset({"infinity", "-infinity"}),
    "date": frozenset({"infinity", "-infinity"}),
}

_TRUE, _FALSE = "true", "false"


class UntypedValueError(ValueError):
    """A portable value that the logical type's Arrow type cannot hold (``infinity``, a numeric NaN...)."""

    def __init__(self, column: str, logical_type: str, value: str, reason: str = "") -> None:
        self.column, self.logical_type, self.value = column, logical_type, value
        detail = f": {reason}" if reason else ""
        super().__init__(
            f"column {column!r} ({logical_type}): value {value[:80]!r} has no {logical_type} form outside its "
            f"source's own dialect{detail}"
        )


# --- Arrow types ------------------------------------------------------------------------------------------------


def arrow_type(column: Column) -> pa.DataType:
    """The fixed Arrow type of a column's typed view (see the module table)."""
    kind = column.logical_type
    if kind == "decimal":
        precision, scale = column.precision, column.scale
        if precision is None or precision > MAX_DECIMAL128_PRECISION:
            return pa.string()  # unconstrained: any scale, so only text stays exact
        return pa.decimal128(precision, scale or 0)
    return _ARROW_TYPES.get(kind, pa.string())


_ARROW_TYPES: dict[str, pa.DataType] = {
    "integer": pa.int64(),
    "float": pa.float64(),
    "boolean": pa.bool_(),
    "text": pa.string(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "timestamp": pa.timestamp("us"),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "json": pa.string(),
    "binary": pa.binary(),
    "uuid": pa.string(),
    "other": pa.string(),
}


# --- typed views --------------------------------------------------------------------------------------------------


def typed_column(values: pa.Array | pa.ChunkedArray, column: Column, *, specials_as_null: bool = False) -> pa.Array:
    """Convert one column of portable text to its Arrow type.

    ``specials_as_null`` turns values the Arrow type cannot hold into NULL (for rules that only read); without it
    they raise :class:`UntypedValueError`.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    target = arrow_type(column)
    if values.type == target:
        return values
    if pa.types.is_null(values.type):
        return pa.nulls(len(values), target)
    kind = column.logical_type
    specials = SPECIAL_VALUES.get(kind)
    if specials and pa.types.is_string(values.type) and not pa.types.is_string(target):
        special_mask = pc.is_in(values, value_set=pa.array(sorted(specials)))
        if pc.any(special_mask).as_py():
            if not specials_as_null:
                first = values.filter(special_mask)[0].as_py()
                raise UntypedValueError(column.name, kind, first)
            values = pc.if_else(special_mask, pa.scalar(None, pa.string()), values)
    try:
        if kind == "boolean":
            return _typed_boolean(values, column)
        if kind == "binary":
            return pa.array([None if v is None else bytes.fromhex(v) for v in values.to_pylist()], pa.binary())
        if kind == "decimal" and pa.types.is_decimal(target):
            return _typed_decimal(values, column, target)
        if kind == "time":  # Arrow has no string -> time cast; a timestamp on day 0 gives the time of day
            on_day0 = pc.binary_join_element_wise("1970-01-01T", values, "")
            return pc.cast(pc.cast(on_day0, pa.timestamp("us")), target)
        return pc.cast(values, target)
    except (pa.ArrowInvalid, ValueError) as exc:
        if isinstance(exc, UntypedValueError):
            raise
        bad = _first_unconvertible(values, column)
        raise UntypedValueError(column.name, kind, bad if bad is not None else "?", str(exc)) from exc


def _typed_boolean(values: pa.Array, column: Column) -> pa.Array:
    known = pc.or_(pc.equal(values, _TRUE), pc.equal(values, _FALSE))
    # min_count=0: an empty column is all known (the default answers NULL for no values).
    if not pc.all(pc.fill_null(known, True), min_count=0).as_py():
        bad = values.filter(pc.invert(pc.fill_null(known, True)))[0].as_py()
        raise UntypedValueError(column.name, "boolean", bad, "expected 'true' or 'false'")
    return pc.equal(values, _TRUE)


def _typed_decimal(values: pa.Array, column: Column, target: pa.DataType) -> pa.Array:
    try:
        return pc.cast(values, target)
    except pa.ArrowInvalid as exc:
        # Arrow refuses text with more fractional digits than the scale even when they are zeros ("1.500" into
        # scale 2); Python's Decimal quantizes exactly and says which value does not fit.
        scale = decimal.Decimal(1).scaleb(-(target.scale))
        out: list[decimal.Decimal | None] = []
        for v in values.to_pylist():
            if v is None:
                out.append(None)
                continue
            try:
                d = decimal.Decimal(v)
                q = d.quantize(scale)
            except decimal.InvalidOperation:  # no number at all, or more digits than any decimal here holds
                q = None
            if q is None or not q.is_finite() or len(q.as_tuple().digits) > target.precision:
                raise UntypedValueError(column.name, "decimal", v,
                                        f"not a number that fits decimal({target.precision},{target.scale})") from exc
            if q != d:
                raise UntypedValueError(
                    column.name, "decimal", v, f"more than {target.scale} decimal places"
                ) from exc
            out.append(q)
        return pa.array(out, target)


def _first_unconvertible(values: pa.Array, column: Column) -> str | None:
    target = arrow_type(column)
    for v in values.to_pylist():
        if v is None:
            continue
        try:
            pc.cast(pa.array([v]), target) if column.logical_type not in ("boolean", "binary") else parse_value(
                v, column.logical_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):  # a bad time: "not implemented"
            return v
    return None


def typed_table(table: pa.Table, schema: TableSchema, *, specials_as_null: bool = False,
                columns: Iterable[str] | None = None) -> pa.Table:
    """``table`` with each source column (and before-image column) converted to its Arrow type.

    Bookkeeping columns (``_cdc_*``) stay as they are. ``columns`` limits the conversion to those source columns.
    """
    from airflow_provider_cdc.events import BEFORE_PREFIX

    wanted = set(columns) if columns is not None else None
    by_name = {c.name: c for c in schema.columns}
    out = table
    for i, name in enumerate(table.column_names):
        base = name[len(BEFORE_PREFIX):] if name.startswith(BEFORE_PREFIX) else name
        column = by_name.get(base)
        if column is None or (wanted is not None and base not in wanted):
            continue
        typed = typed_column(table.column(i), column, specials_as_null=specials_as_null)
        out = out.set_column(i, pa.field(name, typed.type), typed)
    return out


# --- scalars: the reference forms -----------------------------------------------------------------------------


def _trim_fraction(text: str) -> str:
    head, dot, frac = text.partition(".")
    frac = frac.rstrip("0")
    return f"{head}.{frac}" if frac else head


def format_value(value: Any, logical_type: str) -> str | None:
    """The portable form of a Python value (what sources without a text protocol produce)."""
    if value is None:
        return None
    if logical_type == "boolean":
        return _TRUE if value else _FALSE
    if logical_type == "integer":
        return str(int(value))
    if logical_type == "float":
        f = float(value)
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"
        return repr(f)
    if logical_type == "decimal":
        d = value if isinstance(value, decimal.Decimal) else decimal.Decimal(str(value))
        if d.is_nan():
            return "NaN"
        if d.is_infinite():
            return "Infinity" if d > 0 else "-Infinity"
        return format(d, "f")
    if logical_type == "timestamptz":
        if not isinstance(value, dt.datetime):
            raise TypeError(f"timestamptz needs a datetime, got {type(value).__name__}")
        if value.tzinfo is None:
            raise ValueError("timestamptz needs an aware datetime (a naive one has no instant)")
        utc = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return _trim_fraction(utc.isoformat(timespec="microseconds")) + "Z"
    if logical_type == "timestamp":
        if not isinstance(value, dt.datetime):
            raise TypeError(f"timestamp needs a datetime, got {type(value).__name__}")
        return _trim_fraction(value.replace(tzinfo=None).isoformat(timespec="microseconds"))
    if logical_type == "date":
        return value.isoformat()
    if logical_type == "time":
        if isinstance(value, dt.timedelta):  # MySQL TIME arrives as a duration
            total = round(value.total_seconds() * 1_000_000)
            seconds, micros = divmod(total, 1_000_000)
            value = dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60, micros)
        return _trim_fraction(value.replace(tzinfo=None).isoformat(timespec="microseconds"))
    if logical_type == "binary":
        return bytes(value).hex()
    if logical_type == "uuid":
        return str(uuid.UUID(str(value)))
    if logical_type == "json":
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return str(value)


def parse_value(text: str | None, logical_type: str) -> Any:
    """The Python value of a portable form (the inverse of :func:`format_value`; ``other`` stays text)."""
    if text is None:
        return None
    if logical_type == "boolean":
        if text not in (_TRUE, _FALSE):
            raise ValueError(f"not a portable boolean: {text!r}")
        return text == _TRUE
    if logical_type == "integer":
        return int(text)
    if logical_type == "float":
        return float(text)
    if logical_type == "decimal":
        return decimal.Decimal(text)
    if logical_type == "timestamptz":
        if text in SPECIAL_VALUES["timestamptz"]:
            return text
        if not text.endswith("Z"):
            raise ValueError(f"not a portable timestamptz (UTC, ending in Z): {text!r}")
        return dt.datetime.fromisoformat(text[:-1]).replace(tzinfo=dt.timezone.utc)
    if logical_type == "timestamp":
        return text if text in SPECIAL_VALUES["timestamp"] else dt.datetime.fromisoformat(text)
    if logical_type == "date":
        return text if text in SPECIAL_VALUES["date"] else dt.date.fromisoformat(text)
    if logical_type == "time":
        return dt.time.fromisoformat(text)
    if logical_type == "binary":
        return bytes.fromhex(text)
    if logical_type == "uuid":
        return uuid.UUID(text)
    if logical_type == "json":
        return json.loads(text)
    return text


def binary_from_base64(text: str) -> str:
    """Portable binary from base64 (MongoDB extended JSON and some APIs)."""
    return base64.b64decode(text).hex()
