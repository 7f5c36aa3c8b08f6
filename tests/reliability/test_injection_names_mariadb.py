"""Table and column names shaped as SQL injection, from a MariaDB source into PostgreSQL and MariaDB sinks.

The MariaDB side of ``test_injection_names.py``: names that close a backtick, a double quote or a string literal and
then drop a canary table. The rows land under their own names (snapshot and binlog stream), and the canary tables in
the source database and in the sink's target schema keep their row.
"""

from __future__ import annotations

import psycopg
import pytest
from contract.pairs import mysql_connect, mysql_quote
from contract.test_contract_mariadb_source import MariaPair, pair_factory, sink_under_test  # noqa: F401 - fixtures
from psycopg import sql

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.parametrize(("sink_kind", "pg_server"), [("postgresql", "pg15"), ("mariadb", "pg15")],
                            indirect=["pg_server"], ids=["postgresql", "mariadb"]),
]

# At most 64 characters (MariaDB's identifier limit).
TABLE = "t`; DROP TABLE canary; --"
TABLE_QUOTE = 'u"; DROP TABLE canary; --'
COLUMNS = ("c'); DROP TABLE canary; --", 'd"); DELETE FROM canary; --', "e`) ; DROP TABLE canary; #")


def sink_canary(pair: MariaPair, *, plant: bool) -> list[object]:
    """Plant (``plant``) or read the canary row in the sink's target schema (a schema or a database)."""
    schema = pair.target_schema
    if pair.under_test.name == "postgresql":
        with psycopg.connect(pair.under_test.location, autocommit=True) as conn:
            canary = sql.Identifier(schema, "canary")
            if plant:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                conn.execute(sql.SQL("CREATE TABLE {} (v text)").format(canary))
                conn.execute(sql.SQL("INSERT INTO {} VALUES ('alive')").format(canary))
            return [r[0] for r in conn.execute(sql.SQL("SELECT v FROM {}").format(canary))]
    with mysql_connect(pair.under_test.location) as conn, conn.cursor() as cur:
        if plant:
            cur.execute(f"CREATE DATABASE {mysql_quote(schema)}")
            cur.execute(f"CREATE TABLE {mysql_quote(schema)}.canary (v text)")
            cur.execute(f"INSERT INTO {mysql_quote(schema)}.canary VALUES ('alive')")
        cur.execute(f"SELECT v FROM {mysql_quote(schema)}.canary")
        return [r[0] for r in cur.fetchall()]


def test_injection_shaped_names_are_quoted_and_never_executed(pair_factory):  # noqa: F811 - the imported fixture
    columns = ", ".join(f"{mysql_quote(c)} text" for c in COLUMNS)
    ddl = (f"CREATE TABLE canary (v text); INSERT INTO canary VALUES ('alive');"
           f"CREATE TABLE {mysql_quote(TABLE)} (id int PRIMARY KEY, {columns});"
           f"CREATE TABLE {mysql_quote(TABLE_QUOTE)} (id int PRIMARY KEY, {columns})")
    pair = pair_factory(ddl=ddl, tables=[TABLE, TABLE_QUOTE])
    sink_canary(pair, plant=True)
    for table in (TABLE, TABLE_QUOTE):
        pair.sql(f"INSERT INTO {mysql_quote(table)} VALUES (1, 'a', 'b', 'c'), (2, 'd', 'e', 'f'), (3, 'g', 'h', 'i')")
    pair.run()  # by snapshot
    for table in (TABLE, TABLE_QUOTE):
        target = mysql_quote(table)
        pair.sql(f"UPDATE {target} SET {mysql_quote(COLUMNS[0])} = 'changed' WHERE id = 1;"
                 f"DELETE FROM {target} WHERE id = 2; INSERT INTO {target} VALUES (4, 'j', NULL, 'l')")
    pair.run()  # by binlog stream

    assert pair.assert_same(TABLE) == 3
    assert pair.assert_same(TABLE_QUOTE) == 3
    with mysql_connect(pair.url) as conn, conn.cursor() as cur:
        cur.execute("SELECT v FROM canary")
        assert cur.fetchall() == (("alive",),)
    assert sink_canary(pair, plant=False) == ["alive"]
