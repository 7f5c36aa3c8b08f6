"""The transformation rules of the config (``transformations.yaml``), as the API lists them. Rules registered
through the API (part of issue 14 still to come) will be listed beside them with ``origin: api``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_cdc.api.models import RuleInfo, RuleList

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig
    from airflow_provider_cdc.config.models import RuleConfig


def rule_info(rule: RuleConfig) -> RuleInfo:
    return RuleInfo(rule_id=rule.rule_id, name=rule.name, rule_type=rule.rule_type, tables=rule.tables,
                    source_fields=list(rule.source_fields), target_field=rule.target_field,
                    expression=rule.expression, enabled=rule.enabled, options=dict(rule.model_extra or {}),
                    origin="yaml")


def list_rules(config: CdcConfig) -> RuleList:
    return RuleList(rules=[rule_info(rule) for rule in config.rules])
