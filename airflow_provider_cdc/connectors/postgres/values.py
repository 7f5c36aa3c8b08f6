"""PostgreSQL text ↔ the portable forms of the value contract (:mod:`airflow_provider_cdc.values`), both ways.

Sessions of the source print every value canonically (``TimeZone=UTC``, ``DateStyle=ISO``, ``bytea_output=hex``,
shortest float digits), so PostgreSQL's own text differs from the portable form in four logical types only:

=================  ==============================  ================================
logical type       PostgreSQL text                 portable form
=================  ==============================  ================================
``boolean``        ``t`` / ``f``                   ``true`` / ``false``
``binary``         ``\\xdeadbeef``                  ``deadbeef``
``timestamptz``    ``2024-05-01 12:00:00.25+00``   ``2024-05-01T12:00:00.25Z``
``timestamp``      ``2024-05-01 12:00:00.25``      ``2024-05-01T12:00:00.25``
=================  ==============================  ================================

Values that do not match the expected pattern keep PostgreSQL's text: ``infinity``, dates before Christ
(``0044-03-15 12:00:00+00 BC``), years after 9999. Every conversion is vectorised (Arrow compute), applied only to
the columns whose logical type needs it, and idempotent (a portable value passes unchanged), so a table that went
through it twice is still right.

The other way, PostgreSQL reads every portable form as input of the type it names (``true``, ``2024-05-01T12:00Z``)
except binary, which needs its ``\\x`` back: :func:`to_pg_input` and :func:`pg_input_scalar`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_cdc.events import BEFORE_PREFIX
from airflow_provider_cdc.tables import Column, TableSchema

# Logical types whose PostgreSQL text differs from the portable form.
CONVERTED_TYPES = frozenset({"boolean", "binary", "timestamptz", "timestamp"})

_TIMESTAMPTZ = r"^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?)\+00$"
_TIMESTAMP = r"^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?)$"
_TIMESTAMPTZ_RE = re.compile(_TIMESTAMPTZ)
_TIMESTAMP_RE = re.compile(_TIMESTAMP)


def _combined(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def to_portable(values: pa.Array | pa.ChunkedArray, logical_type: str) -> pa.Array | pa.ChunkedArray:
    """PostgreSQL text of one column → its portable form (see the module table); other types pass unchanged."""
    if logical_type not in CONVERTED_TYPES or len(values) == 0 or values.null_count == len(values):
        return values
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return values
    if logical_type == "boolean":
        return pc.if_else(pc.equal(values, "t"), "true", pc.if_else(pc.equal(values, "f"), "false", values))
    if logical_type == "binary":
        return pc.if_else(pc.starts_with(values, "\\x"), pc.utf8_slice_codeunits(values, 2), values)
    if logical_type == "timestamptz":
        return pc.replace_substring_regex(values, _TIMESTAMPTZ, r"\1T\2Z")
    return pc.replace_substring_regex(values, _TIMESTAMP, r"\1T\2")


def to_portable_scalar(text: str | None, logical_type: str) -> str | None:
    """:func:`to_portable` of one value (a backfill, a key in a position)."""
    if text is None:
        return None
    if logical_type == "boolean":
        return {"t": "true", "f": "false"}.get(text, text)
    if logical_type == "binary":
        return text[2:] if text.startswith("\\x") else text
    if logical_type == "timestamptz":
        return _TIMESTAMPTZ_RE.sub(r"\1T\2Z", text)
    if logical_type == "timestamp":
        return _TIMESTAMP_RE.sub(r"\1T\2", text)
    return text


def portable_table(table: pa.Table, schema: TableSchema, columns: Iterable[Column] | None = None) -> pa.Table:
    """``table`` (PostgreSQL text) with every source and before-image column in its portable form.

    ``columns`` limits the work to those columns (default: every column of ``schema``)."""
    wanted = {c.name: c.logical_type for c in (columns if columns is not None else schema.columns)
              if c.logical_type in CONVERTED_TYPES}
    if not wanted:
        return table
    for i, name in enumerate(table.column_names):
        base = name[len(BEFORE_PREFIX):] if name.startswith(BEFORE_PREFIX) else name
        kind = wanted.get(base)
        if kind is None:
            continue
        converted = to_portable(table.column(i), kind)
        if converted is not table.column(i):
            table = table.set_column(i, table.field(i), converted)
    return table


def to_pg_input(values: pa.Array | pa.ChunkedArray, logical_type: str) -> pa.Array | pa.ChunkedArray:
    """Portable values of one column → text PostgreSQL's input functions read as the same value.

    Only binary differs (``deadbeef`` → ``\\xdeadbeef``); PostgreSQL's own ``\\x...`` text passes unchanged."""
    if logical_type != "binary" or len(values) == 0 or values.null_count == len(values):
        return values
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return values
    return pc.if_else(pc.starts_with(values, "\\x"), values, pc.binary_join_element_wise("\\x", values, ""))


def pg_input_scalar(text: str | None, logical_type: str) -> str | None:
    """:func:`to_pg_input` of one value (a backfill default, a key bound into a query)."""
    if text is None or logical_type != "binary" or text.startswith("\\x"):
        return text
    return "\\x" + text


def pg_input_table(table: pa.Table, types: dict[str, str]) -> pa.Table:
    """``table`` with each column named in ``types`` (column → logical type) made PostgreSQL input."""
    for i, name in enumerate(table.column_names):
        kind = types.get(name)
        if kind == "binary":
            table = table.set_column(i, table.field(i), to_pg_input(table.column(i), kind))
    return table


def numeric_precision_scale(declared: str) -> tuple[int | None, int | None]:
    """``numeric(12,2)`` → (12, 2); ``numeric(5)`` → (5, 0); unconstrained ``numeric`` → (None, None)."""
    match = re.fullmatch(r"\s*numeric\s*\(\s*(\d+)\s*(?:,\s*(-?\d+)\s*)?\)\s*", declared)
    if not match:
        return None, None
    return int(match[1]), int(match[2] or 0)
