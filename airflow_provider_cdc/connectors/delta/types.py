"""Column types of the file sink: the value contract's Arrow types, less what Delta Lake cannot hold.

A Delta table stores the fixed Arrow type of each logical type (:func:`airflow_provider_cdc.values.arrow_type`),
except four that Delta has no type for, which keep their portable text:

==========================  ===========================  =============================================
logical type                Delta column (Arrow)         why
==========================  ===========================  =============================================
``time``                    ``string`` (``12:00:00.25``)  Delta has no time-of-day type
``uuid``                    ``string``                    Delta has no uuid type
``other``                   ``string`` (source text)      no portable form: the source's own text
``decimal`` unconstrained   ``string`` (``-1234.5600``)   Delta decimals need a precision <= 38
==========================  ===========================  =============================================

The others are native: ``integer`` long, ``decimal(p,s)`` decimal(p,s), ``float`` double, ``boolean``,
``text`` and ``json`` string, ``timestamptz`` timestamp (UTC), ``timestamp`` timestamp_ntz, ``date``, ``binary``.

Conversion is strict: a value the Arrow type cannot hold (``infinity``, a numeric ``NaN``, year 10000) stops the
batch with a terminal :class:`~airflow_provider_cdc.errors.SinkError` naming table, column and value, before
anything is written. Storing NULL or a clamped value instead would be a silent divergence.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import BEFORE_PREFIX
from airflow_provider_cdc.tables import BOOKKEEPING_COLUMNS, Column, TableSchema
from airflow_provider_cdc.values import MAX_DECIMAL128_PRECISION, UntypedValueError, arrow_type, typed_column

# Bookkeeping columns of every sink table (``_cdc_deleted_at`` only with soft deletes).
OP, POSITION, TS, DELETED_AT = BOOKKEEPING_COLUMNS
UTC_MICROS = pa.timestamp("us", tz="UTC")
# Field metadata of ``_cdc_position``: the application transaction ids (``<source_id>:<schema.table>``) whose
# versions guard the table, so that emptying it can reset them (Delta keeps them in its log forever).
APP_IDS_KEY = "cdc.app_ids"

_TEXT_TYPES = frozenset({"time", "uuid", "other"})


def delta_type(column: Column) -> pa.DataType:
    """The Arrow type of ``column`` in a Delta table (see the module table)."""
    if column.logical_type in _TEXT_TYPES:
        return pa.string()
    if column.logical_type == "decimal":
        precision, scale = column.precision, column.scale or 0
        if precision is None or not 0 < precision <= MAX_DECIMAL128_PRECISION or not 0 <= scale <= precision:
            return pa.string()
    return arrow_type(column)


def stored_as_text(column: Column) -> bool:
    return pa.types.is_string(delta_type(column))


def bookkeeping_fields(delete_mode: str, app_ids: list[str] | tuple[str, ...] = ()) -> list[pa.Field]:
    fields = [
        pa.field(OP, pa.string()),
        pa.field(POSITION, pa.int64(), metadata={APP_IDS_KEY: json.dumps(sorted(app_ids))}),
        pa.field(TS, UTC_MICROS),
    ]
    if delete_mode == "soft":
        fields.append(pa.field(DELETED_AT, UTC_MICROS))
    return fields


def app_ids_of(schema: pa.Schema) -> list[str]:
    """The application transaction ids recorded on ``_cdc_position`` (empty when none)."""
    if POSITION not in schema.names:
        return []
    metadata = schema.field(POSITION).metadata or {}
    raw = metadata.get(APP_IDS_KEY.encode())
    return list(json.loads(raw)) if raw else []


def typed_values(values: pa.ChunkedArray | pa.Array, column: Column) -> pa.Array:
    """One column of portable text as its Delta type; raises :class:`UntypedValueError`."""
    if stored_as_text(column):
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        return values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
    return typed_column(values, column)


def typed_columns(
    table: pa.Table, schema: TableSchema, names: list[str], *, sink_id: str, label: str, batch_id: str | None
) -> pa.Table:
    """``table`` with the columns ``names`` (source columns, or ``_cdc_before:<col>``) in their Delta types.

    Any value with no typed form is a terminal :class:`SinkError` naming the table, the column and the value."""
    by_name = {col.name: col for col in schema.columns}
    out = table
    for name in names:
        base = name[len(BEFORE_PREFIX):] if name.startswith(BEFORE_PREFIX) else name
        column = by_name.get(base)
        if column is None or name not in out.column_names:
            continue
        try:
            typed = typed_values(out[name], column)
        except UntypedValueError as exc:
            raise SinkError(
                sink_id,
                f"source table {schema.qualified_name}, column {base!r} ({column.logical_type}"
                f"{'' if column.source_type in ('', column.logical_type) else ', ' + column.source_type}): value "
                f"{exc.value[:80]!r} cannot be stored in a Delta {delta_type(column)} column, so nothing of this batch "
                f"was written. A Delta table holds only values of the type's range (no 'infinity', no numeric NaN, "
                f"years 1 to 9999); change the value at the source, or load this source into a sink of its own dialect",
                table=label, batch_id=batch_id, terminal=True,
            ) from exc
        out = out.set_column(out.column_names.index(name), pa.field(name, typed.type), typed)
    return out


def is_safe_widening(old: pa.DataType, new: pa.DataType) -> bool:
    """Whether every value of ``old`` is exactly a value of ``new`` (so a column can go from one to the other)."""
    if old == new:
        return True
    if pa.types.is_decimal(old) and pa.types.is_decimal(new):
        return new.scale >= old.scale and new.precision - new.scale >= old.precision - old.scale
    if pa.types.is_signed_integer(old) and pa.types.is_signed_integer(new):
        return new.bit_width >= old.bit_width
    if pa.types.is_floating(old) and pa.types.is_floating(new):
        return new.bit_width >= old.bit_width
    return False
