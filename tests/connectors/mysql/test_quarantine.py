"""MySqlSink keeps a batch's quarantined changes in ``_cdc_quarantine`` in the batch's InnoDB transaction, against a
real MariaDB: stored once with the data, nothing on a replay, nothing when the apply fails."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator, Sequence
from typing import Any

import pymysql
import pytest
from cdc_testing import batch_of, item, quarantined

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.connectors.mysql.connection import connect, database_of
from airflow_provider_cdc.connectors.mysql.sink import MySqlSink
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.quarantine import SINK_COLUMNS, quarantine_rows
from airflow_provider_cdc.tables import Column, TableSchema

ITEMS = TableSchema("public", "items", (Column("id", "bigint", "integer", primary_key=True),
                                        Column("name", "text", "text")), dialect="postgresql")


def query(url: str, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
    conn = connect(url, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, tuple(params))
            return [tuple(row) for row in cur.fetchall()] if cur.description else []
    finally:
        conn.close()


@pytest.fixture
def batch() -> ChangeBatch:
    return quarantined(batch_of([("c", s, item(s, name=f"n{s}")) for s in range(1, 6)], ITEMS), 2, 4)


@pytest.fixture
def sink(mariadb_database: str) -> Iterator[MySqlSink]:
    with MySqlSink(mariadb_database, sink_id="warehouse", target_schema=database_of(mariadb_database)) as sink:
        yield sink


def test_the_sink_declares_it_keeps_a_quarantine(sink):
    assert sink.capabilities.quarantine


def test_the_quarantine_is_stored_with_the_batch_once(sink, mariadb_database, batch):
    first = pipeline.load_batch(batch, sink)
    again = pipeline.load_batch(batch, sink)
    assert first["applied"] and first["quarantined"] == 2 and not again["applied"]
    names = [name for name, _ in SINK_COLUMNS]
    stored = [dict(zip(names, row)) for row in query(
        mariadb_database, f"SELECT {', '.join(f'`{name}`' for name in names)} FROM _cdc_quarantine ORDER BY seq")]
    assert [row["seq"] for row in stored] == [2, 4]
    assert query(mariadb_database, "SELECT id FROM items ORDER BY id") == [(1,), (3,), (5,)]
    row = stored[0]
    assert (row["source_id"], row["batch_id"], row["source_table"], row["stage"], row["rule_id"], row["suite"],
            row["field"], row["reason"], row["op"]) == ("shop", batch.batch_id, "public.items", "transform", "total",
                                                        None, "total", "division by zero in row 2", "c")
    assert json.loads(row["row"]) == {"id": "2", "name": "n2 ü"}  # JSON text in a json column, read back whole
    assert row["event_time"] == dt.datetime(2024, 5, 1, 8, 0, 0, 2000)  # UTC, as the sink stores DATETIMEs
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    assert now - dt.timedelta(minutes=5) < row["quarantined_at"] <= now
    assert row["replayed_batch_id"] is None
    # The json column is queryable as JSON, and the key is (source_id, seq, stage).
    assert query(mariadb_database, "SELECT JSON_VALUE(`row`, '$.name') FROM _cdc_quarantine WHERE seq = 4") == [
        ("n4 ü",)]
    assert query(mariadb_database, "SELECT GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX) FROM"
                                   " information_schema.STATISTICS WHERE TABLE_SCHEMA = %s AND TABLE_NAME ="
                                   " '_cdc_quarantine' AND INDEX_NAME = 'PRIMARY'",
                 (database_of(mariadb_database),)) == [("quarantine_id",)]


def test_a_change_already_quarantined_keeps_its_first_row(sink, mariadb_database, batch):
    pipeline.load_batch(batch, sink)
    # Another batch (another id) that carries the change of seq 4 again, and a new one: only the new one is added.
    overlap = quarantined(batch_of([("c", s, item(s)) for s in range(4, 8)], ITEMS), 4, 6)
    assert pipeline.load_batch(overlap, sink)["applied"]
    assert query(mariadb_database, "SELECT seq, batch_id FROM _cdc_quarantine ORDER BY seq") == [
        (2, batch.batch_id), (4, batch.batch_id), (6, overlap.batch_id)]
    # The same change quarantined by another stage is another row.
    validated = quarantined(batch_of([("c", s, item(s)) for s in range(8, 10)], ITEMS), 8, stage="validate")
    pipeline.load_batch(dataclasses.replace(validated, quarantine=quarantine_rows([
        *validated.quarantine.to_pylist(), {**validated.quarantine.to_pylist()[0], "stage": "transform"}])), sink)
    assert query(mariadb_database, "SELECT stage FROM _cdc_quarantine WHERE seq = 8 ORDER BY stage") == [
        ("transform",), ("validate",)]


def test_a_batch_of_only_quarantined_changes_is_loaded(sink, mariadb_database):
    only = quarantined(batch_of([("c", 7, item(7))], ITEMS), 7)
    result = pipeline.load_batch(only, sink)
    assert result["applied"] and result["quarantined"] == 1 and result["upserted"] == 0
    assert query(mariadb_database, "SELECT seq FROM _cdc_quarantine") == [(7,)]
    assert query(mariadb_database, "SELECT batch_id FROM _cdc_ledger") == [(only.batch_id,)]


def test_a_failed_apply_keeps_no_quarantine_row(sink, mariadb_database, batch, monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> None:
        raise pymysql.err.OperationalError(2013, "Lost connection to server during query")

    monkeypatch.setattr(sink, "_insert_ledger", broken)
    with pytest.raises(SinkError, match="nothing of this batch was written"):
        pipeline.load_batch(batch, sink)
    assert query(mariadb_database, "SELECT COUNT(*) FROM _cdc_quarantine") == [(0,)]
    assert query(mariadb_database, "SELECT COUNT(*) FROM items") == [(0,)]
    monkeypatch.undo()
    assert pipeline.load_batch(batch, sink)["applied"]  # the retry stores them, once
    assert query(mariadb_database, "SELECT seq FROM _cdc_quarantine ORDER BY seq") == [(2,), (4,)]
