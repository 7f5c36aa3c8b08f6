"""Rows of a batch as MongoDB documents: the key as ``_id``, every other column a typed field, NULL as no field.

Values arrive as portable text (the value contract) and become BSON through :func:`~.documents.to_bson`: Decimal128
for decimals, dates for timestamps, Binary for bytes and uuids (subtype 4), embedded documents and arrays for json,
exactly the BSON type a MongoDB source had (``source_type``) for a table of that dialect. A value the sink cannot
store as it is stops the batch with a :class:`~airflow_provider_cdc.errors.SinkError` naming table, column and key,
before anything is written (the transaction aborts):

* a decimal with more than 34 significant digits (Decimal128's precision), or beyond its exponent range;
* a timestamp or date ``infinity``, or one outside years 1 to 9999 (a BSON date as Python reads it);
* a json value nested deeper than mongod stores (:data:`MAX_DEPTH`), or with a number Decimal128 cannot hold;
* a key column holding a timestamp finer than a millisecond (two such keys would become one document).

**Timestamps with microseconds** (documented policy): a BSON date holds milliseconds, so such values are stored
truncated to the millisecond, and the sink logs ONE warning per table and column and batch with how many values it
truncated (:attr:`DocumentMaker.truncated`). Refusing them would stop every PostgreSQL ``now()`` column; keeping them
as text would give up the date type the value contract promises.

**json from other sources** is read with exact numbers: an integer beyond int64 or a number with more digits than a
double keeps its value as Decimal128 (``json.loads`` would round it); plain numbers stay int and double.

``time`` is stored as its portable text (``12:00:00.25``): BSON has no time-of-day type, and a date on 1970-01-01
would turn a time into an instant. ``other`` (a source's own text) stays text too.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Mapping, Sequence
from typing import Any

from bson import Decimal128, Int64

from airflow_provider_cdc.connectors.mongodb.connection import MONGODB_DIALECT
from airflow_provider_cdc.connectors.mongodb.documents import ID_FIELD, parse_key, to_bson
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.tables import RESERVED_PREFIX, Column, TableSchema

# mongod 6.0 refuses a document nested more than 180 levels deep (measured: a field's value nested 179 levels is
# stored, 180 is not); the top-level document is one of them.
MAX_DEPTH = 179
_INT64 = 2 ** 63
_DECIMAL128 = decimal.Context(prec=34, Emin=-6143, Emax=6144,
                              traps=[decimal.Inexact, decimal.Overflow, decimal.InvalidOperation])
_TIMESTAMPS = ("timestamptz", "timestamp")
_TOO_DEEP = f"it is nested more than {MAX_DEPTH} levels deep, and MongoDB stores documents of at most 180 levels"


class ValueRefused(ValueError):
    """A portable value with no faithful BSON form here (the reason says why)."""


def bson_value(text: str | None, column: Column, dialect: str) -> Any:
    """The BSON value of ``text`` in ``column`` (None for NULL), or :class:`ValueRefused`."""
    if text is None:
        return None
    try:
        if column.logical_type == "json" and dialect != MONGODB_DIALECT:
            value = exact_json(text)
        else:
            value = to_bson(text, column, dialect)
    except (ValueError, ArithmeticError, TypeError, RecursionError) as exc:
        raise ValueRefused(_reason(exc, column)) from exc
    if isinstance(value, (Mapping, list)):
        depth = nesting(value)
        if depth > MAX_DEPTH:
            raise ValueRefused(_TOO_DEEP)
    return value


def _reason(exc: BaseException, column: Column) -> str:
    if isinstance(exc, decimal.Inexact):
        return "it has more than the 34 significant digits a Decimal128 holds"
    if isinstance(exc, (decimal.Overflow, decimal.InvalidOperation)):
        return "it is outside the range of a Decimal128"
    if isinstance(exc, RecursionError):
        return _TOO_DEEP
    if column.logical_type in ("timestamptz", "timestamp", "date"):
        return f"a BSON date holds instants of years 1 to 9999 only ({exc})"
    return str(exc) or type(exc).__name__


def exact_json(text: str) -> Any:
    """JSON text as BSON values, numbers exactly (see the module docstring)."""
    return json.loads(text, parse_int=_json_int, parse_float=_json_float)


def _json_int(text: str) -> Any:
    value = int(text)
    return value if -_INT64 <= value < _INT64 else Decimal128(_DECIMAL128.create_decimal(text))


def _json_float(text: str) -> Any:
    exact = decimal.Decimal(text)
    as_float = float(text)
    if as_float == float("inf") or as_float == float("-inf") or decimal.Decimal(repr(as_float)) != exact:
        return Decimal128(_DECIMAL128.create_decimal(exact))
    return as_float


def nesting(value: Any, limit: int = MAX_DEPTH + 1) -> int:
    """How many levels of documents and arrays ``value`` has (a scalar 0), counted up to ``limit`` without
    recursion (a json value may be nested thousands deep)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth >= limit:
            return depth
        children = item.values() if isinstance(item, Mapping) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (Mapping, list)))
    return deepest


class DocumentMaker:
    """Turns one table's folded rows into documents (``_id`` first, then the columns, NULL left out).

    ``_id``: for a table from a MongoDB source (dialect ``mongodb``), the document key its ``_id`` column holds in
    canonical form; otherwise the key column's typed value, or for a composite key a document of the key columns in
    key order (key columns are then also ordinary fields). Columns the batch has but ``schema`` does not (dropped
    within the batch, or kept by ``lenient``) are converted by the column they were declared as in ``known``.
    """

    def __init__(self, schema: TableSchema, names: Sequence[str], *, known: Mapping[str, Column] | None = None,
                 sink_id: str, label: str, batch_id: str | None) -> None:
        self.schema = schema
        self.dialect = schema.dialect
        self.sink_id, self.label, self.batch_id = sink_id, label, batch_id
        self.key = schema.primary_key
        by_name = {**(known or {}), **{col.name: col for col in schema.columns}}
        self.columns = [by_name.get(name) or Column(name, "text", "text") for name in names
                        if not name.startswith(RESERVED_PREFIX)]
        self.key_columns = [by_name[name] for name in self.key]
        self.mongo = self.dialect == MONGODB_DIALECT
        # Fields of the document: the key's own field is ``_id`` for a MongoDB table and a one-column ``_id`` key.
        self.fields = [col for col in self.columns if col.name != ID_FIELD]
        self.truncated: dict[str, int] = {}

    # --- keys -------------------------------------------------------------------------------------------------

    def key_of(self, row: Mapping[str, Any], prefix: str = "") -> Any:
        """The ``_id`` of ``row`` (of its before-image key with ``prefix``)."""
        if self.mongo:
            text = row.get(prefix + ID_FIELD)
            if text is None:
                raise self.refused(row, ID_FIELD, text, "a document key cannot be NULL")
            try:
                return parse_key(text)
            except (ValueError, ArithmeticError, TypeError) as exc:
                raise self.refused(row, ID_FIELD, text, f"it is not a canonical document key ({exc})") from exc
        values = [self._key_value(row, col, prefix) for col in self.key_columns]
        if len(values) == 1:
            return values[0]
        return {col.name: value for col, value in zip(self.key_columns, values)}

    def _key_value(self, row: Mapping[str, Any], col: Column, prefix: str) -> Any:
        text = row.get(prefix + col.name)
        if text is None:
            raise self.refused(row, col.name, text, "a key column cannot be NULL")
        try:
            value = bson_value(text, col, self.dialect)
        except ValueRefused as exc:
            raise self.refused(row, col.name, text, str(exc)) from exc
        if isinstance(value, dt.datetime) and value.microsecond % 1000:
            raise self.refused(row, col.name, text, "a key timestamp finer than a millisecond has no BSON date form "
                                                    "(keys that differ below a millisecond would become one document)")
        return value

    def describe_key(self, row: Mapping[str, Any], prefix: str = "") -> str:
        return "(" + ", ".join(f"{name}={row.get(prefix + name)}" for name in self.key) + ")"

    # --- documents --------------------------------------------------------------------------------------------

    def fields_of(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The fields of ``row`` (no ``_id``): typed values, NULL left out; a JSON ``null`` stays a null field."""
        out: dict[str, Any] = {}
        for col in self.fields:
            text = row.get(col.name)
            if text is None:
                continue
            try:
                value = bson_value(text, col, self.dialect)
            except ValueRefused as exc:
                raise self.refused(row, col.name, text, str(exc)) from exc
            if col.logical_type in _TIMESTAMPS and isinstance(value, dt.datetime) and value.microsecond % 1000:
                value = value.replace(microsecond=value.microsecond // 1000 * 1000)
                self.truncated[col.name] = self.truncated.get(col.name, 0) + 1
            out[col.name] = value
        return out

    def refused(self, row: Mapping[str, Any], column: str, text: str | None, reason: str) -> SinkError:
        col = next((c for c in self.columns if c.name == column), None)
        kind = f" ({col.logical_type})" if col is not None else ""
        shown = "NULL" if text is None else repr(text[:80])
        return SinkError(
            self.sink_id,
            f"column {column!r}{kind} of source table {self.schema.qualified_name}, key {self.describe_key(row)}: "
            f"value {shown} cannot be stored in MongoDB: {reason}; nothing of this batch was written. Fix the value "
            f"at the source (or filter the row in a transformation rule), then run again",
            table=self.label, batch_id=self.batch_id, terminal=True,
        )


def plain(value: Any) -> Any:
    """A BSON value read back as the plain Python value it stands for (Int64 -> int, Decimal128 -> Decimal), inside
    documents and arrays too: what comparisons and tests want."""
    if isinstance(value, Int64):
        return int(value)
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value
