"""Quality suites as a task holds them: compiled once, scoped to tables, hashed, and turned into GX objects on first
use.

:class:`QualitySuites` is what the validate stage keeps for a whole task: ``QualitySuites.from_config(suites)`` at
no cost (no GX import: a stage is built at every DAG parse), then ``validate(table, schema)`` per table of each batch
(:mod:`.validate`). The first validation builds one GX ephemeral context, with one pandas data source, one dataframe
asset and one whole-dataframe batch definition, and one ``gx.ExpectationSuite`` per suite and table; every later
batch reuses them. A table whose batch holds values the source did not resend gets a second, guarded suite (its
per-row checks skip those values: see :mod:`.frame`), also built once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.quality.errors import QualityConfigError
from airflow_provider_cdc.quality.frame import LATEST, gx_kwargs, judged_column
from airflow_provider_cdc.quality.rules import QualityCheck, check_columns, compile_rules

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from airflow_provider_cdc.config.models import SuiteConfig
    from airflow_provider_cdc.quality.sink_unique import SinkRows
    from airflow_provider_cdc.quality.validate import TableValidation
    from airflow_provider_cdc.tables import TableSchema

VERSION_LENGTH = 16  # hex digits of SHA-256 kept in versions(): plenty to tell configs apart, short in the ledger


@dataclasses.dataclass(frozen=True)
class CompiledSuite:
    """One suite of quality.yaml: its checks, the problems found compiling them, its scope and its version."""

    suite_id: str
    tables: tuple[str, ...] | None
    checks: tuple[QualityCheck, ...]
    problems: tuple[str, ...]
    version: str

    @classmethod
    def compile(cls, config: SuiteConfig) -> CompiledSuite:
        checks, problems = compile_rules(config)
        tables = tuple(config.tables) if config.tables is not None else None
        return cls(config.id, tables, tuple(checks), tuple(problems), suite_version(config))

    def applies_to(self, table: str) -> bool:
        """Whether the ``tables`` scope takes ``table`` (``schema.name``): an entry is either the qualified name or
        the bare table name (as transformation rules match); no ``tables`` means every table."""
        if self.tables is None:
            return True
        _, _, name = table.partition(".")
        return any(entry == table or entry == name for entry in self.tables)


def suite_version(config: SuiteConfig) -> str:
    """The first hex digits of the SHA-256 of the suite's canonical JSON (keys sorted): equal configs, equal
    versions, whatever the key order in the YAML."""
    data = config.model_dump(mode="json")
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:VERSION_LENGTH]


@dataclasses.dataclass
class BuiltSuite:
    """One suite's GX objects for one table: the ``ExpectationSuite``, and its checks by rule id (with ``per_row``
    as GX's class says)."""

    gx_suite: Any
    checks: dict[str, QualityCheck]
    columns: tuple[str, ...]


class _GxRuntime:
    """The GX context and batch definition of one task (built once)."""

    def __init__(self) -> None:
        from airflow_provider_cdc.quality.gx import new_context

        self.context = new_context()
        source = self.context.data_sources.add_pandas("cdc")
        asset = source.add_dataframe_asset("batch")
        self.batch_definition = asset.add_batch_definition_whole_dataframe("whole_batch")

    def batch(self, data: pd.DataFrame) -> Any:
        return self.batch_definition.get_batch(batch_parameters={"dataframe": data})


class QualitySuites:
    """The compiled suites of one task, their scopes and versions, and (lazily) their GX objects."""

    def __init__(self, suites: Sequence[CompiledSuite]) -> None:
        self.suites = list(suites)
        self._runtime: _GxRuntime | None = None
        self._built: dict[tuple[str, str, str, bool], BuiltSuite] = {}
        self._names: dict[str, int] = {}

    @classmethod
    def from_config(cls, suites: Iterable[SuiteConfig], tables: Iterable[str] | None = None) -> QualitySuites:
        """Compile ``suites`` (never raises: see :meth:`problems`). With ``tables`` (a source's tables, qualified or
        not), suites whose scope takes none of them are left out."""
        compiled = [CompiledSuite.compile(config) for config in suites]
        if tables is not None:
            wanted = [t if "." in t else f".{t}" for t in tables]
            compiled = [s for s in compiled if s.tables is None or any(_scope_meets(s, t) for t in wanted)]
        return cls(compiled)

    # --- config ---

    def versions(self) -> dict[str, str]:
        """Suite id -> hash of its config (for the manifest and the ledger row)."""
        return {suite.suite_id: suite.version for suite in self.suites}

    def problems(self) -> list[str]:
        """Problems found compiling the rules (no GX, no table), suite by suite."""
        return [p for suite in self.suites for p in suite.problems]

    def for_table(self, table: str) -> list[CompiledSuite]:
        """The suites whose ``tables`` scope takes ``table`` (``schema.name``), in config order."""
        return [suite for suite in self.suites if suite.applies_to(table)]

    def check(self, schema: TableSchema) -> list[str]:
        """Every problem of the suites scoped to ``schema``'s table: their rules', and columns the table lacks or
        bounds its column types refuse."""
        out: list[str] = []
        for suite in self.for_table(schema.qualified_name):
            out += suite.problems
            out += check_columns(suite.checks, schema)
        return out

    def validate(self, table: pa.Table, schema: TableSchema, sink_rows: SinkRows | None = None) -> TableValidation:
        """Judge one table of a batch with every suite scoped to it (:func:`.validate.validate_table`)."""
        from airflow_provider_cdc.quality.validate import validate_table

        return validate_table(self, table, schema, sink_rows)

    # --- GX, built on first use ---

    @property
    def runtime(self) -> _GxRuntime:
        if self._runtime is None:
            self._runtime = _GxRuntime()
        return self._runtime

    @property
    def context(self) -> Any:
        """The task's GX ephemeral context (built on first use)."""
        return self.runtime.context

    def batch(self, data: pd.DataFrame) -> Any:
        """A GX batch of ``data`` through the task's one batch definition."""
        return self.runtime.batch(data)

    def built_suite(self, suite: CompiledSuite, schema: TableSchema, guarded: bool = False) -> BuiltSuite:
        """The GX suite of ``suite`` for ``schema``'s table, built once per table shape and reused."""
        key = (suite.suite_id, schema.qualified_name, schema.fingerprint(), guarded)
        built = self._built.get(key)
        if built is None:
            built = self._build(suite, schema, guarded)
            self._built[key] = built
        return built

    def _build(self, suite: CompiledSuite, schema: TableSchema, guarded: bool) -> BuiltSuite:
        from airflow_provider_cdc.quality import gx

        gx_module = gx.import_gx()
        expectations = []
        checks: dict[str, QualityCheck] = {}
        problems: list[str] = []
        for check in suite.checks:
            cls = gx.expectation_class(check.expectation)
            if cls is None:
                problems.append(f"{check.where('expectation')}: {gx.unknown_expectation(check.expectation)}")
                continue
            check = dataclasses.replace(check, per_row=gx.is_per_row(cls))
            if check.policy == "quarantine" and not check.per_row:
                problems.append(f"{check.where('policy')}: quarantine needs an expectation that names the failing "
                                f"rows; {check.expectation} judges the whole batch: use policy warn or fail")
                continue
            kwargs = gx_kwargs(check, schema)
            condition = _row_condition(check, schema, guarded, kwargs.get("row_condition"))
            if condition is not None:
                kwargs["row_condition"] = condition
            meta = {"cdc_suite": suite.suite_id, "cdc_rule": check.rule_id, "cdc_policy": check.policy}
            try:
                expectations.append(cls(**kwargs, meta=meta, description=check.description))
            except (ValueError, TypeError):
                problems.append(f"{check.where('kwargs')}: {check.expectation} refuses them: "
                                f"{gx.kwargs_problem(cls, kwargs)}")
                continue
            checks[check.rule_id] = check
        if problems:
            raise QualityConfigError(problems, table=schema.qualified_name)
        gx_suite = gx_module.ExpectationSuite(name=self._suite_name(suite, schema, guarded), expectations=expectations)
        columns = tuple(dict.fromkeys(c for check in checks.values() for c in check.columns))
        return BuiltSuite(self.context.suites.add(gx_suite), checks, columns)

    def _suite_name(self, suite: CompiledSuite, schema: TableSchema, guarded: bool) -> str:
        """``users_checks @ public.users`` (``#2`` after the table's columns changed, `` guarded`` for unchanged
        values): unique in the context, readable in GX's results."""
        name = f"{suite.suite_id} @ {schema.qualified_name}" + (" guarded" if guarded else "")
        count = self._names[name] = self._names.get(name, 0) + 1
        return name if count == 1 else f"{name} #{count}"


def _scope_meets(suite: CompiledSuite, table: str) -> bool:
    """Whether a suite scope entry names ``table`` (``schema.name``, or ``.name`` for an unqualified source entry)."""
    schema, _, name = table.partition(".")
    for entry in suite.tables or ():
        entry_schema, dot, entry_name = entry.partition(".")
        if not dot:
            entry_schema, entry_name = "", entry
        if entry_name == name and (not schema or not entry_schema or entry_schema == schema):
            return True
    return False


def _row_condition(check: QualityCheck, schema: TableSchema, guarded: bool, own: Any) -> Any:
    """The GX row condition of ``check`` on the frame: ``unique`` judges each key's latest change; in a guarded suite
    a per-row check skips values the source did not resend. Combined with the rule's own ``row_condition`` unless
    that is a legacy string or an OR (GX cannot put either inside an AND): then the rule's own stays alone."""
    from great_expectations.expectations.row_conditions import (
        AndCondition,
        Column,
        Condition,
        OrCondition,
        deserialize_row_condition,
    )

    conditions: list[Any] = []
    if check.kind == "unique" and schema.primary_key:
        conditions.append(Column(LATEST) == True)  # noqa: E712 - builds a GX condition, not a comparison
    if guarded and check.per_row:
        conditions += [Column(judged_column(name)) == True for name in check.columns]  # noqa: E712
    if not conditions:
        return own
    if isinstance(own, dict):
        own = deserialize_row_condition(own)
    if own is not None:
        if not isinstance(own, Condition) or isinstance(own, OrCondition):
            return own  # GX allows no OR inside an AND
        conditions.insert(0, own)
    return conditions[0] if len(conditions) == 1 else AndCondition(conditions=conditions)

