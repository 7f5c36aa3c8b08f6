"""Quality rules through the API: adding a rule to a suite, and checking posted records against a suite or rules.

A rule is checked before it is stored, by the quality module's own checks: the config loaded with it merged in
(:func:`~airflow_provider_cdc.quality.rules.check_rules`: kinds, keys, values, regexes, bounds, policies), GX for an
``expectation:`` rule (:func:`~airflow_provider_cdc.quality.rules.check_expectations`), and, for every source whose
stage list runs the suite, its columns against the table schemas of the sink's registry (after the rules, as
:func:`~airflow_provider_cdc.config.fields.suite_field_problems` does for ``config check``).

A check runs the records through :class:`~airflow_provider_cdc.quality.QualitySuites` exactly as the validate stage
runs a batch: each record is an insert of a table whose columns are typed from the registered schema of that table
(``source_id`` and ``table``), else from the JSON values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from airflow_provider_cdc.api.errors import NotFoundError, known_names
from airflow_provider_cdc.api.registered import Registered
from airflow_provider_cdc.api.write_models import (
    QualityCheckAnswer,
    QualityCheckRequest,
    QualityRuleAdded,
    QualityRuleRequest,
    RowFailure,
    RuleOutcome,
)
from airflow_provider_cdc.api.writes import RejectedError, field_problems, record_write, schemas_by_source
from airflow_provider_cdc.config.models import DEFAULT_TABLE_SCHEMA, SuiteConfig

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_cdc.config import CdcConfig, SourceConfig
    from airflow_provider_cdc.tables import Column, TableSchema

    SchemaReader = Callable[[CdcConfig, SourceConfig], dict[str, TableSchema]]

POSTED_SUITE = "posted"


def sources_of_suite(config: CdcConfig, suite: SuiteConfig) -> list[SourceConfig]:
    """The sources whose validate stage runs ``suite`` (they name it or none, and its scope meets a table)."""
    from airflow_provider_cdc.quality.suites import QualitySuites

    out = []
    for source in config.sources:
        if source.quality is not None and suite.id not in source.quality:
            continue
        if QualitySuites.from_config([suite], source.tables).suites:
            out.append(source)
    return out


def add_rule(config: CdcConfig, request: QualityRuleRequest, registered: Registered, *, actor: str,
             read_schemas: SchemaReader | None = None) -> tuple[QualityRuleAdded, Registered]:
    """Check ``request.rule`` in its suite and add it: (the answer, the registry to store)."""
    from airflow_provider_cdc.config import ConfigError, load_config
    from airflow_provider_cdc.config.fields import suite_field_problems
    from airflow_provider_cdc.quality.rules import check_expectations

    yaml_suites = {s.id for s in load_config(config.directory, registered=Registered.empty()).suites}
    in_yaml = request.suite_id in yaml_suites
    if in_yaml and request.tables is not None:
        raise RejectedError([(("body", "tables"), f"suite {request.suite_id!r} is defined in quality.yaml, which "
                                                  "sets its tables; leave tables out")])
    candidate, version, changed = registered.with_quality_rule(
        request.suite_id, request.rule, tables=None if in_yaml else request.tables, actor=actor)
    prefix = f"suite {request.suite_id!r}"
    try:
        merged = load_config(config.directory, registered=candidate)
    except ConfigError as exc:
        raise RejectedError([(("body", "rule"), problem.reason) for problem in exc.problems
                             if prefix in problem.reason or request.suite_id in problem.key]
                            or [(("body",), str(problem)) for problem in exc.problems]) from None
    suite = next(s for s in merged.suites if s.id == request.suite_id)
    if "expectation" in request.rule:
        found = check_expectations(suite)
        if found:
            raise RejectedError([(("body", "rule"), line) for line in found])
    sources = sources_of_suite(merged, suite)
    schemas, notes = schemas_by_source(merged, sources, read_schemas)
    problems: list[tuple[Any, str]] = []
    checked: list[str] = []
    for source in sources:
        if source.id in schemas:
            checked += [f"{source.id}.{table}" for table in sorted(schemas[source.id])]
            problems += field_problems(suite_field_problems(merged, source, schemas[source.id]), prefix,
                                       ("body", "rule"))
    if problems:
        raise RejectedError(problems)
    answer = QualityRuleAdded(changed=changed, sources=[s.id for s in sources], notes=notes,
                              suite_id=request.suite_id, version=version, rules=list(suite.rules),
                              checked_tables=checked)
    if not sources:
        answer.notes.append("no source runs this suite yet: name it in a source's quality list, or give it tables "
                            "that a source captures")
    return answer, candidate


def audit_quality(config: CdcConfig, answer: QualityRuleAdded, rule: Mapping[str, Any], *, actor: str) -> None:
    from airflow_provider_cdc.connectors.audit import RULES_CHANGED

    targets = answer.sources or [source.id for source in config.sources]
    answer.audited, notes = record_write(config, targets, RULES_CHANGED, actor=actor, details={
        "suite_id": answer.suite_id, "version": answer.version, "rule": dict(rule), "origin": "api",
        "via": "POST /cdc/api/v1/quality/add-rule"})
    answer.notes += notes


# --- check ------------------------------------------------------------------------------------------------------------


def check_records(config: CdcConfig, request: QualityCheckRequest,
                  read_schemas: SchemaReader | None = None) -> QualityCheckAnswer:
    """Validate the posted records (see the module docstring): per rule, passed or failed, failing rows and why."""
    from airflow_provider_cdc.quality import QualityConfigError, QualitySuites
    from airflow_provider_cdc.quality.rules import check_expectations, check_rules

    suite = _suite_to_run(config, request)
    problems = check_rules(suite)
    if any("expectation" in rule for rule in suite.rules if isinstance(rule, Mapping)):
        problems += check_expectations(suite)
    if problems:
        raise RejectedError([(("body", "rules" if request.rules is not None else "suite_id"), line)
                             for line in problems])
    schema, origin = _schema_for(config, request, read_schemas)
    table = _records_table(schema, request.records)
    suites = QualitySuites.from_config([suite])
    try:
        result = suites.validate(table, schema)
    except QualityConfigError as exc:
        raise RejectedError([(("body", "records"), line) for line in exc.problems]) from None
    outcomes: list[RuleOutcome] = []
    for check in suites.suites[0].checks:
        rows = [RowFailure(row=v.row, reason=v.reason, value=v.value) for v in result.violations
                if v.rule_id == check.rule_id]
        failures = [f for f in result.table_failures if f.rule_id == check.rule_id]
        outcomes.append(RuleOutcome(
            suite_id=suite.id, rule_id=check.rule_id, expectation=check.expectation, policy=check.policy,
            passed=not rows and not failures, failed_rows=rows,
            failure="; ".join(f.reason for f in failures) or None))
    failing = {v.row for v in result.violations}
    count = len(request.records)
    return QualityCheckAnswer(table=schema.qualified_name, records=count,
                              passed=all(outcome.passed for outcome in outcomes),
                              score=(count - len(failing)) / count if count else None, rules=outcomes,
                              schema_from=origin)


def _suite_to_run(config: CdcConfig, request: QualityCheckRequest) -> SuiteConfig:
    if (request.suite_id is None) == (request.rules is None):
        raise RejectedError([(("body",), "give exactly one of suite_id (a suite of the config) and rules (a list "
                                         "of rules in the shape of quality.yaml)")])
    if request.suite_id is not None:
        for suite in config.suites:
            if suite.id == request.suite_id:
                # The records are judged by every rule of the suite, whatever table they claim to be.
                return suite.model_copy(update={"tables": None})
        raise NotFoundError("suite", request.suite_id, f"unknown quality suite {request.suite_id!r}; the config has: "
                                                       f"{known_names(s.id for s in config.suites)}")
    try:
        return SuiteConfig.model_validate({"id": POSTED_SUITE, "rules": request.rules})
    except ValidationError as exc:
        raise RejectedError([(("body", "rules", *error["loc"][1:]), error["msg"].removeprefix("Value error, "))
                             for error in exc.errors(include_url=False)]) from None


def _schema_for(config: CdcConfig, request: QualityCheckRequest,
                read_schemas: SchemaReader | None) -> tuple[TableSchema, Literal["registry", "records"]]:
    """The table's registered schema (plus columns only the records have), or one typed from the records."""
    from airflow_provider_cdc.tables import TableSchema

    dot = "." in request.table
    qualified = request.table if dot else f"{DEFAULT_TABLE_SCHEMA}.{request.table}"
    schema_name, _, name = qualified.partition(".")
    known: TableSchema | None = None
    if request.source_id is not None:
        source = next((s for s in config.sources if s.id == request.source_id), None)
        if source is None:
            raise NotFoundError.unknown_source(request.source_id, [s.id for s in config.sources])
        found, _ = schemas_by_source(config, [source], read_schemas)
        tables = found.get(source.id, {})
        known = tables.get(qualified) or next((t for key, t in tables.items() if key.endswith(f".{name}")
                                               and not dot), None)
    inferred = _inferred_columns(request.records)
    if known is not None:
        extra = tuple(c for c in inferred if c.name not in known.column_names)
        return TableSchema(known.schema, known.name, (*known.columns, *extra), known.dialect), "registry"
    return TableSchema(schema_name, name, tuple(inferred), ""), "records"


def _inferred_columns(records: Sequence[Mapping[str, Any]]) -> list[Column]:
    from airflow_provider_cdc.tables import Column

    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(str(key) for key in record))
    columns = []
    for name in names:
        kinds = {kind for kind in (_kind(record.get(name)) for record in records) if kind is not None}
        logical = kinds.pop() if len(kinds) == 1 else ("float" if kinds == {"integer", "float"} else "text")
        columns.append(Column(name, logical, logical))
    return columns


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (dict, list)):
        return "json"
    return "text"


def _portable(value: Any, column: Column) -> str | None:
    """A JSON value in the batch's portable text form for ``column``'s logical type (a text the type cannot read
    stays as written: the type checks name it)."""
    from airflow_provider_cdc.values import format_value

    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str):
        return value
    try:
        return format_value(value, column.logical_type)
    except (TypeError, ValueError, ArithmeticError):
        return format_value(value, "boolean") if isinstance(value, bool) else str(value)


def _records_table(schema: TableSchema, records: Sequence[Mapping[str, Any]]) -> Any:
    """The records as a batch table of inserts, in request order (row i is record i)."""
    from airflow_provider_cdc.events import TableChangesBuilder

    builder = TableChangesBuilder(schema)
    for index, record in enumerate(records):
        builder.append("c", index + 1, 0, None, None, [_portable(record.get(c.name), c) for c in schema.columns])
    return builder.finish()
