"""After a real DAG run whose connections carry a password, the password is nowhere the product writes.

``airflow dags test`` of a staged PostgreSQL pipeline (a rule, a quality suite that quarantines a row) whose source is
an Airflow Connection (``AIRFLOW_CONN_*``) and whose sink is a ``${ENV}`` URL, both with a login role's real password,
and OpenLineage on (file transport). Then every place is searched for the password and the two URLs: the task logs
(the command's output and the log files), every table of the Airflow metadata database (XCom, rendered template
fields, task instances...), every Airflow Variable decrypted, the staged files (manifests, and
each Parquet file's rows read back, since compression would hide a plain-text search), the sink's audit trail, ledger
and quarantine, the OpenLineage events, and the error of a run whose sink cannot be reached.

Narrower versions: ``tests/hooks/test_cdc.py::test_dsn_never_reaches_xcom_trigger_arguments_or_logs`` (operators in
process) and ``tests/lineage/test_openlineage_events.py`` (events only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pyarrow.parquet as pq
import pytest
import sqlalchemy
from audit.test_pipeline_audit import QUALITY, RULES
from cdc_testing import dags_test, staged_run, unique_id, write_config
from lineage.test_openlineage_events import pg_login  # noqa: F401 - the fixture: a role with a password of its own
from psycopg import sql

pytestmark = [pytest.mark.timeout(600), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]


def with_login(url: str, user: str, password: str) -> str:
    host = url.split("@", 1)[1] if "@" in url else url.split("://", 1)[1]
    return f"postgresql://{user}:{password}@{host}"


def leaks(text: str, secrets: tuple[str, ...]) -> list[str]:
    return [secret for secret in secrets if secret in text]


def metadata_db_text() -> dict[str, str]:
    """Every row of every table of the Airflow metadata database, as text, by table."""
    engine = sqlalchemy.create_engine(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    out: dict[str, str] = {}
    try:
        with engine.connect() as conn:
            for name in sqlalchemy.inspect(conn).get_table_names():
                rows = conn.execute(sqlalchemy.text(f'SELECT * FROM "{name}"')).fetchall()
                out[name] = "\n".join(repr(tuple(bytes(v) if isinstance(v, memoryview) else v for v in row))
                                      for row in rows)
    finally:
        engine.dispose()
    return out


def variables_text() -> str:
    """Every Airflow Variable, decrypted (the metadata database holds them Fernet-encrypted)."""
    from airflow.models import Variable
    from airflow.utils.session import create_session

    with create_session() as session:
        return "\n".join(f"{v.key}={v.val}" for v in session.query(Variable).all())


def staged_text(root: Path) -> str:
    """Manifests and run pointers as written, and each Parquet file's rows read back."""
    parts = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        parts.append(str(path))
        if path.suffix == ".parquet":
            parts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
        else:
            parts.append(path.read_text(errors="replace"))
    return "\n".join(parts)


def sink_text(sink_url: str) -> str:
    """The sink's bookkeeping tables (audit trail, ledger, quarantine), each row as text."""
    with psycopg.connect(sink_url) as conn:
        return "\n".join(repr(conn.execute(sql.SQL("SELECT t::text FROM {} AS t").format(
            sql.Identifier("public", table))).fetchall()) for table in ("_cdc_audit", "_cdc_ledger", "_cdc_quarantine"))


def test_no_secret_in_logs_xcom_variables_staging_audit_lineage_or_errors(pg_login, pg_database_factory, tmp_path,  # noqa: F811
                                                                          monkeypatch):
    user, password = pg_login
    source_url = with_login(pg_database_factory("secret_src"), user, password)
    sink_url = with_login(pg_database_factory("secret_sink"), user, password)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text);"
                     "INSERT INTO users VALUES (1, 'ann@example.com'), (2, 'not-an-email'), (3, 'bo@example.com')")
    source_id = unique_id("secret")
    conn_id = f"{source_id}_src"
    sink_env = f"CDC_SECRET_SINK_{source_id.upper()}"
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url="unused",
                              sink_url=f"${{{sink_env}}}", tables=["users"])
    cdc_yaml = (config_dir / "cdc.yaml").read_text().replace("    connector: source_db\n", f"    conn_id: {conn_id}\n")
    (config_dir / "cdc.yaml").write_text(cdc_yaml)
    (config_dir / "transformations.yaml").write_text(RULES)
    (config_dir / "quality.yaml").write_text(QUALITY)
    staging, events_dir = tmp_path / "staging", tmp_path / "openlineage"
    events_dir.mkdir()
    env = {f"AIRFLOW_CONN_{conn_id.upper()}": source_url, sink_env: sink_url,
           "CDC_STAGING_URL": f"file://{staging}",
           "AIRFLOW__OPENLINEAGE__DISABLED": "false", "AIRFLOW__OPENLINEAGE__NAMESPACE": "cdc_test",
           "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({"type": "file", "log_file_path": str(events_dir / "event"),
                                                         "append": False})}
    secrets = (password, source_url, sink_url)

    output = dags_test(source_id, config_dir, env=env)

    # The run did its work, so each place below was really written.
    with psycopg.connect(sink_url) as conn:
        assert conn.execute("SELECT count(*) FROM public.users").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM public._cdc_quarantine").fetchone() == (1,)
    events = [path.read_text() for path in sorted(events_dir.glob("event-*.json"))]
    assert events and list(staging.rglob("manifest.json"))
    assert "stored position of" in output

    assert leaks(output, secrets) == [], "the task logs (dags test output)"
    log_files = [p for p in Path(os.environ["AIRFLOW_HOME"]).rglob("*.log") if p.is_file()]
    assert [p for p in log_files if leaks(p.read_text(errors="replace"), secrets)] == []
    tables = metadata_db_text()
    assert {"xcom", "variable", "task_instance"} <= set(tables)
    assert source_id in tables["xcom"]  # this run's XComs are there
    assert {name: leaks(text, secrets) for name, text in tables.items() if leaks(text, secrets)} == {}
    variables = variables_text()
    assert f"cdc.position.{source_id}" in variables
    assert leaks(variables, secrets) == []
    staged, bookkeeping = staged_text(staging), sink_text(sink_url)
    assert "bo@example.com" in staged and "not-an-email" in bookkeeping  # the searches read the data itself
    assert leaks(staged, secrets) == []
    assert leaks(bookkeeping, secrets) == []
    assert [event for event in events if leaks(event, secrets)] == []

    # A run whose sink cannot be reached: its error names the sink, never the URL or the password.
    from airflow_provider_cdc.hooks.cdc import CdcHook

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(sink_env, with_login("postgresql://127.0.0.1:1/nowhere", user, password) + "?connect_timeout=2")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users VALUES (4, 'cy@example.com')")
    with pytest.raises(Exception, match="sink 'warehouse'") as failed:
        staged_run(CdcHook(source_id, str(config_dir)), unique_id("down"))
    assert leaks(str(failed.value), secrets + (with_login("postgresql://127.0.0.1:1/nowhere", user, password),)) == []
