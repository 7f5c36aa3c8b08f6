"""MySqlSink on a real MariaDB: json nested deeper than MariaDB's JSON column takes is refused by name, before any
row of the batch is written; json at the limit is stored whole."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cdc_testing import batch_of

from airflow_provider_cdc.connectors.mysql.connection import connect, database_of, quote_name
from airflow_provider_cdc.connectors.mysql.sink import MySqlSink
from airflow_provider_cdc.connectors.mysql.sink_types import MARIADB_JSON_MAX_DEPTH, json_depth
from airflow_provider_cdc.errors import SinkError, is_terminal
from airflow_provider_cdc.events import OP_CREATE
from airflow_provider_cdc.tables import Column, TableSchema

pytestmark = pytest.mark.timeout(120)

DOCS = TableSchema("public", "docs", (
    Column("id", "integer", "integer", nullable=False, primary_key=True),
    Column("doc", "jsonb", "json"),
), dialect="postgresql")


def nested(levels: int) -> str:
    return '{"a": ' * (levels - 1) + '["x [{", 1]' + "}" * (levels - 1)  # brackets in a string do not count


@pytest.fixture
def db(mariadb_database_factory) -> str:
    return database_of(mariadb_database_factory("sink_json"))


@pytest.fixture
def sink(mariadb_server, db: str) -> Iterator[MySqlSink]:
    with MySqlSink(mariadb_server.url(""), sink_id="warehouse", target_schema=db) as sink:
        yield sink


def rows(mariadb_server, db: str) -> list[tuple]:
    conn = connect(mariadb_server.url(db), autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, doc FROM {quote_name('docs')} ORDER BY id")
            return list(cur.fetchall())
    finally:
        conn.close()


def test_the_depth_is_counted_as_mariadb_counts_it():
    assert [json_depth(text) for text in ("1", "[]", "[1]", '{"a": [1]}', '"[[{"', nested(40))] == [0, 1, 1, 2, 0, 40]


def test_json_deeper_than_mariadb_holds_stops_the_batch_naming_row_depth_and_limit(sink, mariadb_server, db):
    limit = MARIADB_JSON_MAX_DEPTH
    assert sink.json_max_depth == limit
    first = batch_of([(OP_CREATE, 1, {"id": "1", "doc": nested(limit)}),
                      (OP_CREATE, 2, {"id": "2", "doc": '{"flat": true}'})], DOCS)
    assert sink.apply(first).applied
    assert rows(mariadb_server, db) == [(1, nested(limit)), (2, '{"flat": true}')]  # the deepest it holds, whole

    deep = batch_of([(OP_CREATE, 3, {"id": "3", "doc": "[]"}),
                     (OP_CREATE, 4, {"id": "4", "doc": nested(1000)})], DOCS)
    with pytest.raises(SinkError) as refused:
        sink.apply(deep)
    message = str(refused.value)
    assert is_terminal(refused.value)
    assert message.startswith("sink 'warehouse'") and f"{db}.docs" in message, message
    assert "column 'doc'" in message and "(id=4)" in message, message
    assert "nested 1000 levels deep" in message and f"at most {limit} levels" in message, message
    assert "nothing of this batch was written" in message, message
    assert rows(mariadb_server, db) == [(1, nested(limit)), (2, '{"flat": true}')]  # row 3 neither
    assert not sink.has_batch(deep.batch_id)
