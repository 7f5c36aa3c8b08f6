"""Values from a PostgreSQL source that break pipelines (EDGE_CASES.md, values and encodings): text with no UTF-8
form, and JSON nested 1,000 deep into every sink.

PostgreSQL into PostgreSQL keeps a 1,000-deep document exactly (``tests/e2e/test_pg_edge_cases.py::
test_huge_and_deeply_nested_values_arrive_whole``); here the other sinks either hold it exactly or stop with an error
naming the column and the row, before anything of the batch is written.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from conftest import _drop_database
from contract.pairs import postgres_sink
from contract.test_contract import Pair, pair_factory, sink_under_test  # noqa: F401 - the fixtures
from psycopg import sql

from airflow_provider_cdc.errors import CdcError, TableRefusedError, is_terminal

pytestmark = pytest.mark.timeout(300)

INVALID = "convert_from('\\x6361ff6521'::bytea, 'SQL_ASCII')"  # 'ca', then 0xff (never valid UTF-8), 'e!'
HALF = "convert_from('\\xc328'::bytea, 'SQL_ASCII')"  # a UTF-8 lead byte without its continuation


@pytest.fixture
def sql_ascii_url(pg_server) -> Iterator[str]:
    """A database in SQL_ASCII, the encoding that stores any bytes unchecked (its slots dropped after the test)."""
    dbname = f"cdc_sql_ascii_{uuid.uuid4().hex[:12]}"
    with pg_server.connect("postgres") as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
                     .format(sql.Identifier(dbname)))
    yield pg_server.url(dbname)
    _drop_database(pg_server, dbname)


def sink_ids(pair: Pair) -> list[int]:
    table = sql.Identifier(pair.target_schema, "t")
    with psycopg.connect(pair.under_test.location) as conn:
        if conn.execute("SELECT to_regclass(%s)", (table.as_string(conn),)).fetchone() == (None,):
            return []
        return [r[0] for r in conn.execute(sql.SQL("SELECT id FROM {} ORDER BY id").format(table))]


def test_text_with_no_utf8_form_stops_naming_the_table_or_the_change(sql_ascii_url, pg_database_factory):
    sink_url = pg_database_factory("no_utf8_sink")
    with psycopg.connect(sql_ascii_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO t VALUES (1, 'plain'), (2, {INVALID})")
    pair = Pair(sql_ascii_url, postgres_sink(sink_url), tables=["public.t"])
    try:
        # By snapshot: the table and where its snapshot stood are named; nothing moves.
        with pytest.raises(TableRefusedError) as refused:
            pair.run()
        message = str(refused.value)
        assert "table public.t" in message and "its first rows" in message and "0xff" in message, message
        assert "SQL_ASCII" in message and is_terminal(refused.value)
        assert pair.positions.get(pair.source_id) is None and sink_ids(pair) == []

        pair.sql("UPDATE t SET v = 'fixed' WHERE id = 2")  # what the error says to do
        pair.run()
        assert sink_ids(pair) == [1, 2]
        position = pair.positions.get(pair.source_id)

        # By stream: the change is named by its LSN, and the way past it (the change stays in the log) is named.
        pair.sql(f"INSERT INTO t VALUES (3, {HALF})")
        with pytest.raises(TableRefusedError) as refused:
            pair.run()
        message = str(refused.value)
        assert "the change at LSN" in message and "public.t" in message and "0xc3 0x28" in message, message
        assert f"resnapshot {pair.source_id}" in message and is_terminal(refused.value)
        assert pair.positions.get(pair.source_id) == position and sink_ids(pair) == [1, 2]
    finally:
        pair.close()


# ------------------------------------------------------------------------------------- JSON nested 1,000 deep

NESTED = "(SELECT repeat('{\"a\": ', 1000) || '1' || repeat('}', 1000))::jsonb"


@contextmanager
def recursion_limit(limit: int) -> Iterator[None]:
    """Python's json needs one frame per level to read the documents back for the comparison."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


@pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)
@pytest.mark.parametrize("sink_under_test", [
    "delta",
    "mariadb",
    "mongodb",
], indirect=True)
def test_json_nested_1000_deep_arrives_whole_or_stops_naming_column_and_row(pair_factory):  # noqa: F811
    pair = pair_factory(ddl="CREATE TABLE d (id int PRIMARY KEY, doc jsonb, js json)", tables=["public.d"])
    pair.sql(f"INSERT INTO d VALUES (1, {NESTED}, {NESTED}::json), (2, '{{\"flat\": true}}', '[]')")
    if pair.under_test.name == "delta":
        pair.run()  # by snapshot
        pair.sql(f"INSERT INTO d VALUES (3, {NESTED}, {NESTED}::json); UPDATE d SET js = '[1]' WHERE id = 2")
        pair.run()  # by stream
        with recursion_limit(5000):
            assert pair.assert_same("d") == 3
        return
    # MariaDB's JSON and MongoDB's documents hold fewer levels: a clear, terminal error before anything is written.
    with pytest.raises(CdcError) as refused:
        pair.run()
    message = str(refused.value)
    assert "'doc'" in message and "id=1" in message and "nothing of this batch was written" in message, message
    assert is_terminal(refused.value) and pair.positions.get(pair.source_id) is None
