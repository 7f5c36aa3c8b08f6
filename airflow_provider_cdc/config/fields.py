"""``config check`` online: the fields that rules and quality suites read, checked against the table schemas the
sinks know.

Offline, the loader can only compile the rules: whether ``source_fields`` (and the names an expression reads) are
columns of their tables needs the tables. The schema registry knows them: every table a source has captured has its
versions in the sink (:mod:`airflow_provider_cdc.schema.registry`), as the source declared them. The latest version of
each table is what the next batch will be checked against, so a rule that reads a field missing there would send every
row of that table to the quarantine: the check reports it as a problem (exit status 1) before the deploy does.

A table the registry does not know yet (never captured) is checked at its first batch instead, and said so; a sink
that cannot be reached is a warning, never a crash.
"""

from __future__ import annotations

from collections.abc import Callable

from airflow_provider_cdc.config.models import CdcConfig, SourceConfig, mask_url
from airflow_provider_cdc.tables import TableSchema

# (config, source, {table: registered schema}) -> problem lines (file: key: reason)
FieldCheck = Callable[[CdcConfig, SourceConfig, dict[str, TableSchema]], list[str]]


def registered_schemas(config: CdcConfig, source: SourceConfig) -> dict[str, TableSchema]:
    """``schema.table`` -> the latest schema of that table of ``source`` in its sink's registry."""
    from airflow_provider_cdc.connectors import registry
    from airflow_provider_cdc.hooks.cdc import entry_dsn
    from airflow_provider_cdc.schema.registry import Registry, split_subject

    connector = config.connector(source.sink)
    sink = registry.make_sink(connector, entry_dsn(config, connector), source)
    try:
        known = Registry(sink.schema_versions(source.id))
    finally:
        sink.close()
    out: dict[str, TableSchema] = {}
    for subject in known.subjects():
        latest = known.latest(subject)
        if latest is not None:
            out[split_subject(subject)[1]] = latest.table
    return out


def rule_field_problems(config: CdcConfig, source: SourceConfig, schemas: dict[str, TableSchema]) -> list[str]:
    """Every problem of ``source``'s rules on the tables whose schemas are known, at its rule in
    transformations.yaml (``RuleSet.check``: it names the rule, the table, the key and the field)."""
    from airflow_provider_cdc.transform.stage import rules_of, transform_stage

    stage = transform_stage(source, config)
    if stage is None:
        return []
    index = {rule.rule_id: i for i, rule in enumerate(config.rules)}
    problems: list[str] = []
    for table, schema in sorted(schemas.items()):
        for line in stage.rules.check(schema):
            rule_id = next((r.rule_id for r in rules_of(source, config) if line.startswith(f"rule {r.rule_id!r}")),
                           None)
            where = f"rules[{index[rule_id]}]" if rule_id is not None else "rules"
            problems.append(f"transformations.yaml: {where}: {line} (source {source.id!r}, as its sink's schema "
                            f"registry knows {table})")
    return list(dict.fromkeys(problems))


def suite_field_problems(config: CdcConfig, source: SourceConfig, schemas: dict[str, TableSchema]) -> list[str]:
    """Every problem of ``source``'s quality suites on the tables whose schemas are known, at its suite in
    quality.yaml: columns the table lacks (after the rules: a suite may check a rule's target) and bounds the column
    types refuse."""
    from airflow_provider_cdc.quality.stage import suites_of
    from airflow_provider_cdc.quality.suites import QualitySuites
    from airflow_provider_cdc.transform.stage import transform_stage

    suites = suites_of(source, config)
    if not suites:
        return []
    compiled = QualitySuites.from_config(suites)
    stage = transform_stage(source, config)
    index = {suite.id: i for i, suite in enumerate(config.suites)}
    problems: list[str] = []
    for table, schema in sorted(schemas.items()):
        judged = stage.output_schema(schema, None) if stage is not None else schema
        for line in compiled.check(judged):
            suite_id = next((s.id for s in suites if line.startswith(f"suite {s.id!r}")), None)
            where = f"suites[{index[suite_id]}]" if suite_id is not None else "suites"
            problems.append(f"quality.yaml: {where}: {line} (source {source.id!r}, as its sink's schema registry "
                            f"knows {table})")
    return list(dict.fromkeys(problems))


CHECKS: tuple[FieldCheck, ...] = (rule_field_problems, suite_field_problems)


def check_fields(config: CdcConfig, checks: tuple[FieldCheck, ...] = CHECKS) -> tuple[list[str], list[str]]:
    """(problems, notes) of every source's checks against its registered schemas.

    Notes say what was checked, what is not known yet, and which sinks could not be read."""
    problems: list[str] = []
    notes: list[str] = []
    for source in config.sources:
        if not _has_work(config, source):
            continue
        try:
            schemas = registered_schemas(config, source)
        except Exception as exc:  # a sink that cannot be read: the check goes on without it
            notes.append(f"warning: source {source.id!r}: its sink {source.sink!r} could not be read for the table "
                         f"schemas ({type(exc).__name__}: {' '.join(mask_url(w) for w in str(exc).split())}); rule "
                         "fields are checked at the first batch instead")
            continue
        unknown = [name for name in source.tables if not _registered(name, schemas)]
        found = [line for check in checks for line in check(config, source, schemas)]
        problems += found
        notes.append(f"source {source.id!r}: fields checked against {len(schemas)} registered table schema"
                     f"{'s' if len(schemas) != 1 else ''}" + (f" ({len(found)} problem{'s' if len(found) != 1 else ''})"
                                                              if found else ""))
        if unknown:
            notes.append(f"  not captured yet, checked at their first batch: {', '.join(unknown)}")
    return problems, notes


def _registered(name: str, schemas: dict[str, TableSchema]) -> bool:
    """Whether ``tables`` entry ``name`` (qualified or not: the default schema depends on the connector) is known."""
    return name in schemas if "." in name else any(table.endswith(f".{name}") for table in schemas)


def _has_work(config: CdcConfig, source: SourceConfig) -> bool:
    from airflow_provider_cdc.quality.stage import suites_of
    from airflow_provider_cdc.transform.stage import rules_of

    return bool(rules_of(source, config)) or bool(suites_of(source, config))
