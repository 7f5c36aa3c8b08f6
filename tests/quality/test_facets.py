"""The validate stage's metrics as OpenLineage data-quality facets, validated against the official JSON Schemas in
``../shared/spec/openlineage/`` (the facet schemas reference the core schema by its ``$id``)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from referencing import Registry, Resource

from airflow_provider_cdc.quality.facets import quality_facets
from airflow_provider_cdc.quality.suites import QualitySuites
from quality.util import USERS, suite, table_of

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "openlineage"
PRODUCER = "https://example.com/airflow-provider-cdc"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    paths = [SPEC / "OpenLineage.json", *(SPEC / "facets").glob("*.json")]
    documents = [json.loads(path.read_text()) for path in paths]
    registry = Registry().with_resources((doc["$id"], Resource.from_contents(doc)) for doc in documents)
    facet = json.loads((SPEC / "facets" / f"{name}.json").read_text())
    return jsonschema.Draft202012Validator(facet, registry=registry)


def test_metrics_of_a_batch_become_valid_data_quality_facets():
    suites = QualitySuites.from_config([suite(
        {"type": "pattern", "column": "email", "pattern": "@"},
        {"type": "range", "column": "price", "min": 0, "policy": "warn"},
        {"type": "unique", "columns": ["email", "name"]},
        {"expectation": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}, "policy": "warn"},
    )])
    table = table_of(USERS, [
        ("c", {"id": "1", "email": "a@x.io", "name": "A", "price": "1.50"}),
        ("c", {"id": "2", "email": "bad", "name": "B", "price": "-2.00"}),
        ("u", {"id": "3", "email": None, "name": "C", "price": "4.00"}),
        ("d", {"id": "4"}),
    ])
    metrics = json.loads(json.dumps(suites.validate(table, USERS).metrics))  # as the ledger stores them
    facets = quality_facets(metrics, PRODUCER)

    assertions = facets["dataQualityAssertions"]
    _validator("DataQualityAssertionsDatasetFacet").validate({"dataQualityAssertions": assertions})
    by_name = {a["name"]: a for a in assertions["assertions"]}
    assert by_name["users_checks.pattern_email"] == {
        "assertion": "pattern", "success": False, "name": "users_checks.pattern_email", "severity": "error",
        "expected": "0", "actual": "1", "column": "email", "description": "email matches '@'",
        "content": "expect_column_values_to_match_regex", "contentType": "great_expectations"}
    assert by_name["users_checks.range_price"]["severity"] == "warn"
    assert by_name["users_checks.range_price"]["actual"] == "1"
    assert by_name["users_checks.unique_email_name"]["params"] == {"columns": ["email", "name"]}
    assert by_name["users_checks.expect_table_row_count_to_be_between"]["success"] is True

    quality_metrics = facets["dataQualityMetrics"]
    _validator("DataQualityMetricsInputDatasetFacet").validate({"dataQualityMetrics": quality_metrics})
    assert quality_metrics["rowCount"] == 3  # the delete is not judged
    assert quality_metrics["columnMetrics"]["email"] == {"count": 2, "nullCount": 1, "distinctCount": 2}
    assert quality_metrics["columnMetrics"]["price"] == {"count": 3, "nullCount": 0, "distinctCount": 3,
                                                         "min": -2.0, "max": 4.0, "sum": 3.5}


def test_a_facet_without_its_producer_is_refused_by_the_schema():
    facets = quality_facets({"evaluated": 0}, PRODUCER)
    del facets["dataQualityMetrics"]["_producer"]
    errors = list(_validator("DataQualityMetricsInputDatasetFacet").iter_errors(facets))
    assert errors and "_producer" in errors[0].message
