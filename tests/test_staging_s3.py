"""Staging and the Delta sink on S3-compatible object storage, for real.

A moto S3 server (``moto[server]``, a test dependency) runs as a subprocess on a free port. It must not run in a
thread of the test process: delta-rs holds the GIL in some calls (``DeltaTable.is_deltatable``), and an in-process
server would then never answer them.

What users write is what the tests write: ``CDC_STAGING_URL=s3://<conn_id>@<bucket>/<prefix>`` with an Airflow
Connection of type ``aws`` whose extra holds ``endpoint_url`` (Airflow's ``ObjectStoragePath`` resolves the
Connection through the amazon provider and s3fs), or ``s3://<bucket>/<prefix>`` with boto3's ``AWS_*`` variables;
a ``type: file`` sink on ``s3://`` with the endpoint and keys in the ``AWS_*`` variables (as docker-compose.yaml
and the Helm values give them) or in its ``storage_options``. Real DAGs run through ``dag.test()`` against
PostgreSQL; the sink must equal the source row for row, and the staged manifests and table files must be in the
bucket.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cdc_testing import assert_ledger_consistent, assert_same_rows, create_shop, unique_id, write_config
from conftest import REPO_ROOT, require_server
from e2e.test_dag_postgres import run_dag
from psycopg.rows import dict_row

# One server is enough to prove the storage path (the PostgreSQL side is covered on both elsewhere); the embedded
# PostgreSQL 18 needs nothing from the machine.
on_pg18 = pytest.mark.parametrize("pg_server", ["pg18"], indirect=True)

ACCESS_KEY = "cdc-test-access-key"
SECRET_KEY = "cdc-test-secret-key"
REGION = "us-east-1"


def _server_process():
    """scripts/server_process.py (scripts/ is not a package): free ports and stopping what we started."""
    spec = importlib.util.spec_from_file_location("server_process", REPO_ROOT / "scripts" / "server_process.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class S3Server:
    endpoint: str

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def new_bucket(self) -> str:
        name = f"cdc-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read_json(self, bucket: str, key: str) -> dict[str, Any]:
        return json.loads(self.client().get_object(Bucket=bucket, Key=key)["Body"].read())

    def delta_storage_options(self) -> dict[str, str]:
        """What delta-rs needs for this server (the keys a ``type: file`` connector's ``storage_options`` take)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on a free local port, stopped after the module."""
    for module in ("moto.server", "boto3", "s3fs", "airflow.providers.amazon"):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            require_server("s3", f"{module} is not installed (pip install -e '.[test]')")
    helpers = _server_process()
    port = helpers.free_port()
    log = tempfile.NamedTemporaryFile(prefix="cdc-test-moto-", suffix=".log", delete=False)
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", helpers.HOST, "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = S3Server(f"http://{helpers.HOST}:{port}")
    try:
        deadline = time.monotonic() + 60  # a startup wait, not an assertion: the server imports all of moto
        while True:
            try:
                urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if process.poll() is not None or time.monotonic() > deadline:
                    require_server("s3", f"moto server did not start: {Path(log.name).read_text()[-2000:]}")
                time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            helpers.stop_pid(process.pid, process)
        else:
            process.wait()
        log.close()
        Path(log.name).unlink(missing_ok=True)


@pytest.fixture
def s3_connection(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """An Airflow Connection (type ``aws``, ``endpoint_url`` in its extra) to the server, as users define
    ``aws_default``; a new id per test, since Airflow caches one filesystem per connection id."""
    conn_id = f"cdc_s3_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "aws", "login": ACCESS_KEY, "password": SECRET_KEY,
        "extra": {"endpoint_url": s3_server.endpoint, "region_name": REGION},
    }))
    return conn_id


def staged_manifests(s3: S3Server, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    """batch id -> capture manifest, of every batch staged under ``prefix`` (stage manifests sit one level deeper)."""
    found = {}
    for key in s3.keys(bucket, prefix):
        if key.endswith("/manifest.json") and key.count("/") == prefix.count("/") + 1:
            manifest = s3.read_json(bucket, key)
            found[manifest["batch_id"]] = {**manifest, "key": key}
    return found


@on_pg18
def test_staged_dag_stages_on_s3_through_an_airflow_connection(s3_server, s3_connection, pg_database_factory,
                                                                 tmp_path, monkeypatch):
    from airflow_provider_cdc.staging import BatchStore

    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url)
    source_id = unique_id("s3stage")
    bucket = s3_server.new_bucket()
    root = f"s3://{s3_connection}@{bucket}/staging"
    monkeypatch.setenv("CDC_STAGING_URL", root)
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users", "orders"], mode="staged")

    run_dag(source_id, config_dir, monkeypatch)
    assert assert_same_rows(source_url, sink_url, "users") == 100
    assert assert_same_rows(source_url, sink_url, "orders") == 200

    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, name, balance) VALUES (1001, 'new@example.com', 'New', 0.10)")
        conn.execute("UPDATE users SET balance = balance + 1 WHERE id <= 10")
        conn.execute("DELETE FROM users WHERE id BETWEEN 50 AND 59")
        conn.execute("TRUNCATE orders")
        conn.execute("INSERT INTO orders (user_id, amount, status) VALUES (1, 99.99, 'after truncate')")
    run_dag(source_id, config_dir, monkeypatch)
    assert assert_same_rows(source_url, sink_url, "users") == 91
    assert assert_same_rows(source_url, sink_url, "orders") == 1
    ledger = assert_ledger_consistent(sink_url, source_id)

    # Every committed batch is staged in the bucket: its manifest (the commit marker) and its table files. The
    # default retention (24 h) keeps them after the commit, so a cleared task can replay its batch.
    store = BatchStore(root)
    prefix = f"staging/{source_id}/"  # unique_id() is already a safe key: staged as it is
    manifests = staged_manifests(s3_server, bucket, prefix)
    assert {row[0] for row in ledger} <= set(manifests), (sorted(manifests), ledger)
    keys = set(s3_server.keys(bucket, prefix))
    for batch_id, manifest in manifests.items():
        assert manifest["source_id"] == source_id and manifest["format"] == "parquet"
        folder = manifest["key"].rpartition("/")[0]
        assert {f"{folder}/{name}" for name in manifest["files"].values()} <= keys, manifest
        uri = str(store.batch_dir(source_id, batch_id) / "manifest.json")
        assert uri.startswith(f"s3://{s3_connection}@{bucket}/staging/")  # the Connection travels with the URI
        assert BatchStore.read(uri).change_count == manifest["change_count"]
    streamed = manifests[ledger[-1][0]]
    assert streamed["counts"] == {"public.users": {"c": 1, "u": 10, "d": 10},
                                  "public.orders": {"t": 1, "c": 1}}
    # Each run remembers its capture, so that clearing its capture task re-stages the same range.
    assert len([k for k in keys if k.startswith(f"{prefix}runs/")]) == 2

    # Retention on S3 reads each object's LastModified: a zero retention purges every batch and run pointer.
    assert store.purge(source_id, older_than_hours=0) == len(manifests)
    assert s3_server.keys(bucket, prefix) == []


def test_staging_without_a_connection_in_the_url_uses_the_aws_environment(s3_server, monkeypatch):
    """``s3://bucket/prefix`` alone: boto3's own chain (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...)."""
    from test_staging import sample_batch

    from airflow_provider_cdc.staging import BatchStore

    for name, value in {**s3_server.delta_storage_options(), "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.new_bucket()
    store = BatchStore(f"s3://{bucket}/staging")
    batch = sample_batch()
    uri = store.write(batch)
    assert uri.startswith(f"s3://{bucket}/staging/") and uri.endswith("/manifest.json")
    back = BatchStore.read(uri)
    assert back.tables["public.users"].equals(batch.tables["public.users"])
    assert any(key.endswith("/manifest.json") for key in s3_server.keys(bucket, "staging/"))


@on_pg18
def test_delta_sink_on_s3_beside_the_staged_batches(s3_server, s3_connection, pg_database_factory, tmp_path,
                                                    monkeypatch):
    """The lake on the same store as the staged batches, its keys from the AWS_* environment (delta-rs reads them),
    as docker-compose.yaml and the Helm values give them to the demo's ``lake`` connector."""
    from deltalake import DeltaTable

    source_url = pg_database_factory()
    create_shop(source_url, users=40, orders=60)
    source_id = unique_id("s3lake")
    bucket = s3_server.new_bucket()
    monkeypatch.setenv("CDC_STAGING_URL", f"s3://{s3_connection}@{bucket}/staging")
    options = s3_server.delta_storage_options()
    for name, value in options.items():
        monkeypatch.setenv(name, value)
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url,
                              sink_url="postgresql://unused.invalid/unused", tables=["users", "orders"])
    (config_dir / "connectors.yaml").write_text(textwrap.dedent(f"""\
        connectors:
          - id: source_db
            type: postgresql
            connection_string: {source_url}
          - id: warehouse
            type: file
            connection_string: s3://{bucket}/lake
        """))

    run_dag(source_id, config_dir, monkeypatch)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET name = 'changed', balance = balance * 2 WHERE id <= 5")
        conn.execute("DELETE FROM users WHERE id > 35")
        conn.execute("DELETE FROM orders WHERE id % 2 = 0")
    run_dag(source_id, config_dir, monkeypatch)

    counts = {}
    for table in ("users", "orders"):
        lake = DeltaTable(f"s3://{bucket}/lake/public/{table}", storage_options=options).to_pyarrow_table()
        with psycopg.connect(source_url, row_factory=dict_row) as conn:
            source = conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
        columns = list(source[0])
        lake_rows = sorted(({c: row[c] for c in columns} for row in lake.to_pylist()), key=lambda row: row["id"])
        # Typed values on both sides: bigint, numeric(12,2) as Decimal, timestamptz as aware datetimes, text.
        assert lake_rows == source, table
        counts[table] = len(source)
    assert counts == {"users": 35, "orders": 30}

    # Exactly once through Delta's own log: the lake's ledger holds each batch once; the staged batches sit in the
    # same bucket.
    ledger = DeltaTable(f"s3://{bucket}/lake/_cdc_ledger", storage_options=options).to_pyarrow_table().to_pylist()
    batch_ids = [row["batch_id"] for row in ledger if row["source_id"] == source_id]
    assert len(batch_ids) == len(set(batch_ids)) >= 2
    assert staged_manifests(s3_server, bucket, f"staging/{source_id}/").keys() >= set(batch_ids)


def test_delta_sink_takes_the_store_from_its_storage_options(s3_server):
    """The other way to give the keys: the connector's ``storage_options`` (``${ENV}`` in connectors.yaml), with
    nothing in the environment."""
    from cdc_testing import batch_of, item
    from deltalake import DeltaTable

    from airflow_provider_cdc.connectors.delta.options import DeltaSinkOptions
    from airflow_provider_cdc.connectors.delta.sink import DeltaSink
    from airflow_provider_cdc.tables import Column, TableSchema

    schema = TableSchema("public", "items", (Column("id", "integer", "integer", nullable=False, primary_key=True),
                                             Column("name", "text", "text")))
    bucket = s3_server.new_bucket()
    options = s3_server.delta_storage_options()
    sink = DeltaSink(f"s3://{bucket}/lake", sink_id="lake", target_schema="public", delete_mode="hard",
                     options=DeltaSinkOptions(storage_options=options))
    try:
        sink.apply(batch_of([("c", 1, item(1, name="one")), ("c", 2, item(2, name="two")),
                             ("u", 3, item(1, name="uno")), ("d", 4, item(2))], schema))
        assert sink.has_batch("shop:1-4")
    finally:
        sink.close()
    rows = DeltaTable(f"s3://{bucket}/lake/public/items", storage_options=options).to_pyarrow_table().to_pylist()
    assert [(row["id"], row["name"], row["_cdc_op"]) for row in rows] == [(1, "uno", "u")]


def test_the_compose_stacks_bucket_script_creates_missing_buckets_once(s3_server, monkeypatch):
    """deploy/compose/create_buckets.py, which the Compose stack's object-store-init runs, against a real S3 API."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **s3_server.delta_storage_options()}
    names = [f"cdc-{uuid.uuid4().hex[:10]}", f"cdc-{uuid.uuid4().hex[:10]}"]
    script = str(REPO_ROOT / "deploy" / "compose" / "create_buckets.py")

    def run() -> str:
        proc = subprocess.run([sys.executable, script, *names], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert run().splitlines() == [f"bucket {name}: created" for name in names]
    assert run().splitlines() == [f"bucket {name}: already there" for name in names]
    buckets = {bucket["Name"] for bucket in s3_server.client().list_buckets()["Buckets"]}
    assert set(names) <= buckets
