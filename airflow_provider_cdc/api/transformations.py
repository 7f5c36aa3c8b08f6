"""The transformation rules: those of ``transformations.yaml`` and those registered through the API (``origin:
api``, versioned), and registering one.

A rule is checked before it is stored, by the same code that checks the YAML: the config loaded with the rule merged
in (:func:`~airflow_provider_cdc.config.loader.load_config`: its Jinja compiles in the sandbox, its keys and
functions are known, its join's connector exists) and, for every source it applies to, its fields against the table
schemas of that source's sink registry (:func:`~airflow_provider_cdc.config.fields.rule_field_problems`, as
``config check`` does online). A rule id that transformations.yaml defines is refused: the YAML is primary.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.api.models import RuleInfo, RuleList
from airflow_provider_cdc.api.registered import Registered
from airflow_provider_cdc.api.write_models import (
    RuleVersion,
    TransformationRegistered,
    TransformationRequest,
    VersionedRuleInfo,
    VersionedRuleList,
)
from airflow_provider_cdc.api.writes import (
    ConflictError,
    RejectedError,
    field_problems,
    record_write,
    schemas_by_source,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow_provider_cdc.config import CdcConfig, SourceConfig
    from airflow_provider_cdc.config.models import RuleConfig
    from airflow_provider_cdc.tables import TableSchema

    SchemaReader = Callable[[CdcConfig, SourceConfig], dict[str, TableSchema]]


def rule_info(rule: RuleConfig) -> RuleInfo:
    return RuleInfo(rule_id=rule.rule_id, name=rule.name, rule_type=rule.rule_type, tables=rule.tables,
                    source_fields=list(rule.source_fields), target_field=rule.target_field,
                    expression=rule.expression, enabled=rule.enabled, options=dict(rule.model_extra or {}),
                    origin="yaml")


def versioned_info(rule: RuleConfig, registered: Registered, yaml_ids: set[str]) -> VersionedRuleInfo:
    base = rule_info(rule).model_dump()
    if rule.rule_id in yaml_ids:
        return VersionedRuleInfo(**base)
    versions = [RuleVersion(version=int(v.get("version") or 0), registered_at=v.get("registered_at"),
                            actor=v.get("actor"), rule=dict(v.get("rule") or {}))
                for v in registered.rule_versions(rule.rule_id)]
    return VersionedRuleInfo(**{**base, "origin": "api"}, version=versions[-1].version if versions else None,
                             versions=versions)


def list_rules(config: CdcConfig, registered: Registered | None = None) -> RuleList | VersionedRuleList:
    """Every rule of the config, YAML's and the API's (with their versions when ``registered`` is given)."""
    if registered is None:
        return RuleList(rules=[rule_info(rule) for rule in config.rules])
    yaml_ids = _yaml_rule_ids(config)
    return VersionedRuleList(rules=[versioned_info(rule, registered, yaml_ids) for rule in config.rules])


def _yaml_rule_ids(config: CdcConfig) -> set[str]:
    from airflow_provider_cdc.config import load_config

    return {rule.rule_id for rule in load_config(config.directory, registered=Registered.empty()).rules}


def sources_of_rule(config: CdcConfig, rule_id: str) -> list[SourceConfig]:
    """The sources whose stage list runs rule ``rule_id`` (they name it, or name none and its scope meets one of
    their tables)."""
    from airflow_provider_cdc.config.models import DEFAULT_TABLE_SCHEMA
    from airflow_provider_cdc.transform.stage import rules_of

    out = []
    for source in config.sources:
        for rule in rules_of(source, config):
            if rule.rule_id != rule_id:
                continue
            names = source.qualified_names(DEFAULT_TABLE_SCHEMA)
            if rule.tables is None or any(t in names or f"{DEFAULT_TABLE_SCHEMA}.{t}" in names or
                                          any(n.endswith(f".{t}") for n in names) for t in rule.tables):
                out.append(source)
    return out


def register_rule(config: CdcConfig, request: TransformationRequest, registered: Registered, *, actor: str,
                  read_schemas: SchemaReader | None = None) -> tuple[TransformationRegistered, Registered]:
    """Check ``request`` and make it the next version of its rule id: (the answer, the registry to store). Raises
    :class:`RejectedError` for a rule that is not valid, :class:`ConflictError` for an id the YAML defines.

    A rule without ``tables`` whose fields only some of the tables it would meet have (the seed's ``mask_email``
    beside an ``orders`` table without ``email``) is scoped to those tables, and the answer says so: unscoped, it
    would send every row of the others to the quarantine."""
    rule = request.model_dump(exclude_unset=True, mode="json")
    rule_id = request.rule_id
    if rule_id in _yaml_rule_ids(config):
        raise ConflictError(f"rule {rule_id!r} is defined in transformations.yaml, which is primary: change it there "
                            "(rules registered through the API take ids the YAML does not use)")
    try:
        return _register(config, rule, registered, actor=actor, read_schemas=read_schemas)
    except RejectedError as exc:
        scope = _scope_to_fitting_tables(rule, exc) if "tables" not in rule else None
        if scope is None:
            raise
        answer, candidate = _register(config, {**rule, "tables": scope}, registered, actor=actor,
                                      read_schemas=read_schemas)
        answer.notes.insert(0, f"the rule names no tables, and only {', '.join(scope)} of the tables it would meet "
                               f"have its fields, so it was scoped to {'them' if len(scope) > 1 else 'it'} (tables: "
                               f"[{', '.join(scope)}]); elsewhere it would send every row to the quarantine")
        return answer, candidate


_FIELD_PROBLEM = re.compile(r"^rule '[^']*', table (?P<table>[^,]+), key (?:source_fields|expression)[^:]*: "
                            r"(?P<reason>unknown (?:source )?field|.*(?:undefined|unknown).*)")


def _scope_to_fitting_tables(rule: dict[str, Any], rejected: RejectedError) -> list[str] | None:
    """For a rule without ``tables`` refused only because some tables lack its fields: the checked tables that
    have them (None when none has, or when it was refused for anything else)."""
    lacking: set[str] = set()
    for _, message in rejected.problems:
        found = _FIELD_PROBLEM.match(message)
        if found is None:
            return None
        lacking.add(found.group("table"))
    fitting = sorted({table for table in rejected.checked if table not in lacking})
    return fitting or None


def _register(config: CdcConfig, rule: dict[str, Any], registered: Registered, *, actor: str,
              read_schemas: SchemaReader | None) -> tuple[TransformationRegistered, Registered]:
    from airflow_provider_cdc.config import ConfigError, load_config
    from airflow_provider_cdc.config.fields import rule_field_problems

    rule_id = str(rule["rule_id"])
    candidate, version, changed = registered.with_rule(rule, actor=actor)
    try:
        merged = load_config(config.directory, registered=candidate)
    except ConfigError as exc:
        raise RejectedError([(_loc_of(problem.key, problem.reason), problem.reason) for problem in exc.problems
                             if rule_id in problem.key or f"rule {rule_id!r}" in problem.reason]
                            or [(("body",), str(problem)) for problem in exc.problems]) from None
    sources = sources_of_rule(merged, rule_id)
    schemas, notes = schemas_by_source(merged, sources, read_schemas)
    problems: list[tuple[Any, str]] = []
    checked: list[str] = []
    for source in sources:
        if source.id not in schemas:
            continue
        checked += [f"{source.id}.{table}" for table in sorted(schemas[source.id])]
        problems += [(_loc_of("", line), line) for _, line in field_problems(
            rule_field_problems(merged, source, schemas[source.id]), f"rule {rule_id!r}", ("body",))]
    if problems:
        raise RejectedError(problems, checked=[table.split(".", 1)[1] for table in checked])
    merged_rule = next(r for r in merged.rules if r.rule_id == rule_id)
    info = versioned_info(merged_rule, candidate, set())
    answer = TransformationRegistered(changed=changed, sources=[s.id for s in sources], notes=notes, rule=info,
                                      version=version, checked_tables=checked)
    if not sources:
        answer.notes.append("no source runs this rule yet: name it in a source's transformations, or give it "
                            "tables that a source captures")
    return answer, candidate


def audit_rule(config: CdcConfig, answer: TransformationRegistered, *, actor: str) -> None:
    """Record ``rules_changed`` in the audit trail of each source the rule applies to (every source when none)."""
    from airflow_provider_cdc.connectors.audit import RULES_CHANGED

    targets = answer.sources or [source.id for source in config.sources]
    answer.audited, notes = record_write(config, targets, RULES_CHANGED, actor=actor, details={
        "rule_id": answer.rule.rule_id, "version": answer.version, "origin": "api",
        "via": "POST /cdc/api/v1/transformations"})
    answer.notes += notes


def _loc_of(key: str, reason: str) -> tuple[str, ...]:
    """The request field a loader problem is about: ``key expression`` in its reason, else the body."""
    for field in ("expression", "source_fields", "target_field", "tables", "rule_type", "parameters", "name"):
        if f"key {field}" in reason or key.endswith(f".{field}") or f".{field}." in key:
            return ("body", field)
    return ("body",)
