"""``sources/connect`` and ``sources/{id}/start|stop`` in a real Airflow API server, over a pipeline that ran once
(see conftest.py): a connected source becomes a DAG that `airflow dags test` runs; a stopped table's changes are
held in the sink and replayed, exactly once, when it starts again."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from airflow.models import Variable
from airflow.models.connection import Connection
from airflow.utils.session import create_session
from cdc_testing import assert_same_rows, create_shop, dags_test
from conftest import PgServer, _drop_database
from psycopg import sql
from sqlalchemy import delete, select

from airflow_provider_cdc.audit import read_audit
from airflow_provider_cdc.config import load_config
from airflow_provider_cdc.config.api_sources import VARIABLE

pytestmark = [pytest.mark.timeout(900), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]


@pytest.fixture(scope="module", autouse=True)
def forget_api_sources() -> Iterator[None]:
    """The Variable and the Connections this module registers go when it ends (other modules share the DB)."""
    yield
    Variable.delete(VARIABLE)
    with create_session() as session:
        session.execute(delete(Connection).where(Connection.conn_id.like("cdc_source_%")))


@pytest.fixture(scope="module")
def second_source(pg_server: PgServer, pipeline) -> Iterator[str]:
    """Another source database with the shop tables, reachable as the pipeline's role."""
    dbname = f"cdc_api_src2_{uuid.uuid4().hex[:8]}"
    with pg_server.connect("postgres") as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname),
                                                                  sql.Identifier(pipeline.user)))
    url = pipeline.source_url.rsplit("/", 1)[0] + "/" + dbname
    create_shop(url, users=7, orders=5)
    try:
        yield url
    finally:
        _drop_database(pg_server, dbname)


def connect_body(source_id: str, url: str) -> dict:
    return {"id": source_id, "type": "postgresql", "connection_string": url,
            "config": {"poll_interval": 1, "tables": ["users", "orders"]}}


def test_connect_needs_a_token_and_edit_permission(api_server, second_source):
    body = connect_body("nope", second_source)
    assert api_server.post("/cdc/api/v1/sources/connect", user=None, json=body).status_code == 401
    assert api_server.post("/cdc/api/v1/sources/connect", user="viewer", json=body).status_code == 403
    assert Variable.get(VARIABLE, default_var=None) is None or "nope" not in Variable.get(VARIABLE)


def test_connect_registers_a_source_whose_dag_runs(api_server, second_source):
    pipeline = api_server.pipeline
    source_id = f"pg2_{uuid.uuid4().hex[:6]}"
    answer = api_server.post("/cdc/api/v1/sources/connect", json=connect_body(source_id, second_source))
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["dag_id"] == f"cdc_{source_id}" and body["conn_id"] == f"cdc_source_{source_id}"
    assert body["connection_created"] is True and body["registered_by"] == "admin"
    assert body["source"]["sink"] == "warehouse" and body["source"]["target_schema"] == source_id
    # the secret lives in the Airflow Connection only
    connection = Connection.get_connection_from_secrets(f"cdc_source_{source_id}")
    assert connection.password == pipeline.password and connection.conn_type == "postgres"
    stored = Variable.get(VARIABLE)
    for text in (answer.text, stored):
        assert pipeline.password not in text and second_source not in text
    assert json.loads(stored)[source_id]["source"]["conn_id"] == f"cdc_source_{source_id}"
    # the config merges it; the DAG factory makes its DAG, and it runs: the snapshot lands in schema <source_id>
    assert load_config(pipeline.config_dir).source(source_id).dag_id == f"cdc_{source_id}"
    dags_test(source_id, pipeline.config_dir)
    for table in ("users", "orders"):
        assert assert_same_rows(second_source, pipeline.sink_url, table, sink_table=f"{source_id}.{table}") > 0
    # connecting again replaces the registration (same Connection, updated)
    again = api_server.post("/cdc/api/v1/sources/connect", json=connect_body(source_id, second_source))
    assert again.status_code == 201 and again.json()["replaced"] is True
    assert again.json()["connection_created"] is False
    # both connects are in the source's audit trail, by the Airflow user, without the secret
    entries = read_audit(pipeline.config_dir, source_id, action="source_connected")
    assert [(e.actor, e.details["replaced"]) for e in entries] == [("admin", True), ("admin", False)]
    assert entries[0].details["conn_id"] == f"cdc_source_{source_id}" and entries[0].details["sink"] == "warehouse"
    assert not again.json()["problems"]
    assert pipeline.password not in json.dumps([e.details for e in entries])


def test_concurrent_connects_lose_no_registration(api_server, second_source):
    """Connects at the same moment: each is stored, or refused with a 409 that says to send it again; none
    overwrites another's source (the Variable is compared and set in one transaction)."""
    from concurrent.futures import ThreadPoolExecutor

    ids = [f"race_{uuid.uuid4().hex[:6]}" for _ in range(4)]

    def connect(source_id: str):
        return source_id, api_server.post("/cdc/api/v1/sources/connect", json=connect_body(source_id, second_source))

    pending = list(ids)
    for _attempt in range(6):
        with ThreadPoolExecutor(len(pending)) as pool:
            answers = list(pool.map(connect, pending))
        for _, answer in answers:
            assert answer.status_code in (201, 409), answer.text
            if answer.status_code == 409:
                assert "send yours again" in answer.json()["detail"], answer.text
        stored = json.loads(Variable.get(VARIABLE))
        for source_id, answer in answers:
            if answer.status_code == 201:
                assert source_id in stored, f"{source_id} was answered 201 but is not registered"
        pending = [source_id for source_id, answer in answers if answer.status_code == 409]
        if not pending:
            break
    assert not pending
    assert set(ids) <= set(json.loads(Variable.get(VARIABLE)))


def test_connect_refuses_a_yaml_id_and_a_config_it_would_break(api_server, second_source):
    pipeline = api_server.pipeline
    yaml_id = api_server.post("/cdc/api/v1/sources/connect", json=connect_body(pipeline.source_id, second_source))
    assert yaml_id.status_code == 409 and "cdc.yaml" in yaml_id.json()["detail"]
    clash = connect_body("pg_clash", second_source)
    clash["config"]["target_schema"] = "public"  # public.users of the sink belongs to the YAML's source
    answer = api_server.post("/cdc/api/v1/sources/connect", json=clash)
    assert answer.status_code == 422, answer.text
    assert "would both load" in answer.text and "pg_clash" in answer.text
    unknown_sink = connect_body("pg_bad", second_source)
    unknown_sink["config"]["sink"] = "nowhere"
    answer = api_server.post("/cdc/api/v1/sources/connect", json=unknown_sink)
    assert answer.status_code == 422 and "unknown connector 'nowhere'" in answer.text
    assert "pg_clash" not in (Variable.get(VARIABLE, default_var=None) or "")
    assert Connection.get_connection_from_secrets.__name__  # nothing was created for refused ones:
    with create_session() as session:
        assert session.scalar(select(Connection).where(Connection.conn_id == "cdc_source_pg_clash")) is None


@pytest.mark.parametrize("body,field", [
    ({"type": "postgresql", "connection_string": "postgresql://u:pw-in-body@h/db", "config": {"tables": ["t"]}},
     "id"),
    ({"id": "x", "type": "postgresql", "connection_string": "postgresql://u:pw-in-body@h/db"}, "config"),
    ({"id": "x y", "type": "postgresql", "connection_string": "postgresql://u:pw-in-body@h/db",
      "config": {"tables": ["t"]}}, "id"),
    ({"id": "x", "type": "postgresql", "connection_string": "postgresql://u:pw-in-body@h/db",
      "config": {"tables": []}}, "config"),
    ({"id": "x", "type": "oracle", "connection_string": "postgresql://u:pw-in-body@h/db",
      "config": {"tables": ["t"]}}, "type"),
])
def test_bad_connect_bodies_are_422_per_field_without_echoing_the_secret(api_server, body, field):
    answer = api_server.post("/cdc/api/v1/sources/connect", json=body)
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["detail"][0]["loc"], answer.json()
    assert "pw-in-body" not in answer.text


def test_stop_and_start_the_whole_source(api_server):
    source_id = api_server.pipeline.source_id
    assert api_server.post(f"/cdc/api/v1/sources/{source_id}/stop", user="viewer").status_code == 403
    stopped = api_server.post(f"/cdc/api/v1/sources/{source_id}/stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["dag"]["paused"] is True and stopped.json()["tables"] == []
    started = api_server.post(f"/cdc/api/v1/sources/{source_id}/start")
    assert started.status_code == 200 and started.json()["dag"]["paused"] is False
    assert api_server.post(f"/cdc/api/v1/sources/{source_id}/stop").status_code == 200
    assert api_server.post("/cdc/api/v1/sources/nope/start").status_code == 404
    actions = [entry.action for entry in read_audit(api_server.pipeline.config_dir, source_id, limit=10)
               if entry.actor == "admin"]
    assert {"pipeline_started", "pipeline_stopped"} <= set(actions), actions


def test_a_stopped_table_holds_its_changes_and_start_replays_them(api_server):
    pipeline = api_server.pipeline
    source_id = pipeline.source_id
    base = f"/cdc/api/v1/sources/{source_id}"
    assert api_server.post(f"{base}/stop", json=["no_such_table"]).status_code == 404
    stopped = api_server.post(f"{base}/stop", json=["orders"])
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["tables"] == [{"table": "public.orders", "held": True, "changed": True,
                                         "replayed_events": 0, "batch_id": None}]
    status = api_server.get("/cdc/api/v1/pipeline/status").json()["sources"][0]
    (held,) = status["held_tables"]
    assert held["table"] == "public.orders" and held["reason"].startswith("stopped through the REST API by admin")

    with psycopg.connect(pipeline.source_url, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (user_id, amount, status) SELECT 1, g, 'late' FROM generate_series(1, 4) g")
        conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 3")
        conn.execute("INSERT INTO users (id, email, name, balance) VALUES (1001, 'new@example.com', 'New', 1)")
    dags_test(source_id, pipeline.config_dir)
    assert_same_rows(pipeline.source_url, pipeline.sink_url, "users")  # the other table flows
    with psycopg.connect(pipeline.sink_url) as conn:
        late = conn.execute("SELECT count(*) FROM orders WHERE status = 'late'").fetchone()[0]
    assert late == 0  # held, not applied

    started = api_server.post(f"{base}/start", json=["orders"])
    assert started.status_code == 200, started.text
    (action,) = started.json()["tables"]
    assert action["held"] is False and action["changed"] is True and action["replayed_events"] == 7
    assert action["batch_id"].startswith(f"{source_id}:accept:public.orders:")
    assert_same_rows(pipeline.source_url, pipeline.sink_url, "orders")  # nothing lost
    assert api_server.get("/cdc/api/v1/pipeline/status").json()["sources"][0]["held_tables"] == []
    again = api_server.post(f"{base}/start", json=["orders"])
    assert again.json()["tables"][0]["changed"] is False
    audit = read_audit(pipeline.config_dir, source_id, limit=20)
    stops = [entry for entry in audit if entry.action == "pipeline_stopped" and entry.actor == "admin"
             and (entry.details or {}).get("tables") == ["public.orders"]]
    assert stops, audit


def test_start_refuses_a_table_the_schema_gate_holds(api_server):
    pipeline = api_server.pipeline
    from airflow_provider_cdc.hooks.cdc import CdcHook

    sink = CdcHook(pipeline.source_id, str(pipeline.config_dir)).get_sink()
    try:  # held as the schema gate holds a table (whatever other tests of this module ran before on this worker)
        assert sink.hold_table(pipeline.source_id, "public.users", "schema change of x refused")
    finally:
        sink.close()
    try:
        answer = api_server.post(f"/cdc/api/v1/sources/{pipeline.source_id}/start", json=["users"])
        assert answer.status_code == 409 and "schema/accept" in answer.json()["detail"]
    finally:
        with psycopg.connect(pipeline.sink_url, autocommit=True) as conn:
            conn.execute("DELETE FROM public._cdc_held WHERE source_id = %s", (pipeline.source_id,))
