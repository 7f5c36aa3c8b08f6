"""A real Airflow API server with the ``cdc`` plugin, over a pipeline that ran once (module-scoped: one server and
one ``airflow dags test`` run per test module).

- PostgreSQL source and sink databases on the machine's PostgreSQL 15, reached as a role of their own with a
  password, so that the tests can assert that no answer shows the user, the password or the host;
- the shop tables, one transformation rule (mask_email) and one quality suite, and ``airflow dags test`` of the
  source's DAG (the initial snapshot), so that status, batches and lineage have something to say;
- ``airflow api-server`` in a subprocess (its own process group, stopped at teardown) on a free port, with a private
  AIRFLOW_HOME and SimpleAuthManager users ``admin`` (role admin) and ``viewer`` (role viewer); tokens come from
  ``POST /auth/token`` as a client gets them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cdc_testing import create_shop, dags_test, write_config
from conftest import PgServer, _drop_database, require_server
from psycopg import sql

PASSWORDS = {"admin": "admin-secret-pw", "viewer": "viewer-secret-pw"}
SERVER_START_TIMEOUT = 120


@dataclasses.dataclass
class Pipeline:
    source_id: str
    config_dir: Path
    source_url: str
    sink_url: str
    user: str
    password: str
    host: str


@dataclasses.dataclass
class ApiServer:
    base: str
    tokens: dict[str, str]
    pipeline: Pipeline

    def headers(self, user: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def get(self, path: str, user: str | None = "admin", **kwargs) -> httpx.Response:
        headers = self.headers(user) if user else {}
        return httpx.get(f"{self.base}{path}", headers=headers, timeout=60, **kwargs)

    def post(self, path: str, user: str | None = "admin", **kwargs) -> httpx.Response:
        headers = self.headers(user) if user else {}
        return httpx.post(f"{self.base}{path}", headers=headers, timeout=60, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _url(server: PgServer, user: str, password: str, dbname: str) -> str:
    return f"postgresql://{user}:{password}@{server.host}:{server.port}/{dbname}"


@pytest.fixture(scope="module")
def pipeline(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Source and sink databases owned by a role with a password, the config, and one `airflow dags test` run."""
    suffix = uuid.uuid4().hex[:10]
    user, password = f"cdc_api_{suffix}", f"pw-{secrets.token_hex(8)}"
    databases = [f"cdc_api_src_{suffix}", f"cdc_api_sink_{suffix}"]
    with pg_server.connect("postgres") as conn:
        # Superuser: logical replication and publications need more than ownership; this role lives for the module.
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(sql.Identifier(user),
                                                                                   sql.Literal(password)))
        for dbname in databases:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), sql.Identifier(user)))
    try:
        source_url, sink_url = (_url(pg_server, user, password, dbname) for dbname in databases)
        create_shop(source_url, users=100, orders=200)
        source_id = f"api_{suffix}"
        config_dir = write_config(tmp_path_factory.mktemp("cdc-api-config"), source_id=source_id,
                                  source_url=source_url, sink_url=sink_url, tables=["users", "orders"],
                                  extra="transformations: [mask_email]\nquality: [users_checks]\n")
        (config_dir / "transformations.yaml").write_text(textwrap.dedent("""\
            rules:
              - rule_id: mask_email
                name: Mask Email Addresses
                rule_type: map
                tables: [users]
                source_fields: [email]
                target_field: masked_email
                expression: "{{ email.split('@')[0][:3] }}***@{{ email.split('@')[1] }}"
            """))
        (config_dir / "quality.yaml").write_text(textwrap.dedent("""\
            suites:
              - id: users_checks
                tables: [users]
                rules:
                  - type: not_null
                    column: email
                    policy: warn
            """))
        dags_test(source_id, config_dir)
        yield Pipeline(source_id, config_dir, source_url, sink_url, user, password, pg_server.host)
    finally:
        for dbname in databases:
            _drop_database(pg_server, dbname)
        with pg_server.connect("postgres") as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))


@pytest.fixture(scope="module")
def api_server(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """`airflow api-server` with the cdc plugin on a free port (stopped, with its workers, at teardown)."""
    home = tmp_path_factory.mktemp("cdc-api-airflow-home")
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    port = free_port()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "CDC_CONFIG_DIR": str(pipeline.config_dir),
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
    }
    log_path = Path(tempfile.mkstemp(prefix="cdc-api-server-", suffix=".log", dir=home)[1])
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                require_server("airflow-api-server", f"api-server exited ({proc.returncode}):\n"
                               f"{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                require_server("airflow-api-server", f"api-server did not answer within {SERVER_START_TIMEOUT}s:\n"
                               f"{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        tokens = {}
        for user, password in PASSWORDS.items():
            answer = httpx.post(f"{base}/auth/token", json={"username": user, "password": password}, timeout=30)
            assert answer.status_code in (200, 201), answer.text
            tokens[user] = answer.json()["access_token"]
        yield ApiServer(base, tokens, pipeline)
    finally:
        _stop_group(proc)
        log.close()
        _forget_api_entries()


def _forget_api_entries() -> None:
    """Rules, quality rules and schemas the module registered through the API (the Variables are per test session, and
    would merge into the next module's config)."""
    from airflow.models import Variable

    from airflow_provider_cdc.api.registered import QUALITY_VARIABLE, RULES_VARIABLE, SCHEMAS_VARIABLE

    for key in (RULES_VARIABLE, QUALITY_VARIABLE, SCHEMAS_VARIABLE):
        Variable.delete(key)


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the process group we started (the server and its uvicorn worker): TERM, then KILL after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)  # a worker of the group may outlive the parent by a moment
