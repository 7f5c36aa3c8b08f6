"""The CDC REST API's writes in a real Airflow API server, over a pipeline that ran once (see conftest.py): rules
registered, versioned and merged into the next DAG run, quality rules added and records checked, a candidate schema
checked against the sink's registry, and a held table accepted; each write audited with the Airflow user."""

from __future__ import annotations

import json

import psycopg
import pytest
from airflow.models import Variable
from cdc_testing import dags_test

from airflow_provider_cdc.api.registered import QUALITY_VARIABLE, RULES_VARIABLE, SCHEMAS_VARIABLE

pytestmark = [pytest.mark.timeout(900), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]

DOMAIN_RULE = {
    "rule_id": "email_domain",
    "name": "Domain of the email",
    "rule_type": "map",
    "tables": ["users"],
    "source_fields": ["email"],
    "target_field": "email_domain",
    "expression": "{{ email.split('@')[1] }}",
}


def _clear_variables() -> None:
    for key in (RULES_VARIABLE, QUALITY_VARIABLE, SCHEMAS_VARIABLE):
        Variable.delete(key)


@pytest.fixture(scope="module")
def pipeline(pipeline):
    """The shared pipeline, with its source running every rule whose scope meets its tables (no
    ``transformations:`` list), so that rules registered through the API apply to it; no API entries before or
    after this module."""
    cdc_yaml = pipeline.config_dir / "cdc.yaml"
    cdc_yaml.write_text("\n".join(line for line in cdc_yaml.read_text().splitlines()
                                  if not line.strip().startswith("transformations:")) + "\n")
    _clear_variables()
    yield pipeline
    _clear_variables()


def _audit(api_server, action: str) -> list:
    from airflow_provider_cdc.audit import read_audit

    return read_audit(api_server.pipeline.config_dir, api_server.pipeline.source_id, action=action)


WRITES = [
    ("/cdc/api/v1/transformations", DOMAIN_RULE),
    ("/cdc/api/v1/quality/add-rule", {"suite_id": "users_checks", "rule": {"type": "not_null", "column": "name"}}),
    ("/cdc/api/v1/schema/accept", {"subject": "x.public.users"}),
]


@pytest.mark.parametrize(("path", "body"), WRITES)
def test_writes_need_a_token_and_edit_permission(api_server, path, body):
    assert api_server.post(path, user=None, json=body).status_code == 401
    denied = api_server.post(path, user="viewer", json=body)
    assert denied.status_code == 403, denied.text
    assert "viewer" in denied.json()["detail"]


def test_the_write_endpoints_are_in_the_spec(api_server):
    paths = api_server.get("/cdc/openapi.json", user=None).json()["paths"]
    assert {"/api/v1/transformations", "/api/v1/quality/add-rule", "/api/v1/quality/check",
            "/api/v1/schema/check-compatibility", "/api/v1/schema/accept"} <= set(paths)
    assert "post" in paths["/api/v1/transformations"] and "get" in paths["/api/v1/transformations"]


def test_a_rule_is_versioned_listed_audited_and_runs_in_the_next_dag_run(api_server):
    pipeline = api_server.pipeline
    first = api_server.post("/cdc/api/v1/transformations", json=DOMAIN_RULE)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["version"] == 1 and body["changed"] is True and body["sources"] == [pipeline.source_id]
    assert f"{pipeline.source_id}.public.users" in body["checked_tables"]  # the fields met the registered schema
    assert body["audited"] == [pipeline.source_id]
    again = api_server.post("/cdc/api/v1/transformations", json=DOMAIN_RULE)
    assert again.status_code == 200 and again.json()["changed"] is False and again.json()["version"] == 1
    second = api_server.post("/cdc/api/v1/transformations",
                             json={**DOMAIN_RULE, "expression": "{{ email.split('@')[1] | upper }}"})
    assert second.status_code == 201 and second.json()["version"] == 2, second.text
    # the Variable holds both versions, the latest in effect
    stored = Variable.get(RULES_VARIABLE, deserialize_json=True)["rules"]["email_domain"]["versions"]
    assert [v["version"] for v in stored] == [1, 2] and {v["actor"] for v in stored} == {"admin"}
    listed = {r["rule_id"]: r for r in api_server.get("/cdc/api/v1/transformations", user="viewer").json()["rules"]}
    assert listed["mask_email"]["origin"] == "yaml" and listed["mask_email"]["versions"] == []
    api_rule = listed["email_domain"]
    assert api_rule["origin"] == "api" and api_rule["version"] == 2
    assert [v["version"] for v in api_rule["versions"]] == [1, 2] and "upper" in api_rule["expression"]
    # each new version is in the source's audit trail, by the Airflow user
    changes = [e for e in _audit(api_server, "rules_changed") if e.details.get("rule_id") == "email_domain"]
    assert sorted(e.details["version"] for e in changes) == [1, 2] and {e.actor for e in changes} == {"admin"}
    # the next DAG run parses the config with the rule merged in: a new user gets the new column
    with psycopg.connect(pipeline.source_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, name, balance) VALUES (1001, 'zed@shop.example', 'Zed', 1)")
    dags_test(pipeline.source_id, pipeline.config_dir)
    with psycopg.connect(pipeline.sink_url) as conn:
        row = conn.execute("SELECT email_domain, masked_email FROM users WHERE id = 1001").fetchone()
    assert row == ("SHOP.EXAMPLE", "zed***@shop.example")


@pytest.mark.parametrize(("change", "loc", "words"), [
    ({"expression": "{{ email.split('@')[1] "}, ["body", "expression"], ["does not compile"]),
    ({"expression": "{{ email.__class__ }}"}, ["body", "expression"], ["sandbox"]),
    ({"source_fields": ["phone"], "expression": "{{ phone }}"}, ["body", "source_fields"], ["phone", "email"]),
])
def test_an_invalid_rule_is_422_naming_the_field_and_nothing_is_stored(api_server, change, loc, words):
    answer = api_server.post("/cdc/api/v1/transformations", json={**DOMAIN_RULE, "rule_id": "bad_rule", **change})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail[0]["loc"] == loc and all(word in detail[0]["msg"] for word in words), detail
    stored = Variable.get(RULES_VARIABLE, default_var=None, deserialize_json=True) or {}
    assert "bad_rule" not in (stored.get("rules") or {})


def test_the_seeds_unscoped_rule_is_scoped_to_the_tables_that_have_its_fields(api_server):
    seed = {"rule_id": "mask_email_seed", "name": "Mask Email Addresses", "rule_type": "map",
            "source_fields": ["email"], "target_field": "masked_email_seed",
            "expression": "{{ email.split(\"@\")[0][:3] }}***@{{ email.split(\"@\")[1] }}"}
    answer = api_server.post("/cdc/api/v1/transformations", json=seed)
    assert answer.status_code == 201, answer.text
    assert answer.json()["rule"]["tables"] == ["public.users"]  # orders has no email
    assert "scoped" in answer.json()["notes"][0] and "public.users" in answer.json()["notes"][0]
    nowhere = api_server.post("/cdc/api/v1/transformations", json={**seed, "rule_id": "nowhere",
                                                                   "source_fields": ["phone"]})
    assert nowhere.status_code == 422  # neither users nor orders has it
    assert {"public.users", "public.orders"} <= {e["msg"].split(", ")[1].removeprefix("table ")
                                                 for e in nowhere.json()["detail"]}


def test_a_rule_id_of_the_yaml_is_a_conflict_and_bad_shapes_are_422(api_server):
    conflict = api_server.post("/cdc/api/v1/transformations", json={**DOMAIN_RULE, "rule_id": "mask_email"})
    assert conflict.status_code == 409 and "transformations.yaml" in conflict.json()["detail"]
    wrong_type = api_server.post("/cdc/api/v1/transformations", json={**DOMAIN_RULE, "rule_type": "explode"})
    assert wrong_type.status_code == 422 and wrong_type.json()["detail"][0]["loc"] == ["body", "rule_type"]
    missing = api_server.post("/cdc/api/v1/transformations", json={"rule_type": "map"})
    assert missing.status_code == 422 and ["body", "rule_id"] in [e["loc"] for e in missing.json()["detail"]]


def test_a_quality_rule_is_added_to_a_suite_and_audited(api_server):
    pipeline = api_server.pipeline
    rule = {"type": "pattern", "column": "name", "pattern": "^User ", "policy": "warn"}
    added = api_server.post("/cdc/api/v1/quality/add-rule", json={"suite_id": "users_checks", "rule": rule})
    assert added.status_code == 201, added.text
    body = added.json()
    assert body["version"] == 1 and body["sources"] == [pipeline.source_id] and body["rules"][-1] == rule
    assert body["rules"][0]["type"] == "not_null"  # the YAML's rule first
    assert f"{pipeline.source_id}.public.users" in body["checked_tables"]
    assert api_server.post("/cdc/api/v1/quality/add-rule",
                           json={"suite_id": "users_checks", "rule": rule}).json()["changed"] is False
    stored = Variable.get(QUALITY_VARIABLE, deserialize_json=True)["suites"]["users_checks"]
    assert stored["versions"][-1]["rules"] == [rule] and stored["versions"][-1]["actor"] == "admin"
    changes = [e for e in _audit(api_server, "rules_changed") if e.details.get("suite_id") == "users_checks"]
    assert changes and changes[0].actor == "admin" and changes[0].details["rule"] == rule
    # a new suite, scoped to a table the source captures but does not name: stored, with a note
    new = api_server.post("/cdc/api/v1/quality/add-rule", json={
        "suite_id": "orders_extra", "tables": ["orders"], "rule": {"type": "range", "column": "amount", "min": 0}})
    assert new.status_code == 201 and new.json()["sources"] == [] and new.json()["notes"], new.text


@pytest.mark.parametrize(("rule", "words"), [
    ({"type": "not_null", "column": "nope"}, ["nope", "email"]),
    ({"type": "rnage", "column": "name"}, ["unknown rule type", "range"]),
    ({"type": "range", "column": "name", "min": 5, "max": 1}, ["min"]),
    ({"expectation": "expect_column_values_to_be_bogus", "kwargs": {"column": "name"}}, ["expect_column"]),
])
def test_an_invalid_quality_rule_is_422(api_server, rule, words):
    answer = api_server.post("/cdc/api/v1/quality/add-rule", json={"suite_id": "users_checks", "rule": rule})
    assert answer.status_code == 422, answer.text
    message = answer.json()["detail"][0]["msg"]
    assert all(word in message for word in words), message


def test_quality_check_answers_per_rule_with_the_failing_rows(api_server):
    records = [{"id": 1, "email": "ann@example.com", "age": 30}, {"id": 2, "email": "not-an-email", "age": -1},
               {"id": 3, "email": None, "age": 5}]
    rules = [{"type": "pattern", "column": "email", "pattern": "^[^@]+@[^@]+$", "policy": "quarantine"},
             {"type": "range", "column": "age", "min": 0}, {"type": "not_null", "column": "email"},
             {"type": "type", "column": "id", "expected": "integer"}]
    answer = api_server.post("/cdc/api/v1/quality/check", user="viewer", json={"records": records, "rules": rules})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    outcome = {r["rule_id"]: r for r in body["rules"]}
    assert body["records"] == 3 and body["passed"] is False and body["score"] == pytest.approx(1 / 3)
    assert [r["row"] for r in outcome["pattern_email"]["failed_rows"]] == [1]
    assert "not-an-email" in outcome["pattern_email"]["failed_rows"][0]["reason"]
    assert [r["row"] for r in outcome["range_age"]["failed_rows"]] == [1]
    assert [r["row"] for r in outcome["not_null_email"]["failed_rows"]] == [2]
    assert next(r for r in body["rules"] if r["rule_id"].startswith("type"))["passed"] is True
    # a suite of the config, typed by the table's registered schema
    suite = api_server.post("/cdc/api/v1/quality/check", json={
        "suite_id": "users_checks", "source_id": api_server.pipeline.source_id, "table": "users",
        "records": [{"id": 1, "email": "a@b.co"}, {"id": 2, "email": None}]})
    assert suite.status_code == 200, suite.text
    assert suite.json()["schema_from"] == "registry" and suite.json()["table"] == "public.users"
    (not_null,) = [r for r in suite.json()["rules"] if r["rule_id"] == "not_null_email"]
    assert not_null["passed"] is False and not_null["failed_rows"][0]["row"] == 1


def test_quality_check_refuses_what_it_cannot_run(api_server):
    both = api_server.post("/cdc/api/v1/quality/check", json={"records": [{"a": 1}], "suite_id": "users_checks",
                                                                  "rules": []})
    assert both.status_code == 422 and "exactly one" in both.json()["detail"][0]["msg"]
    unknown = api_server.post("/cdc/api/v1/quality/check", json={"records": [], "suite_id": "nope"})
    assert unknown.status_code == 404 and "users_checks" in unknown.json()["detail"]
    column = api_server.post("/cdc/api/v1/quality/check", json={"records": [{"a": 1}], "rules": [
        {"type": "not_null", "column": "b"}]})
    assert column.status_code == 422 and "'b'" in column.json()["detail"][0]["msg"], column.text
    policy = api_server.post("/cdc/api/v1/quality/check", json={"records": [{"a": 1}], "rules": [
        {"type": "not_null", "column": "a", "policy": "explode"}]})
    assert policy.status_code == 422, policy.text


def _registered_avro(pipeline, table: str) -> dict:
    with psycopg.connect(pipeline.sink_url) as conn:
        (schema,) = conn.execute("SELECT schema FROM _cdc_schema_versions WHERE subject = %s ORDER BY version DESC "
                                 "LIMIT 1", (f"{pipeline.source_id}.{table}",)).fetchone()
    return schema if isinstance(schema, dict) else json.loads(schema)


def test_check_compatibility_answers_with_reasons_and_writes_nothing(api_server):
    pipeline = api_server.pipeline
    subject = f"{pipeline.source_id}.public.users"
    current = _registered_avro(pipeline, "public.users")
    same = api_server.post("/cdc/api/v1/schema/check-compatibility", user="viewer",
                           json={"subject": subject, "schema": current})
    assert same.status_code == 200, same.text
    assert same.json()["compatible"] is True and same.json()["level"] == "BACKWARD"
    assert same.json()["against_versions"]
    widened = {**current, "fields": [*current["fields"], {"name": "tier", "type": "long"}]}
    refused = api_server.post("/cdc/api/v1/schema/check-compatibility", json={"subject": subject, "schema": widened})
    assert refused.status_code == 200 and refused.json()["compatible"] is False
    assert any("tier" in reason for reason in refused.json()["reasons"]), refused.json()
    none = api_server.post("/cdc/api/v1/schema/check-compatibility",
                           json={"subject": subject, "schema": widened, "level": "NONE"})
    assert none.json()["compatible"] is True
    unknown = api_server.post("/cdc/api/v1/schema/check-compatibility",
                              json={"subject": f"{pipeline.source_id}.public.nope", "schema": current})
    assert unknown.status_code == 404 and "public.users" in unknown.json()["detail"]
    bad = api_server.post("/cdc/api/v1/schema/check-compatibility",
                          json={"subject": subject, "schema": {"type": "record", "fields": "x"}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "schema"]


def test_accept_of_a_held_table_replays_its_changes_and_is_audited(api_server):
    pipeline = api_server.pipeline
    subject = f"{pipeline.source_id}.public.orders"
    not_held = api_server.post("/cdc/api/v1/schema/accept", json={"subject": subject})
    assert not_held.status_code == 409 and "not held" in not_held.json()["detail"], not_held.text
    # bigint -> text is not BACKWARD compatible (Avro long -> string): the run holds orders (and fails for it)
    with psycopg.connect(pipeline.source_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders ALTER COLUMN user_id TYPE text")
        conn.execute("UPDATE orders SET amount = 99, user_id = 'u-1' WHERE id = 1")
    out = dags_test(pipeline.source_id, pipeline.config_dir, ok=False)
    assert "public.orders" in out
    status = api_server.get("/cdc/api/v1/pipeline/status").json()["sources"][0]
    assert [held["table"] for held in status["held_tables"]] == ["public.orders"], status
    accepted = api_server.post("/cdc/api/v1/schema/accept", json={"subject": subject, "force": True})
    assert accepted.status_code == 200, accepted.text
    body = accepted.json()
    assert body["accepted_versions"] and body["replayed_events"] >= 1 and body["applied"] is True
    assert "no longer held" in body["message"]
    with psycopg.connect(pipeline.sink_url) as conn:
        assert conn.execute("SELECT amount, user_id FROM orders WHERE id = 1").fetchone() == (99, "u-1")
    assert api_server.get("/cdc/api/v1/pipeline/status").json()["sources"][0]["held_tables"] == []
    (entry, *_) = _audit(api_server, "schema_accepted")
    assert entry.actor == "admin" and entry.batch_id == body["batch_id"]


def test_a_schema_registered_ahead_lets_its_change_through_where_the_policy_would_hold_it(api_server):
    """Under ``schema_changes: {mode: stop}`` every column change holds its table. A user reads users' current
    version, adds the column they are about to add, and registers it: the next run applies that change to the sink,
    while orders, changed without a registration, is held (only what the policy refuses pauses)."""
    import yaml

    pipeline = api_server.pipeline
    subject = f"{pipeline.source_id}.public.users"
    cdc_yaml = pipeline.config_dir / "cdc.yaml"
    original = cdc_yaml.read_text()
    config = yaml.safe_load(original)
    config["sources"][0]["schema_changes"] = {"mode": "stop"}
    cdc_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        listed = api_server.get(f"/cdc/api/v1/schema/subjects/{subject}/versions", user="viewer")
        assert listed.status_code == 200, listed.text
        assert listed.json()["level"] == "BACKWARD" and listed.json()["registered"] == []
        current = listed.json()["versions"][-1]["schema"]
        with_tier = {**current, "fields": [*current["fields"], {"name": "tier", "type": ["null", "long"],
                                                                 "default": None}]}
        viewer = api_server.post("/cdc/api/v1/schema/register", user="viewer",
                                 json={"subject": subject, "schema": with_tier})
        assert viewer.status_code == 403, viewer.text
        retyped = {**current, "fields": [{**field, "type": ["null", "int"]} if field["name"] == "bio" else field
                                         for field in current["fields"]]}
        refused = api_server.post("/cdc/api/v1/schema/register", json={"subject": subject, "schema": retyped})
        assert refused.status_code == 409 and "not BACKWARD compatible" in refused.json()["detail"], refused.text
        assert "'bio'" in refused.json()["detail"] and '"force": true' in refused.json()["detail"]
        done = api_server.post("/cdc/api/v1/schema/register", json={"subject": subject, "schema": with_tier})
        assert done.status_code == 201, done.text
        body = done.json()
        assert (body["version"], body["registered"], body["compatible"]) == (1, True, True)
        again = api_server.post("/cdc/api/v1/schema/register", json={"subject": subject, "schema": with_tier})
        assert (again.json()["version"], again.json()["registered"]) == (1, False)
        assert [item["shape"] for item in api_server.get(
            f"/cdc/api/v1/schema/subjects/{subject}/versions").json()["registered"]] == [body["shape"]]

        with psycopg.connect(pipeline.source_url, autocommit=True) as conn:
            conn.execute("ALTER TABLE users ADD COLUMN tier bigint")
            conn.execute("UPDATE users SET tier = 7 WHERE id = 2")
            conn.execute("ALTER TABLE orders ADD COLUMN note text")
            conn.execute("UPDATE orders SET note = 'n' WHERE id = 2")
        out = dags_test(pipeline.source_id, pipeline.config_dir, ok=False)
        assert "public.orders" in out and "mode stop" in out
        with psycopg.connect(pipeline.sink_url) as conn:
            assert conn.execute("SELECT tier FROM users WHERE id = 2").fetchone() == (7,)
        status = api_server.get("/cdc/api/v1/pipeline/status").json()["sources"][0]
        assert [held["table"] for held in status["held_tables"]] == ["public.orders"], status
        latest = api_server.get(f"/cdc/api/v1/schema/subjects/{subject}/versions").json()["versions"][-1]
        assert latest["status"] == "applied" and latest["compatibility"]["registered_version"] == 1
        (entry, *_) = _audit(api_server, "schema_approved")
        assert entry.actor == "admin" and entry.details["subject"] == subject and entry.details["forced"] is False
        unknown = api_server.get(f"/cdc/api/v1/schema/subjects/{pipeline.source_id}.public.nope/versions")
        assert unknown.status_code == 404
    finally:
        cdc_yaml.write_text(original)
