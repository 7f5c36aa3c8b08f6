"""OpenLineage dataset names per connector: the spec's namespaces and names, default ports, never a credential."""

from __future__ import annotations

import pytest

from airflow_provider_cdc.lineage.naming import (
    DatasetName,
    DatasetNamingError,
    namespace_of,
    parse_endpoint,
    qualified_table,
    quarantine_dataset,
    sink_dataset,
    table_dataset,
)

USER, PASSWORD = "alicelogin", "pw0rdXYZ"


def test_postgres_names_database_schema_table_and_fills_in_the_port():
    url = f"postgresql://{USER}:{PASSWORD}@DB.Example.com/shop?sslmode=require&password={PASSWORD}"
    assert table_dataset("postgresql", url, "users") == DatasetName("postgres://db.example.com:5432",
                                                                    "shop.public.users")
    assert table_dataset("postgresql", url, "sales.orders").name == "shop.sales.orders"
    same = table_dataset("postgresql", "postgres://db.example.com:5432/shop", "public.users")
    assert same == table_dataset("postgresql", url, "users")  # one table, one name, however the URL is written
    assert table_dataset("postgresql", "postgresql+psycopg://h:6543/db", "t").namespace == "postgres://h:6543"
    assert table_dataset("postgresql", url, "users").uri == "postgres://db.example.com:5432/shop.public.users"


def test_postgres_keyword_dsn_ipv6_and_dbname_in_the_query():
    dsn = f"host=db.example.com port=5433 dbname=shop user={USER} password='{PASSWORD}'"
    assert table_dataset("postgresql", dsn, "users") == DatasetName("postgres://db.example.com:5433",
                                                                    "shop.public.users")
    assert namespace_of("postgresql", f"postgresql://{USER}:{PASSWORD}@[::1]:5434/db") == "postgres://[::1]:5434"
    assert table_dataset("postgresql", "postgresql://h?dbname=shop", "users").name == "shop.public.users"
    assert namespace_of("postgresql", "postgresql:///shop") == "postgres://localhost:5432"


def test_mysql_and_mariadb_name_database_table():
    url = f"mysql://{USER}:{PASSWORD}@mysql.example.com/shop?charset=utf8mb4"
    assert table_dataset("mysql", url, "users") == DatasetName("mysql://mysql.example.com:3306", "shop.users")
    assert table_dataset("mysql", url, "other.users").name == "other.users"
    assert namespace_of("mysql", f"mariadb://{USER}:{PASSWORD}@maria:3307/shop") == "mysql://maria:3307"
    assert qualified_table("mysql", url, "users") == "shop.users"


def test_mongodb_names_database_collection_by_the_first_host():
    url = (f"mongodb://{USER}:{PASSWORD}@m1.example.com:27018,m2.example.com/shop?replicaSet=rs0"
           "&authSource=admin")
    assert table_dataset("mongodb", url, "users") == DatasetName("mongodb://m1.example.com:27018", "shop.users")
    assert table_dataset("mongodb", url, "shop.orders.2024").name == "shop.orders.2024"
    assert namespace_of("mongodb", "mongodb://mongo/shop") == "mongodb://mongo:27017"
    assert namespace_of("mongodb", f"mongodb+srv://{USER}:{PASSWORD}@cluster0.example.net/shop") == \
        "mongodb+srv://cluster0.example.net"  # DNS picks the ports: none is named


def test_file_roots_local_and_object_stores(tmp_path):
    root = tmp_path / "lake"
    assert table_dataset("file", str(root), "public.users") == DatasetName("file", f"{root}/public/users")
    assert table_dataset("file", f"file://{root}", "public.users").uri == f"file://{root}/public/users"
    s3 = table_dataset("file", f"s3://{USER}:{PASSWORD}@lake-bucket/cdc/?region=eu", "public.users")
    assert s3 == DatasetName("s3://lake-bucket", "cdc/public/users")
    assert s3.uri == "s3://lake-bucket/cdc/public/users"
    assert table_dataset("file", "gs://bucket", "public.users") == DatasetName("gs://bucket", "public/users")
    azure = table_dataset("file", f"abfss://container:{PASSWORD}@acct.dfs.core.windows.net/lake", "public.users")
    assert azure == DatasetName("abfss://container@acct.dfs.core.windows.net", "lake/public/users")


def test_sink_tables_keep_the_source_name_in_the_target_schema():
    pg = f"postgresql://{USER}:{PASSWORD}@wh/warehouse"
    assert sink_dataset("postgresql", pg, "analytics", "public.users").name == "warehouse.analytics.users"
    mongo = "mongodb://mongo/admin"
    assert sink_dataset("mongodb", mongo, "mongodb_shop", "shop.users").name == "mongodb_shop.users"
    assert sink_dataset("mysql", "mysql://m/whatever", "mariadb_shop", "shop.orders.2024").name == \
        "mariadb_shop.orders.2024"
    assert sink_dataset("file", "s3://b/root", "public", "public.users") == DatasetName("s3://b", "root/public/users")


def test_the_quarantine_is_a_dataset_of_its_own():
    assert quarantine_dataset("postgresql", "postgresql://wh/warehouse", "cdc_meta") == DatasetName(
        "postgres://wh:5432", "warehouse.cdc_meta._cdc_quarantine")
    assert quarantine_dataset("mongodb", "mongodb://m/x", "ledger").name == "ledger._cdc_quarantine"
    assert quarantine_dataset("file", "s3://b/root", "public") == DatasetName("s3://b", "root/_cdc_quarantine")


@pytest.mark.parametrize(("kind", "url"), [
    ("postgresql", f"postgresql://{USER}:{PASSWORD}@h:5432/db?password={PASSWORD}&user={USER}"),
    ("postgresql", f"host=h dbname=db user={USER} password={PASSWORD}"),
    ("mysql", f"mysql://{USER}:{PASSWORD}@h/db"),
    ("mysql", f"mysql+pymysql://{USER}:{PASSWORD}@h:3307/db#{PASSWORD}"),
    ("mongodb", f"mongodb://{USER}:{PASSWORD}@h1:1,h2:2/db?authMechanism=SCRAM-SHA-256&password={PASSWORD}"),
    ("mongodb", f"mongodb+srv://{USER}:{PASSWORD}@cluster.example.net/db"),
    ("file", f"s3://{USER}:{PASSWORD}@bucket/root?secret={PASSWORD}"),
    ("file", f"file://{USER}:{PASSWORD}@localhost/data/lake"),
])
def test_names_never_hold_a_user_or_a_password(kind, url):
    names = [table_dataset(kind, url, "db.users"), sink_dataset(kind, url, "public", "db.users"),
             quarantine_dataset(kind, url, "public")]
    for name in names:
        text = f"{name.namespace} {name.name} {name.uri}"
        assert USER not in text and PASSWORD not in text, text


def test_what_cannot_be_named_says_why_without_the_url():
    url = f"postgresql://{USER}:{PASSWORD}@h"
    with pytest.raises(DatasetNamingError, match="names no database") as caught:
        table_dataset("postgresql", url, "users")
    assert PASSWORD not in str(caught.value) and USER not in str(caught.value)
    with pytest.raises(DatasetNamingError, match="database.table"):
        table_dataset("mysql", f"mysql://{USER}:{PASSWORD}@h", "users")
    with pytest.raises(DatasetNamingError, match="port"):
        parse_endpoint(f"mysql://{USER}:{PASSWORD}@h:notaport/db")
    with pytest.raises(DatasetNamingError, match="cannot be parsed") as caught:
        parse_endpoint(f"postgresql://{USER}:{PASSWORD}@[::1/db")
    assert PASSWORD not in str(caught.value)
