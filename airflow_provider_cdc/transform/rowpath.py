"""The row path: a rule's Jinja evaluated in the sandbox once per row, on typed values (the reference semantics).

Each row's fields are parsed with :func:`values.parse_value` (only those the expression reads), the rule's runtime
(salt, event time) is put where the built-ins find it, and any exception is that row's failure, with a reason that
names the NULL fields when there are some (the usual cause: ``None.split``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from airflow_provider_cdc.transform.functions import RUNTIME_VAR, RuleRuntime
from airflow_provider_cdc.transform.rules import CompiledRule
from airflow_provider_cdc.transform.sandbox import ROW_VAR, Program
from airflow_provider_cdc.transform.state import TableState
from airflow_provider_cdc.values import parse_value

TEXT_KINDS = frozenset({"text", "other"})


def run_rows(rule: CompiledRule, program: Program, state: TableState, rows: np.ndarray,
              runtime: RuleRuntime) -> tuple[list[Any], dict[int, tuple[str | None, str]]]:
    """Evaluate ``program`` in the sandbox for each of ``rows``: (results, position -> (field, reason))."""
    if not len(rows):
        return [], {}
    analysis = program.analysis
    uses_row = ROW_VAR in analysis.names and ROW_VAR not in state.columns
    names = list(state.columns) if uses_row else rule.referenced(state.columns)
    texts = {name: state.texts(name, rows) for name in names}
    kinds = {name: state.columns[name].logical_type for name in names}
    ts = state.ts(rows) if analysis.uses("now") else None
    failure_field = rule.target_field if rule.rule_type != "filter" else (
        rule.inputs(state.columns)[0] if len(rule.inputs(state.columns)) == 1 else None)
    results: list[Any] = [None] * len(rows)
    errors: dict[int, tuple[str | None, str]] = {}
    run = program.run
    for k in range(len(rows)):
        variables: dict[str, Any] = {}
        bad = None
        for name in names:
            text = texts[name][k]
            kind = kinds[name]
            if text is None or kind in TEXT_KINDS:
                variables[name] = text
                continue
            try:
                variables[name] = parse_value(text, kind)
            except (ValueError, TypeError, ArithmeticError) as exc:
                bad = (name, f"value {text[:80]!r} of field {name!r} is not a valid {kind}: {exc}")
                break
        if bad is not None:
            errors[k] = bad
            continue
        if uses_row:
            variables[ROW_VAR] = dict(variables)
        if ts is not None:
            runtime.ts_ms = ts[k]
        variables[RUNTIME_VAR] = runtime
        try:
            results[k] = run(variables)
        except Exception as exc:  # any failure of user code is this row's failure, reported
            errors[k] = (failure_field, reason_of(exc, variables, names))
    return results, errors


def reason_of(exc: BaseException, variables: Mapping[str, Any], names: Sequence[str]) -> str:
    text = f"{type(exc).__name__}: {exc}"
    nulls = [n for n in names if variables.get(n) is None]
    if nulls:
        text += (f" (NULL in this row: {', '.join(nulls)}; guard the expression, e.g. "
                 f"{{{{ {nulls[0]} and ... }}}} or coalesce({nulls[0]}, ...))")
    return text


def truth(value: Any) -> bool | None:
    """A filter's verdict: booleans, None (false) and the texts true/false; anything else is not a verdict."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "false", "", "none"):
            return lowered == "true"
    return None
