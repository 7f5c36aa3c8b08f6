"""Judge one table of one batch: every suite scoped to it, in GX, and what failed, row by row.

:func:`validate_table` builds the table's frame once (:mod:`.frame`), takes one GX batch of it, and runs each suite
with ``result_format`` COMPLETE and ``unexpected_index_column_names`` (the frame's index, the input row). GX's own
unexpected values are left out of its results (``exclude_unexpected_values``): collecting them costs a pandas
lookup per failing cell, which a batch where a tenth of the rows fail pays in seconds, and :class:`Violation` carries
each value exactly, as the batch's portable text, instead.

Semantics:

- A check that passes (with ``mostly``, when enough rows pass) has no violations; its failing rows are still
  counted in the metrics.
- A failing per-row check gives one :class:`Violation` per failing row, under the rule's policy.
- A failing table-level check (``expect_table_row_count_to_be_between``...) gives a :class:`TableFailure`.
- A check GX could not evaluate (it raised) is a :class:`TableFailure` marked ``error``. Under ``quarantine`` it
  becomes ``fail``: rows that could not be judged must not pass unseen, and none can be named for the quarantine.
- A table whose batch has no row to judge (only deletes or truncates) runs no check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa

from airflow_provider_cdc.quality.errors import QualityConfigError
from airflow_provider_cdc.quality.frame import ROW_INDEX, build_frame, judged_rows, plan_frame, with_judged_columns
from airflow_provider_cdc.quality.rules import plain, range_text, show_values

if TYPE_CHECKING:
    from airflow_provider_cdc.quality.rules import QualityCheck
    from airflow_provider_cdc.quality.sink_unique import SinkRows
    from airflow_provider_cdc.quality.suites import BuiltSuite, CompiledSuite, QualitySuites
    from airflow_provider_cdc.tables import TableSchema

RESULT_FORMAT: dict[str, Any] = {
    "result_format": "COMPLETE",
    "unexpected_index_column_names": [ROW_INDEX],
    "exclude_unexpected_values": True,
}
FAILING_POLICIES = ("quarantine", "fail")
_COLUMN_KWARGS = ("column", "column_A", "column_B", "column_list")
_RUN_KWARGS = ("batch_id", "result_format", "catch_exceptions", "row_condition", "condition_parser")
_SHOWN_CHARS = 80


class Violation(NamedTuple):
    """One row failing one per-row check. ``row`` is its index in the table given to :func:`validate_table`;
    ``value`` its portable text (a dict of column -> text for a check over several columns). A named tuple: cheap to
    make by the ten thousand."""

    row: int
    suite_id: str
    rule_id: str
    expectation: str
    column: str | None
    policy: str
    reason: str
    value: Any


@dataclasses.dataclass(frozen=True)
class TableFailure:
    """A check over the whole table that failed (or could not be evaluated: ``error``). ``policy`` is the one that
    applies: a quarantine check that could not be evaluated fails the batch."""

    suite_id: str
    rule_id: str
    expectation: str
    policy: str
    observed_value: Any
    reason: str
    error: bool = False


@dataclasses.dataclass
class TableValidation:
    """What the suites found in one table of a batch (see the module docstring)."""

    table: str
    violations: list[Violation]
    table_failures: list[TableFailure]
    metrics: dict[str, Any]
    results: dict[str, dict[str, Any]]

    def rows_to_quarantine(self) -> list[int]:
        """Input rows failing a ``quarantine`` check, in order (each once)."""
        return sorted({v.row for v in self.violations if v.policy == "quarantine"})

    def fatal(self) -> list[Violation | TableFailure]:
        """What fails the batch: violations and table failures under ``fail``."""
        return [*(v for v in self.violations if v.policy == "fail"),
                *(f for f in self.table_failures if f.policy == "fail")]

    def warnings(self) -> list[Violation | TableFailure]:
        """What is only reported: violations and table failures under ``warn``."""
        return [*(v for v in self.violations if v.policy == "warn"),
                *(f for f in self.table_failures if f.policy == "warn")]

    def violations_by_row(self) -> dict[int, list[Violation]]:
        """Violations grouped by input row, rows in order."""
        out: dict[int, list[Violation]] = {}
        for violation in sorted(self.violations, key=lambda v: v.row):
            out.setdefault(violation.row, []).append(violation)
        return out


# --- running -----------------------------------------------------------------------------------------------------


def validate_table(suites: QualitySuites, table: pa.Table, schema: TableSchema,
                   sink_rows: SinkRows | None = None) -> TableValidation:
    """Run every suite of ``suites`` scoped to ``schema``'s table over ``table`` (a batch table); with
    ``sink_rows``, ``unique`` checks with ``against_sink`` also ask the sink (:mod:`.sink_unique`)."""
    name = schema.qualified_name
    applicable = suites.for_table(name)
    problems = suites.check(schema)
    if problems:
        raise QualityConfigError(problems, table=name)
    rows = judged_rows(table)
    if not applicable or len(rows) == 0:
        return TableValidation(name, [], [], _metrics(applicable, len(rows), [], [], {}), {})
    checks = [check for suite in applicable for check in suite.checks]
    frame = build_frame(table, schema, plan_frame(checks, schema), rows)
    built = [suites.built_suite(suite, schema, guarded=frame.guarded) for suite in applicable]
    if frame.guarded:
        with_judged_columns(frame, [c for b in built for c in b.columns])
    batch = suites.batch(frame.data)
    violations: list[Violation] = []
    failures: list[TableFailure] = []
    counts: dict[str, dict[str, dict[str, Any]]] = {}
    results: dict[str, dict[str, Any]] = {}
    for suite, gx_suite in zip(applicable, built):
        result = batch.validate(gx_suite.gx_suite, result_format=RESULT_FORMAT)
        results[suite.suite_id] = result.to_json_dict()
        counts[suite.suite_id] = _read_results(result, gx_suite, table, violations, failures)
    if sink_rows is not None:
        _check_against_sink(applicable, table, schema, rows, sink_rows, violations, counts)
    metrics = _metrics(applicable, len(rows), violations, failures, counts)
    metrics["columns"] = column_metrics(table, schema, rows, [c for check in checks for c in check.columns])
    return TableValidation(name, violations, failures, metrics, results)


def rule_entry(check: QualityCheck) -> dict[str, Any]:
    """What the metrics say of a check besides its counts (what lineage's assertions facet needs)."""
    return {"policy": check.policy, "assertion": check.kind if check.kind != "expectation" else check.expectation,
            "expectation": check.expectation, "columns": list(check.columns), "description": check.description}


def column_metrics(table: pa.Table, schema: TableSchema, rows: np.ndarray, columns: Sequence[str]) -> dict[str, Any]:
    """Per checked column, over the judged rows: count, nullCount, distinctCount, and min, max and sum for numbers
    (OpenLineage's data-quality metrics facet)."""
    import pyarrow.compute as pc

    taken = pa.array(rows)
    out: dict[str, Any] = {}
    for name in dict.fromkeys(columns):
        if name not in table.column_names:
            continue
        values = table.column(name).take(taken)
        nulls = values.null_count
        entry: dict[str, Any] = {"count": len(values) - nulls, "nullCount": nulls,
                                 "distinctCount": pc.count_distinct(values).as_py()}
        if schema.column(name).logical_type in ("integer", "float", "decimal") and len(values) > nulls:
            try:
                numbers = pc.cast(values, pa.float64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                numbers = None
            if numbers is not None:  # NaN and infinities left out: JSON has no such numbers
                finite = numbers.filter(pc.is_finite(numbers))
                if len(finite):
                    low_high = pc.min_max(finite).as_py()
                    entry.update(min=low_high["min"], max=low_high["max"], sum=pc.sum(finite).as_py())
        out[name] = entry
    return out


def _check_against_sink(suites: Sequence[CompiledSuite], table: pa.Table, schema: TableSchema, rows: np.ndarray,
                        sink_rows: SinkRows, violations: list[Violation],
                        counts: dict[str, dict[str, dict[str, Any]]]) -> None:
    from airflow_provider_cdc.quality.sink_unique import sink_duplicates

    for suite in suites:
        for check in suite.checks:
            if not (check.against_sink and check.kind == "unique" and len(check.columns) == 1):
                continue
            found = sink_duplicates(check, table, schema, rows, sink_rows)
            violations += found
            rule = counts.setdefault(suite.suite_id, {}).setdefault(
                check.rule_id, {**rule_entry(check), "unexpected": 0, "success": True})
            rule["unexpected"] += len(found)
            rule["success"] = rule["success"] and not found


def _read_results(result: Any, built: BuiltSuite, table: pa.Table, violations: list[Violation],
                  failures: list[TableFailure]) -> dict[str, dict[str, Any]]:
    """Turn one suite's GX result into violations and failures; per rule: unexpected count, success, policy."""
    counts: dict[str, dict[str, Any]] = {}
    for outcome in result.results:
        check = built.checks[outcome.expectation_config.meta["cdc_rule"]]
        found = outcome.result or {}
        counts[check.rule_id] = {**rule_entry(check), "unexpected": int(found.get("unexpected_count") or 0),
                                 "success": bool(outcome.success)}
        error = _exception_message(outcome.exception_info)
        if error is not None:
            failures.append(_error_failure(check, error))
        elif outcome.success:
            continue
        elif check.per_row:
            rows = _unexpected_rows(found)
            if rows is None:
                failures.append(_unnamed_failure(check, found))
            else:
                violations += _violations(check, rows, table)
        else:
            failures.append(_table_failure(check, found, outcome.expectation_config.kwargs))
    return counts


def _exception_message(info: Any) -> str | None:
    """GX's exception info is either one dict or one per metric; the first message, or None if nothing raised."""
    if not isinstance(info, Mapping):
        return None
    if "raised_exception" in info:
        return str(info.get("exception_message")) if info.get("raised_exception") else None
    for item in info.values():
        if isinstance(item, Mapping) and item.get("raised_exception"):
            return str(item.get("exception_message"))
    return None


def _unexpected_rows(found: Mapping[str, Any]) -> np.ndarray | None:
    """Input rows of ``unexpected_index_list``: ``[{"_cdc_row": [...]}]`` without values, or one dict per row."""
    listed = found.get("unexpected_index_list")
    if listed is None:
        return None
    if len(listed) == 1 and isinstance(listed[0].get(ROW_INDEX), list):
        return np.asarray(listed[0][ROW_INDEX], dtype=np.int64)
    return np.asarray([item[ROW_INDEX] for item in listed], dtype=np.int64)


# --- violations and their reasons -------------------------------------------------------------------------------


def _violations(check: QualityCheck, rows: np.ndarray, table: pa.Table) -> list[Violation]:
    """One violation per row, with the values as the batch carries them (portable text). Built column-wise: a batch
    where a rule fails for a tenth of the rows makes tens of thousands of these."""
    taken = pa.array(rows)
    columns = {name: table.column(name).take(taken).to_pylist() for name in check.columns}
    head = (check.suite_id, check.rule_id, check.expectation)
    if not check.columns:  # a per-row expectation over no named column: nothing to show but the row
        return [Violation(row, *head, None, check.policy, f"the row fails {check.expectation}", None)
                for row in rows.tolist()]
    if len(check.columns) == 1:
        column = check.columns[0]
        values: list[Any] = columns[column]
    else:
        column = ", ".join(check.columns)
        values = [dict(zip(columns, row_values)) for row_values in zip(*columns.values())]
    return [Violation(row, *head, column, check.policy, why, value)
            for row, why, value in zip(rows.tolist(), reasons(check, columns), values)]


def reasons(check: QualityCheck, columns: Mapping[str, Sequence[Any]]) -> list[str]:
    """Why each row fails ``check`` (``columns``: the failing rows' values by column), naming the column, the value
    and the rule's condition: ``email 'bad' does not match pattern '^[^@\\s]+@...'``."""
    names = list(columns)
    if check.kind == "not_null":
        return [f"{names[0]} is null"] * len(columns[names[0]])
    if len(names) == 1:
        subjects = [f"{names[0]} {_show(value)}" for value in columns[names[0]]]
    else:
        heading = f"({', '.join(names)})"
        subjects = [f"{heading} ({', '.join(_show(v) for v in row_values)})" for row_values in zip(*columns.values())]
    if check.kind == "length":
        limits = _lengths(check.kwargs)
        return [f"{subject} has {len(value) if isinstance(value, str) else 0} characters, outside {limits}"
                for subject, value in zip(subjects, columns[names[0]])]
    suffix = _condition(check)
    return [subject + suffix for subject in subjects]


def _condition(check: QualityCheck) -> str:
    """What a failing value is not, as the end of a reason (`` does not match pattern '...'``)."""
    kwargs = check.kwargs
    if check.kind == "type":
        return f" does not convert to {check.expected_type}"
    if check.kind == "range":
        return f" {_outside(kwargs)}"
    if check.kind == "pattern":
        return f" does not match pattern '{kwargs['regex']}'"
    if check.kind == "unique":
        return " is not unique in the batch"
    if check.kind == "in_set":
        return f" is not one of {show_values(kwargs['value_set'])}"
    shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in _COLUMN_KWARGS)
    return f" fails {check.expectation}({shown})"


def _show(value: Any) -> str:
    if value is None:
        return "NULL"
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 2] + "…'"


def _outside(kwargs: Mapping[str, Any]) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    strict_min, strict_max = bool(kwargs.get("strict_min")), bool(kwargs.get("strict_max"))
    if high is None:
        return f"is not above {plain(low)}" if strict_min else f"is below the minimum {plain(low)}"
    if low is None:
        return f"is not below {plain(high)}" if strict_max else f"is above the maximum {plain(high)}"
    return f"is outside {range_text(low, high, strict_min, strict_max)}"


def _lengths(kwargs: Mapping[str, Any]) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and high is not None:
        return f"{low}..{high}"
    return f"at least {low}" if low is not None else f"at most {high}"


# --- table failures -----------------------------------------------------------------------------------------------


def _table_failure(check: QualityCheck, found: Mapping[str, Any], ran: Mapping[str, Any]) -> TableFailure:
    """``ran``: the kwargs GX ran the expectation with (defaults of a custom expectation included)."""
    observed = _python(found.get("observed_value"))
    expected = ", ".join(f"{k}={v!r}" for k, v in ran.items() if k not in _RUN_KWARGS) or "the expectation's defaults"
    return TableFailure(check.suite_id, check.rule_id, check.expectation, check.policy, observed,
                        f"{check.expectation} failed: observed {observed!r}, expected {expected}")


def _python(value: Any) -> Any:
    """A numpy scalar GX observed (``np.float64(15.0)``) as the Python value it holds."""
    return value.item() if isinstance(value, np.generic) else value


def _unnamed_failure(check: QualityCheck, found: Mapping[str, Any]) -> TableFailure:
    count = found.get("unexpected_count")
    return TableFailure(check.suite_id, check.rule_id, check.expectation, _escalated(check.policy), count,
                        f"{check.expectation} failed on {count} rows but GX did not name them")


def _error_failure(check: QualityCheck, message: str) -> TableFailure:
    policy = _escalated(check.policy)
    why = " (under policy quarantine the batch fails: rows that could not be judged cannot pass)" \
        if policy != check.policy else ""
    return TableFailure(check.suite_id, check.rule_id, check.expectation, policy, None,
                        f"{check.expectation} could not be evaluated: {message}{why}", error=True)


def _escalated(policy: str) -> str:
    return "fail" if policy == "quarantine" else policy


# --- metrics ------------------------------------------------------------------------------------------------------


def _metrics(suites: Sequence[CompiledSuite], evaluated: int, violations: Sequence[Violation],
             failures: Sequence[TableFailure], counts: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Per suite and in total: rows evaluated, passed (no violation), failed (a quarantine or fail violation),
    warned (only warn violations), the quality score passed/evaluated (1.0 with nothing evaluated), table failures,
    and per rule the unexpected count."""
    per_suite = {}
    for suite in suites:
        mine = [v for v in violations if v.suite_id == suite.suite_id]
        mine_failures = [f for f in failures if f.suite_id == suite.suite_id]
        per_suite[suite.suite_id] = {**_row_counts(evaluated, mine), "table_failures": len(mine_failures),
                                     "rules": {rule: dict(c) for rule, c in counts.get(suite.suite_id, {}).items()}}
    rules = {f"{suite}.{rule}": c["unexpected"] for suite, by_rule in counts.items() for rule, c in by_rule.items()}
    return {**_row_counts(evaluated, violations), "table_failures": len(failures), "rules": rules,
            "suites": per_suite}


def _row_counts(evaluated: int, violations: Sequence[Violation]) -> dict[str, Any]:
    failed = {v.row for v in violations if v.policy in FAILING_POLICIES}
    warned = {v.row for v in violations if v.policy == "warn"} - failed
    passed = evaluated - len(failed) - len(warned)
    return {"evaluated": evaluated, "passed": passed, "failed": len(failed), "warned": len(warned),
            "score": passed / evaluated if evaluated else 1.0}
