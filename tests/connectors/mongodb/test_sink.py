"""MongoSink against a real mongod 6.0.5 replica set: documents, ledger rows, the exactly-once guards, typed values,
MongoDB-dialect documents restored exactly, field names with dots and dollars, and large documents."""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from bson import Binary, Decimal128, Int64, ObjectId
from cdc_testing import Event, batch_of, item

from airflow_provider_cdc.connectors.base import ApplyResult, Sink
from airflow_provider_cdc.connectors.mongodb import sink as sink_module
from airflow_provider_cdc.connectors.mongodb.connection import database_of
from airflow_provider_cdc.connectors.mongodb.documents import canonical_key, column_for
from airflow_provider_cdc.connectors.mongodb.sink import MongoSink
from airflow_provider_cdc.connectors.mongodb.sink_storage import Bookkeeping
from airflow_provider_cdc.connectors.mongodb.sink_values import nesting
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema

SOURCE = "shop"
D = decimal.Decimal
UTC = dt.timezone.utc

ITEMS = TableSchema("public", "items", (
    Column("id", "integer", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("name", "text", "text", ordinal=2),
    Column("amount", "numeric(12,2)", "decimal", precision=12, scale=2, ordinal=3),
    Column("seen_at", "timestamp with time zone", "timestamptz", ordinal=4),
    Column("payload", "bytea", "binary", ordinal=5),
    Column("tags", "text[]", "other", ordinal=6),
), dialect="postgresql")
BLOBS = TableSchema("public", "blobs", (
    Column("id", "integer", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("name", "text", "text", ordinal=2),
    Column("doc", "text", "text", ordinal=3),
), dialect="postgresql")
LINES = TableSchema("public", "order_lines", (
    Column("order_id", "bigint", "integer", primary_key=True),
    Column("line", "text", "text", primary_key=True),
    Column("qty", "integer", "integer"),
), dialect="postgresql")


def make_batch(events: Sequence[Event], schema: TableSchema = ITEMS, **kwargs: Any) -> ChangeBatch:
    return batch_of(events, schema, **kwargs)


@pytest.fixture
def db(mongo_database: str) -> str:
    return database_of(mongo_database)


@pytest.fixture
def client(mongo_server) -> Iterator[Any]:
    with mongo_server.client() as client:
        yield client


@pytest.fixture
def sink(mongo_server, db: str) -> Iterator[MongoSink]:
    # A URL without a database: the sink names its databases itself.
    with MongoSink(mongo_server.url(""), sink_id="warehouse", target_schema=db) as sink:
        yield sink


@pytest.fixture
def soft_sink(mongo_server, db: str) -> Iterator[MongoSink]:
    with MongoSink(mongo_server.url(""), sink_id="warehouse", target_schema=db, delete_mode="soft") as sink:
        yield sink


def docs(client: Any, db: str, collection: str = "items") -> list[dict[str, Any]]:
    """Every document of the collection, by canonical key (what the sink matches keys by)."""
    return sorted(client[db][collection].find(), key=lambda doc: canonical_key(doc["_id"]))


def fields(client: Any, db: str, collection: str = "items", *names: str) -> list[tuple[Any, ...]]:
    """The named fields of every document (None where absent), by key."""
    return [tuple(doc.get(name) for name in names) for doc in docs(client, db, collection)]


def ledger(client: Any, db: str) -> list[tuple[Any, ...]]:
    return [(row["_id"], row["source_id"], row["seq_from"], row["seq_to"], row["rows_upserted"], row["rows_deleted"])
            for row in client[db]["_cdc_ledger"].find(sort=[("seq_to", 1), ("_id", 1)])]


# --- the contract -----------------------------------------------------------------------------------------------


def test_sink_satisfies_the_protocol_and_declares_its_capabilities(sink):
    assert isinstance(sink, Sink)
    capabilities = sink.capabilities
    assert capabilities is sink_module.CAPABILITIES and capabilities.dialect == "mongodb"
    assert capabilities.transactional and capabilities.merge_by_key and capabilities.soft_delete
    assert not capabilities.stores_other_exactly
    assert capabilities.native_types == {"integer", "decimal", "float", "boolean", "text", "timestamptz",
                                         "timestamp", "date", "json", "binary", "uuid"}


def test_constructor_checks_its_arguments(mongo_server):
    with pytest.raises(ValueError, match="delete_mode must be 'hard' or 'soft'"):
        MongoSink(mongo_server.url(""), sink_id="w", target_schema="x", delete_mode="gone")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"target_schema 'a\.b' cannot be a MongoDB database name"):
        MongoSink(mongo_server.url(""), sink_id="w", target_schema="a.b")
    with pytest.raises(ValueError, match="ledger_schema .* fewer than 64 bytes"):
        MongoSink(mongo_server.url(""), sink_id="w", target_schema="x", ledger_schema="d" * 64)
    with pytest.raises(SinkError, match="cannot connect to the sink database") as info:
        MongoSink("postgresql://nowhere/x", sink_id="w", target_schema="x")
    assert info.value.terminal


def test_ensure_tables_creates_collections_and_the_bookkeeping(sink, client, db):
    sink.ensure_tables([ITEMS, LINES])
    names = set(client[db].list_collection_names())
    assert {"items", "order_lines", "_cdc_ledger", "_cdc_held", "_cdc_schemas", "_cdc_held_changes",
            "_cdc_locks"} <= names
    assert any(index["key"].to_dict() == {"source_id": 1, "seq_to": -1, "committed_at": -1}
               for index in client[db]["_cdc_ledger"].list_indexes())
    sink.ensure_tables([ITEMS])  # idempotent


def test_ledger_reads_before_anything_exists(sink, client, db):
    assert sink.has_batch("shop:1-2") is False
    assert sink.high_water(SOURCE) == 0 and sink.last_committed(SOURCE) is None
    assert sink.held_tables(SOURCE) == {} and sink.schema_versions(SOURCE) == []
    assert sink.held_changes(SOURCE, "public.items") == []
    assert client[db].list_collection_names() == []


@pytest.mark.parametrize(("schema", "message"), [
    (TableSchema("public", "events", (Column("id", "integer", "integer"), Column("v", "text"))),
     "add a primary key at the source"),
    (TableSchema("public", "t", (Column("id", "integer", "integer", primary_key=True), Column("_cdc_x", "text"))),
     r"reserved bookkeeping namespace"),
    (TableSchema("public", "t", (Column("id", "integer", "integer", primary_key=True), Column("_id", "text")),
                 dialect="postgresql"), "has a column '_id' that is not its whole key"),
    (TableSchema("public", "a$b", (Column("id", "integer", "integer", primary_key=True),)),
     "cannot contain '\\$' or NUL"),
    (TableSchema("public", "system.x", (Column("id", "integer", "integer", primary_key=True),)), "MongoDB's own"),
    (TableSchema("public", "_cdc_ledger", (Column("id", "integer", "integer", primary_key=True),)),
     "the sink's own collection"),
    (TableSchema("public", "t", (Column("$a", "integer", "integer", primary_key=True),
                                 Column("b", "integer", "integer", primary_key=True))), "start with '\\$'"),
])
def test_tables_that_cannot_become_collections_are_refused(sink, schema, message):
    with pytest.raises(SinkError, match=message) as info:
        sink.ensure_tables([schema])
    assert info.value.terminal and info.value.table.endswith(schema.name)


# --- documents and typed values -----------------------------------------------------------------------------------


def test_insert_update_delete_write_whole_documents(sink, client, db):
    result = sink.apply(make_batch([
        ("c", 1, item(1, name="plain", amount="12.30", seen_at="2024-05-01T08:00:00Z", payload="00ff0a5c",
                      tags='{a,"b c",NULL}')),
        ("c", 2, item(2, name="", amount="0.00", seen_at=None, payload="")),
        ("c", 3, item(3, name="$not a field", amount="-9999999999.99")),
    ]))
    assert result.applied and (result.upserted, result.deleted) == (3, 0)
    first, second, third = docs(client, db)
    assert first == {"_id": 1, "id": 1, "name": "plain", "amount": Decimal128("12.30"),
                     "seen_at": dt.datetime(2024, 5, 1, 8, tzinfo=UTC), "payload": b"\x00\xff\n\\",
                     "tags": '{a,"b c",NULL}', "_cdc_op": "c", "_cdc_position": 1,
                     "_cdc_ts": dt.datetime(2024, 5, 1, 8, 0, 1, tzinfo=UTC)}
    # NULL is no field at all; an empty string and empty bytes are values.
    assert "seen_at" not in second and "tags" not in second and second["name"] == "" and second["payload"] == b""
    assert third["name"] == "$not a field"
    result = sink.apply(make_batch([
        ("u", 4, item(1, name="renamed", amount="7.5")),
        ("u", 5, item(2, name=None)),
        ("d", 6, item(3)),
        ("d", 7, item(42)),  # a delete of a document the sink never had: nothing
    ]))
    assert (result.upserted, result.deleted) == (2, 1)
    assert fields(client, db, "items", "_id", "name", "amount", "payload", "_cdc_op", "_cdc_position") == [
        (1, "renamed", Decimal128("7.5"), None, "u", 4), (2, None, None, None, "u", 5)]
    assert "name" not in docs(client, db)[1]


KINDS = TableSchema("public", "kinds", (
    Column("id", "bigint", "integer", primary_key=True, nullable=False),
    Column("i", "integer", "integer"), Column("big", "bigint", "integer"),
    Column("n", "numeric(38,10)", "decimal", precision=38, scale=10), Column("f", "double precision", "float"),
    Column("b", "boolean", "boolean"), Column("t", "text", "text"), Column("tz", "timestamptz", "timestamptz"),
    Column("ts", "timestamp", "timestamp"), Column("d", "date", "date"), Column("tm", "time", "time"),
    Column("j", "jsonb", "json"), Column("by", "bytea", "binary"), Column("u", "uuid", "uuid"),
    Column("arr", "integer[]", "other"),
), dialect="postgresql")
KIND_ROW = {"id": "1", "i": "-7", "big": "9223372036854775807", "n": "1234567890123456789012.0123456789",
            "f": "1.5e-300", "b": "true", "t": "héllo\n\\", "tz": "2024-05-01T12:00:00.25Z",
            "ts": "1999-12-31T23:59:59.999", "d": "2024-02-29", "tm": "23:59:59.5",
            "j": '{"a": [1, 2, {"b": null}], "ü": "x", "big": 123456789012345678901234567890, "exact": '
                 '0.1000000000000000055511151231257827, "f": 0.1}',
            "by": "00dead5c0a", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "arr": "{1,NULL,3}"}


def test_every_logical_type_is_stored_as_its_bson_type(sink, client, db):
    sink.apply(make_batch([("c", 1, KIND_ROW), ("c", 2, {"id": "2", "b": "false", "j": "null", "n": "NaN"})], KINDS))
    doc, second = docs(client, db, "kinds")
    assert doc["i"] == -7 and doc["big"] == 9223372036854775807 and isinstance(doc["big"], int)
    assert doc["n"] == Decimal128("1234567890123456789012.0123456789")
    assert doc["f"] == 1.5e-300 and doc["b"] is True and doc["t"] == "héllo\n\\"
    assert doc["tz"] == dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
    assert doc["ts"] == dt.datetime(1999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)  # a wall clock, kept as UTC
    assert doc["d"] == dt.datetime(2024, 2, 29, tzinfo=UTC)
    assert doc["tm"] == "23:59:59.5"  # no time-of-day type in BSON: the portable text
    # json becomes documents and arrays, its numbers exact (Decimal128 where a double or int64 would round).
    assert doc["j"] == {"a": [1, 2, {"b": None}], "ü": "x", "big": Decimal128("123456789012345678901234567890"),
                        "exact": Decimal128("0.1000000000000000055511151231257827"), "f": 0.1}
    assert doc["by"] == b"\x00\xde\xad\\\n"
    assert doc["u"] == Binary(uuid.UUID(KIND_ROW["u"]).bytes, 4)
    assert doc["arr"] == "{1,NULL,3}"
    types = client[db]["kinds"].aggregate([{"$match": {"_id": 1}}, {"$project": {
        name: {"$type": f"${name}"} for name in ("i", "big", "n", "f", "b", "tz", "ts", "d", "j", "by", "u")}}])
    assert next(types) == {"_id": 1, "i": "int", "big": "long", "n": "decimal", "f": "double", "b": "bool",
                           "tz": "date", "ts": "date", "d": "date", "j": "object", "by": "binData", "u": "binData"}
    # A JSON null is a null field, a SQL NULL no field; NaN is a Decimal128 NaN.
    assert second["j"] is None and "j" in second and "t" not in second and second["n"].to_decimal().is_nan()


def test_timestamps_with_microseconds_are_truncated_with_one_warning_per_column(sink, client, db, caplog):
    with caplog.at_level(logging.WARNING, logger="airflow_provider_cdc.sink.mongodb"):
        sink.apply(make_batch([("c", 1, item(1, seen_at="2024-05-01T08:00:00.123456Z")),
                               ("c", 2, item(2, seen_at="2024-05-01T08:00:00.5Z")),
                               ("c", 3, item(3, seen_at="2024-05-01T08:00:00.000001Z"))]))
    assert fields(client, db, "items", "seen_at") == [(dt.datetime(2024, 5, 1, 8, 0, 0, 123000, tzinfo=UTC),),
                                                      (dt.datetime(2024, 5, 1, 8, 0, 0, 500000, tzinfo=UTC),),
                                                      (dt.datetime(2024, 5, 1, 8, tzinfo=UTC),)]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 values of column seen_at had microseconds" in warnings[0] and f"{db}.items" in warnings[0]


@pytest.mark.parametrize(("column", "value", "reason"), [
    ("amount", "1234567890123456789012345678901234.5", "more than the 34 significant digits"),
    ("seen_at", "infinity", "years 1 to 9999"),
    ("payload", "not hex", "non-hexadecimal"),
])
def test_values_bson_cannot_hold_stop_the_batch_before_any_damage(sink, client, db, column, value, reason):
    sink.apply(make_batch([("c", 1, item(1, name="kept"))]))
    with pytest.raises(SinkError) as info:
        sink.apply(make_batch([("u", 2, item(1, name="lost")), ("c", 3, item(7, **{column: value}))]))
    message = str(info.value)
    assert f"column {column!r}" in message and "key (id=7)" in message and reason in message
    assert "nothing of this batch was written" in message and info.value.terminal
    assert info.value.table == f"{db}.items"
    assert fields(client, db, "items", "_id", "name") == [(1, "kept")] and not sink.has_batch("shop:2-3")


def test_json_nested_deeper_than_mongodb_stores_is_refused_by_name(sink, client, db):
    docs_table = TableSchema("public", "docs", (Column("id", "integer", "integer", primary_key=True),
                                                Column("j", "jsonb", "json")), dialect="postgresql")
    ok = "[" * 179 + "]" * 179
    sink.apply(make_batch([("c", 1, {"id": "1", "j": ok})], docs_table))
    assert nesting(docs(client, db, "docs")[0]["j"]) == 179
    deep = "[" * 1000 + "]" * 1000
    with pytest.raises(SinkError, match=r"column 'j' .* key \(id=2\).*nested more than 179 levels") as info:
        sink.apply(make_batch([("c", 2, {"id": "2", "j": deep})], docs_table))
    assert info.value.terminal and len(docs(client, db, "docs")) == 1


def test_a_key_timestamp_finer_than_a_millisecond_is_refused(sink):
    events = TableSchema("public", "events", (Column("at", "timestamptz", "timestamptz", primary_key=True),
                                              Column("v", "text")), dialect="postgresql")
    sink.apply(make_batch([("c", 1, {"at": "2024-05-01T08:00:00.123Z", "v": "ms is fine"})], events))
    with pytest.raises(SinkError, match="finer than a millisecond"):
        sink.apply(make_batch([("c", 2, {"at": "2024-05-01T08:00:00.123001Z", "v": "x"})], events))


# --- the ledger and exactly once ----------------------------------------------------------------------------------


def test_ledger_row_is_written_with_the_data(sink, client, db):
    batch = make_batch([("c", 1, item(1)), ("c", 2, item(2)), ("d", 3, item(1))])
    versions = {"rule_versions": {"mask": 2}, "stage_versions": {"transform": {"rules": 1}}}
    before = dt.datetime.now(UTC) - dt.timedelta(seconds=5)
    assert sink.apply(batch, run_id="manual__1", versions=versions).applied
    [row] = client[db]["_cdc_ledger"].find()
    assert row["_id"] == row["batch_id"] == "shop:1-3" and row["source_id"] == SOURCE
    assert (row["seq_from"], row["seq_to"], row["run_id"], row["rows_upserted"], row["rows_deleted"]) == (
        1, 3, "manual__1", 1, 0)
    assert row["position_from"] == {"lsn": "0/0"} and row["position_to"] == {"lsn": "0/3"}
    assert row["counts"] == {"public.items": {"c": 2, "d": 1}} and row["rule_versions"] == {"mask": 2}
    assert row["schema_versions"] == {"versions": {"shop.public.items": 1}, "changes": [], "held": {}}
    assert row["stage_versions"] == {"transform": {"rules": 1}}
    assert before < row["committed_at"] < before + dt.timedelta(seconds=60)
    assert sink.has_batch("shop:1-3") and not sink.has_batch("shop:4-5")
    assert sink.high_water(SOURCE) == 3 and sink.high_water("other") == 0
    assert sink.last_committed(SOURCE) == {"lsn": "0/3"} and sink.last_committed("other") is None


def test_a_position_reads_back_as_the_json_it_was(sink):
    batch = make_batch([("c", 1, item(1))])
    batch.position_to = {"resume_token": {"_data": "8265"}, "seq": 2 ** 40, "tables": {"a.b": [1, 2.5, None]}}
    sink.apply(batch)
    position = sink.last_committed(SOURCE)
    assert position == batch.position_to and type(position["seq"]) is int  # not bson's Int64


def test_replaying_a_batch_is_a_no_op(sink, client, db):
    batch = make_batch([("c", 1, item(1, name="a")), ("u", 2, item(1, name="b"))])
    assert sink.apply(batch).applied
    client[db]["items"].update_one({"_id": 1}, {"$set": {"name": "changed in the sink"}})
    again = sink.apply(batch)
    assert again == ApplyResult(batch_id="shop:1-2", applied=False, seconds=again.seconds)
    assert fields(client, db, "items", "_id", "name") == [(1, "changed in the sink")]
    assert ledger(client, db) == [("shop:1-2", "shop", 1, 2, 1, 0)]


def test_overlapping_batch_applies_only_new_events(sink, client, db):
    first = [("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]
    sink.apply(make_batch(first))
    client[db]["items"].update_one({"_id": 1}, {"$set": {"name": "sink edit"}})
    result = sink.apply(make_batch([*first, ("c", 3, item(3, name="c")), ("u", 4, item(2, name="b2"))]))
    assert result.applied and result.skipped_replayed == 2 and result.upserted == 2
    assert fields(client, db, "items", "_id", "name") == [(1, "sink edit"), (2, "b2"), (3, "c")]
    assert ledger(client, db) == [("shop:1-2", "shop", 1, 2, 2, 0), ("shop:1-4", "shop", 3, 4, 2, 0)]


def test_older_change_never_overwrites_a_newer_one(mongo_server, mongo_database_factory, sink, client, db):
    sink.apply(make_batch([("c", 10, item(1, name="new")), ("c", 11, item(2, name="kept"))]))
    # A second ledger (another database) has no high water for this source: only the row guard stands.
    other = database_of(mongo_database_factory("ledger"))
    with MongoSink(mongo_server.url(""), sink_id="warehouse", target_schema=db, ledger_schema=other) as stale:
        result = stale.apply(make_batch([
            ("u", 5, item(1, name="old")),
            ("d", 6, item(2)),
            ("c", 7, item(3, name="fresh key")),
            ("u", 11, item(2, name="same seq again")),  # re-applying the document's own change is harmless
        ]))
    assert result.applied and (result.upserted, result.deleted) == (2, 0)
    assert fields(client, db, "items", "_id", "name", "_cdc_position") == [
        (1, "new", 10), (2, "same seq again", 11), (3, "fresh key", 7)]
    assert client[other]["_cdc_ledger"].count_documents({}) == 1 and ledger(client, db) == [
        ("shop:10-11", "shop", 10, 11, 2, 0)]


def test_soft_deletes_are_guarded_too(mongo_server, mongo_database_factory, soft_sink, client, db):
    soft_sink.apply(make_batch([("c", 10, item(1, name="new"))]))
    other = database_of(mongo_database_factory("ledger"))
    with MongoSink(mongo_server.url(""), sink_id="warehouse", target_schema=db, ledger_schema=other,
                   delete_mode="soft") as stale:
        assert stale.apply(make_batch([("d", 5, item(1))])).deleted == 0
    assert fields(client, db, "items", "_id", "name", "_cdc_op", "_cdc_deleted_at") == [(1, "new", "c", None)]


def test_concurrent_applies_of_one_batch_commit_once(mongo_server, client, db):
    batch = make_batch([("c", seq, item(seq, name=str(seq))) for seq in range(1, 2001)])
    results: list[ApplyResult] = []

    def run() -> None:
        with MongoSink(mongo_server.url(""), sink_id="w", target_schema=db) as sink:
            results.append(sink.apply(batch))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.applied for r in results) == [False, False, True]
    assert client[db]["items"].count_documents({}) == 2000 and len(ledger(client, db)) == 1


def test_a_batch_that_fails_in_its_second_table_leaves_nothing(sink, client, db):
    sink.apply(make_batch([("c", 1, item(1, name="a"))], extra={LINES: [("c", 2, {"order_id": "1", "line": "a",
                                                                               "qty": "1"})]}))
    batch = make_batch([("u", 3, item(1, name="changed")), ("c", 4, item(2, name="new"))],
                       extra={LINES: [("u", 5, {"order_id": "1", "line": "a", "qty": "not a number"})]})
    with pytest.raises(SinkError, match=r"column 'qty'.*key \(order_id=1, line=a\)") as info:
        sink.apply(batch)
    assert info.value.terminal and info.value.table == f"{db}.order_lines"
    # The first table's writes were in the same transaction: gone with it.
    assert fields(client, db, "items", "_id", "name") == [(1, "a")]
    assert not sink.has_batch(batch.batch_id) and sink.high_water(SOURCE) == 2


def test_a_failure_after_every_write_leaves_no_data_and_no_ledger_row(sink, client, db, monkeypatch):
    sink.apply(make_batch([("c", 1, item(1, name="a"))]))
    batch = make_batch([("u", 2, item(1, name="changed")), ("c", 3, item(2, name="new")), ("t", 4, {}),
                        ("c", 5, item(3, name="after"))])

    def crash(self, session, row):
        raise RuntimeError("the process died before the ledger row (simulated)")

    monkeypatch.setattr(Bookkeeping, "insert_ledger", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        sink.apply(batch)
    assert fields(client, db, "items", "_id", "name") == [(1, "a")] and not sink.has_batch(batch.batch_id)
    monkeypatch.undo()
    assert sink.apply(batch).applied
    assert fields(client, db, "items", "_id", "name") == [(3, "after")]


# --- folding, truncates and soft deletes --------------------------------------------------------------------------


def test_changes_to_one_key_are_folded_in_order(sink, client, db):
    sink.apply(make_batch([("c", 1, item(9, name="existing"))]))
    result = sink.apply(make_batch([
        ("c", 2, item(1, name="v1", amount="1")),
        ("u", 3, item(1, name="v2", amount="2")),
        ("c", 4, item(2, name="short-lived")),
        ("u", 5, item(1, name="v3", amount=None)),
        ("d", 6, item(2)),
        ("d", 7, item(3)),  # never existed
        ("d", 8, item(9)),
        ("c", 9, item(9, name="reborn")),
    ]))
    assert result.tables["public.items"]["staged"] == 4
    assert (result.upserted, result.deleted) == (2, 0)
    assert fields(client, db, "items", "_id", "name", "amount", "_cdc_position") == [
        (1, "v3", None, 5), (9, "reborn", None, 9)]


def test_composite_keys_are_documents_of_the_key_columns(sink, client, db):
    sink.apply(make_batch([
        ("c", 1, {"order_id": "1", "line": "a", "qty": "1"}),
        ("c", 2, {"order_id": "1", "line": "b", "qty": "1"}),
        ("u", 3, {"order_id": "1", "line": "a", "qty": "5"}),
        ("c", 4, {"order_id": "2", "line": "a", "qty": "7"}),
        ("d", 5, {"order_id": "1", "line": "b"}),
    ], LINES))
    sink.apply(make_batch([("u", 6, {"order_id": "2", "line": "a", "qty": "8"}),
                           ("c", 7, {"order_id": "2", "line": "A", "qty": "9"})], LINES))
    assert fields(client, db, "order_lines", "_id", "order_id", "line", "qty") == [
        ({"order_id": 1, "line": "a"}, 1, "a", 5), ({"order_id": 2, "line": "A"}, 2, "A", 9),
        ({"order_id": 2, "line": "a"}, 2, "a", 8)]
    assert list(docs(client, db, "order_lines")[0]["_id"]) == ["order_id", "line"]  # in key order


def test_numeric_keys_equal_by_value_are_one_document(sink, client, db):
    prices = TableSchema("public", "prices", (Column("k", "numeric", "decimal", primary_key=True),
                                              Column("v", "text", "text")), dialect="postgresql")
    sink.apply(make_batch([("c", 1, {"k": "1.50", "v": "first"})], prices))
    sink.apply(make_batch([("u", 2, {"k": "1.5", "v": "second"}), ("c", 3, {"k": "-0.0", "v": "zero"})], prices))
    sink.apply(make_batch([("u", 4, {"k": "0", "v": "zero2"}), ("u", 5, {"k": "1.500", "v": "third"})], prices))
    assert [(canonical_key(key), value) for key, value in fields(client, db, "prices", "_id", "v")] == [
        ("0", "zero2"), ("1.5", "third")]


def test_truncate_in_the_middle_of_a_batch(sink, client, db):
    sink.apply(make_batch([("c", 1, item(1, name="old")), ("c", 2, item(2, name="old"))]))
    result = sink.apply(make_batch([
        ("u", 3, item(1, name="updated before truncate")),
        ("c", 4, item(3, name="inserted before truncate")),
        ("t", 5, {}),
        ("c", 6, item(4, name="after")),
        ("c", 7, item(1, name="re-inserted after")),
    ]))
    assert result.truncated_tables == 1 and result.tables["public.items"]["truncated_rows"] == 3
    assert fields(client, db, "items", "_id", "name") == [(1, "re-inserted after"), (4, "after")]


def test_soft_truncate_marks_documents(soft_sink, client, db):
    soft_sink.apply(make_batch([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]))
    soft_sink.apply(make_batch([("t", 3, {}), ("c", 4, item(2, name="b again"))]))
    assert fields(client, db, "items", "_id", "name", "_cdc_op", "_cdc_position", "_cdc_deleted_at") == [
        (1, "a", "t", 3, dt.datetime(2024, 5, 1, 8, 0, 3, tzinfo=UTC)), (2, "b again", "c", 4, None)]


def test_soft_delete_marks_the_document_and_a_reinsert_clears_it(soft_sink, client, db):
    soft_sink.apply(make_batch([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]))
    result = soft_sink.apply(make_batch([("d", 3, item(1)), ("d", 4, item(7))]))
    assert result.deleted == 1
    assert fields(client, db, "items", "_id", "name", "_cdc_op", "_cdc_position", "_cdc_deleted_at") == [
        (1, "a", "d", 3, dt.datetime(2024, 5, 1, 8, 0, 3, tzinfo=UTC)), (2, "b", "c", 2, None)]
    soft_sink.apply(make_batch([("c", 5, item(1, name="back"))]))
    assert fields(client, db, "items", "_id", "name", "_cdc_op", "_cdc_position") == [
        (1, "back", "c", 5), (2, "b", "c", 2)]
    assert all("_cdc_deleted_at" not in doc for doc in docs(client, db))


# --- values the source did not send -------------------------------------------------------------------------------


def test_unchanged_values_keep_the_document_value(sink, client, db):
    big = "x" * 100_000
    sink.apply(make_batch([("c", 1, item(1, name=big, amount="1.00", payload="01")),
                           ("c", 2, item(2, name="small"))]))
    sink.apply(make_batch([
        ("u", 3, item(1, amount="2.00"), ["name", "payload"]),
        ("u", 4, item(2, name="changed", amount="3.00")),
    ]))
    assert fields(client, db, "items", "_id", "name", "amount", "payload") == [
        (1, big, Decimal128("2.00"), b"\x01"), (2, "changed", Decimal128("3.00"), None)]
    assert list(docs(client, db)[0])[:5] == ["_id", "id", "name", "amount", "payload"]  # in column order


def test_unchanged_values_are_filled_from_an_earlier_event_of_the_batch(sink, client, db):
    sink.apply(make_batch([("c", 1, item(1, name="sink value", payload="01"))]))
    sink.apply(make_batch([
        ("u", 2, item(1, name="sent in this batch", amount="1.00"), ["payload"]),
        ("u", 3, item(1, amount="2.00"), ["name", "payload"]),
        ("c", 4, item(2, name="inserted", payload="02")),
        ("u", 5, item(2, amount="5.00"), ["name", "payload"]),
    ]))
    assert fields(client, db, "items", "_id", "name", "amount", "payload") == [
        (1, "sent in this batch", Decimal128("2.00"), b"\x01"), (2, "inserted", Decimal128("5.00"), b"\x02")]


def test_key_change_takes_unchanged_values_from_the_document_of_the_old_key(sink, client, db):
    sink.apply(make_batch([("c", 1, {"id": "1", "name": "a", "doc": "big A"}),
                           ("c", 2, {"id": "7", "name": "z", "doc": "big Z"})], BLOBS))
    sink.apply(make_batch([
        ("d", 3, {"id": "1"}),
        ("c", 4, {"id": "2", "name": "a"}, ["doc"], {"id": "1"}),
        ("d", 5, {"id": "2"}),
        ("c", 6, {"id": "3", "name": "a"}, ["doc"], {"id": "2"}),
        ("d", 8, {"id": "7"}),
        ("c", 9, {"id": "8", "name": "z"}, ["doc"], {"id": "7"}),
    ], BLOBS))
    assert fields(client, db, "blobs", "_id", "name", "doc") == [(3, "a", "big A"), (8, "z", "big Z")]


def test_values_nobody_has_stop_the_batch(sink, client, db):
    sink.apply(make_batch([("c", 1, {"id": "5", "name": "other", "doc": "x"})], BLOBS))
    with pytest.raises(SinkError) as info:
        sink.apply(make_batch([
            ("u", 2, {"id": "5", "name": "other2", "doc": "y"}),
            ("d", 3, {"id": "1"}),
            ("c", 4, {"id": "2", "name": "a"}, ["doc"], {"id": "1"}),  # the sink never had key 1
        ], BLOBS))
    message = str(info.value)
    assert info.value.table == f"{db}.blobs" and "(id=2)" in message and "['doc']" in message
    assert "nothing of this batch was written" in message and "resnapshot shop --table public.blobs" in message
    assert info.value.terminal
    assert fields(client, db, "blobs", "_id", "name", "doc") == [(5, "other", "x")]
    # An update with unchanged values of a document the sink lacks is no better: it would be written with a gap.
    with pytest.raises(SinkError, match=r"\(id=9\).*\['doc'\]"):
        sink.apply(make_batch([("u", 5, {"id": "9", "name": "n"}, ["doc"])], BLOBS))


# --- MongoDB-dialect documents (a MongoDB source) -----------------------------------------------------------------


def mongo_table(name: str, *fields_: tuple[str, str]) -> TableSchema:
    """A collection of a MongoDB source as its connector declares it (documents.column_for)."""
    columns = [column_for("_id", "_id", 0), *(column_for(field, alias, n + 1) for n, (field, alias) in
                                              enumerate(fields_))]
    return TableSchema("shop", name, tuple(columns), dialect="mongodb")


def test_documents_of_a_mongodb_source_get_their_exact_bson_back(sink, client, db):
    orders = mongo_table("orders", ("n", "int"), ("big", "long"), ("price", "decimal"), ("ratio", "double"),
                         ("who", "string"), ("ok", "bool"), ("at", "date"), ("ref", "objectId"), ("u", "uuid"),
                         ("raw", "binData"), ("addr", "object"), ("tags", "array"), ("any", "mixed"))
    oid = ObjectId("65f0a1b2c3d4e5f601234567")
    row = {"_id": canonical_key(oid), "n": "7", "big": "5", "price": "10.50", "ratio": "0.25", "who": "$ann",
           "ok": "true", "at": "2024-05-01T12:00:00.25Z", "ref": str(oid), "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
           "raw": "00ff", "addr": '{"city": "Oslo", "owner": {"$oid": "65f0a1b2c3d4e5f601234568"}, "n": {"$numberLong":'
                                  ' "3"}, "a.b": {"$date": "2024-05-01T00:00:00Z"}}',
           "tags": '["x", {"$numberDecimal": "1.10"}]', "any": '"5"'}
    sink.apply(make_batch([("c", 1, row), ("c", 2, {"_id": "42", "any": "5"}),
                           ("c", 3, {"_id": '{"a":1,"b":"x"}', "n": "1"}),
                           ("c", 4, {"_id": '"42"', "who": "string key"})], orders))
    stored = {canonical_key(doc["_id"]): doc for doc in client[db]["orders"].find()}
    assert set(stored) == {canonical_key(oid), "42", '{"a":1,"b":"x"}', '"42"'}  # four keys, never collide
    doc = stored[canonical_key(oid)]
    assert doc["_id"] == oid and "id" not in doc
    assert doc["n"] == 7 and doc["big"] == Int64(5) and doc["price"] == Decimal128("10.50")
    assert doc["ratio"] == 0.25 and doc["who"] == "$ann" and doc["ok"] is True
    assert doc["at"] == dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC) and doc["ref"] == oid
    assert doc["u"] == Binary(uuid.UUID(row["u"]).bytes, 4) and doc["raw"] == b"\x00\xff"
    assert doc["addr"] == {"city": "Oslo", "owner": ObjectId("65f0a1b2c3d4e5f601234568"), "n": Int64(3),
                           "a.b": dt.datetime(2024, 5, 1, tzinfo=UTC)}
    assert doc["tags"] == ["x", Decimal128("1.10")] and doc["any"] == "5"
    project = {"_id": 0, "owner": {"$type": "$addr.owner"}, **{name: {"$type": f"${name}"} for name in ("n", "big",
                                                                                                          "ref")}}
    types = next(client[db]["orders"].aggregate([{"$match": {"_id": oid}}, {"$project": project}]))
    assert types == {"n": "int", "big": "long", "ref": "objectId", "owner": "objectId"}
    assert stored["42"]["_id"] == 42 and stored["42"]["any"] == 5
    assert stored['{"a":1,"b":"x"}']["_id"] == {"a": 1, "b": "x"} and stored['"42"']["_id"] == "42"
    # Keys MongoDB finds equal (5, 5.0, NumberLong(5)) are one document; an update by any spelling finds it.
    sink.apply(make_batch([("u", 5, {"_id": "42", "who": "updated"}), ("d", 6, {"_id": '"42"'})], orders))
    assert client[db]["orders"].find_one({"_id": 42.0})["who"] == "updated"
    assert client[db]["orders"].count_documents({}) == 3


def test_field_names_with_dots_and_dollars_round_trip(sink, client, db):
    odd = TableSchema("public", "odd.names", (
        Column("id", "integer", "integer", primary_key=True), Column("a.b", "text", "text"),
        Column("$price", "numeric", "decimal"), Column("x$y", "text", "text"), Column("$", "text", "text"),
        Column("j", "jsonb", "json"),
    ), dialect="postgresql")
    row = {"id": "1", "a.b": "dotted", "$price": "9.99", "x$y": "$literal", "$": "$$ROOT",
           "j": '{"$set": {"x.y": 1}, "$oid": "not an id", "k": "$ne"}'}
    sink.apply(make_batch([("c", 1, row), ("c", 2, {"id": "2", "a.b": "no dollar field"})], odd))
    first = client[db]["odd.names"].find_one({"_id": 1})
    assert first == {"_id": 1, "id": 1, "a.b": "dotted", "$price": Decimal128("9.99"), "x$y": "$literal",
                     "$": "$$ROOT", "j": {"$set": {"x.y": 1}, "$oid": "not an id", "k": "$ne"}, "_cdc_op": "c",
                     "_cdc_position": 1, "_cdc_ts": dt.datetime(2024, 5, 1, 8, 0, 1, tzinfo=UTC)}
    # Replacing documents that have (or get) a $-prefixed field, keeping unchanged ones, and deleting.
    sink.apply(make_batch([("u", 3, {**row, "$price": "10.00"}, ["a.b", "j"]),
                           ("u", 4, {"id": "2", "$price": "1", "a.b": "now with one"}),
                           ("c", 5, {"id": "3", "$": "x"})], odd))
    assert fields(client, db, "odd.names", "_id", "a.b", "$price", "j") == [
        (1, "dotted", Decimal128("10.00"), first["j"]), (2, "now with one", Decimal128("1"), None),
        (3, None, None, None)]
    sink.apply(make_batch([("d", 6, {"id": "1"})], odd))
    assert [doc["_id"] for doc in docs(client, db, "odd.names")] == [2, 3]


def test_a_15_mb_document_round_trips_and_a_17_mb_one_is_refused_by_key(sink, client, db):
    big = "x" * (15 * 1024 * 1024)
    sink.apply(make_batch([("c", 1, item(1, name=big)), ("c", 2, item(2, name="small"))]))
    assert len(client[db]["items"].find_one({"_id": 1})["name"]) == len(big)
    sink.apply(make_batch([("u", 3, item(1, amount="1.00"), ["name"])]))  # kept from the document, 15 MB again
    assert client[db]["items"].find_one({"_id": 1})["name"] == big
    with pytest.raises(SinkError) as info:
        sink.apply(make_batch([("u", 4, item(2, name="y" * (17 * 1024 * 1024)))]))
    message = str(info.value)
    assert "key (id=2)" in message and "16 MB" in message and "nothing of this batch was written" in message
    assert info.value.terminal
    assert client[db]["items"].find_one({"_id": 2})["name"] == "small"


# --- places, names, re-snapshot -----------------------------------------------------------------------------------


def test_the_ledger_may_live_in_another_database(mongo_server, mongo_database_factory, client, db):
    ledger_db = database_of(mongo_database_factory("ledger"))
    with MongoSink(mongo_server.url(""), sink_id="w", target_schema=db, ledger_schema=ledger_db,
                   delete_mode="soft") as sink:
        sink.apply(make_batch([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]))
        sink.apply(make_batch([("d", 3, item(1)), ("u", 4, item(2, name="b2"))]))
    assert fields(client, db, "items", "_id", "name", "_cdc_op") == [(1, "a", "d"), (2, "b2", "u")]
    assert [row[0] for row in ledger(client, ledger_db)] == ["shop:1-2", "shop:3-4"]
    assert "_cdc_ledger" not in client[db].list_collection_names()


def test_two_source_tables_into_one_collection_are_refused(sink):
    other = TableSchema("sales", "items", ITEMS.columns, dialect="postgresql")
    with pytest.raises(SinkError, match="public.items and sales.items would both load into"):
        sink.apply(make_batch([("c", 1, item(1))], extra={other: [("c", 2, item(2))]}))


def test_collections_that_differ_only_in_case_are_two(sink, client, db):
    upper = TableSchema("public", "Items", ITEMS.columns, dialect="postgresql")
    sink.apply(make_batch([("c", 1, item(1, name="lower"))], extra={upper: [("c", 2, item(1, name="upper"))]}))
    assert fields(client, db, "items", "name") == [("lower",)] and fields(client, db, "Items", "name") == [("upper",)]


def test_forget_source_and_reset_table(sink, client, db):
    sink.apply(make_batch([("c", 1, item(1)), ("c", 2, item(2))]))
    sink.apply(make_batch([("c", 3, item(1))], source_id="other"))
    assert sink.forget_source(SOURCE) == 1 and sink.high_water(SOURCE) == 0 and sink.high_water("other") == 3
    client[db]["items"].create_index("name")
    assert sink.reset_table("public.items") and client[db]["items"].count_documents({}) == 0
    assert any(index["name"] == "name_1" for index in client[db]["items"].list_indexes())  # indexes stay
    assert sink.reset_table(ITEMS) and not sink.reset_table("public.missing")


def test_an_added_column_gets_its_default_in_documents_written_before(sink, client, db):
    sink.apply(make_batch([("c", 1, item(1, name="a")), ("c", 2, item(2, name="b"))]))
    status = Column("status", "text", "text", nullable=False, ordinal=7, backfill="new")
    after = TableSchema("public", "items", (*ITEMS.columns, status), dialect="postgresql")
    sink.apply(batch_of([("u", 4, item(2, name="b2", status="open")), ("c", 5, item(3, status=None))], after,
                        schema_changes=[SchemaChange("public.items", 3, after=after, before=ITEMS)]))
    assert fields(client, db, "items", "_id", "name", "status") == [(1, "a", "new"), (2, "b2", "open"),
                                                                     (3, None, None)]


def test_a_lossy_type_change_holds_the_table_and_the_others_flow(sink, client, db):
    sink.apply(make_batch([("c", 1, item(1, name="a"))], extra={LINES: [("c", 2, {"order_id": "1", "line": "a"})]}))
    retyped = TableSchema("public", "items", tuple(
        Column("name", "integer", "integer", ordinal=2) if col.name == "name" else col for col in ITEMS.columns),
        dialect="postgresql")
    result = sink.apply(batch_of([("u", 4, item(1, name="5"))], retyped,
                                 extra={LINES: [("u", 5, {"order_id": "1", "line": "a", "qty": "3"})]},
                                 schema_changes=[SchemaChange("public.items", 3, after=retyped, before=ITEMS)]))
    assert list(result.newly_held) == ["public.items"]
    assert fields(client, db, "items", "name") == [("a",)] and fields(client, db, "order_lines", "qty") == [(3,)]
