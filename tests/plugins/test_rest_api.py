"""The CDC REST API in a real Airflow API server, over a pipeline that ran once (see conftest.py)."""

from __future__ import annotations

import psycopg
import pytest
from airflow.models import Variable

pytestmark = [pytest.mark.timeout(600), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]

READ_PATHS = [
    "/cdc/api/v1/pipeline/status",
    "/cdc/api/v1/batches",
    "/cdc/api/v1/transformations",
    "/cdc/api/v1/lineage/flow",
    "/cdc/api/v1/lineage/asset/users/downstream",
    "/cdc/api/v1/lineage/asset/users/upstream",
    "/cdc/api/v1/lineage/impact/users",
]


def test_the_plugin_is_mounted_and_publishes_its_spec(api_server):
    answer = api_server.get("/cdc/openapi.json", user=None)
    assert answer.status_code == 200
    paths = answer.json()["paths"]
    assert {"/health", "/api/v1/pipeline/status", "/api/v1/batches", "/api/v1/lineage/flow",
            "/api/v1/lineage/asset/{asset_id}/downstream", "/api/v1/transformations"} <= set(paths)


@pytest.mark.parametrize("path", READ_PATHS)
def test_reads_need_a_token(api_server, path):
    assert api_server.get(path, user=None).status_code == 401
    bad = httpx_get(api_server, path, {"Authorization": "Bearer not-a-jwt"})
    assert bad.status_code == 401 and bad.headers.get("www-authenticate") == "Bearer"
    assert api_server.get(path, user="viewer").status_code == 200, api_server.get(path, user="viewer").text


def httpx_get(api_server, path, headers):
    import httpx

    return httpx.get(f"{api_server.base}{path}", headers=headers, timeout=60)


def test_status_reports_the_run(api_server):
    pipeline = api_server.pipeline
    answer = api_server.get("/cdc/api/v1/pipeline/status", user="viewer")
    assert answer.status_code == 200, answer.text
    (status,) = [s for s in answer.json()["sources"] if s["source_id"] == pipeline.source_id]
    assert status["dag_id"] == f"cdc_{pipeline.source_id}"
    assert status["problems"] == []
    # the last batch is the ledger's, and it loaded the snapshot: 100 users, 200 orders
    with psycopg.connect(pipeline.sink_url) as conn:
        batch_id, counts = conn.execute(
            "SELECT batch_id, counts FROM _cdc_ledger WHERE source_id = %s ORDER BY seq_to DESC LIMIT 1",
            (pipeline.source_id,)).fetchone()
    last = status["last_batch"]
    assert last["batch_id"] == batch_id and last["counts"] == counts
    assert last["counts"]["public.users"]["r"] == 100 and last["counts"]["public.orders"]["r"] == 200
    assert last["events"] == sum(n for ops in counts.values() for n in ops.values())  # incl. schema events
    # the position is the Variable's
    assert status["position"] == Variable.get(f"cdc.position.{pipeline.source_id}", deserialize_json=True)
    assert status["lag_seconds"] is not None and status["lag_seconds"] >= 0
    assert status["quality_score"] == 1.0  # every email is there
    assert status["held_tables"] == []
    assert status["latest_run"] is not None and status["latest_run"]["state"] == "success"
    assert status["failure_rate"] == 0.0
    assert pipeline.password not in answer.text


def test_status_of_an_unknown_source_is_404_naming_the_known_ones(api_server):
    answer = api_server.get("/cdc/api/v1/pipeline/status", params={"source_id": "nope"})
    assert answer.status_code == 404
    assert "nope" in answer.json()["detail"] and api_server.pipeline.source_id in answer.json()["detail"]


def test_batches(api_server):
    pipeline = api_server.pipeline
    answer = api_server.get("/cdc/api/v1/batches", params={"source_id": pipeline.source_id, "limit": 5})
    assert answer.status_code == 200, answer.text
    batches = answer.json()["batches"]
    assert batches and all(b["source_id"] == pipeline.source_id for b in batches)
    assert sum(b["counts"].get("public.users", {}).get("r", 0) for b in batches) == 100
    assert api_server.get("/cdc/api/v1/batches", params={"limit": 0}).status_code == 422


def test_downstream_of_a_column_reaches_the_sink_column(api_server):
    answer = api_server.get("/cdc/api/v1/lineage/asset/users.email/downstream", params={"max_depth": 3})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["level"] == "column" and body["node"].endswith("public.users#email")
    columns = [n for n in body["nodes"] if n["kind"] == "column"]
    sink_db = api_server.pipeline.sink_url.rsplit("/", 1)[1]
    targets = {n["id"].rpartition("#")[2] for n in columns if sink_db in n["id"]}
    assert {"email", "masked_email"} <= targets, body
    assert api_server.pipeline.password not in answer.text and api_server.pipeline.user not in answer.text


def test_the_original_specs_asset_names_resolve(api_server):
    source_id = api_server.pipeline.source_id
    answer = api_server.get(f"/cdc/api/v1/lineage/asset/{source_id}_users/downstream", params={"max_depth": 3})
    assert answer.status_code == 200, answer.text
    assert answer.json()["level"] == "table"


def test_impact_lists_the_dag(api_server):
    answer = api_server.get("/cdc/api/v1/lineage/impact/users")
    assert answer.status_code == 200, answer.text
    assert f"cdc_{api_server.pipeline.source_id}" in answer.json()["dags"]


def test_unknown_asset_is_404_naming_what_exists(api_server):
    answer = api_server.get("/cdc/api/v1/lineage/asset/no_such_table/downstream")
    assert answer.status_code == 404
    assert "no_such_table" in answer.json()["detail"] and "public.users" in answer.json()["detail"]
    assert api_server.get("/cdc/api/v1/lineage/impact/users.no_such_column").status_code == 404


@pytest.mark.parametrize("value", ["-1", "abc", "1000"])
def test_bad_max_depth_is_422_naming_the_field(api_server, value):
    answer = api_server.get("/cdc/api/v1/lineage/asset/users/downstream", params={"max_depth": value})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["query", "max_depth"]


def test_flow_as_dot_mermaid_and_json(api_server):
    dot = api_server.get("/cdc/api/v1/lineage/flow", params={"format": "dot"})
    assert dot.status_code == 200 and dot.text.lstrip().startswith("digraph")
    assert dot.headers["content-type"].startswith("text/vnd.graphviz")
    mermaid = api_server.get("/cdc/api/v1/lineage/flow", params={"format": "mermaid"})
    assert mermaid.status_code == 200 and mermaid.text.lstrip().startswith("flowchart")
    whole = api_server.get("/cdc/api/v1/lineage/flow")
    assert whole.status_code == 200 and whole.json()["nodes"]
    assert api_server.get("/cdc/api/v1/lineage/flow", params={"format": "png"}).status_code == 422
    for answer in (dot, mermaid, whole):
        assert api_server.pipeline.password not in answer.text


def test_transformations_lists_the_yaml_rules(api_server):
    answer = api_server.get("/cdc/api/v1/transformations", user="viewer")
    assert answer.status_code == 200
    (rule,) = answer.json()["rules"]
    assert rule["rule_id"] == "mask_email" and rule["target_field"] == "masked_email" and rule["origin"] == "yaml"


def test_health_needs_no_token_and_leaks_nothing(api_server):
    pipeline = api_server.pipeline
    answer = api_server.get("/cdc/health", user=None)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["sources"][pipeline.source_id]["reachable"] is True
    assert body["sinks"]["warehouse"]["reachable"] is True
    assert body["engine"]["metadatabase"] == "healthy"
    assert body["pipelines"]["configured"] == 1
    assert body["resources"]["process_rss_bytes"] > 0 and body["resources"]["cpu_count"] >= 1
    for secret in (pipeline.user, pipeline.password, pipeline.host, pipeline.source_url, pipeline.sink_url):
        assert secret not in answer.text


def test_a_viewer_cannot_stop_the_pipeline_but_an_admin_can(api_server):
    pipeline = api_server.pipeline
    assert api_server.post("/cdc/api/v1/pipeline/stop", user=None).status_code == 401
    assert api_server.post("/cdc/api/v1/pipeline/stop", user="viewer").status_code == 403
    stopped = api_server.post("/cdc/api/v1/pipeline/stop", json={"source_ids": [pipeline.source_id]})
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["dags"] == [{"dag_id": f"cdc_{pipeline.source_id}", "source_id": pipeline.source_id,
                                       "paused": True, "changed": stopped.json()["dags"][0]["changed"]}]
    status = api_server.get("/cdc/api/v1/pipeline/status").json()["sources"][0]
    assert status["paused"] is True
    started = api_server.post("/cdc/api/v1/pipeline/start")
    assert started.status_code == 200 and started.json()["dags"][0] == {
        "dag_id": f"cdc_{pipeline.source_id}", "source_id": pipeline.source_id, "paused": False, "changed": True}
    assert api_server.get("/cdc/api/v1/pipeline/status").json()["sources"][0]["paused"] is False
    # pause it again: no scheduler runs here, but leave the DAG as a new one would be
    assert api_server.post("/cdc/api/v1/pipeline/stop").status_code == 200
    unknown = api_server.post("/cdc/api/v1/pipeline/start", json={"source_ids": ["nope"]})
    assert unknown.status_code == 404
    assert api_server.post("/cdc/api/v1/pipeline/start", json={"source_ids": "nope"}).status_code == 422
