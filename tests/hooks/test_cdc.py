"""CdcHook resolving connections through Airflow Connections, against real PostgreSQL (15 and 18).

The Connections come from ``AIRFLOW_CONN_<ID>`` environment variables (Airflow's environment secrets backend), as
a deployment's secrets backend would provide them. They are resolved by the provider hook the connector factory
names (``PostgresHook`` here), never by a URL built by hand. Their DSNs carry a password (the test servers trust
local connections, so any password is accepted): it must never reach XCom, trigger arguments or the logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk.exceptions import TaskDeferred
from cdc_testing import assert_same_rows, create_shop, unique_id, write_config

from airflow_provider_cdc.connectors import registry
from airflow_provider_cdc.connectors.base import ChangeProbe
from airflow_provider_cdc.connectors.registry import AirflowHookRef, ConnectorFactory
from airflow_provider_cdc.errors import ConnectorUnavailableError, MissingExtraError, SourceError, is_terminal
from airflow_provider_cdc.hooks.cdc import CdcHook, connection_dsn, provider_hook
from airflow_provider_cdc.operators.cdc import CdcCaptureOperator, CdcCommitOperator, CdcLoadOperator
from airflow_provider_cdc.positions import PositionStore
from airflow_provider_cdc.sensors.changes import CdcChangesSensor

PASSWORD = "Hook-Pw-7f3a9c-Secret"


def with_password(url: str, password: str = PASSWORD) -> str:
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query, parts.fragment))


def test_connection_dsn_maps_the_airflow_scheme_to_a_libpq_url(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CDC_UNIT_PG", "postgres://cdc:s3cret@db.example.com:6432/shop?sslmode=require")
    assert connection_dsn("cdc_unit_pg", "postgresql") == (
        "postgresql://cdc:s3cret@db.example.com:6432/shop?sslmode=require"
    )

    monkeypatch.setenv("AIRFLOW_CONN_CDC_UNIT_PG", "postgresql://cdc:s3cret@db.example.com/shop")
    assert connection_dsn("cdc_unit_pg", "postgresql") == "postgresql://cdc:s3cret@db.example.com/shop"


def test_a_connection_resolves_through_the_provider_hook_of_its_factory(pg_server, monkeypatch):
    """PostgresHook resolves it (IAM tokens, its own ``database``...): the URI is the hook's, not one built here."""
    monkeypatch.setenv("AIRFLOW_CONN_CDC_BY_HOOK", json.dumps({
        "conn_type": "postgres", "host": pg_server.host, "port": pg_server.port, "login": "postgres",
        "password": "pw", "schema": "postgres",
    }))
    asked: list[str] = []
    real_get_uri = PostgresHook.get_uri

    def get_uri(self: PostgresHook) -> str:
        asked.append(self.postgres_conn_id)
        return real_get_uri(self)

    monkeypatch.setattr(PostgresHook, "get_uri", get_uri)

    hook = provider_hook("postgresql", "cdc_by_hook")
    assert isinstance(hook, PostgresHook) and hook.postgres_conn_id == "cdc_by_hook"
    dsn = connection_dsn("cdc_by_hook", "postgresql")
    assert asked == ["cdc_by_hook"], "PostgresHook.get_uri() was not used"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("postgres", "postgres")


def test_a_password_with_reserved_characters_survives_the_hook(pg_server, monkeypatch):
    """PostgresHook renders a SQLAlchemy URL (``postgresql+psycopg://``, a space left unencoded): the driver URL
    must still be one libpq reads, with the very same password."""
    password = "p@ss w/rd:?#%"
    monkeypatch.setenv("AIRFLOW_CONN_CDC_RESERVED_PW", json.dumps({
        "conn_type": "postgres", "host": pg_server.host, "port": pg_server.port, "login": "postgres",
        "password": password, "schema": "postgres",
    }))

    dsn = connection_dsn("cdc_reserved_pw", "postgresql")

    assert dsn.startswith("postgresql://")
    assert psycopg.conninfo.conninfo_to_dict(dsn)["password"] == password
    with psycopg.connect(dsn) as conn:
        assert conn.info.dbname == "postgres"


def test_unknown_connector_type_is_a_clear_terminal_error(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CDC_ORACLE", "oracle://u:pw@h/db")
    with pytest.raises(ConnectorUnavailableError, match="connector type 'oracle' is unknown") as raised:
        connection_dsn("cdc_oracle", "oracle")
    assert is_terminal(raised.value)


def register(monkeypatch: pytest.MonkeyPatch, built: ConnectorFactory, extra: str | None = None) -> None:
    """Serve ``built`` from the registry for this test, as a connector package's ``factory`` module would."""
    module = types.ModuleType(f"airflow_provider_cdc.connectors.test_{built.type}.factory")
    module.FACTORY = built  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(registry.CONNECTOR_MODULES, built.type, (f"test_{built.type}", extra))


def test_a_connector_without_a_provider_hook_uses_the_connections_own_uri(monkeypatch):
    normalized: list[str] = []

    def normalize(uri: str) -> str:
        normalized.append(uri)
        return uri.replace("ftp://", "files://", 1)

    register(monkeypatch, ConnectorFactory(type="files", normalize_uri=normalize))
    monkeypatch.setenv("AIRFLOW_CONN_CDC_FILES", "ftp://u:pw@files.example.com/root?region=eu")

    assert connection_dsn("cdc_files", "files") == "files://u:pw@files.example.com/root?region=eu"
    assert normalized == ["ftp://u:pw@files.example.com/root?region=eu"]


def test_a_provider_hooks_uri_gets_the_connections_extras(monkeypatch):
    """A hook whose URI drops the extras (as PostgresHook's does) still hands them to ``normalize_uri``."""

    class BareHook:
        def __init__(self, bare_conn_id: str) -> None:
            self.conn_id = bare_conn_id

        def get_uri(self) -> str:
            return "bare+driver://u:pw@h:1/db?kept=hook"

    module = types.ModuleType("cdc_test_bare_provider")
    module.BareHook = BareHook  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    register(monkeypatch, ConnectorFactory(
        type="bare", airflow_hook=AirflowHookRef("cdc_test_bare_provider.BareHook", "bare_conn_id")))
    monkeypatch.setenv("AIRFLOW_CONN_CDC_BARE", json.dumps({
        "conn_type": "bare", "host": "h", "extra": {"kept": "extra", "sslmode": "verify-full", "flag": True,
                                                    "nested": {"a": 1}, "app": "a b"}}))

    assert connection_dsn("cdc_bare", "bare") == (
        "bare+driver://u:pw@h:1/db?kept=hook&sslmode=verify-full&flag=true&app=a%20b"
    )


def test_a_provider_that_is_not_installed_names_the_extra(monkeypatch):
    register(monkeypatch, ConnectorFactory(
        type="gone", airflow_hook=AirflowHookRef("cdc_test_no_such_provider.hooks.GoneHook", "gone_conn_id",
                                                 extra="gone")))
    monkeypatch.setenv("AIRFLOW_CONN_CDC_GONE", "gone://h/db")
    with pytest.raises(MissingExtraError, match=r"pip install 'airflow-provider-cdc\[gone\]'") as raised:
        connection_dsn("cdc_gone", "gone")
    assert is_terminal(raised.value)


@dataclass
class ConnShop:
    source_id: str
    source_url: str
    sink_url: str
    source_dsn: str
    sink_dsn: str
    config_dir: str


@pytest.fixture
def conn_shop(pg_database_factory, tmp_path: Path, monkeypatch) -> Iterator[ConnShop]:
    """A source named by ``conn_id`` in cdc.yaml, and a sink connector named by ``conn_id`` in connectors.yaml."""
    monkeypatch.setenv("CDC_STAGING_URL", f"file://{tmp_path}/staging")
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=20, orders=10)
    source_id = unique_id("hook")
    source_conn, sink_conn = f"{source_id}_src", f"{source_id}_sink"
    source_dsn, sink_dsn = with_password(source_url), with_password(sink_url)
    monkeypatch.setenv(f"AIRFLOW_CONN_{source_conn.upper()}", source_dsn)
    monkeypatch.setenv(f"AIRFLOW_CONN_{sink_conn.upper()}", sink_dsn)

    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url="unused", sink_url="unused",
                              tables=["users", "orders"])
    (config_dir / "connectors.yaml").write_text(
        f"connectors:\n  - id: warehouse\n    type: postgresql\n    conn_id: {sink_conn}\n"
    )
    cdc_yaml = (config_dir / "cdc.yaml").read_text()
    assert "    connector: source_db\n" in cdc_yaml
    cdc_yaml = cdc_yaml.replace("    connector: source_db\n", f"    conn_id: {source_conn}\n")
    (config_dir / "cdc.yaml").write_text(cdc_yaml)

    yield ConnShop(source_id, source_url, sink_url, source_dsn, sink_dsn, str(config_dir))
    if PositionStore().get_document(source_id) is not None:
        PositionStore().delete(source_id)


def test_the_probe_resolves_through_the_same_connection(conn_shop: ConnShop):
    probe = CdcHook(conn_shop.source_id, conn_shop.config_dir).get_probe()
    assert isinstance(probe, ChangeProbe)
    asyncio.run(probe.aclose())


def test_source_and_sink_resolve_through_airflow_connections(conn_shop: ConnShop):
    hook = CdcHook(conn_shop.source_id, conn_shop.config_dir)

    assert hook.source_config.conn_id == f"{conn_shop.source_id}_src"
    assert hook.source_dsn() == conn_shop.source_dsn
    assert hook.sink_dsn() == conn_shop.sink_dsn
    with hook.get_source() as source:
        assert source.conn.info.dbname == urlsplit(conn_shop.source_url).path.lstrip("/")
    sink = hook.get_sink()
    try:
        assert sink.has_batch("none") is False
    finally:
        sink.close()


def test_dsn_never_reaches_xcom_trigger_arguments_or_logs(conn_shop: ConnShop, caplog):
    caplog.set_level(logging.DEBUG)
    common = {"source_id": conn_shop.source_id, "config_dir": conn_shop.config_dir}

    captured = CdcCaptureOperator(task_id="capture", **common).execute({"run_id": "manual__1"})
    loaded = CdcLoadOperator(task_id="load", manifest_uri=captured["manifest_uri"], **common).execute(
        {"run_id": "manual__1"}
    )
    committed = CdcCommitOperator(task_id="commit", manifest_uri=captured["manifest_uri"], **common).execute(
        {"run_id": "manual__1"}
    )
    # The rows moved, so both connections were really resolved and used.
    assert assert_same_rows(conn_shop.source_url, conn_shop.sink_url, "users") == 20
    assert assert_same_rows(conn_shop.source_url, conn_shop.sink_url, "orders") == 10

    with pytest.raises(TaskDeferred) as deferred:  # nothing new: the sensor hands the wait to the trigger
        CdcChangesSensor(task_id="wait_for_changes", **common).execute({})
    trigger_kwargs = deferred.value.trigger.serialize()[1]

    secrets = (PASSWORD, conn_shop.source_dsn, conn_shop.sink_dsn)
    for value in (captured, loaded, committed, trigger_kwargs):
        text = json.dumps(value)  # XCom (and the trigger table) store JSON
        assert not any(secret in text for secret in secrets), text
    # The logs were captured (every stage logged), and none of them holds a secret.
    for line in ("created replication slot", "staged batch", "applied", "stored position of"):
        assert line in caplog.text
    assert not any(secret in caplog.text for secret in secrets)


def test_connection_errors_do_not_print_the_dsn(conn_shop: ConnShop, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    unreachable = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/nowhere"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_shop.source_id.upper()}_SRC", unreachable)

    with pytest.raises(SourceError, match="cannot connect") as raised:
        CdcCaptureOperator(task_id="capture", source_id=conn_shop.source_id, config_dir=conn_shop.config_dir).execute(
            {"run_id": "manual__1"}
        )

    assert conn_shop.source_id in str(raised.value)
    assert PASSWORD not in str(raised.value)
    assert PASSWORD not in caplog.text
    with psycopg.connect(conn_shop.sink_url) as conn:  # nothing was loaded
        assert conn.execute("SELECT to_regclass('public.users')").fetchone() == (None,)


def test_a_connection_with_postgres_hook_extras_still_connects(pg_server, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CDC_EXTRAS_PG", json.dumps({
        "conn_type": "postgres", "host": pg_server.host, "port": pg_server.port, "login": "postgres",
        "schema": "postgres", "extra": {"sslmode": "disable", "cursor": "dictcursor"},
    }))

    dsn = connection_dsn("cdc_extras_pg", "postgresql")

    with psycopg.connect(dsn) as conn:  # libpq parameters (sslmode) kept, hook-only ones (cursor) dropped
        assert conn.info.get_parameters()["dbname"] == "postgres"
        assert conn.pgconn.ssl_in_use is False


def test_a_connection_extra_with_a_space_keeps_its_value(pg_server, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_CDC_OPTIONS_PG", json.dumps({
        "conn_type": "postgres", "host": pg_server.host, "port": pg_server.port, "login": "postgres",
        "schema": "postgres", "extra": {"options": "-c search_path=public"},
    }))

    with psycopg.connect(connection_dsn("cdc_options_pg", "postgresql")) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ("public",)


def test_sslmode_from_the_connection_extras_is_kept(pg_server, monkeypatch, tmp_path):
    """``sslmode: verify-full`` must not be lost on the way (PostgresHook's own URI drops the extras): with a root
    certificate that does not exist, the connection is refused, whether the server offers TLS or not, instead of
    being made without verification."""
    missing_root = tmp_path / "no-such-root.crt"
    monkeypatch.setenv("AIRFLOW_CONN_CDC_TLS_PG", json.dumps({
        "conn_type": "postgres", "host": pg_server.host, "port": pg_server.port, "login": "postgres",
        "schema": "postgres", "extra": {"sslmode": "verify-full", "sslrootcert": str(missing_root)},
    }))

    dsn = connection_dsn("cdc_tls_pg", "postgresql")

    params = psycopg.conninfo.conninfo_to_dict(dsn)
    assert (params["sslmode"], params["sslrootcert"]) == ("verify-full", str(missing_root))
    with pytest.raises(psycopg.OperationalError, match="SSL|certificate"):
        psycopg.connect(dsn, connect_timeout=5).close()
