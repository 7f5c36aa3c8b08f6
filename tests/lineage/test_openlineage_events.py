"""OpenLineage events of a real CDC DAG run (``airflow dags test``, PostgreSQL into PostgreSQL, the seed's
``mask_email`` and a quality suite), sent by apache-airflow-providers-openlineage through its file transport, and
validated against the official JSON Schemas in ``../shared/spec/openlineage/``: the core schema, and each facet
against its own schema (by facet name and where it sits: run, job, dataset, input or output facets).

The operators inherit :class:`~airflow_provider_cdc.operators.lineage.CdcLineageMixin`. The connection URLs carry a
user and a password of their own, which no event may contain."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jsonschema
import psycopg
import pytest
from cdc_testing import dags_test, unique_id, write_config
from psycopg import sql
from referencing import Registry, Resource

SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "openlineage"

DDL = """
CREATE TABLE customers (id bigint PRIMARY KEY, email text, status text, price numeric(12,2), tax numeric(12,2));
INSERT INTO customers VALUES
    (1, 'ann.smith@example.com', 'active', 10.00, 1.00),
    (2, 'bob.jones@example.org', 'active', 20.00, 2.00),
    (3, 'dan@localhost', 'active', 30.00, 3.00),        -- quality (pattern): quarantined
    (4, 'cy.young@example.net', 'inactive', 40.00, 4.00); -- filtered out
"""

RULES = """\
rules:
  - rule_id: mask_email
    name: Mask Email Addresses
    rule_type: map
    source_fields: [email]
    target_field: masked_email
    expression: "{{ email.split('@')[0][:3] }}***@{{ email.split('@')[1] }}"
  - rule_id: total
    rule_type: map
    source_fields: [price, tax]
    target_field: total
    expression: "{{ price + tax }}"
  - rule_id: active_only
    rule_type: filter
    source_fields: [status]
    expression: "{{ status == 'active' }}"
"""

QUALITY = """\
suites:
  - id: customers_checks
    tables: [customers]
    rules:
      - type: pattern
        column: email
        pattern: '^[^@\\s]+@[^@\\s]+\\.[a-z]+$'
        policy: quarantine
      - type: range
        column: price
        min: 0
        policy: warn
"""

# Where each facet may sit -> the OpenLineage.json $defs its schema must extend.
PLACES = {"run": "RunFacet", "job": "JobFacet", "facets": "DatasetFacet", "inputFacets": "InputDatasetFacet",
          "outputFacets": "OutputDatasetFacet"}
OURS = {"dataSource", "schema", "columnLineage", "outputStatistics", "dataQualityAssertions", "dataQualityMetrics"}


# --- the spec --------------------------------------------------------------------------------------------------


def _documents() -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in [SPEC / "OpenLineage.json", *sorted((SPEC / "facets").glob(
        "*.json"))]]


def _registry() -> Registry:
    return Registry().with_resources((doc["$id"], Resource.from_contents(doc)) for doc in _documents())


def _facet_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(facet name, the core $def it extends) -> its facet schema document."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in _documents()[1:]:
        for name, prop in doc.get("properties", {}).items():
            definition = doc["$defs"][prop["$ref"].rpartition("/")[2]]
            bases = [part["$ref"].rpartition("/")[2] for part in definition.get("allOf", []) if "$ref" in part]
            for base in bases:
                out[(name, base)] = doc
    return out


def validate_event(event: dict[str, Any], registry: Registry,
                   facet_schemas: dict[tuple[str, str], dict[str, Any]]) -> set[str]:
    """Validate ``event`` against the core schema and each facet against its schema; the facet names validated."""
    core = json.loads((SPEC / "OpenLineage.json").read_text())
    jsonschema.Draft202012Validator(core, registry=registry).validate(event)
    validated: set[str] = set()
    for place, facets in _facet_groups(event):
        for name, facet in facets.items():
            doc = facet_schemas.get((name, PLACES[place]))
            if doc is None:
                assert name not in OURS, f"{name} is not a {PLACES[place]} of the spec (in {place})"
                continue
            jsonschema.Draft202012Validator(doc, registry=registry).validate({name: facet})
            validated.add(name)
    return validated


def _facet_groups(event: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "run", event.get("run", {}).get("facets") or {}
    yield "job", event.get("job", {}).get("facets") or {}
    for dataset in event.get("inputs") or []:
        yield "facets", dataset.get("facets") or {}
        yield "inputFacets", dataset.get("inputFacets") or {}
    for dataset in event.get("outputs") or []:
        yield "facets", dataset.get("facets") or {}
        yield "outputFacets", dataset.get("outputFacets") or {}


# --- servers and the run ---------------------------------------------------------------------------------------


@pytest.fixture
def pg_login(pg_server) -> Iterator[tuple[str, str]]:
    """A login role with a password of its own (user, password), dropped after the test's databases (asked for
    before ``pg_database_factory``, it is torn down after it)."""
    user, password = f"olu_{uuid.uuid4().hex[:10]}", f"pw-{uuid.uuid4().hex}"
    with pg_server.connect("postgres") as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER REPLICATION PASSWORD {}").format(
            sql.Identifier(user), sql.Literal(password)))
    yield user, password
    with pg_server.connect("postgres") as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))


def _as(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query, parts.fragment))


def run_with_lineage(source_id: str, config_dir: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """``airflow dags test`` of ``cdc_<source_id>`` (the bundle's DAG) with the file transport; the events."""
    events_dir = tmp_path / "openlineage"
    events_dir.mkdir(exist_ok=True)
    transport = {"type": "file", "log_file_path": str(events_dir / "event"), "append": False}
    output = dags_test(source_id, config_dir, env={
        "AIRFLOW__OPENLINEAGE__DISABLED": "false",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "cdc_test",
    })
    (tmp_path / "dags_test.log").write_text(output)  # for a failing assertion's post-mortem
    return [json.loads(path.read_text()) for path in sorted(events_dir.glob("event-*.json"))]


def _job(event: dict[str, Any]) -> str:
    return str(event["job"]["name"])


def _one(events: list[dict[str, Any]], job: str, event_type: str) -> dict[str, Any]:
    found = [e for e in events if _job(e) == job and e.get("eventType") == event_type]
    assert len(found) == 1, f"{len(found)} {event_type} events of {job}; jobs: {sorted({_job(e) for e in events})}"
    return found[0]


# --- the test --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)
@pytest.mark.parametrize("mode", ["staged", "fused"])
def test_a_cdc_run_emits_valid_lineage_with_column_and_quality_facets(mode, pg_login, pg_database_factory, tmp_path):
    user, password = pg_login
    source_url, sink_url = (_as(pg_database_factory(), user, password) for _ in range(2))
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(DDL)
    source_id = unique_id("ol")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["customers"], mode=mode)
    (config_dir / "transformations.yaml").write_text(RULES)
    (config_dir / "quality.yaml").write_text(QUALITY)

    events = run_with_lineage(source_id, config_dir, tmp_path)

    assert events, "no OpenLineage event was written"
    registry, facet_schemas = _registry(), _facet_schemas()
    validated: set[str] = set()
    for event in events:
        validated |= validate_event(event, registry, facet_schemas)
        text = json.dumps(event)
        assert user not in text and password not in text, f"a credential in the event of {_job(event)}"
    assert OURS <= validated

    dag_id = f"cdc_{source_id}"
    source_db, sink_db = urlsplit(source_url).path.lstrip("/"), urlsplit(sink_url).path.lstrip("/")
    host = urlsplit(source_url).hostname
    namespace = f"postgres://{host}:{urlsplit(source_url).port or 5432}"
    source_name, sink_name = f"{source_db}.public.customers", f"{sink_db}.public.customers"
    tasks = ["capture", "transform", "validate", "load", "commit"] if mode == "staged" else ["fused"]
    for task in tasks:
        for event_type in ("START", "COMPLETE"):
            event = _one(events, f"{dag_id}.{task}", event_type)
            assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [(namespace, source_name)], task
            if task not in ("load", "fused"):
                assert event["outputs"] == [], task

    writer = _one(events, f"{dag_id}.{tasks[-2] if mode == 'staged' else 'fused'}", "COMPLETE")
    outputs = {d["name"]: d for d in writer["outputs"]}
    assert set(outputs) == {sink_name, f"{sink_db}.public._cdc_quarantine"}
    sink = outputs[sink_name]
    masked = sink["facets"]["columnLineage"]["fields"]["masked_email"]["inputFields"]
    assert [(f["namespace"], f["name"], f["field"]) for f in masked] == [(namespace, source_name, "email")]
    assert masked[0]["transformations"][0]["masking"] is True
    assert masked[0]["transformations"][0]["type"] == "DIRECT"
    assert "mask_email" in masked[0]["transformations"][0]["description"]
    lineage = sink["facets"]["columnLineage"]
    assert {(f["field"], f["transformations"][0]["subtype"]) for f in lineage["dataset"]} == {("status", "FILTER")}
    assert {f["name"] for f in sink["facets"]["schema"]["fields"]} >= {"id", "email", "masked_email", "total"}
    assert sink["outputFacets"]["outputStatistics"]["rowCount"] == 2  # 1 and 2; 3 quarantined, 4 filtered out
    assert outputs[f"{sink_db}.public._cdc_quarantine"]["outputFacets"]["outputStatistics"]["rowCount"] == 1
    source_input = writer["inputs"][0]
    assert {f["name"]: f.get("type") for f in source_input["facets"]["schema"]["fields"]}["price"] == "numeric(12,2)"
    assertions = {a["name"]: a for a in source_input["inputFacets"]["dataQualityAssertions"]["assertions"]}
    assert assertions["customers_checks.pattern_email"]["success"] is False
    assert assertions["customers_checks.pattern_email"]["actual"] == "1"
    assert assertions["customers_checks.range_price"]["success"] is True
    assert source_input["inputFacets"]["dataQualityMetrics"]["rowCount"] == 3  # the filter ran first

    if mode == "staged":
        validate = _one(events, f"{dag_id}.validate", "COMPLETE")
        assert validate["inputs"][0]["inputFacets"]["dataQualityMetrics"]["rowCount"] == 3


# --- without servers: the builders, and lineage that never fails a task -----------------------------------------


def test_before_a_run_load_names_the_sink_tables_with_column_lineage_and_no_statistics():
    from airflow_provider_cdc.lineage.openlineage import task_datasets, to_openlineage
    from lineage.util import PASSWORD, USER, USERS, graph

    g = graph()
    inputs, outputs = task_datasets(g, "shop", "load", schemas={"public.users": USERS})
    assert all("outputFacets" not in d for d in outputs)
    users = next(d for d in outputs if d["name"].endswith(".users"))
    masked = users["facets"]["columnLineage"]["fields"]["masked_email"]["inputFields"]
    assert [(f["name"], f["field"], f["transformations"][0]["masking"]) for f in masked] == [
        ("shop.public.users", "email", True)]
    assert task_datasets(g, "shop", "capture")[1] == []
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.serde import Serde

    ol_inputs, ol_outputs = to_openlineage(inputs, outputs)
    event = RunEvent(eventType=RunState.START, eventTime="2026-01-01T00:00:00+00:00",
                     run=Run(runId="01932b3c-7d2e-7f00-8000-000000000000"),
                     job=Job(namespace="cdc", name="cdc_shop.load"),
                     inputs=ol_inputs, outputs=ol_outputs, producer="https://example.com/airflow-provider-cdc")
    document = json.loads(Serde.to_json(event))
    validated = validate_event(document, _registry(), _facet_schemas())
    assert {"dataSource", "schema", "columnLineage"} <= validated
    assert USER not in json.dumps(document) and PASSWORD not in json.dumps(document)


def test_lineage_of_a_broken_config_is_empty_and_the_task_goes_on(tmp_path, caplog, capsys):
    from airflow.providers.openlineage.extractors import OperatorLineage

    from airflow_provider_cdc.operators.cdc import CdcLoadOperator
    from airflow_provider_cdc.operators.lineage import CdcLineageMixin, lineage_role

    assert issubclass(CdcLoadOperator, CdcLineageMixin)
    operator = CdcLoadOperator(task_id="load", source_id="nowhere", config_dir=str(tmp_path / "missing"),
                               manifest_uri="file:///nonexistent/manifest.json")
    assert lineage_role(operator) == "load"
    assert getattr(CdcLoadOperator.execute, "_cdc_lineage_remembers", False)  # its summary will be kept
    with caplog.at_level("WARNING"):
        for result in (operator.get_openlineage_facets_on_start(),
                       operator.get_openlineage_facets_on_complete(None),
                       operator.get_openlineage_facets_on_failure(None)):
            assert result == OperatorLineage()
    logged = caplog.text + capsys.readouterr().out  # Airflow's structlog writes to stdout
    assert logged.count("OpenLineage: no lineage for source nowhere") == 3
