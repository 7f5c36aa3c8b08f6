"""MongoSink keeps a batch's quarantined changes in ``_cdc_quarantine`` in the batch's multi-document transaction,
against a real mongod replica set: stored once with the data, nothing on a replay, nothing when the apply fails."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from bson import Decimal128, Int64
from cdc_testing import batch_of, item, quarantined
from pymongo.errors import OperationFailure

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.connectors.mongodb.connection import database_of
from airflow_provider_cdc.connectors.mongodb.sink import MongoSink
from airflow_provider_cdc.connectors.mongodb.sink_storage import Bookkeeping
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.quarantine import quarantine_id, quarantine_rows
from airflow_provider_cdc.tables import Column, TableSchema

ITEMS = TableSchema("public", "items", (Column("id", "bigint", "integer", primary_key=True),
                                        Column("name", "text", "text")), dialect="postgresql")
UTC = dt.timezone.utc


@pytest.fixture
def batch() -> ChangeBatch:
    return quarantined(batch_of([("c", s, item(s, name=f"n{s}")) for s in range(1, 6)], ITEMS), 2, 4)


@pytest.fixture
def db(mongo_database: str) -> str:
    return database_of(mongo_database)


@pytest.fixture
def client(mongo_server) -> Iterator[Any]:
    with mongo_server.client() as client:
        yield client


@pytest.fixture
def sink(mongo_server, db: str) -> Iterator[MongoSink]:
    with MongoSink(mongo_server.url(""), sink_id="warehouse", target_schema=db) as sink:
        yield sink


def stored(client: Any, db: str) -> list[dict[str, Any]]:
    return list(client[db]["_cdc_quarantine"].find(sort=[("seq", 1), ("stage", 1)]))


def test_the_sink_declares_it_keeps_a_quarantine(sink):
    assert sink.capabilities.quarantine


def test_the_quarantine_is_stored_with_the_batch_once(sink, client, db, batch):
    first = pipeline.load_batch(batch, sink)
    again = pipeline.load_batch(batch, sink)
    assert first["applied"] and first["quarantined"] == 2 and not again["applied"]
    documents = stored(client, db)
    assert [d["seq"] for d in documents] == [2, 4] and isinstance(documents[0]["seq"], int)
    assert [d["_id"] for d in client[db]["items"].find(sort=[("_id", 1)])] == [1, 3, 5]
    document = documents[0]
    assert document["_id"] == {"quarantine_id": quarantine_id("shop", batch.batch_id, 2, "transform")}
    assert {name: document[name] for name in ("source_id", "batch_id", "source_table", "stage", "rule_id", "suite",
                                              "field", "reason", "op", "replayed_batch_id")} == {
        "source_id": "shop", "batch_id": batch.batch_id, "source_table": "public.items", "stage": "transform",
        "rule_id": "total", "suite": None, "field": "total", "reason": "division by zero in row 2", "op": "c",
        "replayed_batch_id": None}
    assert document["row"] == {"id": "2", "name": "n2 ü"}  # an embedded document, queryable as one
    assert client[db]["_cdc_quarantine"].count_documents({"row.name": "n4 ü"}) == 1
    assert document["event_time"] == dt.datetime(2024, 5, 1, 8, 0, 0, 2000, tzinfo=UTC)
    now = dt.datetime.now(UTC)
    assert now - dt.timedelta(minutes=5) < document["quarantined_at"] <= now
    assert client[db]["_cdc_quarantine"].count_documents({"replayed_batch_id": None}) == 2


def test_a_change_already_quarantined_keeps_its_first_document(sink, client, db, batch):
    pipeline.load_batch(batch, sink)
    # Another batch (another id) that carries the change of seq 4 again, and a new one: only the new one is added.
    overlap = quarantined(batch_of([("c", s, item(s)) for s in range(4, 8)], ITEMS), 4, 6)
    assert pipeline.load_batch(overlap, sink)["applied"]
    assert [(d["seq"], d["batch_id"]) for d in stored(client, db)] == [
        (2, batch.batch_id), (4, batch.batch_id), (6, overlap.batch_id)]
    # The same change quarantined by another stage is another document; a key twice in one batch is stored once.
    validated = quarantined(batch_of([("c", s, item(s)) for s in range(8, 10)], ITEMS), 8, stage="validate")
    rows = validated.quarantine.to_pylist()
    pipeline.load_batch(dataclasses.replace(validated, quarantine=quarantine_rows(
        [*rows, {**rows[0], "stage": "transform"}, {**rows[0], "reason": "again"}])), sink)
    assert [(d["stage"], d["reason"]) for d in stored(client, db) if d["seq"] == 8] == [
        ("transform", "division by zero in row 8"), ("validate", "division by zero in row 8")]


def test_row_images_keep_exact_numbers_and_any_field_name(sink, client, db):
    odd = quarantined(batch_of([("c", 3, item(3))], ITEMS), 3, big=2 ** 70, small=7, **{"a.b": "dot", "$x": "dollar"})
    assert pipeline.load_batch(odd, sink)["applied"]
    (document,) = stored(client, db)
    assert document["row"]["big"] == Decimal128("1180591620717411303424") and document["row"]["small"] == 7
    assert isinstance(document["row"]["small"], (int, Int64))
    assert document["row"]["a.b"] == "dot" and document["row"]["$x"] == "dollar"


def test_a_batch_of_only_quarantined_changes_is_loaded(sink, client, db):
    only = quarantined(batch_of([("c", 7, item(7))], ITEMS), 7)
    result = pipeline.load_batch(only, sink)
    assert result["applied"] and result["quarantined"] == 1 and result["upserted"] == 0
    assert [d["seq"] for d in stored(client, db)] == [7] and sink.has_batch(only.batch_id)


def test_a_failed_apply_keeps_no_quarantine_document(sink, client, db, batch, monkeypatch):
    def broken(self: Bookkeeping, session: Any, row: Any) -> None:
        raise OperationFailure("not authorized on the ledger (simulated)", code=13)

    monkeypatch.setattr(Bookkeeping, "insert_ledger", broken)
    with pytest.raises(SinkError, match="nothing of this batch was written"):
        pipeline.load_batch(batch, sink)
    assert stored(client, db) == [] and client[db]["items"].count_documents({}) == 0
    monkeypatch.undo()
    assert pipeline.load_batch(batch, sink)["applied"]  # the retry stores them, once
    assert [d["seq"] for d in stored(client, db)] == [2, 4]
