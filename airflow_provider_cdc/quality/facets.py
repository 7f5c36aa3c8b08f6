"""The validate stage's metrics of one table as OpenLineage data-quality facets (for the lineage issue's events).

``dataQualityAssertions`` (DataQualityAssertionsDatasetFacet 1-1-0): one assertion per rule of each suite, with its
success, column, severity (``error`` for ``quarantine`` and ``fail``, ``warn`` for ``warn``: a failing ``warn`` rule
does not stop a row) and the failing row count as ``actual``. ``dataQualityMetrics``
(DataQualityMetricsInputDatasetFacet 1-0-3): the rows judged and, per checked column, count, nulls, distinct values,
and min, max and sum for numbers.

Input is what the stage records (``stage_versions.validate.metrics[table]``, JSON in the manifest and the ledger
row), so lineage can be built for any batch after the fact, without GX.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ASSERTIONS_SCHEMA = ("https://openlineage.io/spec/facets/1-1-0/DataQualityAssertionsDatasetFacet.json"
                     "#/$defs/DataQualityAssertionsDatasetFacet")
METRICS_SCHEMA = ("https://openlineage.io/spec/facets/1-0-3/DataQualityMetricsInputDatasetFacet.json"
                  "#/$defs/DataQualityMetricsInputDatasetFacet")
SEVERITY = {"warn": "warn", "quarantine": "error", "fail": "error"}
_METRIC_KEYS = ("count", "nullCount", "distinctCount", "min", "max", "sum")


def quality_facets(metrics: Mapping[str, Any], producer: str) -> dict[str, dict[str, Any]]:
    """``{"dataQualityAssertions": ..., "dataQualityMetrics": ...}`` of one table's metrics."""
    assertions = []
    for suite_id, suite in (metrics.get("suites") or {}).items():
        for rule_id, rule in (suite.get("rules") or {}).items():
            assertion: dict[str, Any] = {
                "assertion": str(rule.get("assertion") or rule.get("expectation") or rule_id),
                "success": bool(rule.get("success")),
                "name": f"{suite_id}.{rule_id}",
                "severity": SEVERITY.get(str(rule.get("policy")), "error"),
                "expected": "0",
                "actual": str(int(rule.get("unexpected") or 0)),
            }
            columns = rule.get("columns") or []
            if len(columns) == 1:
                assertion["column"] = columns[0]
            elif columns:
                assertion["params"] = {"columns": list(columns)}
            if rule.get("description"):
                assertion["description"] = str(rule["description"])
            if rule.get("expectation"):
                assertion["content"] = str(rule["expectation"])
                assertion["contentType"] = "great_expectations"
            assertions.append(assertion)
    columns_metrics = {
        name: {key: value for key, value in (entry or {}).items() if key in _METRIC_KEYS and value is not None}
        for name, entry in (metrics.get("columns") or {}).items()
    }
    return {
        "dataQualityAssertions": {"_producer": producer, "_schemaURL": ASSERTIONS_SCHEMA, "assertions": assertions},
        "dataQualityMetrics": {"_producer": producer, "_schemaURL": METRICS_SCHEMA,
                               "rowCount": int(metrics.get("evaluated") or 0), "columnMetrics": columns_metrics},
    }
