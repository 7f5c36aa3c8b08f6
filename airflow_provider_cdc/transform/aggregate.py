"""Row-level aggregates across fields (the seed's ``aggregate`` rule): sum, avg, min, max or count of
``source_fields`` into ``target_field``, NULLs ignored.

The result type follows the inputs: integers sum to an integer, decimals to a decimal wide enough for the sum (its
scale the largest input scale), anything with a float to a float; an average of integers or decimals is an exact
decimal (rounded to ``target_type``'s scale when one is declared); ``count`` is the number of non-NULL inputs. Plain
Python per row, no Jinja: there is no expression to sandbox.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from airflow_provider_cdc.tables import Column
from airflow_provider_cdc.transform.rowpath import TEXT_KINDS
from airflow_provider_cdc.transform.rules import CompiledRule
from airflow_provider_cdc.transform.state import TableState, scatter
from airflow_provider_cdc.transform.types import OutType, convert, to_text
from airflow_provider_cdc.values import parse_value


def aggregate_type(rule: CompiledRule, columns: Mapping[str, Column]) -> OutType | None:
    kind = rule.aggregate
    if kind == "count":
        return OutType("integer")
    inputs = [columns[f] for f in rule.source_fields if f in columns]
    if len(inputs) != len(rule.source_fields) or not inputs:
        return None
    kinds = {c.logical_type for c in inputs}
    if kinds <= {"integer", "decimal", "float"}:
        if kind == "avg":
            return OutType("float") if "float" in kinds else OutType("decimal")
        if "decimal" in kinds:
            if "float" not in kinds and all(c.precision is not None for c in inputs if c.logical_type == "decimal"):
                scale = max((c.scale or 0) for c in inputs if c.logical_type == "decimal")
                whole = max((c.precision or 0) - (c.scale or 0) if c.logical_type == "decimal" else 19
                            for c in inputs)
                extra = len(str(len(inputs))) if kind == "sum" else 0
                return OutType("decimal", whole + scale + extra, scale)
            return OutType("decimal")
        return OutType("float") if "float" in kinds else OutType("integer")
    if kind in ("min", "max") and len(kinds) == 1:
        return OutType.of_column(inputs[0])
    return None


def apply_aggregate(rule: CompiledRule, state: TableState) -> None:
    assert rule.target_field is not None and rule.aggregate is not None
    target = rule.target_field
    rows = state.live()
    fields = list(rule.source_fields)
    missing = [f for f in fields if f not in state.columns]
    declared = aggregate_type(rule, state.columns)
    out_type = rule.target_type or declared
    if missing or declared is None:
        reason = (f"field {missing[0]!r} is not a column of {state.table_name}" if missing else
                  f"{rule.aggregate} cannot combine the types of {', '.join(fields)}")
        for i in rows:
            state.fail(i, rule, missing[0] if missing else target, reason)
        state.set_column(target, (out_type or OutType("text")).column(target), pa.nulls(state.rows, pa.string()))
        state.paths[rule.rule_id] = "failed"
        return
    assert out_type is not None
    hits = state.unchanged_hits(rows, fields)
    for i, field in hits.items():
        state.fail(i, rule, field, f"field {field!r} was not sent by the source for this row (an unchanged value), "
                                   f"so the {rule.aggregate} cannot be computed")
    evaluate = np.array([i for i in rows if int(i) not in hits], dtype=np.int64) if hits else rows
    texts = {f: state.texts(f, evaluate) for f in fields}
    kinds = {f: state.columns[f].logical_type for f in fields}
    combine = _AGGREGATORS[rule.aggregate]
    work = OutType(declared.logical) if declared.logical in ("integer", "decimal", "float") else None
    results: list[str | None] = [None] * len(evaluate)
    for k in range(len(evaluate)):
        if rule.aggregate == "count":  # counts values, whatever their type: nothing to parse
            results[k] = to_text(sum(1 for f in fields if texts[f][k] is not None), out_type)
            continue
        try:
            values = []
            for f in fields:
                text = texts[f][k]
                if text is None:
                    continue
                value = text if kinds[f] in TEXT_KINDS else parse_value(text, kinds[f])
                values.append(convert(value, work) if work is not None else value)
            value = combine(values)
            if rule.aggregate == "avg" and out_type.logical == "decimal" and out_type.scale is not None \
                    and isinstance(value, decimal.Decimal) and value.is_finite():
                value = value.quantize(decimal.Decimal(1).scaleb(-out_type.scale))  # an average is rounded anyway
            results[k] = to_text(value, out_type)
        except (ValueError, TypeError, ArithmeticError) as exc:
            state.fail(int(evaluate[k]), rule, target, f"{rule.aggregate} of {', '.join(fields)}: "
                                                       f"{type(exc).__name__}: {exc}")
    state.counts["python_rows"] += len(evaluate)
    state.paths[rule.rule_id] = "python"
    state.set_column(target, out_type.column(target), scatter(pa.array(results, pa.string()), evaluate, state.rows))


def _sum(values: list[Any]) -> Any:
    if not values:
        return None
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


def _avg(values: list[Any]) -> Any:
    if not values:
        return None
    total = _sum(values)
    if isinstance(total, decimal.Decimal):
        return total / decimal.Decimal(len(values))
    if isinstance(total, int):
        return decimal.Decimal(total) / decimal.Decimal(len(values))
    return total / len(values)


_AGGREGATORS: dict[str, Callable[[list[Any]], Any]] = {
    "sum": _sum,
    "avg": _avg,
    "min": lambda values: min(values) if values else None,
    "max": lambda values: max(values) if values else None,
    "count": len,
}
