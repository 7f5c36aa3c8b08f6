"""Which values of a column do not convert to a logical type: what a ``type`` rule judges, and what the typed view
of a column leaves out when a value breaks the value contract.

"Converts" means what :func:`airflow_provider_cdc.values.typed_column` accepts, so a ``type`` rule agrees with every
typed sink; on top of it ``uuid`` values must be UUIDs, ``json`` values JSON and ``decimal`` values plain decimals,
which the contract keeps as text. A value the contract keeps as text because no Arrow type holds it (``infinity``,
a numeric ``NaN``) converts.

Vectorised: a loose character check refuses obvious garbage over the whole column at once; Arrow then converts the
rest in one cast, and only when that cast fails is the column cut in halves until the values it refuses are found
(``k`` bad values cost about ``2 k log n`` small casts, not ``n``).
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_cdc.tables import Column
from airflow_provider_cdc.values import SPECIAL_VALUES, UntypedValueError, typed_column

# Exact forms, where the value contract keeps the type as text (so no Arrow cast can judge it).
_EXACT = {
    "decimal": r"^-?[0-9]+(\.[0-9]+)?$|^(NaN|Infinity|-Infinity)$",
    "uuid": r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
    "binary": r"^([0-9a-fA-F]{2})*$",
    "boolean": r"^(true|false)$",
}
# Characters the type's text can hold at all (a value with any other character cannot convert); Arrow's cast judges
# the rest.
_LOOSE = {
    "integer": r"^[-+]?[0-9]+$",
    "float": r"^[-+0-9.eEinfatyINFATY]+$",
    "timestamptz": r"^[-+0-9:.TZ ]+$",
    "timestamp": r"^[-+0-9:.T ]+$",
    "date": r"^[-+0-9]+$",
    "time": r"^[0-9:.]+$",
}
_ALWAYS = frozenset({"text", "other"})
# What typed_column raises for a value it refuses. ArrowException too: for a bad ``time`` value its error path tries
# a string -> time64 cast, which Arrow does not implement.
_REFUSALS = (UntypedValueError, pa.ArrowException)


def unconvertible(values: pa.Array | pa.ChunkedArray, logical_type: str) -> pa.Array:
    """A boolean mask: True where a non-NULL value does not convert to ``logical_type`` (NULL: False)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_string(values.type):
        values = pc.cast(values, pa.string())
    present = pc.is_valid(values)
    if logical_type in _ALWAYS or len(values) == 0:
        return pc.and_(present, pa.scalar(False))
    if logical_type == "json":
        return _not_json(values)
    if logical_type in _EXACT:
        return pc.and_(present, pc.invert(pc.fill_null(pc.match_substring_regex(values, _EXACT[logical_type]), True)))
    plausible = pc.match_substring_regex(values, _LOOSE[logical_type])
    specials = SPECIAL_VALUES.get(logical_type)
    if specials:
        plausible = pc.or_(plausible, pc.is_in(values, value_set=pa.array(sorted(specials))))
    plausible = pc.fill_null(plausible, False)
    candidates = pc.indices_nonzero(plausible)
    column = Column("value", logical_type, logical_type)
    refused = _refused(values.take(candidates), column, 0)
    bad = pc.and_(present, pc.invert(plausible)).to_numpy(zero_copy_only=False).copy()
    if refused:
        bad[candidates.to_numpy()[refused]] = True
    return pa.array(bad, pa.bool_())


def _refused(values: pa.Array, column: Column, offset: int) -> list[int]:
    """Positions (plus ``offset``) of the values :func:`typed_column` refuses, by halving only failing slices."""
    if len(values) == 0:
        return []
    try:
        typed_column(values, column, specials_as_null=True)
        return []
    except _REFUSALS:
        if len(values) == 1:
            return [offset]
    middle = len(values) // 2
    return (_refused(values.slice(0, middle), column, offset)
            + _refused(values.slice(middle), column, offset + middle))


def _not_json(values: pa.Array) -> pa.Array:
    """JSON has no vectorised parser here: each distinct value is parsed once."""
    distinct = pc.unique(values.drop_null())
    bad = []
    for text in distinct.to_pylist():
        try:
            json.loads(text)
        except ValueError:
            bad.append(text)
    if not bad:
        return pc.and_(pc.is_valid(values), pa.scalar(False))
    return pc.fill_null(pc.is_in(values, value_set=pa.array(bad, pa.string())), False)
