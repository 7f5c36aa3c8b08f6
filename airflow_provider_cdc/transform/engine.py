"""Apply an ordered rule set to one source table's changes (a batch table) — the transform stage's library.

:class:`RuleSet` is what the stage holds: ``RuleSet.from_config(rules, functions=..., secret=...)``, then
``apply(table, schema)`` per table of a batch, giving a :class:`TableResult`.

Semantics (issue 10):

- Rules run in config order on the after-image of ``c``, ``u`` and ``r`` rows; each sees the previous rules'
  outputs. ``d`` rows keep their key and pass through (a map's target is NULL there: an old image must not carry an
  unmasked value past a mask); ``t`` rows pass through.
- Values are typed (:func:`values.parse_value`); results are typed (:mod:`.types`) and written back as portable
  text. A target column is added to (or retyped in) the schema with ``source_type`` = its logical type.
- A ``filter`` that is false (or NULL) for a row turns it into a ``d`` row for its key, non-key values NULL: a row
  that was in the sink before is deleted there, and one that never was is a no-op, so **the sink always equals the
  filtered source**. An update that moved the key (its before-image has the old key) deletes the old key.
- A row whose expression fails (an exception, a result that does not convert) is a :class:`RowFailure` and is
  removed from the table; the other rows go on. Whether that quarantines or fails the task is the stage's policy.
- Unchanged values (``_cdc_unchanged``: the source did not resend them): a map reading one marks its target
  unchanged too (the sink keeps its value); a filter or aggregate reading one fails that row, since its outcome is
  unknown.
- Rules are pure: ``now()`` is the row's event time, and the same batch always gives the same result.
- A ``join`` enriches rows from a reference table through the ``lookup`` callable given to
  :meth:`RuleSet.from_config` (this module connects nowhere), one call per batch and rule, behind a TTL cache
  (:mod:`.join`).

Expressions that :mod:`.vector` can compile run over whole columns in Arrow; the rest, and rows where Arrow and
Python would differ, run row by row in the Jinja sandbox. Decimal arithmetic runs in
:data:`~.types.DECIMAL_CONTEXT`.
"""

from __future__ import annotations

import decimal
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from jinja2 import nodes

from airflow_provider_cdc.config.models import RuleConfig
from airflow_provider_cdc.tables import Column, TableSchema
from airflow_provider_cdc.transform.aggregate import aggregate_type, apply_aggregate
from airflow_provider_cdc.transform.errors import RuleConfigError, problem
from airflow_provider_cdc.transform.functions import RUNTIME_VAR, FunctionRegistry, RuleRuntime
from airflow_provider_cdc.transform.join import Clock, Lookup, LookupCache, apply_join
from airflow_provider_cdc.transform.rowpath import run_rows, truth
from airflow_provider_cdc.transform.rules import ColumnLineage, CompiledRule
from airflow_provider_cdc.transform.sandbox import ROW_VAR, Program, Sandbox, sandbox_for
from airflow_provider_cdc.transform.state import RowFailure, TableResult, TableState, scatter
from airflow_provider_cdc.transform.types import (
    DECIMAL_CONTEXT,
    ConversionError,
    OutType,
    parse_type,
    to_text,
    type_of_value,
    unify,
)
from airflow_provider_cdc.transform.vector import NotVectorisable, VectorPlan, compatible, plan, to_portable
from airflow_provider_cdc.values import UntypedValueError, parse_value, typed_column

__all__ = ["RowFailure", "RuleSet", "TableResult"]

log = logging.getLogger(__name__)

_FALLBACK_ERRORS = (pa.ArrowException, UntypedValueError, ValueError, ArithmeticError, TypeError)


class RuleSet:
    """Compiled rules in config order, and their application to batch tables."""

    def __init__(self, rules: Sequence[CompiledRule], sandbox: Sandbox,
                 secret: Callable[[str], str] | None = None, problems: Sequence[str] = (), *,
                 vectorise: bool = True, lookup: Lookup | None = None, clock: Clock | None = None) -> None:
        self.rules = list(rules)
        self.lookup = lookup  # a join's reference rows (None: a join with rows to look up cannot run)
        self.cache = LookupCache(clock) if clock is not None else LookupCache()
        self.vectorise = vectorise  # False: every expression row by row in Jinja (the reference; for tests, bench)
        self.sandbox = sandbox
        self._secret = secret
        self._salts: dict[str, str] = {}
        # (rule id, table) -> the type a map's results had, for batches whose rows give nothing to infer from
        self._inferred: dict[tuple[str, str], OutType] = {}
        self._problems = list(problems)

    @classmethod
    def from_config(cls, rule_configs: Iterable[RuleConfig | Mapping[str, Any]], *,
                    functions: FunctionRegistry | None = None,
                    secret: Callable[[str], str] | None = None, vectorise: bool = True,
                    lookup: Lookup | None = None, connectors: Collection[str] | None = None,
                    clock: Clock | None = None) -> RuleSet:
        """Compile ``rule_configs`` (disabled rules are kept out). Never raises for a bad rule: see :meth:`problems`
        and :meth:`check`; :meth:`apply` refuses a table whose rules have problems. A mapping that is no rule
        config at all (no ``rule_id``, a ``rule_type`` outside the four) raises :class:`RuleConfigError`.

        ``lookup``: what join rules read reference rows through (:data:`~.join.Lookup`); ``connectors``: the known
        connector ids (when given, a join naming another one is a problem); ``clock``: the join cache's clock in
        seconds (default :func:`time.monotonic`)."""
        sandbox = sandbox_for(functions if functions is not None else FunctionRegistry.default())
        rules: list[CompiledRule] = []
        problems: list[str] = []
        seen: set[str] = set()
        for config in rule_configs:
            rule = CompiledRule.compile(config, sandbox)
            if rule.rule_id in seen:
                problems.append(problem(rule.rule_id, "is defined twice; rule ids must be unique", key="rule_id"))
            seen.add(rule.rule_id)
            if rule.enabled:
                rules.append(rule)
            connector = rule.join.connector if rule.join is not None else None
            if connectors is not None and connector is not None and connector not in connectors:
                problems.append(problem(rule.rule_id, f"unknown connector {connector!r} (connectors.yaml has: "
                                                      f"{', '.join(sorted(connectors)) or 'none'})",
                                        key="parameters.connector"))
        return cls(rules, sandbox, secret, problems, vectorise=vectorise, lookup=lookup, clock=clock)

    def versions(self) -> dict[str, str]:
        """Rule id -> SHA-256 of its normalised config, in config order (for the manifest and the ledger row)."""
        return {rule.rule_id: rule.version for rule in self.rules}

    def for_table(self, table: str) -> list[CompiledRule]:
        """The rules whose ``tables`` scope takes ``table`` (``schema.name``), in config order."""
        return [rule for rule in self.rules if rule.applies_to(table)]

    def problems(self) -> list[str]:
        """Problems found without any table: shape, Jinja syntax, sandbox refusals, unknown functions, salts."""
        return [*self._problems, *(p for rule in self.rules for p in rule.problems)]

    def check(self, schema: TableSchema) -> list[str]:
        """Every problem of the rules scoped to ``schema``'s table, each naming rule, table, key and field."""
        table = schema.qualified_name
        columns = {c.name: c for c in schema.columns}
        key = schema.primary_key
        out: list[str] = []
        known = self.sandbox.known_globals
        for rule in self.for_table(table):
            out += rule.problems_on(table)
            out += rule.check(columns, key, table, known)
            if rule.rename_from in key and rule.target_field:
                key = [rule.target_field if k == rule.rename_from else k for k in key]
            columns = rule.after(columns, _static_type(rule, columns, self.sandbox))
        return out

    def apply(self, table: pa.Table, schema: TableSchema) -> TableResult:
        """Run the rules scoped to ``schema``'s table over ``table`` (see the module docstring)."""
        rules = self.for_table(schema.qualified_name)
        broken = [p for rule in rules for p in rule.problems_on(schema.qualified_name)]
        if broken:
            raise RuleConfigError("rules cannot run: " + "; ".join(broken),
                                  rule_id=rules[0].rule_id if len(rules) == 1 else None,
                                  table=schema.qualified_name)
        if not rules:
            return TableResult(table, schema, [], {}, {"rows_in": table.num_rows, "rows_out": table.num_rows,
                                                       "failed": 0, "filtered": 0})
        state = TableState(table, schema)
        state.vectorise = self.vectorise
        columns: dict[str, list[tuple[str, str]]] = {}
        lineage: list[ColumnLineage] = []
        with decimal.localcontext(DECIMAL_CONTEXT):
            for rule in rules:
                edges = rule.lineage(state.columns)
                lineage += edges
                columns[rule.rule_id] = [(e.source, e.target) for e in edges]
                salt = self._salt(rule, schema.qualified_name) if rule.uses_hash else None
                runtime = RuleRuntime(rule.rule_id, _constant(salt) if salt is not None else None)
                if rule.join is not None:
                    apply_join(rule, state, self.lookup, self.cache, self._inferred)
                    for name in rule.drop_fields:
                        state.drop(rule, name)
                    continue
                _apply_rule(rule, state, self.sandbox, runtime, self._inferred)
        return state.result(columns, lineage)

    def _salt(self, rule: CompiledRule, table: str) -> str:
        name = rule.salt_name
        if name is None:  # compile() already reports this; kept for a RuleSet built by hand
            raise RuleConfigError(problem(rule.rule_id, "hash() needs parameters.salt", table=table),
                                  rule_id=rule.rule_id, table=table)
        if name not in self._salts:
            if self._secret is None:
                raise RuleConfigError(problem(rule.rule_id, f"hash() salts with secret {name!r}, but no secret "
                                                            "lookup was given to RuleSet.from_config", table=table),
                                      rule_id=rule.rule_id, table=table)
            try:
                value = self._secret(name)
            except Exception as exc:  # the caller's lookup (Variable, Connection): any failure means no salt
                raise RuleConfigError(problem(
                    rule.rule_id, f"the salt secret {name!r} cannot be read ({type(exc).__name__}); create it as an "
                                  "Airflow Variable or Connection", key="parameters.salt", table=table),
                    rule_id=rule.rule_id, table=table) from exc
            if not isinstance(value, str) or not value:
                raise RuleConfigError(problem(rule.rule_id, f"the salt secret {name!r} is empty",
                                              key="parameters.salt", table=table),
                                      rule_id=rule.rule_id, table=table)
            self._salts[name] = value
        return self._salts[name]


# --- running one rule ---------------------------------------------------------------------------------------------


def _constant(value: str) -> Callable[[], str]:
    return lambda: value


def _apply_rule(rule: CompiledRule, state: TableState, sandbox: Sandbox, runtime: RuleRuntime,
                inferred: dict[tuple[str, str], OutType]) -> None:
    if rule.rule_type == "map" and rule.rename_from:
        assert rule.target_field is not None
        state.rename(rule, rule.rename_from, rule.target_field)
        state.paths[rule.rule_id] = "structural"
    elif rule.rule_type == "map":
        _map(rule, state, sandbox, runtime, inferred)
    elif rule.rule_type == "filter":
        _filter(rule, state, sandbox, runtime)
    elif rule.rule_type == "aggregate":
        apply_aggregate(rule, state)
    for name in rule.drop_fields:
        state.drop(rule, name)


def _static_type(rule: CompiledRule, columns: Mapping[str, Column], sandbox: Sandbox,
                 planned: VectorPlan | None = None) -> OutType | None:
    """The type a map's or aggregate's target has whatever the rows: declared, derived from the column types (the
    vectorised plan's type, so both paths agree), or named by ``{{ cast(x, 'T') }}``; None when only the results can
    tell."""
    if rule.target_type is not None:
        return rule.target_type
    if rule.rule_type == "aggregate":
        return aggregate_type(rule, columns)
    program = rule.program
    if program is None:
        return None
    if program.kind == "json":
        return OutType("json")
    if program.kind == "text":
        return OutType("text")
    vector = planned if planned is not None else _plan(program, columns, sandbox)
    if vector is not None:
        return vector.vtype.out_type()
    return _cast_call(program.analysis.node)


def _cast_call(node: Any) -> OutType | None:
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "cast" \
            and len(node.args) == 2 and isinstance(node.args[1], nodes.Const) and not node.kwargs:
        try:
            return parse_type(node.args[1].value)
        except ValueError:
            return None
    if isinstance(node, nodes.Filter) and node.name == "cast" and len(node.args) == 1 \
            and isinstance(node.args[0], nodes.Const) and not node.kwargs:
        try:
            return parse_type(node.args[0].value)
        except ValueError:
            return None
    return None


def _plan(program: Program, columns: Mapping[str, Column], sandbox: Sandbox) -> VectorPlan | None:
    node = program.analysis.node
    if node is None:
        return None
    try:
        return plan(node, columns, sandbox.functions)
    except NotVectorisable:
        return None


def _prepare(rule: CompiledRule, state: TableState, sandbox: Sandbox) -> tuple[np.ndarray, dict[int, str]] | None:
    """The rows to evaluate and the unchanged hits among them; fails every live row (and returns None) when the
    table lacks a field the rule needs."""
    rows = state.live()
    missing = rule.missing(state.columns, sandbox.known_globals)
    if missing:
        reason = (f"field {missing[0]!r} is not a column of {state.table_name} (columns: "
                  f"{', '.join(state.columns)}); fix the rule or the source")
        for i in rows:
            state.fail(i, rule, missing[0], reason)
        state.paths[rule.rule_id] = "failed"
        return None
    return rows, state.unchanged_hits(rows, rule.inputs(state.columns))


def _map(rule: CompiledRule, state: TableState, sandbox: Sandbox, runtime: RuleRuntime,
         inferred: dict[tuple[str, str], OutType]) -> None:
    assert rule.program is not None and rule.target_field is not None
    target = rule.target_field
    if target in state.key:
        raise RuleConfigError(problem(rule.rule_id, "is a key column: a rule may rename a key but not compute one",
                                      key="target_field", field=target, table=state.table_name),
                              rule_id=rule.rule_id, table=state.table_name, field=target)
    prepared = _prepare(rule, state, sandbox)
    planned = _plan(rule.program, state.columns, sandbox)
    out_type = _static_type(rule, state.columns, sandbox, planned)
    if prepared is None:
        state.set_column(target, (out_type or OutType("text")).column(target), pa.nulls(state.rows, pa.string()))
        return
    rows, hits = prepared
    evaluate = np.array([i for i in rows if int(i) not in hits], dtype=np.int64) if hits else rows
    vector = planned if state.vectorise else None
    if vector is not None and not compatible(vector.vtype, out_type):
        vector = None
    texts: list[str | None] = [None] * len(evaluate)
    failed: dict[int, tuple[str | None, str]] = {}
    row_positions: np.ndarray = np.arange(len(evaluate))
    vector_texts: pa.Array | None = None
    if vector is not None and len(evaluate):
        outcome = _vector_run(vector, state, evaluate, runtime)
        if outcome is not None:
            values, mask = outcome
            assert out_type is not None
            try:
                vector_texts = to_portable(values, out_type)
                row_positions = np.flatnonzero(mask)
            except _FALLBACK_ERRORS:
                vector_texts = None
    results, errors = run_rows(rule, rule.program, state, evaluate[row_positions], runtime)
    failed.update({int(row_positions[k]): v for k, v in errors.items()})
    if out_type is None:
        out_type = _infer(rule, state, [v for k, v in enumerate(results) if k not in errors], inferred,
                          lambda: _sample_type(rule, state, runtime))
    for k, value in enumerate(results):
        if k in errors:
            continue
        try:
            texts[row_positions[k]] = to_text(value, out_type)
        except ConversionError as exc:
            failed[int(row_positions[k])] = (target, f"result does not convert to {out_type}: {exc}")
    if vector_texts is not None:
        if len(row_positions):
            mask = np.zeros(len(evaluate), dtype=bool)
            mask[row_positions] = True
            subset = pc.replace_with_mask(vector_texts, pa.array(mask),
                                          pa.array([texts[p] for p in row_positions], pa.string()))
        else:
            subset = vector_texts
    else:
        subset = pa.array(texts, pa.string())
    for position, (field, reason) in failed.items():
        state.fail(int(evaluate[position]), rule, field, reason)
    state.counts["vector_rows"] += (len(evaluate) - len(row_positions)) if vector_texts is not None else 0
    state.counts["jinja_rows"] += len(row_positions)
    state.paths[rule.rule_id] = _path(vector_texts is not None, len(row_positions), len(evaluate))
    column = scatter(subset, evaluate, state.rows)
    state.set_column(target, out_type.column(target), column)
    if hits or state.unchanged is not None:
        state.mark_unchanged(list(hits), target, evaluate)


def _infer(rule: CompiledRule, state: TableState, results: list[Any],
           inferred: dict[tuple[str, str], OutType], sample: Callable[[], OutType | None]) -> OutType:
    """The target's type from the results; when no row gives one (all NULL, or only deletes), the type this rule
    gave this table before, else the target's current type, else the type of the expression on a sample row (see
    :func:`_sample_type`), else text. ``target_type`` avoids the guess."""
    assert rule.target_field is not None
    memory = (rule.rule_id, state.table_name)
    found = [t for t in (type_of_value(v) for v in results) if t is not None]
    if found:
        inferred[memory] = out = unify(found)
        return out
    if memory in inferred:
        return inferred[memory]
    current = state.columns.get(rule.target_field)
    if current is not None:
        return OutType.of_column(current)
    return sample() or OutType("text")


# One portable value per logical type, for :func:`_sample_type` (text-like types get a short word).
_SAMPLE_TEXTS = {
    "integer": "1", "decimal": "1.5", "float": "1.5", "boolean": "true", "date": "2000-01-01",
    "timestamptz": "2000-01-01T00:00:00Z", "timestamp": "2000-01-01T00:00:00", "time": "00:00:00",
    "json": "{}", "binary": "00", "uuid": "00000000-0000-0000-0000-000000000001",
}


def _sample_type(rule: CompiledRule, state: TableState, runtime: RuleRuntime) -> OutType | None:
    """The type of the rule's result on a made-up row of typed sample values, for a batch in which no row gave one.

    Without it, such a batch (only deletes, or a schema change and no rows, which is common in staged mode where
    each task starts afresh) would make the target text, and the first real value would then change its type: a
    change the schema gate holds. None when the expression fails or gives NULL on the sample."""
    program = rule.program
    if program is None:
        return None
    names = list(state.columns)
    variables: dict[str, Any] = {}
    for name in names:
        kind = state.columns[name].logical_type
        variables[name] = parse_value(_SAMPLE_TEXTS[kind], kind) if kind in _SAMPLE_TEXTS else "text"
    if ROW_VAR in program.analysis.names and ROW_VAR not in state.columns:
        variables[ROW_VAR] = dict(variables)
    runtime.ts_ms = 946684800000
    variables[RUNTIME_VAR] = runtime
    try:
        return type_of_value(program.run(variables))
    except Exception:  # user code on made-up values: any failure just means no guess
        return None


def _filter(rule: CompiledRule, state: TableState, sandbox: Sandbox, runtime: RuleRuntime) -> None:
    assert rule.program is not None
    prepared = _prepare(rule, state, sandbox)
    if prepared is None:
        return
    rows, hits = prepared
    for i, field in hits.items():
        state.fail(i, rule, field, f"field {field!r} was not sent by the source for this row (an unchanged value), "
                                   "so the filter cannot be decided; the row goes to the quarantine")
    evaluate = np.array([i for i in rows if int(i) not in hits], dtype=np.int64) if hits else rows
    keep = np.ones(len(evaluate), dtype=bool)
    row_positions: np.ndarray = np.arange(len(evaluate))
    vector = _plan(rule.program, state.columns, sandbox) if state.vectorise else None
    used_vector = False
    if vector is not None and vector.vtype.kind == "boolean" and len(evaluate):
        outcome = _vector_run(vector, state, evaluate, runtime)
        if outcome is not None:
            values, mask = outcome
            keep = pc.fill_null(values, False).to_numpy(zero_copy_only=False).astype(bool)
            row_positions = np.flatnonzero(mask)
            used_vector = True
    results, errors = run_rows(rule, rule.program, state, evaluate[row_positions], runtime)
    inputs = rule.inputs(state.columns)
    for k, value in enumerate(results):
        position = int(row_positions[k])
        if k in errors:
            state.fail(int(evaluate[position]), rule, *errors[k])
            continue
        decided = truth(value)
        if decided is None:
            state.fail(int(evaluate[position]), rule, inputs[0] if len(inputs) == 1 else None,
                       f"the filter gave {value!r}, not a boolean (true/false)")
            continue
        keep[position] = decided
    dropped = evaluate[~keep]
    state.filtered[dropped] = True
    state.filtered &= ~state.dead
    state.counts["vector_rows"] += (len(evaluate) - len(row_positions)) if used_vector else 0
    state.counts["jinja_rows"] += len(row_positions)
    state.paths[rule.rule_id] = _path(used_vector, len(row_positions), len(evaluate))


def _path(vector: bool, row_count: int, total: int) -> str:
    if not vector:
        return "row"
    return "vector+row" if row_count else "vector"


def _vector_run(vector: VectorPlan, state: TableState, rows: np.ndarray,
                runtime: RuleRuntime) -> tuple[pa.Array, np.ndarray] | None:
    """The vectorised values for ``rows`` and the mask of those the row path must redo; None when the vectorised
    path cannot run on this data at all (the whole rule then runs row by row)."""
    take = pa.array(rows, pa.int64()) if len(rows) != state.rows else None
    inputs: dict[str, pa.Array] = {}
    lost: pa.Array | None = None
    try:
        for name in vector.fields:
            text = state.data[name] if take is None else state.data[name].take(take)
            typed = typed_column(text, state.columns[name], specials_as_null=True)
            if typed.null_count != text.null_count:  # a NaN or infinity: only Python has it
                gone = pc.and_(pc.is_valid(text), pc.is_null(typed))
                lost = gone if lost is None else pc.or_(lost, gone)
            inputs[name] = typed
        values, mask = vector.evaluate(inputs, len(rows), runtime)
    except _FALLBACK_ERRORS as exc:
        log.debug("vectorised path not usable for this batch (%s); running row by row", exc)
        return None
    if lost is not None:
        mask = pc.or_(mask, lost)
    return values, pc.fill_null(mask, True).to_numpy(zero_copy_only=False).astype(bool)
