"""Table and column names shaped as SQL injection, from a PostgreSQL source into every sink (EDGE_CASES.md, names).

Each name closes a quote of one dialect or another (``"`` for PostgreSQL, a backtick for MariaDB, ``'`` for string
literals) and then drops a canary table. The names must reach every statement quoted by the driver and never run:
the rows land under their own names, and the canary tables, beside the source tables and in the sink's target
schema, are still there with their row. MariaDB as the source is in ``test_injection_names_mariadb.py``.
"""

from __future__ import annotations

import psycopg
import pytest
from contract.pairs import mysql_connect, mysql_quote
from contract.test_contract import Pair, pair_factory, sink_under_test  # noqa: F401 - the fixtures
from psycopg import sql

pytestmark = [pytest.mark.timeout(300), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]

# Each at most 63 bytes (PostgreSQL's identifier limit: a longer name would be cut, which is another test's case).
TABLE = 'x"; DROP TABLE canary; --'
TABLE_BACKTICK = "y`; DROP TABLE canary; --"
COLUMNS = ("c'); DROP TABLE canary; --", 'd"); DELETE FROM canary; --', "e`) ; DROP TABLE canary; #")


def canary_rows_in_sink(pair: Pair) -> list[object]:
    """The canary row in the sink's target schema (a database for MariaDB and MongoDB, a folder for Delta)."""
    kind, schema = pair.under_test.name, pair.target_schema
    if kind == "postgresql":
        with psycopg.connect(pair.under_test.location) as conn:
            return [r[0] for r in conn.execute(sql.SQL("SELECT v FROM {}").format(sql.Identifier(schema, "canary")))]
    if kind == "mariadb":
        with mysql_connect(pair.under_test.location) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT v FROM {mysql_quote(schema)}.canary")
            return [r[0] for r in cur.fetchall()]
    if kind == "mongodb":
        from airflow_provider_cdc.connectors.mongodb.connection import connect

        with connect(pair.under_test.location) as client:
            return [d["v"] for d in client[schema]["canary"].find()]
    return ["alive"]  # Delta: no SQL runs against the lake, so nothing can be injected there


def plant_sink_canary(pair: Pair) -> None:
    """A ``canary`` table with one row in the sink's target schema, before the sink sees any of our names."""
    kind, schema = pair.under_test.name, pair.target_schema
    if kind == "postgresql":
        with psycopg.connect(pair.under_test.location, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("CREATE TABLE {} (v text)").format(sql.Identifier(schema, "canary")))
            conn.execute(sql.SQL("INSERT INTO {} VALUES ('alive')").format(sql.Identifier(schema, "canary")))
    elif kind == "mariadb":
        with mysql_connect(pair.under_test.location) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {mysql_quote(schema)}")
            cur.execute(f"CREATE TABLE {mysql_quote(schema)}.canary (v text)")
            cur.execute(f"INSERT INTO {mysql_quote(schema)}.canary VALUES ('alive')")
    elif kind == "mongodb":
        from airflow_provider_cdc.connectors.mongodb.connection import connect

        with connect(pair.under_test.location) as client:
            client[schema]["canary"].insert_one({"v": "alive"})


def test_injection_shaped_names_are_quoted_and_never_executed(pair_factory):  # noqa: F811 - the imported fixture
    columns = ", ".join(sql.Identifier(c).as_string() + " text" for c in COLUMNS)
    ddl = (
        "CREATE TABLE canary (v text); INSERT INTO canary VALUES ('alive');"
        f"CREATE TABLE {sql.Identifier(TABLE).as_string()} (id int PRIMARY KEY, {columns});"
        f"CREATE TABLE {sql.Identifier(TABLE_BACKTICK).as_string()} (id int PRIMARY KEY, {columns})"
    )
    pair = pair_factory(ddl=ddl, tables=[f"public.{TABLE}", f"public.{TABLE_BACKTICK}"])
    plant_sink_canary(pair)
    for table in (TABLE, TABLE_BACKTICK):
        target = sql.Identifier(table).as_string()
        pair.sql(f"INSERT INTO {target} VALUES (1, 'a', 'b', 'c'), (2, 'd', 'e', 'f'), (3, 'g', 'h', 'i')")
    pair.run()  # by snapshot
    for table in (TABLE, TABLE_BACKTICK):
        target = sql.Identifier(table).as_string()
        first = sql.Identifier(COLUMNS[0]).as_string()
        pair.sql(f"UPDATE {target} SET {first} = 'changed' WHERE id = 1; DELETE FROM {target} WHERE id = 2;"
                 f"INSERT INTO {target} VALUES (4, 'j', NULL, 'l')")
    pair.run()  # by stream

    assert pair.assert_same(TABLE) == 3
    assert pair.assert_same(TABLE_BACKTICK) == 3
    with psycopg.connect(pair.url) as conn:
        assert conn.execute("SELECT v FROM canary").fetchall() == [("alive",)]
    assert canary_rows_in_sink(pair) == ["alive"]
