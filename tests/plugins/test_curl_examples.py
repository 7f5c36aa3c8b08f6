"""The original spec's curl examples, replayed with ``curl`` against a real API server: as written, except for the
``/cdc`` prefix, the server's address (``$AIRFLOW``) and the auth header (``$TOKEN``, from ``POST /auth/token``).
The README shows the same commands (``EXAMPLES``); without a token they answer 401, a viewer writing gets 403."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator

import pytest
from airflow.models import Variable
from airflow.models.connection import Connection
from airflow.utils.session import create_session
from conftest import require_server
from sqlalchemy import delete

from airflow_provider_cdc.config.api_sources import VARIABLE

pytestmark = [pytest.mark.timeout(600), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]

AUTH = '-H "Authorization: Bearer $TOKEN"'
EXAMPLES: dict[str, tuple[str, bool]] = {  # name -> (command, writes)
    "connect PostgreSQL": (f"""\
        curl -X POST $AIRFLOW/cdc/api/v1/sources/connect {AUTH} \\
          -H "Content-Type: application/json" \\
          -d '{{
            "id": "postgres_main",
            "type": "postgresql",
            "connection_string": "postgresql://user:pass@localhost/db",
            "config": {{
              "poll_interval": 1,
              "tables": ["users", "orders"]
            }}
          }}'""", True),
    "start CDC": (f"""\
        curl -X POST $AIRFLOW/cdc/api/v1/sources/postgres_main/start {AUTH} \\
          -H "Content-Type: application/json" \\
          -d '["users", "orders"]'""", True),
    "add the mask_email rule": (f"""\
        curl -X POST $AIRFLOW/cdc/api/v1/transformations {AUTH} \\
          -H "Content-Type: application/json" \\
          -d '{{
            "rule_id": "mask_email",
            "name": "Mask Email Addresses",
            "rule_type": "map",
            "source_fields": ["email"],
            "target_field": "masked_email",
            "expression": "{{{{ email.split(\\"@\\")[0][:3] }}}}***@{{{{ email.split(\\"@\\")[1] }}}}"
          }}'""", True),
    "downstream lineage": (f'curl "$AIRFLOW/cdc/api/v1/lineage/asset/postgres_main_users/downstream?max_depth=3" '
                           f"{AUTH}", False),
    "impact analysis": (f"curl $AIRFLOW/cdc/api/v1/lineage/impact/postgres_main_users {AUTH}", False),
}
ORDER = list(EXAMPLES)


@pytest.fixture(scope="module")
def spec_server(api_server) -> Iterator:
    """The module's server with a config that has no mask_email rule of its own (the example adds it), and the
    Variables and Connections the examples register removed at the end."""
    config_dir = api_server.pipeline.config_dir
    cdc_yaml = config_dir / "cdc.yaml"
    cdc_yaml.write_text("".join(line for line in cdc_yaml.read_text().splitlines(keepends=True)
                                if not line.strip().startswith("transformations:")))
    (config_dir / "transformations.yaml").write_text("rules: []\n")
    yield api_server
    for key in (VARIABLE, "cdc.api.rules"):
        Variable.delete(key)
    with create_session() as session:
        session.execute(delete(Connection).where(Connection.conn_id.like("cdc_source_%")))


def curl(command: str, base: str, token: str | None) -> tuple[int, str]:
    """Run one example in bash; (HTTP status, body)."""
    if shutil.which("curl") is None:
        require_server("curl", "no curl on PATH")
    env = {**os.environ, "AIRFLOW": base, "TOKEN": token or ""}
    script = textwrap.dedent(command).replace("curl ", "curl -sS -w '\\n%{http_code}' ", 1)
    if token is None:
        script = script.replace(AUTH, "")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


def xfail_if_missing(server, name: str, request: pytest.FixtureRequest) -> None:
    """The rule example needs ``POST transformations``, written beside this: until it is there, that case is an
    expected failure, strictly (it must pass once the endpoint exists)."""
    paths = server.get("/cdc/openapi.json", user=None).json()["paths"]
    if name == "add the mask_email rule" and "post" not in paths.get("/api/v1/transformations", {}):
        request.applymarker(pytest.mark.xfail(strict=True, reason="POST /cdc/api/v1/transformations does not exist "
                                                                  "yet (being written beside this)"))


@pytest.mark.parametrize("name", ORDER)
def test_each_example_works_with_a_token(spec_server, name, request):
    command, _ = EXAMPLES[name]
    xfail_if_missing(spec_server, name, request)
    # the examples build on each other: connect before start and lineage
    for earlier in ORDER[:ORDER.index(name)]:
        if earlier == "connect PostgreSQL":
            curl(EXAMPLES[earlier][0], spec_server.base, spec_server.tokens["admin"])
    code, body = curl(command, spec_server.base, spec_server.tokens["admin"])
    assert code in (200, 201), f"{name}: {code} {body}"
    assert "pass@" not in body and ":pass" not in body
    if name == "connect PostgreSQL":
        assert '"dag_id":"cdc_postgres_main"' in body.replace(" ", "")
        assert "pass" not in Variable.get(VARIABLE).replace("password", "")
    elif name == "start CDC":
        assert '"source_id":"postgres_main"' in body.replace(" ", "") and '"action":"start"' in body.replace(" ", "")
    elif name == "downstream lineage":
        assert '"level":"table"' in body.replace(" ", "")
    elif name == "impact analysis":
        assert "cdc_postgres_main" in body


@pytest.mark.parametrize("name", ORDER)
def test_each_example_needs_a_token(spec_server, name, request):
    xfail_if_missing(spec_server, name, request)
    code, body = curl(EXAMPLES[name][0], spec_server.base, None)
    assert code == 401, f"{name}: {code} {body}"


@pytest.mark.parametrize("name", [name for name in ORDER if EXAMPLES[name][1]])
def test_a_viewer_cannot_write(spec_server, name, request):
    xfail_if_missing(spec_server, name, request)
    if name == "start CDC":  # the source must exist for its DAG's permission to be asked
        curl(EXAMPLES["connect PostgreSQL"][0], spec_server.base, spec_server.tokens["admin"])
    code, body = curl(EXAMPLES[name][0], spec_server.base, spec_server.tokens["viewer"])
    assert code == 403, f"{name}: {code} {body}"
