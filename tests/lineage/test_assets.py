"""Airflow Assets of a CDC pipeline: URIs in each provider's own scheme (the same asset the provider's operators and
OpenLineage converters name), inlets and outlets in the DAG, and, through a real ``airflow dags test`` run, one asset
event per sink table with the batch's counts in its extra."""

from __future__ import annotations

import importlib
import logging
import textwrap
from pathlib import Path

import psycopg
import pytest
from airflow.sdk import Asset
from cdc_testing import dags_test, unique_id, write_config

from airflow_provider_cdc.assets import cdc_sink_asset, pipeline_assets, table_event_extra
from airflow_provider_cdc.config import load_config
from airflow_provider_cdc.dag_factory import build_dags
from airflow_provider_cdc.lineage.naming import asset_uri, sink_asset_uri, table_dataset

USER, PASSWORD = "alicelogin", "pw0rdXYZ"

# connector type, URL, table -> the provider's asset URI
CASES = [
    ("postgresql", f"postgresql://{USER}:{PASSWORD}@DB.example.com/shop?sslmode=require", "users",
     "postgres://db.example.com:5432/shop/public/users"),
    ("postgresql", "host=10.0.0.5 port=6543 dbname=shop user=x password=y", "sales.orders",
     "postgres://10.0.0.5:6543/shop/sales/orders"),
    ("mysql", f"mysql://{USER}:{PASSWORD}@maria.local/shop", "users", "mysql://maria.local:3306/shop/users"),
    ("mysql", "mariadb+pymysql://h:3307/", "shop.orders", "mysql://h:3307/shop/orders"),
    ("mongodb", f"mongodb://{USER}:{PASSWORD}@m1:27018,m2:27019/shop?replicaSet=rs0", "shop.orders.2024",
     "mongodb://m1:27018/shop/orders.2024"),
]


@pytest.mark.parametrize(("kind", "url", "table", "expected"), CASES, ids=[c[0] + str(i) for i, c in enumerate(CASES)])
def test_asset_uris_are_the_providers_own_and_match_the_openlineage_names(kind, url, table, expected):
    uri = asset_uri(kind, url, table)
    assert uri == expected
    assert USER not in uri and PASSWORD not in uri
    # Airflow normalises it with the provider's handler and leaves it as it is: ours is already canonical.
    assert Asset(uri=uri).uri == uri
    # The provider's OpenLineage converter names the same dataset our lineage names.
    module = importlib.import_module({"postgresql": "airflow.providers.postgres.assets.postgres",
                                      "mysql": "airflow.providers.mysql.assets.mysql",
                                      "mongodb": "airflow.providers.mongo.assets.mongo"}[kind])
    converted = module.convert_asset_to_openlineage(Asset(uri=uri), None)
    ours = table_dataset(kind, url, table)
    assert (converted.namespace, converted.name) == (ours.namespace, ours.name)


def test_file_sink_assets_are_their_locations(tmp_path):
    assert sink_asset_uri("file", f"file://{tmp_path}/lake", "public", "shop.users") == \
        f"file://{tmp_path}/lake/public/users"
    assert Asset(uri=sink_asset_uri("file", f"file://{tmp_path}/lake", "public", "users")).uri == \
        f"file://{tmp_path}/lake/public/users"
    assert sink_asset_uri("file", "s3://key:secret@bucket/lake", "public", "users") == "s3://bucket/lake/public/users"


def test_names_that_are_not_plain_are_percent_encoded_into_an_ascii_uri():
    uri = asset_uri("postgresql", "postgresql://h/shop", 'Sales Ünit."Order/Lines"')
    assert uri == "postgres://h:5432/shop/Sales%20%C3%9Cnit/%22Order%2FLines%22"
    assert uri.isascii() and Asset(uri=uri).uri == uri


# --- the DAG ---------------------------------------------------------------------------------------------------


def _config(directory: Path, sink: str, mode: str = "staged") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "connectors.yaml").write_text(textwrap.dedent(f"""\
        connectors:
          - id: shop
            type: postgresql
            connection_string: postgresql://u:{PASSWORD}@src.example.com/shop
          - id: warehouse
            type: postgresql
            {sink}
        """))
    (directory / "cdc.yaml").write_text(textwrap.dedent(f"""\
        sources:
          - id: shop
            type: postgresql
            connector: shop
            tables: [users, sales.orders]
            sink: warehouse
            target_schema: mirror
            mode: {mode}
        """))
    return directory


def test_capture_reads_the_source_tables_and_load_writes_the_sink_tables(tmp_path):
    dag = build_dags(_config(tmp_path, "connection_string: postgresql://w:pw@dwh.example.com:6432/dwh"))["cdc_shop"]
    sources = ["postgres://src.example.com:5432/shop/public/users", "postgres://src.example.com:5432/shop/sales/orders"]
    sinks = ["postgres://dwh.example.com:6432/dwh/mirror/users", "postgres://dwh.example.com:6432/dwh/mirror/orders"]
    assert [a.uri for a in dag.get_task("capture").inlets] == sources
    assert [a.uri for a in dag.get_task("load").outlets] == sinks
    assert [a.uri for a in dag.get_task("load").inlets] == sources  # the UI draws source -> load -> sink
    assert not dag.get_task("commit").outlets and not dag.get_task("capture").outlets
    fused = build_dags(_config(tmp_path / "f", "connection_string: postgresql://dwh/dwh", "fused"))["cdc_shop"]
    assert [a.uri for a in fused.get_task("fused").outlets] == [
        "postgres://dwh:5432/dwh/mirror/users", "postgres://dwh:5432/dwh/mirror/orders"]


def test_cdc_sink_asset_is_the_load_tasks_outlet(tmp_path):
    directory = _config(tmp_path, "connection_string: postgresql://dwh/dwh")
    dag = build_dags(directory)["cdc_shop"]
    assert cdc_sink_asset("shop", "sales.orders", str(directory)) == dag.get_task("load").outlets[1]
    assert cdc_sink_asset("shop", "public.users", str(directory)) == dag.get_task("load").outlets[0]
    with pytest.raises(KeyError, match="captures no table 'nope'; its tables: users, sales.orders"):
        cdc_sink_asset("shop", "nope", str(directory))


def test_a_connection_unknown_at_parse_time_leaves_the_dag_without_assets(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_CONN", raising=False)
    caplog.set_level(logging.WARNING, logger="airflow_provider_cdc.assets")
    dag = build_dags(_config(tmp_path, "conn_id: no_such_conn"))["cdc_shop"]
    assert not dag.get_task("load").outlets and not dag.get_task("capture").inlets
    assert "source shop: its tables are not declared as Airflow assets" in caplog.text
    assert PASSWORD not in caplog.text


def test_the_event_extra_says_what_the_batch_did_to_that_table():
    load = {"batch_id": "s:1-9", "applied": True, "upserted": 5, "deleted": 1,
            "tables": {"public.users": {"upserted": 3, "deleted": 1, "truncates": 0, "skipped_replayed": 2}},
            "held_tables": {"public.orders": "schema change refused"}}
    assert table_event_extra("s", load, "public.users") == {
        "source_id": "s", "table": "public.users", "batch_id": "s:1-9", "applied": True, "upserted": 3,
        "deleted": 1, "truncated": False, "skipped_replayed": 2}
    held = table_event_extra("s", {"batch_id": "x", "load": load}, "public.orders")
    assert (held["upserted"], held["batch_id"], held["held"]) == (0, "s:1-9", "schema change refused")


# --- a real run --------------------------------------------------------------------------------------------------


def _asset_events(uri: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(select(AssetEvent.extra, AssetEvent.source_dag_id, AssetEvent.source_task_id)
                               .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                               .where(AssetModel.uri == uri).order_by(AssetEvent.id)).all()
    return [{"extra": extra, "dag": dag, "task": task} for extra, dag, task in rows]


@pytest.mark.parametrize("mode", ["staged", "fused"])
def test_a_dag_run_emits_an_asset_event_per_sink_table_with_its_counts(pg_database_factory, pg_server, tmp_path,
                                                                        mode):
    source_url, sink_url = pg_database_factory("asset_src"), pg_database_factory("asset_dst")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, name text); CREATE TABLE orders (id int PRIMARY KEY);"
                     "INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 7) g;")
    source_id = unique_id("assets")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url,
                              sink_url=sink_url, tables=["users", "orders"], mode=mode)
    assets = pipeline_assets(load_config(config_dir), load_config(config_dir).source(source_id))
    dags_test(source_id, config_dir)
    task = "fused" if mode == "fused" else "load"
    [users] = _asset_events(assets.sinks["public.users"].uri)
    assert (users["dag"], users["task"]) == (f"cdc_{source_id}", task)
    assert users["extra"]["upserted"] == 7 and users["extra"]["applied"] is True
    assert users["extra"]["batch_id"].startswith(f"{source_id}:")
    [orders] = _asset_events(assets.sinks["public.orders"].uri)
    assert (orders["extra"]["upserted"], orders["extra"]["deleted"]) == (0, 0)
    sink_db = sink_url.rpartition("/")[2]
    assert assets.sinks["public.users"].uri.startswith(f"postgres://127.0.0.1:{pg_server.port}/{sink_db}/public/")
