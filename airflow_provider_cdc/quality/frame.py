"""The pandas frame GX validates: the judged rows of one batch table, typed, with the columns checks need beside them.

A batch table carries portable text (:mod:`airflow_provider_cdc.events`). GX judges a pandas DataFrame, built here:

- **Rows.** Only inserts, updates and snapshot reads (``_cdc_op`` in c, u, r): deletes and truncates carry no row to
  judge. The frame's index, named :data:`ROW_INDEX`, is each row's position in the *input* table, so GX's
  ``unexpected_index_list`` names input rows directly.
- **Typed values.** A column read by ``range``, ``in_set``, ``not_null``, ``unique`` or an ``expectation:`` rule
  holds its typed value (:func:`airflow_provider_cdc.values.typed_table`), so ``range`` on ``price`` compares
  numbers: integers as ``int64`` (pandas ``Int64`` when NULLs are present: a float would merge ids above 2**53),
  decimals and floats as ``float64``, dates as ``datetime.date``, timestamps as ``datetime64[us]`` (UTC for
  ``timestamptz``), times as that time on 1970-01-01 (GX takes no ``datetime.time`` bound); text, json, uuid,
  binary and other stay portable text. Decimals become floats because GX stores every numeric bound as a float
  (``min_value: 0.1``), and ``Decimal('0.1')`` is *below* the float ``0.1``: an exact decimal against a float bound
  would fail an inclusive minimum it meets. A decimal ``Infinity`` stays infinite; a numeric ``NaN`` is missing to
  pandas (it passes like NULL), and so is a date's or timestamp's ``infinity`` (no pandas type holds it). A value
  that breaks its column's type is missing from the typed view (a ``type`` rule names it).
- **Text forms.** ``pattern`` and ``length`` read the portable text; for a non-text column that is a companion
  column :func:`text_column`.
- **Type checks.** A ``type`` rule reads :func:`type_column`: the values that do not convert to its type, NULL
  elsewhere (:mod:`.typecheck`), which ``expect_column_values_to_be_null`` then judges row by row.
- **Unchanged values.** A value the source did not resend (``_cdc_unchanged``: PostgreSQL unchanged TOAST) is NULL
  here but is not NULL at the sink; :func:`judged_column` is False for it, and checks on that column skip the row
  through GX's ``row_condition`` (in the guarded suites of :mod:`.suites`, used only for batches that have such
  values).
- **Latest change per key.** :data:`LATEST` is False for a change that a later change of the same primary key in
  the batch supersedes (an insert then an update, or anything before a delete or a truncate): ``unique`` judges the
  rows the sink will hold, not every intermediate state of a key.

Bounds and set values are converted here too (:func:`gx_kwargs`), to the type of their column's frame values.

The frame holds only the columns some check reads (and the companions above), so expectations about the table's
shape (``expect_table_columns_to_match_set``...) judge the frame, not the source table: the schema gate watches
columns.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_cdc.events import OP_CREATE, OP_READ, OP_TRUNCATE, OP_UPDATE
from airflow_provider_cdc.quality.typecheck import unconvertible
from airflow_provider_cdc.values import UntypedValueError, typed_column

if TYPE_CHECKING:
    import pandas as pd

    from airflow_provider_cdc.quality.rules import QualityCheck
    from airflow_provider_cdc.tables import Column, TableSchema

ROW_INDEX = "_cdc_row"
LATEST = "_cdc_latest"
JUDGED_OPS = (OP_CREATE, OP_UPDATE, OP_READ)
# Logical types whose frame values are their portable text.
TEXT_TYPES = frozenset({"text", "json", "uuid", "binary", "other"})
NUMERIC_TYPES = frozenset({"integer", "decimal", "float"})
ORDERED_TYPES = NUMERIC_TYPES | {"date", "timestamp", "timestamptz", "time", "text"}
_TYPED_KINDS = frozenset({"range", "in_set", "not_null", "unique", "expectation"})


def text_column(name: str) -> str:
    return f"_cdc_text:{name}"


def type_column(name: str, logical_type: str) -> str:
    return f"_cdc_type:{name}:{logical_type}"


def judged_column(name: str) -> str:
    return f"_cdc_judged:{name}"


# --- what a set of checks needs -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FramePlan:
    """The frame columns a table's checks read: typed source columns, text companions, type companions, and
    whether ``unique`` needs :data:`LATEST`."""

    typed: tuple[str, ...]
    text: tuple[str, ...]
    types: tuple[tuple[str, str], ...]
    latest: bool

    @property
    def source_columns(self) -> list[str]:
        """Every source column the frame is built from."""
        return list(dict.fromkeys([*self.typed, *self.text, *(name for name, _ in self.types)]))


def plan_frame(checks: Iterable[QualityCheck], schema: TableSchema) -> FramePlan:
    typed: dict[str, None] = {}
    text: dict[str, None] = {}
    types: dict[tuple[str, str], None] = {}
    latest = False
    for check in checks:
        if check.kind == "type" and check.expected_type is not None:
            types[(check.columns[0], check.expected_type)] = None
        elif check.kind in ("pattern", "length"):
            name = check.columns[0]
            (typed if schema.column(name).logical_type in TEXT_TYPES else text)[name] = None
        else:
            typed.update(dict.fromkeys(check.columns))
        latest = latest or (check.kind == "unique" and bool(schema.primary_key))
    return FramePlan(tuple(typed), tuple(text), tuple(types), latest)


def frame_column(check: QualityCheck, name: str, schema: TableSchema) -> str:
    """The frame column through which ``check`` reads source column ``name``."""
    if check.kind == "type" and check.expected_type is not None:
        return type_column(name, check.expected_type)
    if check.kind in ("pattern", "length") and schema.column(name).logical_type not in TEXT_TYPES:
        return text_column(name)
    return name


def gx_kwargs(check: QualityCheck, schema: TableSchema) -> dict[str, Any]:
    """``check.kwargs`` for the GX class, on this table's frame: frame column names, typed bounds and set values."""
    kwargs = dict(check.kwargs)
    if check.kind == "expectation":
        return kwargs
    if "column" in kwargs:
        kwargs["column"] = frame_column(check, kwargs["column"], schema)
    if check.kind == "range":
        column = schema.column(check.columns[0])
        for key in ("min_value", "max_value"):
            if kwargs.get(key) is not None:
                kwargs[key] = coerce_bound(kwargs[key], column)
    elif check.kind == "in_set":
        column = schema.column(check.columns[0])
        kwargs["value_set"] = [coerce_value(v, column) for v in kwargs["value_set"]]
    return {k: v for k, v in kwargs.items() if v is not None}


# --- bounds and set values ----------------------------------------------------------------------------------------


def bound_problem(value: Any, column: Column) -> str | None:
    """Why ``value`` cannot bound ``column`` in a ``range`` (None: it can)."""
    if column.logical_type not in ORDERED_TYPES:
        return (f"column {column.name!r} is {column.logical_type}, which has no order to range over (range takes "
                f"{', '.join(sorted(ORDERED_TYPES))} columns)")
    try:
        coerce_bound(value, column)
    except ValueError as exc:
        return str(exc)
    return None


def set_problem(values: Sequence[Any], column: Column) -> str | None:
    """Why a value of ``values`` cannot be compared with ``column``'s values (None: all can)."""
    for value in values:
        try:
            coerce_value(value, column)
        except ValueError as exc:
            return str(exc)
    return None


def coerce_bound(value: Any, column: Column) -> Any:
    """A ``range`` bound as the frame's values of ``column`` compare with it (ValueError naming what is wrong)."""
    kind = column.logical_type
    if kind in NUMERIC_TYPES:
        return float(_number(value, column))
    if kind == "text":
        if not isinstance(value, str):
            raise ValueError(f"column {column.name!r} is text, compared as text: write the bound {value!r} as a "
                             "quoted string")
        return value
    return _temporal(value, column)


def coerce_value(value: Any, column: Column) -> Any:
    """An ``in_set`` value as the frame's values of ``column`` compare with it."""
    kind = column.logical_type
    if kind == "integer":
        number = _number(value, column)
        if number != number.to_integral_value():
            raise ValueError(f"{value!r} is not a whole number; column {column.name!r} is integer")
        return int(number)
    if kind in ("decimal", "float"):
        return float(_number(value, column))
    if kind == "boolean":
        if isinstance(value, bool) or value in ("true", "false"):
            return value if isinstance(value, bool) else value == "true"
        raise ValueError(f"{value!r} is not true or false; column {column.name!r} is boolean")
    if kind in ("date", "timestamp", "timestamptz", "time"):
        return _temporal(value, column)
    if isinstance(value, bool):  # the portable text of a boolean, for a text column holding 'true'/'false'
        return "true" if value else "false"
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def _number(value: Any, column: Column) -> decimal.Decimal:
    if not isinstance(value, bool) and isinstance(value, (int, float, decimal.Decimal, str)):
        try:
            number = decimal.Decimal(str(value).strip())
        except decimal.InvalidOperation:
            pass
        else:
            if number.is_finite():
                return number
    raise ValueError(f"{value!r} is not a number; column {column.name!r} is {column.logical_type}")


def _temporal(value: Any, column: Column) -> Any:
    kind = column.logical_type
    parsed = value
    try:
        if isinstance(value, str):
            parsed = _parse_temporal(value.strip(), kind)
    except ValueError:
        raise ValueError(f"{value!r} is not a {_NOUNS[kind]}; column {column.name!r} is {kind}") from None
    if kind == "time":
        if isinstance(parsed, dt.time):
            return dt.datetime.combine(_DAY_ZERO, parsed)
        raise ValueError(f"{value!r} is not a time of day; column {column.name!r} is time (quote it: "
                         "'12:30:00', or YAML reads it as a number of seconds)")
    if kind == "date":
        if isinstance(parsed, dt.date) and not isinstance(parsed, dt.datetime):
            return parsed
        raise ValueError(f"{value!r} is not a date; column {column.name!r} is date")
    return _timestamp(value, parsed, column)


def _timestamp(value: Any, parsed: Any, column: Column) -> dt.datetime:
    if isinstance(parsed, dt.date) and not isinstance(parsed, dt.datetime):
        parsed = dt.datetime.combine(parsed, dt.time())
    if not isinstance(parsed, dt.datetime):
        raise ValueError(f"{value!r} is not a timestamp; column {column.name!r} is {column.logical_type}")
    if column.logical_type == "timestamptz":
        # A bound without a zone means UTC, the zone every timestamptz of the value contract is in.
        return parsed.replace(tzinfo=dt.timezone.utc) if parsed.tzinfo is None else parsed
    if parsed.tzinfo is not None:
        raise ValueError(f"{value!r} has a time zone; column {column.name!r} is timestamp (without time zone)")
    return parsed


def _parse_temporal(text: str, kind: str) -> Any:
    if kind == "time":
        return dt.time.fromisoformat(text)
    if kind == "date":
        return dt.date.fromisoformat(text)
    return dt.datetime.fromisoformat(text)


_DAY_ZERO = dt.date(1970, 1, 1)
_NOUNS = {"date": "date", "time": "time of day", "timestamp": "timestamp", "timestamptz": "timestamp"}


# --- building the frame -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Frame:
    """The frame of one batch table: ``data`` (index :data:`ROW_INDEX`), the input rows it holds, and whether some
    value of a checked column was not resent (then the guarded suites run)."""

    data: pd.DataFrame
    rows: np.ndarray
    guarded: bool


def judged_rows(table: pa.Table) -> np.ndarray:
    """Positions of the rows checks judge: inserts, updates, snapshot reads."""
    mask = pc.is_in(table.column("_cdc_op"), value_set=pa.array(JUDGED_OPS))
    return pc.indices_nonzero(pc.fill_null(mask, False)).to_numpy()


def build_frame(table: pa.Table, schema: TableSchema, plan: FramePlan, rows: np.ndarray | None = None) -> Frame:
    """The frame of ``table``'s judged rows (see the module docstring)."""
    import pandas as pd

    if rows is None:
        rows = judged_rows(table)
    subset = table.select([*plan.source_columns, "_cdc_unchanged"])
    if len(rows) != table.num_rows:
        subset = subset.take(pa.array(rows))
    columns: dict[str, Any] = {}
    for name in plan.typed:
        columns[name] = _typed_values(subset.column(name), schema.column(name))
    for name in plan.text:
        columns[text_column(name)] = subset.column(name).to_pandas().array
    for name, kind in plan.types:
        bad = unconvertible(subset.column(name), kind)
        values = pc.if_else(bad, subset.column(name).combine_chunks(), pa.scalar(None, pa.string()))
        columns[type_column(name, kind)] = values.to_pandas().array
    if plan.latest:
        columns[LATEST] = latest_changes(table, schema.primary_key)[rows]
    unchanged = unchanged_rows(subset.column("_cdc_unchanged"), plan.source_columns)
    for name, positions in unchanged.items():
        judged = np.ones(len(rows), dtype=bool)
        judged[positions] = False
        columns[judged_column(name)] = judged
    index = pd.Index(rows, name=ROW_INDEX)
    return Frame(pd.DataFrame(columns, index=index), rows, guarded=bool(unchanged))


def with_judged_columns(frame: Frame, names: Iterable[str]) -> Frame:
    """``frame`` with an all-True :func:`judged_column` for each of ``names`` it lacks (a guarded suite reads one
    per checked column)."""
    missing = [judged_column(n) for n in names if judged_column(n) not in frame.data.columns]
    if missing:
        frame.data = frame.data.assign(**{name: np.ones(len(frame.rows), dtype=bool) for name in missing})
    return frame


def _typed_values(values: pa.ChunkedArray, column: Column) -> Any:
    """One column's frame values (see the module docstring for each logical type)."""
    kind = column.logical_type
    if kind in TEXT_TYPES:
        return values.to_pandas().array
    if kind == "decimal":
        # Straight from the text, whatever the precision: ``Infinity`` stays infinite (above any maximum), ``NaN``
        # is missing to pandas.
        typed = _contract_view(values, kind, lambda v: pc.cast(v, pa.float64()))
    else:
        typed = _contract_view(values, kind, lambda v: typed_column(v, column, specials_as_null=True))
    if pa.types.is_time(typed.type):
        typed = pc.cast(pc.cast(typed, pa.int64()), pa.timestamp("us"))  # the time of day on 1970-01-01
    if pa.types.is_integer(typed.type) and typed.null_count:
        import pandas as pd

        return typed.to_pandas(types_mapper={typed.type: pd.Int64Dtype()}.get).array
    return typed.to_pandas().array


def _contract_view(values: pa.ChunkedArray, kind: str, convert: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``convert(values)``; a value that breaks the value contract (a ``type`` rule names it) is left out as NULL.
    ArrowException too: see :data:`.typecheck._REFUSALS`."""
    text = values.combine_chunks()
    try:
        return convert(text)
    except (UntypedValueError, pa.ArrowException):
        bad = unconvertible(text, kind)
        return convert(pc.if_else(bad, pa.scalar(None, pa.string()), text))


def unchanged_rows(unchanged: pa.ChunkedArray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per column of ``names``: the frame positions whose value the source did not resend (empty columns left out)."""
    lists = unchanged.combine_chunks()
    flat = pc.list_flatten(lists)
    if len(flat) == 0:
        return {}
    parents = pc.list_parent_indices(lists)
    out = {}
    for name in names:
        hit = pc.equal(flat, name)
        if pc.any(hit).as_py():
            out[name] = np.unique(parents.filter(hit).to_numpy())
    return out


def latest_changes(table: pa.Table, key: Sequence[str]) -> np.ndarray:
    """Per input row: whether it is the last change of its key in the batch (no later change, delete or truncate)."""
    latest = np.ones(table.num_rows, dtype=bool)
    if not key or table.num_rows == 0:
        return latest
    seqs = table.column("_cdc_seq").to_numpy()
    order = np.argsort(seqs, kind="stable")
    keys = table.select(list(key)).take(pa.array(order)).to_pandas()
    superseded = keys.duplicated(keep="last").to_numpy()
    latest[order[superseded]] = False
    truncates = pc.equal(table.column("_cdc_op"), OP_TRUNCATE)
    if pc.any(truncates).as_py():
        last_truncate = pc.max(table.column("_cdc_seq").filter(truncates)).as_py()
        latest[seqs < last_truncate] = False
    return latest
