"""The transform stage: a source's rules (:class:`~.engine.RuleSet`) applied to every table of a batch, between
capture and load, in staged and fused mode alike (:mod:`airflow_provider_cdc.stages`).

What it adds to the engine:

- **Which rules.** The source's ``transformations:`` (rule ids, in config order), or every enabled rule when the key
  is omitted; each rule's own ``tables`` scope then picks the tables it changes.
- **Schemas.** The batch's schemas, and the ``before``/``after`` of its schema changes, gain the rules' target
  columns and lose their dropped fields, so that the sink's schema gate registers and creates exactly the columns it
  will be given.
- **Failures.** A row an expression fails on is taken out of the batch. Under the rule's ``policy: quarantine`` (the
  default) it joins the batch's quarantine (:mod:`airflow_provider_cdc.quarantine`: rule, field, reason and the row
  as it was captured), which the sink stores in ``_cdc_quarantine`` in the batch's own transaction; under ``policy:
  fail`` the stage raises :class:`TransformFailed` (terminal), naming the first failures, and nothing is loaded.
  Either way the position never passes a row that was not handled.
- **Versions.** Each rule's id and hash go into the manifest and the ledger row (``stage_versions.transform``).
- **Joins.** A join rule's ``lookup`` (:class:`ReferenceLookup`): its ``parameters.connector`` (or, omitted, the
  source itself) -> the entry's driver URL through the hooks layer -> the connector factory's ``reference`` reader.
  URLs are resolved at the first lookup (never at DAG parse) and never logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from airflow_provider_cdc.errors import CdcError, ConnectorUnavailableError
from airflow_provider_cdc.events import ChangeBatch, batch_schema
from airflow_provider_cdc.quarantine import Refusal, count_by_rule, merge, quarantine_rows, refused_changes
from airflow_provider_cdc.tables import SchemaChange, TableSchema

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig, ConnectorConfig, RuleConfig, SourceConfig
    from airflow_provider_cdc.transform.engine import RuleSet, TableResult
    from airflow_provider_cdc.transform.join import Lookup

log = logging.getLogger("airflow_provider_cdc.transform")

STAGE_NAME = "transform"
POLICIES = ("quarantine", "fail")
# Failures named in a TransformFailed message (the rest are counted).
_REPORTED = 5


class TransformFailed(CdcError):
    """Rows failed a rule whose policy is ``fail``: nothing of the batch was loaded."""

    terminal = True


def rules_of(source: SourceConfig, config: CdcConfig) -> list[RuleConfig]:
    """The enabled rules of ``source``: those its ``transformations`` names, in config order, or all of them."""
    wanted = source.transformations
    return [rule for rule in config.rules
            if rule.enabled and (wanted is None or rule.rule_id in wanted)]


def policy_of(rule: RuleConfig) -> str:
    policy = (rule.model_extra or {}).get("policy", "quarantine")
    return policy if policy in POLICIES else "quarantine"


class TransformStage:
    """:class:`~airflow_provider_cdc.stages.Stage` ``transform`` of one source (see the module docstring)."""

    name = STAGE_NAME

    def __init__(self, rules: Sequence[RuleConfig], *, function_modules: Sequence[str] = (),
                 secret: Callable[[str], str] | None = None, lookup: Lookup | None = None,
                 connectors: Collection[str] | None = None) -> None:
        self.configs = list(rules)
        self.function_modules = list(function_modules)
        self.secret = secret
        self.lookup = lookup
        self.connectors = connectors
        self.policies = {rule.rule_id: policy_of(rule) for rule in self.configs}
        self._rules: RuleSet | None = None

    @property
    def rules(self) -> RuleSet:
        """The compiled rules (compiled on first use: a stage is built at every DAG parse)."""
        if self._rules is None:
            from airflow_provider_cdc.transform.engine import RuleSet
            from airflow_provider_cdc.transform.functions import FunctionRegistry

            self._rules = RuleSet.from_config(self.configs, functions=FunctionRegistry.default(self.function_modules),
                                              secret=self.secret, lookup=self.lookup, connectors=self.connectors)
        return self._rules

    def versions(self) -> dict[str, Any]:
        return {"rules": self.rules.versions()}

    def apply(self, batch: ChangeBatch) -> ChangeBatch:
        rules = self.rules
        tables: dict[str, pa.Table] = {}
        schemas = dict(batch.schemas)
        derived: dict[str, TableResult] = {}
        failed: list[dict[str, Any]] = []
        for name, table in batch.tables.items():
            if not rules.for_table(name):
                tables[name] = table
                continue
            result = rules.apply(table, batch.schemas[name])
            tables[name], schemas[name], derived[name] = result.table, result.schema, result
            if result.failures:
                failed += self._failures(name, table, result)
            log.info("transform: %s: %d changes in, %d out, %d failed (%s)", name, table.num_rows,
                     result.table.num_rows, len(result.failures),
                     ", ".join(f"{rule_id}: {path}" for rule_id, path in result.paths.items()))
        for name, schema in batch.schemas.items():  # tables with schema changes but no rows here
            if name not in batch.tables and rules.for_table(name):
                schemas[name] = self.output_schema(schema, None)
        changes = [self._change(change, derived.get(change.table)) if rules.for_table(change.table) else change
                   for change in batch.schema_changes]
        self._raise_for_fail_policy(batch, failed)
        quarantine = merge(batch.quarantine, quarantine_rows(failed) if failed else None)
        if failed:
            log.warning("transform: %d changes of batch %s failed a rule and were quarantined (%s); the sink keeps "
                        "them in _cdc_quarantine with their reason", len(failed), batch.batch_id,
                        count_by_rule(failed))
        return dataclasses.replace(batch, tables=tables, schemas=schemas, schema_changes=changes,
                                   quarantine=quarantine)

    # -- failures ---------------------------------------------------------------------------------------------

    def _failures(self, name: str, table: pa.Table, result: TableResult) -> list[dict[str, Any]]:
        return refused_changes(table, name, STAGE_NAME, (Refusal(f.row, f.rule_id, f.reason, f.field)
                                                         for f in result.failures))

    def _raise_for_fail_policy(self, batch: ChangeBatch, failed: list[dict[str, Any]]) -> None:
        fatal = [f for f in failed if self.policies.get(f["rule_id"]) == "fail"]
        if not fatal:
            return
        named = "; ".join(f"{f['source_table']} row {json.dumps(f['row'], ensure_ascii=False, default=str)[:200]}: "
                          f"rule {f['rule_id']}{' field ' + f['field'] if f['field'] else ''}: {f['reason']}"
                          for f in fatal[:_REPORTED])
        more = f" (and {len(fatal) - _REPORTED} more)" if len(fatal) > _REPORTED else ""
        raise TransformFailed(
            f"batch {batch.batch_id}: {len(fatal)} changes failed rules whose policy is fail: {named}{more}. Nothing "
            "was loaded and the position did not move; fix the rule (or the rows at the source), then clear the "
            "task, or set the rule's policy to quarantine")

    # -- schemas ----------------------------------------------------------------------------------------------

    def output_schema(self, schema: TableSchema, result: TableResult | None) -> TableSchema:
        """``schema`` as the rules leave it: target columns added (typed as in ``result`` where this batch's rows
        typed them), dropped fields gone."""
        empty = batch_schema(schema, False).empty_table()
        made = self.rules.apply(empty, schema).schema
        if result is None:
            return made
        typed = {c.name: c for c in result.schema.columns}
        source_names = {c.name for c in schema.columns}
        columns = tuple(typed.get(c.name, c) if c.name not in source_names else c for c in made.columns)
        return dataclasses.replace(made, columns=columns)

    def _change(self, change: SchemaChange, result: TableResult | None) -> SchemaChange:
        before = self.output_schema(change.before, result) if change.before is not None else None
        return dataclasses.replace(change, after=self.output_schema(change.after, result), before=before)


def transform_stage(source: SourceConfig, config: CdcConfig) -> TransformStage | None:
    """The stage factory (:data:`airflow_provider_cdc.stages.STAGE_FACTORIES`): None when no rule applies."""
    rules = rules_of(source, config)
    if not rules:
        return None
    from airflow_provider_cdc.hooks.secrets import secret_value

    return TransformStage(rules, function_modules=config.functions.modules, secret=secret_value,
                          lookup=ReferenceLookup(source, config), connectors=[c.id for c in config.connectors])


class ReferenceLookup:
    """A join's :data:`~.join.Lookup` for one source: connector id (None: the source's own database) -> its driver
    URL (resolved on first use, kept for the process, never logged) -> the connector factory's ``reference``."""

    def __init__(self, source: SourceConfig, config: CdcConfig) -> None:
        self.source = source
        self.config = config
        self._urls: dict[str | None, str] = {}

    def __call__(self, connector_id: str | None, table: str, key_columns: list[str], keys: list[tuple[Any, ...]],
                 *, missing_ok: bool = False) -> dict[tuple[Any, ...], dict[str, Any]]:
        from airflow_provider_cdc.connectors import registry

        entry: SourceConfig | ConnectorConfig = self.source if connector_id is None \
            else self.config.connector(connector_id)
        read = registry.factory(entry.type).reference
        if read is None:
            what = f"connector {connector_id!r}" if connector_id else f"source {self.source.id!r}"
            raise ConnectorUnavailableError(
                f"{what} has type {entry.type!r}, which cannot be read as a join's reference table")
        if connector_id not in self._urls:
            from airflow_provider_cdc.hooks.cdc import entry_dsn

            self._urls[connector_id] = entry_dsn(self.config, entry)
        if missing_ok:
            return read(self._urls[connector_id], table, key_columns, keys, missing_ok=True)
        return read(self._urls[connector_id], table, key_columns, keys)

