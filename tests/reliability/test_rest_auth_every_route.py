"""Every route of the CDC REST API answers 401 without a token, whatever the route and whatever the config.

The matrix with real tokens (a viewer writing gets 403, an admin gets through, a bad token 401) runs against a real
API server in ``tests/plugins/`` for the spec's endpoints. What it cannot see is a route added later and left open,
so here every route of the app is enumerated from the app itself and asked without a token, in process. The only
open routes are ``/health`` (no hosts, no secrets: ``tests/plugins/test_rest_api.py::
test_health_needs_no_token_and_leaks_nothing``) and the static page ``/ui/`` (it holds no data) with its redirect.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cdc_testing import write_config
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from airflow_provider_cdc.plugins.app import create_app

OPEN = {"/health", "/ui/", "/ui"}
PATH_VALUES = {"source_id": "nope", "asset_id": "users", "subject": "nope"}


def protected_routes() -> list[tuple[str, str]]:
    out = []
    for route in create_app().routes:
        if isinstance(route, APIRoute) and route.path not in OPEN:
            path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: PATH_VALUES[m.group(1)], route.path)
            out += [(method, path) for method in sorted(route.methods)]
    return out


ROUTES = protected_routes()


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    config = write_config(tmp_path / "config", source_id="nope", source_url="postgresql://u:pw@127.0.0.1:1/src",
                          sink_url="postgresql://u:pw@127.0.0.1:1/sink", tables=["users"])
    monkeypatch.setenv("CDC_CONFIG_DIR", str(config))
    return TestClient(create_app())


def test_the_enumeration_finds_every_router():
    assert {("GET", "/api/v1/pipeline/status"), ("GET", "/api/v1/lineage/flow"), ("GET", "/api/v1/transformations"),
            ("POST", "/api/v1/transformations"), ("POST", "/api/v1/sources/nope/stop"),
            ("POST", "/api/v1/quality/add-rule"), ("POST", "/api/v1/schema/accept")} <= set(ROUTES)


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_a_token(client, method, path):
    answer = client.request(method, path, json={})
    assert answer.status_code == 401, (method, path, answer.status_code, answer.text[:200])
    assert answer.headers.get("www-authenticate") == "Bearer"


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/v1/pipeline/status"), ("POST", "/api/v1/pipeline/stop")])
def test_a_broken_config_is_not_shown_to_a_request_without_a_token(client, method, path, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cdc.yaml").write_text("sources:\n  - {id: x, type: postgresql, conn_id: c, tables: [t], "
                                     "sink: nowhere}\n")
    monkeypatch.setenv("CDC_CONFIG_DIR", str(broken))
    answer = client.request(method, path, json={})
    assert answer.status_code == 401, (answer.status_code, answer.text[:300])
    assert "nowhere" not in answer.text
