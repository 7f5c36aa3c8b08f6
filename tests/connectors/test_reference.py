"""The join rules' reference readers against real servers: PostgreSQL, MariaDB, MongoDB and a Delta table. Each
answers the rows of the keys asked (single and composite keys, keys of another type than the column), in the value
contract's Python types, quoting names that need it, and through the connector factory's ``reference`` field."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import psycopg
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from airflow_provider_cdc.connectors import registry
from airflow_provider_cdc.connectors.delta.reference import lookup as delta_lookup
from airflow_provider_cdc.connectors.mongodb.connection import connect as mongo_connect
from airflow_provider_cdc.connectors.mongodb.connection import database_of
from airflow_provider_cdc.connectors.mongodb.reference import lookup as mongo_lookup
from airflow_provider_cdc.connectors.mysql.connection import connect as mysql_connect
from airflow_provider_cdc.connectors.mysql.reference import lookup as mysql_lookup
from airflow_provider_cdc.connectors.postgres.reference import lookup as pg_lookup

UTC = dt.timezone.utc
STAMP = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_every_connector_registers_its_reference_reader():
    for connector_type in ("postgresql", "mysql", "mongodb", "file"):
        assert callable(registry.factory(connector_type).reference), connector_type


# --- PostgreSQL -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)
def test_postgres_reads_rows_by_key_typed(pg_database):
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "Ref Data"')
        conn.execute('CREATE TABLE "Ref Data"."Countries" (code text PRIMARY KEY, "Name" text, vat numeric(4,2), '
                     'since timestamptz, extra jsonb, id uuid, flag boolean, blob bytea)')
        conn.execute("""INSERT INTO "Ref Data"."Countries" VALUES
            ('FR', 'France', 0.20, '2024-05-01 14:00+02', '{"a": [1, 2]}', '8a6e0804-2bd0-4672-b79d-d97027f9071a',
             true, '\\xdead'),
            ('DE', 'Germany', 0.19, NULL, NULL, NULL, false, NULL),
            ('IT', 'Italy', 0.22, NULL, NULL, NULL, NULL, NULL)""")
        conn.execute("CREATE TABLE rates (code text, region numeric(6,2), rate integer, PRIMARY KEY (code, region))")
        conn.execute("INSERT INTO rates VALUES ('FR', 2, 7), ('FR', 3, 9), ('DE', 2, 5)")
    got = pg_lookup(pg_database, "Ref Data.Countries", ["code"], [("FR",), ("DE",), ("XX",)])
    assert set(got) == {("FR",), ("DE",)}
    fr = got[("FR",)]
    assert fr == {"code": "FR", "Name": "France", "vat": decimal.Decimal("0.20"), "since": STAMP,
                  "extra": {"a": [1, 2]}, "id": uuid.UUID("8a6e0804-2bd0-4672-b79d-d97027f9071a"), "flag": True,
                  "blob": b"\xde\xad"}
    assert fr["since"].tzinfo == UTC
    # composite key; the batch's region is an integer, the column numeric: PostgreSQL casts the key text
    rates = pg_lookup(pg_database, "public.rates", ["code", "region"], [("FR", 2), ("DE", 2), ("DE", 3)])
    assert {k: v["rate"] for k, v in rates.items()} == {("FR", decimal.Decimal("2.00")): 7,
                                                        ("DE", decimal.Decimal("2.00")): 5}
    assert pg_lookup(pg_database, "rates", ["code"], []) == {}
    many = pg_lookup(pg_database, "rates", ["code", "region"], [("FR", i) for i in range(2500)])  # several chunks
    assert len(many) == 2


@pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)
def test_postgres_names_are_quoted_not_injected(pg_database):
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (k text PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t VALUES ('a', 'x')")
    with pytest.raises(psycopg.errors.UndefinedTable):
        pg_lookup(pg_database, "t; DROP TABLE t", ["k"], [("a",)])
    assert pg_lookup(pg_database, "t", ["k"], [("a'; DROP TABLE t; --",), ("a",)]) == {("a",): {"k": "a", "v": "x"}}


# --- MariaDB ------------------------------------------------------------------------------------------------------


def test_mysql_reads_rows_by_key_typed(mariadb_database):
    database = mariadb_database.rsplit("/", 1)[1].split("?")[0]
    conn = mysql_connect(mariadb_database)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE `my countries` (code VARCHAR(2) PRIMARY KEY, name TEXT, vat DECIMAL(4,2), "
                        "since TIMESTAMP NULL, made DATETIME NULL, extra JSON, at TIME NULL)")
            cur.execute("INSERT INTO `my countries` VALUES ('FR', 'France', 0.20, '2024-05-01 12:00:00', "
                        "'2024-05-01 12:00:00', '{\"a\": 1}', '08:30:00'), ('DE', 'Germany', 0.19, NULL, NULL, "
                        "NULL, NULL)")
            cur.execute("CREATE TABLE rates (code VARCHAR(2), region INT, rate INT, PRIMARY KEY (code, region))")
            cur.execute("INSERT INTO rates VALUES ('FR', 2, 7), ('FR', 3, 9), ('DE', 2, 5)")
    finally:
        conn.close()
    got = mysql_lookup(mariadb_database, "my countries", ["code"], [("FR",), ("XX",)])
    assert got == {("FR",): {"code": "FR", "name": "France", "vat": decimal.Decimal("0.20"), "since": STAMP,
                             "made": dt.datetime(2024, 5, 1, 12, 0), "extra": {"a": 1}, "at": dt.time(8, 30)}}
    rates = mysql_lookup(mariadb_database, f"{database}.rates", ["code", "region"],
                         [("FR", 3), ("DE", decimal.Decimal("2")), ("DE", 3)])
    assert {k: v["rate"] for k, v in rates.items()} == {("FR", 3): 9, ("DE", 2): 5}


# --- MongoDB ------------------------------------------------------------------------------------------------------


def test_mongodb_reads_documents_by_key_typed(mongo_database):
    from bson import Decimal128, ObjectId

    database = database_of(mongo_database)
    oid = ObjectId()
    client = mongo_connect(mongo_database)
    try:
        client[database].countries.insert_many([
            {"_id": "FR", "name": "France", "vat": Decimal128("0.20"), "since": STAMP, "extra": {"a": [1, 2]},
             "pop": 68_000_000},
            {"_id": "DE", "name": "Germany", "vat": Decimal128("0.19")},
        ])
        client[database].rates.insert_many([
            {"_id": oid, "code": "FR", "region": 2, "rate": 7},
            {"code": "FR", "region": 3.0, "rate": 9},
            {"code": "DE", "region": 2, "rate": 5},
        ])
    finally:
        client.close()
    got = mongo_lookup(mongo_database, "countries", ["_id"], [("FR",), ("XX",)])
    assert got == {("FR",): {"_id": "FR", "name": "France", "vat": decimal.Decimal("0.20"), "since": STAMP,
                             "extra": {"a": [1, 2]}, "pop": 68_000_000}}
    # composite key; a decimal key finds an int and a double alike
    rates = mongo_lookup(mongo_database, f"{database}.rates", ["code", "region"],
                         [("FR", decimal.Decimal("2")), ("FR", 3), ("DE", 3)])
    assert {k: v["rate"] for k, v in rates.items()} == {("FR", 2): 7, ("FR", 3.0): 9}
    # an ObjectId key given as its hex text
    by_id = mongo_lookup(mongo_database, "rates", ["_id"], [(str(oid),)])
    assert list(by_id) == [(str(oid),)] and by_id[(str(oid),)]["rate"] == 7


# --- Delta --------------------------------------------------------------------------------------------------------


def test_delta_reads_rows_by_key_typed(tmp_path):
    root = tmp_path / "lake"
    countries = pa.table({
        "code": pa.array(["FR", "DE", "IT"]),
        "name": pa.array(["France", "Germany", "Italy"]),
        "vat": pa.array([decimal.Decimal("0.20"), decimal.Decimal("0.19"), None], pa.decimal128(4, 2)),
        "since": pa.array([STAMP, None, None], pa.timestamp("us", tz="UTC")),
        "region": pa.array([2, 2, 3], pa.int64()),
    })
    write_deltalake(str(root / "public" / "countries"), countries)
    got = delta_lookup(str(root), "public.countries", ["code"], [("FR",), ("XX",)])
    assert got == {("FR",): {"code": "FR", "name": "France", "vat": decimal.Decimal("0.20"), "since": STAMP,
                             "region": 2}}
    assert got[("FR",)]["since"].tzinfo is not None
    both = delta_lookup(str(root), "public.countries", ["code", "region"],
                        [("FR", 2), ("DE", 2), ("IT", 2)])
    assert set(both) == {("FR", 2), ("DE", 2)}
    # keys that do not cast to the column's type are not filtered in Arrow (the engine matches them exactly)
    loose = delta_lookup(str(root), "public.countries", ["region"], [("2",)])
    assert {k[0] for k in loose} <= {2, 3}


# --- a table that does not exist (the quality stage's against-sink check asks a sink table not created yet) ------


@pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)
def test_a_missing_table_holds_nothing_only_when_asked(pg_database, mariadb_database, mongo_database, tmp_path):
    import pymysql
    from deltalake.exceptions import TableNotFoundError

    readers = [(pg_lookup, pg_database, "public.nowhere", psycopg.errors.UndefinedTable),
               (mysql_lookup, mariadb_database, "nowhere", pymysql.err.ProgrammingError),
               (delta_lookup, str(tmp_path / "lake"), "public.nowhere", TableNotFoundError)]
    for read, url, table, error in readers:
        assert read(url, table, ["id"], [(1,)], missing_ok=True) == {}
        with pytest.raises(error):  # a join naming a missing table must still fail
            read(url, table, ["id"], [(1,)])
    assert mongo_lookup(mongo_database, "nowhere", ["_id"], [(1,)], missing_ok=True) == {}
