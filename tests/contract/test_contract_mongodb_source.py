"""The contract suite with MongoDB as the source: MongoDB -> PostgreSQL (15 and 18) and MongoDB -> MongoDB.

The scenarios of ``test_contract.py`` in MongoDB's terms, against a fresh database on the private replica set
(``mongo_database_factory``), plus the MongoDB rows of EDGE_CASES.md: mixed ``_id`` types, ``$unset``, a new field,
a field whose type changes, field names with dots and dollars, deeply nested and 16 MB documents, a multi-document
transaction larger than the batch, dropped and renamed collections, and an oplog too small for the backlog. Each
scenario changes the source, runs the pipeline's own functions (:class:`~test_contract.Pair`, in-memory positions)
and compares the sink with the source document for document as Python values.

A document's expected row is what the value contract makes of it (:mod:`airflow_provider_cdc.connectors.mongodb.
documents`): ``_id`` in its canonical string form, each field in the column type the source inferred (read from the
stored position), nested values as JSON. Into a MongoDB sink the documents are compared the same way, and
``test_contract_mongodb_types.py`` checks that the sink's documents are the source's, BSON types
included.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pymongo
import pytest
from bson import Decimal128, Int64, ObjectId

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.connectors.mongodb.connection import database_of
from airflow_provider_cdc.connectors.mongodb.documents import portable
from airflow_provider_cdc.connectors.registry import make_source
from airflow_provider_cdc.errors import CdcError, PositionLostError
from airflow_provider_cdc.pipeline import TablesHeldError
from airflow_provider_cdc.schema.policy import SchemaPolicy
from airflow_provider_cdc.tables import Column, TableSchema
from airflow_provider_cdc.values import parse_value
from contract.pairs import SinkUnderTest, mongodb_sink, normalise, postgres_sink
from contract.test_contract import Pair

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.parametrize(("sink_kind", "pg_server"), [("postgresql", "pg15"), ("postgresql", "pg18"),
                                                         ("mongodb", "pg15")],
                            indirect=["pg_server"], ids=["postgresql-pg15", "postgresql-pg18", "mongodb"]),
]

UTC = dt.timezone.utc


def expected_value(doc: dict[str, Any], column: Column) -> Any:
    """What the sink must hold for ``column`` of ``doc``: the value contract's form, as a Python value."""
    value = doc.get(column.name)
    text = portable(value, column.source_type)
    if text is None:
        return None
    return normalise(parse_value(text, column.logical_type), column)


class MongoPair(Pair):
    """A MongoDB source database and one sink (:class:`Pair` with pymongo instead of SQL)."""

    source_type = "mongodb"
    policy: SchemaPolicy | None = None
    factory: Callable[..., MongoPair] | None = None

    def __init__(self, source_url: str, sink: SinkUnderTest, **kwargs: Any) -> None:
        self.source_schema = database_of(source_url)
        self.client: pymongo.MongoClient = pymongo.MongoClient(source_url, tz_aware=True)
        self.db = self.client[self.source_schema]
        super().__init__(source_url, sink, **kwargs)

    def close(self) -> None:
        super().close()
        self.client.close()

    def sql(self, statement: str, params: Any = None) -> None:
        raise NotImplementedError("a MongoDB pair changes its source through self.db")

    def columns(self, table: str) -> list[Column]:
        """The columns the source inferred for ``table`` (from the stored position)."""
        entry = (self.positions.get(self.source_id) or {})["schemas"][self.table(table)]
        return list(TableSchema.from_dict(entry["table"]).columns)

    def source_rows(self, table: str, columns: list[Column]) -> list[dict[str, Any]]:
        return [{c.name: expected_value(doc, c) for c in columns} for doc in self.db[table].find()]

    def sink_rows(self, table: str, columns: list[Column] | None = None) -> list[dict[str, Any]]:
        columns = columns or self.columns(table)
        if self.under_test.name == "mongodb":  # documents again: read them as the source's are read
            docs = [d for d in self.under_test.raw(self.target_schema, table) if d.get("_cdc_deleted_at") is None]
            return [{c.name: expected_value(doc, c) for c in columns} for doc in docs]
        return self.under_test.read(self.target_schema, table, columns, True)

    def assert_same(self, table: str) -> int:
        columns = self.columns(table)
        expected = sorted(self.source_rows(table, columns), key=repr)
        got = sorted(self.sink_rows(table, columns), key=repr)
        assert got == expected, f"{self.under_test.name} {table}: sink differs from source"
        return len(expected)

    def run_with(self, policy: SchemaPolicy) -> int:
        """:meth:`run` under a schema policy other than the default."""
        loaded = 0
        ahead = pipeline.CaptureAhead(self.source, self.config.batch_size)  # as a fused loop runs
        for _ in range(20):
            summary = pipeline.run_fused(self.source, self.sink, self.positions, max_changes=self.config.batch_size,
                                         policy=policy, ahead=ahead)
            loaded += summary["change_count"]
            if summary["change_count"] == 0 and "snapshot" not in (self.positions.get(self.source_id) or {}):
                ahead.settle()  # the last acknowledgement, as the loop's end does it
                return loaded
        raise AssertionError("the source did not drain in 20 runs")


@pytest.fixture
def sink_under_test(request, sink_kind, pg_database_factory) -> SinkUnderTest:
    if sink_kind == "mongodb":  # the sink writes into the database named by target_schema (it creates it)
        return mongodb_sink(request.getfixturevalue("mongo_server").url(""))
    return postgres_sink(pg_database_factory("contract_sink"))


@pytest.fixture
def pair_factory(mongo_database_factory, sink_under_test) -> Iterator[Callable[..., MongoPair]]:
    made: list[MongoPair] = []

    def make(*, tables: list[str] | None = None, **kwargs: Any) -> MongoPair:
        pair = MongoPair(mongo_database_factory("contract_src"), sink_under_test,
                         tables=tables or ["items", "orders"], **kwargs)
        made.append(pair)
        return pair

    yield make
    for pair in made:
        pair.close()


@pytest.fixture
def pair(pair_factory) -> MongoPair:
    made = pair_factory()
    made.factory = pair_factory
    return made


def pair_with_policy(pair: MongoPair, policy: SchemaPolicy) -> MongoPair:
    """Another pair (fresh source database and target schema) that runs under ``policy``."""
    other = pair.factory()
    other.policy = policy
    return other


# ----------------------------------------------------------------------------------------------------- scenarios


def test_snapshot_then_stream_with_unset_replace_and_delete(pair):
    pair.db.items.insert_many([{"_id": i, "name": f"item {i}", "qty": i, "tags": ["a", str(i)]} for i in range(1, 51)])
    assert pair.run() == 50
    pair.db.items.update_many({"_id": {"$lte": 10}}, {"$inc": {"qty": 1}})
    pair.db.items.update_one({"_id": 11}, {"$unset": {"name": ""}})
    pair.db.items.replace_one({"_id": 12}, {"name": "replaced"})
    pair.db.items.delete_many({"_id": {"$gt": 45}})
    pair.db.items.insert_one({"_id": 100, "name": "new", "qty": 1})
    assert pair.run() == 18
    assert pair.assert_same("items") == 46
    row = {r["_id"]: r for r in pair.sink_rows("items")}
    assert row["11"]["name"] is None and row["12"]["qty"] is None and row["12"]["name"] == "replaced"


def test_replaying_a_batch_is_a_no_op(pair):
    pair.db.items.insert_many([{"_id": i, "qty": i} for i in range(5)])
    pair.run()
    pair.db.items.update_one({"_id": 1}, {"$set": {"qty": 100}})
    batch = pair.capture()
    first = pipeline.load_batch(batch, pair.sink)
    again = pipeline.load_batch(batch, pair.sink)
    assert first["applied"] is True and again["applied"] is False
    assert pair.sink.has_batch(batch.batch_id) and pair.sink.high_water(pair.source_id) == batch.seq_to
    pipeline.commit_position(pair.source, pair.sink, pair.positions, batch_id=batch.batch_id,
                             position_to=batch.position_to, needs_ledger=True)
    assert pair.assert_same("items") == 5
    assert pair.run() == 0


def test_the_same_position_captures_the_same_batch(pair):
    """Deterministic capture: a re-captured range has the same batch id and seq numbers (what a replay relies on)."""
    pair.run()
    pair.db.items.insert_one({"_id": 1, "qty": 1})
    pair.db.items.update_one({"_id": 1}, {"$set": {"qty": 2}})
    pair.db.orders.insert_one({"_id": "x"})
    first = pair.capture()
    again = pair.capture()
    assert (again.batch_id, again.seq_from, again.seq_to) == (first.batch_id, first.seq_from, first.seq_to)
    assert again.tables[pair.table("items")].equals(first.tables[pair.table("items")])


def test_a_multi_document_transaction_larger_than_the_batch_stays_whole(pair_factory):
    pair = pair_factory(batch_size=10)
    pair.db.items.insert_one({"_id": 0, "qty": 0})
    pair.run()
    with pair.client.start_session() as session, session.start_transaction():
        pair.db.items.insert_many([{"_id": i, "qty": i} for i in range(1, 26)], session=session)
        pair.db.orders.insert_one({"_id": "o1", "item": 1}, session=session)
    pair.db.items.insert_one({"_id": 99, "qty": 99})
    batch = pair.capture()
    counts = batch.counts()
    assert counts[pair.table("items")]["c"] == 25 and counts[pair.table("orders")]["c"] == 1
    tx_ids = set(batch.tables[pair.table("items")].column("_cdc_tx_id").to_pylist())
    assert len(tx_ids) == 1 and None not in tx_ids
    pipeline.load_batch(batch, pair.sink)
    pipeline.commit_position(pair.source, pair.sink, pair.positions, batch_id=batch.batch_id,
                             position_to=batch.position_to, needs_ledger=True)
    pair.run()
    assert pair.assert_same("items") == 27
    assert pair.assert_same("orders") == 1


def test_mixed_id_types_are_distinct_keys(pair):
    pair.db.items.insert_many([
        {"_id": 5, "v": "int"}, {"_id": "5", "v": "string"}, {"_id": ObjectId("65a1f0000000000000000005"), "v": "oid"},
        {"_id": {"a": 5}, "v": "doc"}, {"_id": 5.5, "v": "double"}, {"_id": Decimal128("6.10"), "v": "decimal"},
    ])
    pair.run()
    pair.db.items.update_one({"_id": Int64(5)}, {"$set": {"v": "int updated"}})  # 5 and NumberLong(5): one key
    pair.db.items.delete_one({"_id": "5"})
    pair.run()
    assert pair.assert_same("items") == 5
    keys = {r["_id"]: r["v"] for r in pair.sink_rows("items")}
    assert keys == {"5": "int updated", '{"$oid":"65a1f0000000000000000005"}': "oid", '{"a":5}': "doc",
                    "5.5": "double", "6.1": "decimal"}


def test_a_new_field_adds_a_column(pair):
    pair.db.items.insert_many([{"_id": i, "qty": i} for i in range(3)])
    pair.run()
    pair.db.items.insert_one({"_id": 3, "qty": 3, "color": "red"})
    pair.db.items.update_one({"_id": 1}, {"$set": {"color": "blue"}})
    pair.run()
    assert pair.assert_same("items") == 4
    rows = {r["_id"]: r for r in pair.sink_rows("items")}
    assert rows["3"]["color"] == "red" and rows["1"]["color"] == "blue" and rows["0"]["color"] is None


def test_integers_meeting_a_double_widen_to_decimal_as_the_policy_allows(pair):
    """An integer field that meets a fraction becomes decimal (exact for both). BACKWARD (Avro: no int -> decimal
    promotion) holds the table until accepted; compatibility NONE follows it at once."""
    pair.db.items.insert_many([{"_id": i, "qty": i} for i in range(3)])
    pair.run()
    pair.db.items.update_one({"_id": 1}, {"$set": {"qty": 1.25}})
    with pytest.raises(TablesHeldError, match=r"qty type int -> decimal"):
        pair.run()
    pair.db.orders.insert_one({"_id": 1})
    other = pair.run()  # the other collections keep flowing while items is held
    assert other == 1 and pair.assert_same("orders") == 1
    follows = pair_with_policy(pair, SchemaPolicy(mode="evolve", compatibility="NONE"))
    follows.db.items.insert_many([{"_id": i, "qty": i} for i in range(3)])
    follows.run_with(follows.policy)
    follows.db.items.update_one({"_id": 1}, {"$set": {"qty": 1.25}})
    follows.run_with(follows.policy)
    assert follows.assert_same("items") == 3
    assert str({r["_id"]: r for r in follows.sink_rows("items")}["1"]["qty"]) == "1.25"


def test_a_field_that_changes_type_holds_only_its_table(pair):
    pair.db.items.insert_many([{"_id": i, "qty": i} for i in range(3)])
    pair.db.orders.insert_one({"_id": 1, "total": 5})
    pair.run()
    pair.db.items.insert_one({"_id": 3, "qty": "three"})  # integer column meets a string: mixed (json)
    pair.db.orders.insert_one({"_id": 2, "total": 6})
    with pytest.raises(TablesHeldError, match="items"):
        pair.run()
    assert pair.assert_same("orders") == 2


def test_field_names_with_dots_dollars_and_unicode(pair):
    pair.db.items.insert_one({"_id": 1, "a.b": 1, "$price": 2, "Ünïcode name": "x", "select": "reserved"})
    pair.run()
    pair.db.items.update_one({"_id": 1}, {"$set": {"Ünïcode name": "y"}})
    pair.run()
    assert pair.assert_same("items") == 1
    row = pair.sink_rows("items")[0]
    assert row["a.b"] == 1 and row["$price"] == 2 and row["Ünïcode name"] == "y"


def test_deeply_nested_and_16_mb_documents(pair):
    nested: dict[str, Any] = {"leaf": 1}
    for _ in range(97):
        nested = {"n": nested}
    pair.db.items.insert_one({"_id": 1, "deep": nested})
    pair.db.items.insert_one({"_id": 2, "big": "x" * (15 * 1024 * 1024)})
    pair.run()
    assert pair.assert_same("items") == 2
    pair.db.items.update_one({"_id": 2}, {"$set": {"small": 1}})
    pair.run()
    assert pair.assert_same("items") == 2


def test_a_dropped_collection_empties_its_table_and_a_new_one_flows(pair):
    pair.db.items.insert_many([{"_id": i} for i in range(3)])
    pair.db.orders.insert_one({"_id": 1})
    pair.run()
    pair.db.items.drop()
    pair.db.orders.insert_one({"_id": 2})
    pair.run()
    assert pair.sink_rows("items") == []
    pair.db.items.insert_one({"_id": 10, "again": True})
    pair.run()
    assert pair.assert_same("items") == 1
    assert pair.assert_same("orders") == 2


def test_a_collection_renamed_onto_a_captured_name_is_snapshotted_again(pair):
    pair.db.items.insert_many([{"_id": i, "v": "old"} for i in range(3)])
    pair.run()
    pair.db.items_new.insert_many([{"_id": i, "v": "new"} for i in range(2, 6)])
    pair.db.items_new.rename("items", dropTarget=True)  # the cut-over of an offline rebuild
    pair.run()
    assert pair.assert_same("items") == 4


def test_a_collection_added_to_the_config_later_gets_its_snapshot(pair_factory):
    pair = pair_factory(tables=["items"])
    pair.db.items.insert_one({"_id": 1})
    pair.db.orders.insert_many([{"_id": i} for i in range(4)])
    pair.run()
    pair.source.close()
    pair.config = pair.config.model_copy(update={"tables": ["items", "orders"]})
    pair.source = make_source(pair.config, pair.url)
    pair.db.orders.insert_one({"_id": 10})
    pair.run()
    assert pair.assert_same("orders") == 5
    assert pair.assert_same("items") == 1


def test_a_whole_database_is_captured_with_collections_created_later(pair_factory):
    pair = pair_factory(tables=["*"])
    pair.db.items.insert_one({"_id": 1})
    pair.run()
    pair.db.later.insert_many([{"_id": i} for i in range(3)])
    pair.run()
    assert pair.assert_same("items") == 1
    assert pair.assert_same("later") == 3


def roll_oplog_past(client: pymongo.MongoClient, cluster_time: list[int], timeout: float = 60.0) -> None:
    """Write into another collection until the oplog no longer holds ``cluster_time`` (mongod truncates its oplog
    at checkpoints, so the server runs with --syncdelay 1)."""
    import time

    from bson import Timestamp

    deadline = time.monotonic() + timeout
    filler = "y" * 10_000
    written = 0
    while time.monotonic() < deadline:
        client.filler.other.insert_many([{"f": filler} for _ in range(200)])
        written += 200
        oldest = client.local.oplog.rs.find_one(sort=[("$natural", 1)])["ts"]
        if oldest > Timestamp(*cluster_time):
            return
        time.sleep(0.2)
    raise AssertionError(f"the oplog still holds {cluster_time} after {written} writes")


def test_an_oplog_too_small_for_the_backlog_is_a_lost_position_naming_resnapshot(sink_under_test, tmp_path):
    from conftest import start_private_mongod

    server = start_private_mongod(tmp_path / "db", oplog_mb=1, extra_args=["--syncdelay", "1"])
    try:
        pair = MongoPair(server.url("oplog_src"), sink_under_test, tables=["items"])
        try:
            pair.db.items.insert_one({"_id": 1})
            pair.run()
            stored = pair.positions.get(pair.source_id)
            pair.db.items.insert_one({"_id": 2})
            roll_oplog_past(pair.client, stored["cluster_time"])
            with pytest.raises(PositionLostError, match="ChangeStreamHistoryLost.*resnapshot"):
                pair.run()
            assert pair.positions.get(pair.source_id) == stored
            with pytest.raises(PositionLostError, match="resnapshot"):
                pair.source.has_changes(stored)
        finally:
            pair.close()
    finally:
        server.stop()


def test_a_position_from_another_replica_set_is_lost_not_skipped(pair):
    pair.db.items.insert_one({"_id": 1})
    pair.run()
    stored = pair.positions.get(pair.source_id)
    pair.positions.set(pair.source_id, {**stored, "set_name": "elsewhere"}, batch_id=None)
    with pytest.raises(PositionLostError, match=r"another replica set.*resnapshot"):
        pair.run()


def test_a_lost_position_variable_is_recovered_from_the_sink_ledger(pair, caplog):
    pair.db.items.insert_many([{"_id": i, "qty": i} for i in range(5)])
    pair.run()
    pair.db.items.update_one({"_id": 1}, {"$set": {"qty": 10}})
    pair.run()
    pair.positions.delete(pair.source_id)  # the Variable deleted by hand
    pair.db.items.insert_one({"_id": 5, "qty": 5})
    pair.db.items.delete_one({"_id": 2})
    with caplog.at_level("WARNING", logger="airflow_provider_cdc"):
        assert pair.run() == 2  # only the changes after the ledger's last batch: no snapshot again, nothing twice
    assert "resuming from the ledger" in caplog.text
    assert pair.assert_same("items") == 5


def test_names_that_differ_only_in_case_or_need_quoting_stay_distinct(pair_factory):
    pair = pair_factory(tables=["Users", "users", 'we"ird coll ü'])
    pair.db.Users.insert_one({"_id": 1, "Name": "upper", "name": "lower", "select": 1})
    pair.db.users.insert_one({"_id": 1, "name": "other collection"})
    pair.db['we"ird coll ü'].insert_one({"_id": "x'; DROP TABLE users; --", "v": 1})
    pair.run()
    assert pair.assert_same("Users") == 1 and pair.assert_same("users") == 1 and pair.assert_same('we"ird coll ü') == 1
    row = pair.sink_rows("Users")[0]
    assert (row["Name"], row["name"]) == ("upper", "lower")


def test_a_name_too_long_for_the_sink_stops_before_anything_is_cut(pair, sink_kind):
    long_field = "f" * 70  # MongoDB allows it; PostgreSQL would cut it to 63 bytes
    pair.db.items.insert_one({"_id": 1, long_field: 1, long_field[:63] + "x": 2})
    if sink_kind == "mongodb":
        pair.run()
        assert pair.assert_same("items") == 1
        return
    with pytest.raises(CdcError, match=r"is 70 bytes long; PostgreSQL names hold 63 bytes"):
        pair.run()
    assert pair.positions.get(pair.source_id) is None or "snapshot" in pair.positions.get(pair.source_id)


def test_an_update_without_its_document_keeps_the_fields_it_did_not_change(pair_factory):
    """full_document whenAvailable on a collection without post-images: updates carry only what they set, and the
    sink keeps every other field (never NULL, never a placeholder); with post-images enabled they are whole."""
    pair = pair_factory(options={"full_document": "whenAvailable"})
    pair.db.items.insert_many([{"_id": i, "name": f"n{i}", "big": "x" * 100_000, "qty": i} for i in range(3)])
    pair.run()
    pair.db.items.update_one({"_id": 1}, {"$set": {"qty": 100}})
    pair.db.items.update_one({"_id": 2}, {"$unset": {"name": ""}})
    pair.run()
    assert pair.assert_same("items") == 3
    pair.db.command("collMod", "items", changeStreamPreAndPostImages={"enabled": True})
    pair.db.items.update_one({"_id": 0}, {"$set": {"doc": {"a": 1}}})
    pair.db.items.update_one({"_id": 0}, {"$set": {"doc.a": 2}})  # nested: needs the post-image, which is there
    pair.run()
    assert pair.assert_same("items") == 3
