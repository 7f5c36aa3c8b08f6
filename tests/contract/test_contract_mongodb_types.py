"""MongoDB's BSON types through the contract pairs of ``test_contract_mongodb_source.py``: into PostgreSQL as typed
columns, and into MongoDB as the same documents with the same BSON types. Apart from that module because each
concerns one kind of sink (its module runs every scenario on every sink)."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
import pytest
from bson import Binary, Decimal128, Int64, ObjectId

from airflow_provider_cdc.connectors.mongodb.documents import canonical_key
from contract.test_contract_mongodb_source import pair, pair_factory, sink_under_test  # noqa: F401 - the fixtures

pytestmark = pytest.mark.timeout(300)

UTC = dt.timezone.utc


@pytest.mark.parametrize(("sink_kind", "pg_server"), [("postgresql", "pg15"), ("postgresql", "pg18")],
                         indirect=["pg_server"], ids=["postgresql-pg15", "postgresql-pg18"])
def test_bson_types_reach_postgresql_typed(pair):  # noqa: F811 - the imported fixture
    oid = ObjectId()
    when = dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
    pair.db.items.insert_one({
        "_id": 1, "price": Decimal128("12345678901234567890.123456789"), "at": when, "blob": Binary(b"\x00\xff", 0),
        "u": Binary.from_uuid(uuid.UUID("12345678-1234-5678-1234-567812345678")), "ref": oid, "big": Int64(2 ** 40),
        "f": 1.5, "ok": True, "doc": {"a": [1, {"b": oid}], "when": when}, "text": "héllo ✓",
    })
    pair.run()
    assert pair.assert_same("items") == 1

    with psycopg.connect(pair.under_test.location) as conn:
        types = dict(conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s"
            " AND table_name = 'items'", (pair.target_schema,)).fetchall())
        price, at, ref, doc = conn.execute(
            f'SELECT price, at, ref, doc FROM "{pair.target_schema}".items').fetchone()
    assert types["price"] == "numeric" and types["at"] == "timestamp with time zone" and types["doc"] == "jsonb"
    assert types["blob"] == "bytea" and types["u"] == "uuid" and types["big"] == "bigint"
    assert str(price) == "12345678901234567890.123456789"
    assert at == when
    assert ref == str(oid)
    assert doc == {"a": [1, {"b": {"$oid": str(oid)}}], "when": {"$date": "2024-05-01T12:00:00.250Z"}}


@pytest.mark.parametrize(("sink_kind", "pg_server"), [("mongodb", "pg15")], indirect=["pg_server"], ids=["mongodb"])
def test_mongodb_to_mongodb_keeps_every_bson_type(pair):  # noqa: F811 - the imported fixture
    oid = ObjectId()
    when = dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
    docs = [
        {"_id": oid, "n": 1, "big": Int64(2 ** 40), "small": Int64(7), "f": 1.5, "d": Decimal128("1.50"), "at": when,
         "ok": False, "bin": Binary(b"\x00\xff", 0), "u": Binary.from_uuid(uuid.UUID(int=1)), "ref": ObjectId(),
         "doc": {"a": [1, {"b": oid, "c": Decimal128("2.5"), "when": when}], "n": Int64(5)}, "s": "$not an operator"},
        {"_id": "text key", "n": 2},
        {"_id": {"region": "eu", "num": Int64(3)}, "n": 3},
        {"_id": Decimal128("6.10"), "n": 4},
    ]
    pair.db.items.insert_many(docs)
    pair.run()
    pair.db.items.update_one({"_id": oid}, {"$unset": {"f": ""}, "$set": {"doc.a.0": 9}})
    pair.run()
    # Keys compare as MongoDB compares them (Decimal128("6.10") comes back as Decimal128("6.1"): the same key).
    stored = {canonical_key(d["_id"]): {k: v for k, v in d.items() if not k.startswith("_cdc_") and v is not None}
              for d in pair.under_test.raw(pair.target_schema, "items")}
    source = {canonical_key(d["_id"]): d for d in pair.db.items.find()}
    assert stored.keys() == source.keys() and len(stored) == 4
    first, copy = source[canonical_key(oid)], stored[canonical_key(oid)]
    assert copy == first
    assert {k: type(v) for k, v in copy.items()} == {k: type(v) for k, v in first.items()}
    # Inside documents: ObjectId, Decimal128 and dates keep their types through relaxed Extended JSON; a small long
    # is a plain number there, so it comes back as an int (the same value).
    assert type(copy["doc"]["a"][1]["b"]) is ObjectId and type(copy["doc"]["a"][1]["c"]) is Decimal128
    assert copy["doc"]["n"] == 5
