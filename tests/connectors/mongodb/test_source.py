"""The MongoDB source on a real replica set (mongod 6.0.5): snapshot and stream converging, every kind of change,
transactions, positions (idle, lost, foreign), DDL, whole databases, inferred schemas, awkward documents, the probe."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from bson import Binary, Decimal128, Int64, ObjectId, Timestamp
from cdc_testing import unique_id

from airflow_provider_cdc.connectors.mongodb.connection import connect, database_of
from airflow_provider_cdc.connectors.mongodb.documents import canonical_key
from airflow_provider_cdc.connectors.mongodb.options import MongoSourceOptions
from airflow_provider_cdc.connectors.mongodb.probe import MongoChangeProbe
from airflow_provider_cdc.connectors.mongodb.source import MongoSource
from airflow_provider_cdc.connectors.mongodb.stream import PartialUpdateError, apply_update, rebuildable, token_time
from airflow_provider_cdc.errors import PositionLostError, TableRefusedError
from airflow_provider_cdc.events import BEFORE_PREFIX, ChangeBatch, ChangeEvent

pytestmark = pytest.mark.timeout(180)

# Short idle waits keep the suite fast; events already written are read by the first getMore regardless.
IDLE_MS = 100


class Capture:
    """A source and its position, captured batch after batch (what the pipeline does, minus the sink)."""

    def __init__(self, url: str, tables: list[str], *, snapshot: str = "initial", **options: Any) -> None:
        self.url = url
        self.db = database_of(url)
        options.setdefault("idle_wait_ms", IDLE_MS)
        self.tables = [t if "." in t else f"{self.db}.{t}" for t in tables]
        self.source = MongoSource(url, source_id=unique_id("mg"), tables=self.tables, snapshot=snapshot,
                                  options=MongoSourceOptions(**options))
        self.source.prepare()
        self.position = self.source.initial_position()
        self.batches: list[ChangeBatch] = []

    def name(self, coll: str) -> str:
        return f"{self.db}.{coll}"

    def next(self, max_changes: int = 10_000) -> ChangeBatch:
        batch = self.source.capture(self.position, max_changes)
        self.position = batch.position_to
        self.batches.append(batch)
        return batch

    def events(self, max_changes: int = 10_000) -> list[ChangeEvent]:
        return list(self.next(max_changes).events())

    def drain(self, max_changes: int = 10_000, limit: int = 100) -> list[ChangeBatch]:
        """Batches until one is empty with no snapshot left."""
        out = []
        for _ in range(limit):
            batch = self.next(max_changes)
            out.append(batch)
            if batch.is_empty and "snapshot" not in self.position:
                return out
        raise AssertionError("the source never drained")


@pytest.fixture
def db(mongo_database: str) -> Iterator[tuple[str, Any]]:
    """The URL of a fresh database and a handle on it."""
    with connect(mongo_database) as client:
        yield mongo_database, client[database_of(mongo_database)]


def row_ops(events: list[ChangeEvent]) -> list[tuple[str, str | None]]:
    """(op, _id) of every row event, in seq order."""
    return [(e.op, (e.after or e.before or {}).get("_id")) for e in events if e.op != "s"]


def replay(batches: list[ChangeBatch], table: str) -> dict[str, dict[str, str | None]]:
    """Each key's final state after every batch's events in order (the sink's job, minus the sink)."""
    state: dict[str, dict[str, str | None]] = {}
    for batch in batches:
        for event in batch.events():
            if event.table != table:
                continue
            if event.op == "t":
                state.clear()
            elif event.op == "d":
                state.pop(event.before["_id"], None)
            elif event.op in "cur":
                merged = dict(state.get(event.after["_id"], {}))
                merged.update({k: v for k, v in event.after.items() if k not in event.unchanged})
                state[event.after["_id"]] = merged
    return state


def seqs_of(batches: list[ChangeBatch]) -> list[int]:
    return [e.seq for b in batches for e in b.events()]


# --- snapshot and stream --------------------------------------------------------------------------------------------


def test_snapshot_pages_are_bounded_and_converge_with_the_stream(db):
    url, database = db
    database.users.insert_many([{"_id": i, "v": f"v{i}"} for i in range(30)])
    cap = Capture(url, ["users"])
    name = cap.name("users")
    assert cap.position["snapshot"] == {"pending": [name], "after": None}
    assert cap.position["resume_token"] and cap.position["set_name"] == "rs0" and cap.position["seq"] == 0

    # Before the snapshot starts: both changes are dropped (the snapshot reads them).
    database.users.update_one({"_id": 2}, {"$set": {"v": "early2"}})
    database.users.update_one({"_id": 25}, {"$set": {"v": "early25"}})
    first = cap.next(8)
    events = list(first.events())
    assert first.change_count <= 8
    assert events[0].op == "s"
    reads = [(e.op, e.after["_id"], e.after["v"]) for e in events if e.op != "s"]
    assert reads == [("r", str(i), "early2" if i == 2 else f"v{i}") for i in range(6)]
    assert cap.position["snapshot"]["pending"] == [name]

    # The snapshot passed 3, not 20: the change of 3 is kept, the one of 20 dropped (its page reads it).
    database.users.update_one({"_id": 3}, {"$set": {"v": "late3"}})
    database.users.update_one({"_id": 20}, {"$set": {"v": "late20"}})
    database.users.delete_one({"_id": 4})
    database.users.delete_one({"_id": 21})
    database.users.insert_one({"_id": 100, "v": "new"})
    second = cap.next(8)
    ops = row_ops(list(second.events()))
    assert second.change_count <= 8
    assert ("u", "3") in ops and ("d", "4") in ops
    assert not any(key in ("20", "21", "100") for op, key in ops if op != "r")
    while True:  # more writes on both sides of the snapshot's progress, batch after batch
        database.users.update_one({"_id": 1}, {"$set": {"v": f"again{len(cap.batches)}"}})
        database.users.update_one({"_id": 29}, {"$set": {"v": f"again{len(cap.batches)}"}})
        batch = cap.next(8)
        assert batch.change_count <= 8
        if "snapshot" not in cap.position:
            break
    cap.drain(8)
    expected = {canonical_key(d["_id"]): d["v"] for d in database.users.find()}
    assert {k: v["v"] for k, v in replay(cap.batches, name).items()} == expected
    assert "early25" in expected.values() and "late20" in expected.values()
    seqs = seqs_of(cap.batches)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_mixed_id_types_are_all_snapshotted_and_distinct(db):
    url, database = db
    ids: list[Any] = [5, "5", ObjectId(), {"a": 1, "b": 2}, {"b": 2, "a": 1}, Decimal128("2.50"), 7.5, Int64(2 ** 40),
                      "abc", True, dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc), -3, {"a": 0}]
    database.mixed.insert_many([{"_id": i, "n": n} for n, i in enumerate(ids)])
    cap = Capture(url, ["mixed"])
    cap.drain(2)  # pages of one (the stream takes the other half): every page boundary crosses types
    keys = [e.after["_id"] for b in cap.batches for e in b.events() if e.op == "r"]
    assert sorted(keys) == sorted(canonical_key(i) for i in ids)
    assert len(set(keys)) == len(ids)
    assert canonical_key("5") in keys and "5" in keys and "2.5" in keys


def test_stream_changes_of_mixed_id_types_are_kept_or_dropped_by_the_snapshot_s_progress(db):
    url, database = db
    ids: list[Any] = [-3, 5, 7.5, "5", "abc", {"a": 0}, {"a": 1, "b": 2}, ObjectId(), True]  # the _id index order
    database.mixed.insert_many([{"_id": i, "v": 0} for i in ids])
    cap = Capture(url, ["mixed"])
    cap.next(4)  # the first page: the 4 lowest keys, of three BSON types
    passed = {e.after["_id"] for e in cap.batches[0].events() if e.op == "r"}
    assert passed == {canonical_key(i) for i in ids[:4]}
    database.mixed.update_many({}, {"$inc": {"v": 1}})
    batch = cap.next(18)
    updated = {key for op, key in row_ops(list(batch.events())) if op == "u"}
    assert updated == passed
    cap.drain()
    final = {k: v["v"] for k, v in replay(cap.batches, cap.name("mixed")).items()}
    assert final == {canonical_key(i): "1" for i in ids}


def test_a_collection_with_a_collation_is_paged_in_its_own_order(db):
    url, database = db
    database.create_collection("names", collation={"locale": "en", "strength": 2})
    keys = ["a", "B", "c", "D", "e", "F"]  # binary order would be B D F a c e
    database.names.insert_many([{"_id": k, "v": 0} for k in keys])
    cap = Capture(url, ["names"])
    cap.next(3)  # the first page: a, B, c (three, as the stream half was empty)
    database.names.update_many({}, {"$inc": {"v": 1}})
    batch = cap.next(12)
    assert sorted(key for op, key in row_ops(list(batch.events())) if op == "u") == ['"B"', '"a"', '"c"']
    cap.drain()
    reads = [e.after["_id"] for b in cap.batches for e in b.events() if e.op == "r"]
    assert reads == [f'"{k}"' for k in keys]
    assert {k: v["v"] for k, v in replay(cap.batches, cap.name("names")).items()} == {f'"{k}"': "1" for k in keys}


def test_collections_of_two_databases(mongo_database_factory):
    first, second = mongo_database_factory(), mongo_database_factory()
    with connect(first) as client:
        one, two = client[database_of(first)], client[database_of(second)]
        one.users.insert_one({"_id": 1})
        cap = Capture(first, ["users", f"{two.name}.orders"])
        assert cap.next().tables.keys() == {cap.name("users")}
        two.orders.insert_one({"_id": 1})
        two.other.insert_one({"_id": 1})
        one.users.insert_one({"_id": 2})
        events = cap.events()
        assert [(e.op, e.table) for e in events if e.op != "s"] == [("c", f"{two.name}.orders"),
                                                                    ("c", cap.name("users"))]
        assert cap.source.has_changes(cap.position) is False


# --- document changes -----------------------------------------------------------------------------------------------


def test_insert_update_replace_delete_and_unset(db):
    url, database = db
    cap = Capture(url, ["users"], snapshot="never")
    database.users.insert_one({"_id": 1, "name": "ann", "age": 30, "tags": ["a", "b"]})
    database.users.update_one({"_id": 1}, {"$set": {"age": 31}, "$unset": {"tags": ""}})
    events = cap.events()  # read before the next write: updateLookup reads the document as it is now
    assert [e.op for e in events] == ["s", "c", "u"]
    insert, update = events[1:]
    assert insert.after == {"_id": "1", "name": "ann", "age": "30", "tags": '["a", "b"]'}
    assert insert.source.table == "users" and insert.source.schema == cap.db and insert.source.position
    assert update.after == {"_id": "1", "name": "ann", "age": "31", "tags": None}  # $unset: NULL
    database.users.replace_one({"_id": 1}, {"name": "ann b"})
    (replace,) = cap.events()
    assert replace.op == "u" and replace.after == {"_id": "1", "name": "ann b", "age": None, "tags": None}
    database.users.delete_one({"_id": 1})
    (delete,) = cap.events()
    assert delete.op == "d" and delete.after is None and delete.before["_id"] == "1"
    assert seqs_of(cap.batches) == list(range(1, 6))
    assert cap.events() == []


def test_every_bson_type_reads_the_same_through_the_snapshot_and_the_stream(db):
    url, database = db
    values = {"i": 7, "l": Int64(2 ** 40), "f": 1.5, "nan": float("nan"), "dec": Decimal128("12.3400"),
              "s": "é 😀", "b": True, "d": dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=dt.timezone.utc),
              "o": ObjectId("0123456789abcdef01234567"), "u": Binary.from_uuid(uuid.UUID(int=7)),
              "bin": Binary(b"\x00\xff", 0), "doc": {"x": [1, {"y": Decimal128("1.0")}]}, "arr": ["a", 1],
              "ts": Timestamp(1700000000, 1), "n": None}
    database.types.insert_one({"_id": "snap", **values})
    cap = Capture(url, ["types"])
    cap.drain()
    database.types.insert_one({"_id": "stream", **values})
    cap.drain()
    rows = {e.after["_id"]: e.after for b in cap.batches for e in b.events() if e.op in "rc"}
    snap, stream = rows['"snap"'], rows['"stream"']
    assert {k: v for k, v in snap.items() if k != "_id"} == {k: v for k, v in stream.items() if k != "_id"}
    assert snap == {"_id": '"snap"', "i": "7", "l": "1099511627776", "f": "1.5", "nan": "NaN", "dec": "12.3400",
                    "s": "é 😀", "b": "true", "d": "2024-05-01T12:00:00.25Z", "o": "0123456789abcdef01234567",
                    "u": "00000000-0000-0000-0000-000000000007", "bin": "00ff",
                    "doc": '{"x": [1, {"y": {"$numberDecimal": "1.0"}}]}', "arr": '["a", 1]',
                    "ts": '{"$timestamp": {"t": 1700000000, "i": 1}}'}  # "n" is always null: no column
    types = {c.name: c.logical_type for c in cap.batches[0].schemas[cap.name("types")].columns}
    assert types == {"_id": "text", "i": "integer", "l": "integer", "f": "float", "nan": "float", "dec": "decimal",
                     "s": "text", "b": "boolean", "d": "timestamptz", "o": "text", "u": "uuid", "bin": "binary",
                     "doc": "json", "arr": "json", "ts": "json"}


def test_capturing_the_same_position_again_gives_the_same_events(db):
    url, database = db
    cap = Capture(url, ["users"], snapshot="never")
    start = cap.position
    database.users.insert_one({"_id": 1, "v": 1})
    database.users.update_one({"_id": 1}, {"$set": {"v": 2}})
    first, again = cap.source.capture(start, 100), cap.source.capture(start, 100)
    assert [e.to_dict() for e in first.events()] == [e.to_dict() for e in again.events()]
    assert first.position_to["seq"] == again.position_to["seq"] == 3


def test_pre_images_give_before_columns(db):
    url, database = db
    database.create_collection("users", changeStreamPreAndPostImages={"enabled": True})
    cap = Capture(url, ["users"], snapshot="never")
    database.users.insert_one({"_id": 1, "name": "ann", "age": 30})
    database.users.update_one({"_id": 1}, {"$set": {"age": 31}})
    database.users.delete_one({"_id": 1})
    batch = cap.next()
    table = batch.tables[cap.name("users")]
    assert BEFORE_PREFIX + "age" in table.column_names
    rows = table.to_pylist()
    assert [(r["_cdc_op"], r[BEFORE_PREFIX + "age"], r["age"]) for r in rows] == [("c", None, "30"), ("u", "30", "31"),
                                                                                 ("d", "31", None)]
    assert rows[2][BEFORE_PREFIX + "name"] == "ann"


def test_a_pre_image_rebuilds_an_update_whose_document_is_gone(db):
    url, database = db
    database.create_collection("users", changeStreamPreAndPostImages={"enabled": True})
    database.users.insert_one({"_id": 1, "name": "ann", "tags": ["a", "b", "c"], "o": {"k": 1, "x": 0}})
    cap = Capture(url, ["users"])
    cap.drain()
    database.users.update_one({"_id": 1}, {"$set": {"o.k": 2, "tags.0": "z"}, "$unset": {"o.x": ""}})
    database.users.update_one({"_id": 1}, {"$pop": {"tags": 1}})
    database.users.delete_one({"_id": 1})
    events = cap.events()
    assert [e.op for e in events] == ["u", "u", "d"]
    assert events[0].after == {"_id": "1", "name": "ann", "tags": '["z", "b", "c"]', "o": '{"k": 2}'}
    assert events[0].before["o"] == '{"k": 1, "x": 0}'
    assert events[1].after["tags"] == '["z", "b"]'


REBUILT_UPDATES: list[Any] = [
    {"$set": {"arr.5.x": 1}}, {"$set": {"arr.1": 9}}, {"$pop": {"arr": 1}}, {"$push": {"arr": {"$each": [7, 8]}}},
    {"$pull": {"arr": 9}}, {"$unset": {"arr.0": ""}}, {"$set": {"o.new.deep": 1}}, {"$inc": {"o.n": 1}},
    {"$rename": {"o": "p"}}, {"$push": {"arr": {"$each": [1, 2, 3], "$slice": -2}}}, {"$set": {"o2": {"1": "a"}}},
    {"$set": {"o2.1": "b"}}, [{"$set": {"arr": {"$slice": ["$arr", 1]}}}], [{"$unset": "p"}],
    {"$set": {"nested.list": [[1, 2], [3]]}}, {"$set": {"nested.list.0.1": 9}}, {"$push": {"nested.list.1": 4}},
    {"$set": {"arr.10": 1}}, {"$currentDate": {"when": True}},
]


def test_rebuilt_updates_equal_the_server_s_post_images(db):
    """apply_update (pre-image + update description) against what mongod itself computed."""
    url, database = db
    database.create_collection("pp", changeStreamPreAndPostImages={"enabled": True})
    database.pp.insert_one({"_id": 1, "arr": [1, 2], "o": {"n": 1}})
    with database.pp.watch(full_document="required", full_document_before_change="required") as stream:
        for update in REBUILT_UPDATES:
            database.pp.update_one({"_id": 1}, update)
            event = stream.next()
            before, description = event["fullDocumentBeforeChange"], event["updateDescription"]
            assert rebuildable(before, description)
            assert apply_update(before, description) == event["fullDocument"], (update, description)


def test_an_ambiguous_dotted_path_is_not_rebuilt(db):
    """mongod 6.0 sends no disambiguatedPaths: an update of the field "a.b" reads like one of a.b."""
    url, database = db
    database.create_collection("users", changeStreamPreAndPostImages={"enabled": True})
    database.users.insert_one({"_id": 1, "a.b": 1, "a": {"b": 1}})
    cap = Capture(url, ["users"])
    cap.drain()
    database.users.update_one({"_id": 1}, [{"$replaceWith": {"$setField": {
        "field": {"$literal": "a.b"}, "input": "$$ROOT", "value": 2}}}])
    database.users.delete_one({"_id": 1})
    events = cap.events()
    assert [e.op for e in events] == ["d", "d"]  # the document is gone: the update is its delete


def test_required_post_images_that_are_missing_stop_clearly(db):
    url, database = db
    database.users.insert_one({"_id": 1, "v": 1})
    cap = Capture(url, ["users"], snapshot="never", full_document="required")
    database.users.update_one({"_id": 1}, {"$set": {"v": 2}})
    with pytest.raises(PartialUpdateError, match="changeStreamPreAndPostImages") as stopped:
        cap.next()
    assert stopped.value.terminal


def test_an_update_of_a_document_deleted_since_is_a_delete(db):
    url, database = db
    cap = Capture(url, ["users"], snapshot="never")
    database.users.insert_one({"_id": 1, "v": 1})
    database.users.update_one({"_id": 1}, {"$set": {"v": 2}})
    database.users.delete_one({"_id": 1})
    assert row_ops(cap.events()) == [("c", "1"), ("d", "1"), ("d", "1")]


def test_when_available_without_post_images_gives_partial_rows_or_stops_on_nested_paths(db):
    url, database = db
    cap = Capture(url, ["users"], snapshot="never", full_document="whenAvailable")
    database.users.insert_one({"_id": 1, "name": "ann", "age": 30, "a": {"b": 0}})
    database.users.update_one({"_id": 1}, {"$set": {"age": 31}, "$unset": {"name": ""}})
    events = cap.events()
    update = events[-1]
    assert update.op == "u"
    assert update.after["_id"] == "1" and update.after["age"] == "31" and update.after["name"] is None
    assert update.unchanged == {"a"}
    database.users.update_one({"_id": 1}, {"$set": {"a.b": 1}})
    with pytest.raises(PartialUpdateError, match=r"a\.b.*resnapshot"):
        cap.next()


# --- transactions ---------------------------------------------------------------------------------------------------


def test_a_transaction_larger_than_the_batch_stays_whole(db, mongo_server):
    url, database = db
    cap = Capture(url, ["users", "orders"], snapshot="never")
    database.users.insert_one({"_id": "before"})
    with database.client.start_session() as session, session.start_transaction():
        for i in range(12):
            database.users.insert_one({"_id": i}, session=session)
            database.orders.insert_one({"_id": i, "user": i}, session=session)
    database.users.insert_one({"_id": "after"})
    first = cap.next(5)
    assert first.change_count == 25  # one single insert, then the whole transaction
    txs = [e.source.tx_id for e in first.events() if e.op == "c"]
    assert txs[0] is None and len(set(txs[1:])) == 1 and txs[1] is not None
    second = cap.next(5)
    assert row_ops(list(second.events())) == [("c", '"after"')]
    assert cap.next(5).is_empty
    assert seqs_of(cap.batches) == list(range(1, cap.position["seq"] + 1))


# --- positions ------------------------------------------------------------------------------------------------------


def test_the_position_advances_while_idle(db):
    url, database = db
    cap = Capture(url, ["users"], snapshot="never")
    database.users.insert_one({"_id": 1})
    cap.next()
    before = cap.position["resume_token"]
    database.other.insert_many([{"x": i} for i in range(50)])
    batch = cap.next()
    assert batch.is_empty
    assert token_time(cap.position["resume_token"]) > token_time(before)
    assert cap.position["cluster_time"] == token_time(cap.position["resume_token"])
    assert cap.source.has_changes(cap.position) is False
    database.users.insert_one({"_id": 2})
    assert cap.source.has_changes(cap.position) is True
    assert row_ops(cap.events()) == [("c", "2")]


def test_an_oplog_that_rolled_over_is_a_lost_position(tmp_path):
    from conftest import start_private_mongod

    # mongod truncates its oplog only behind a checkpoint (every 60 s by default): checkpoint every second.
    server = start_private_mongod(tmp_path / "db", oplog_mb=1, extra_args=["--syncdelay", "1"])
    try:
        url = server.url("shop")
        with connect(url) as client:
            client.shop.users.insert_one({"_id": 1})
            cap = Capture(url, ["users"], snapshot="never")
            cap.next()
            taken = token_time(cap.position["resume_token"])
            blob = "x" * 100_000
            for _ in range(300):  # well over 1 MB elsewhere, until the oplog no longer holds the position
                client.shop.noise.insert_many([{"blob": blob} for _ in range(10)])
                oldest = client.local["oplog.rs"].find_one(sort=[("$natural", 1)])["ts"]
                if (oldest.time, oldest.inc) > taken:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("the 1 MB oplog never rolled over")
            with pytest.raises(PositionLostError, match="resnapshot") as lost:
                cap.next()
            assert "ChangeStreamHistoryLost" in str(lost.value)
            with pytest.raises(PositionLostError, match="resnapshot"):
                cap.source.has_changes(cap.position)
            cap.source.close()
    finally:
        server.stop()


def test_a_position_from_another_replica_set_is_lost(db):
    url, database = db
    cap = Capture(url, ["users"], snapshot="never")
    foreign = {**cap.position, "set_name": "elsewhere"}
    with pytest.raises(PositionLostError, match="another replica set.*resnapshot"):
        cap.source.capture(foreign, 10)
    with pytest.raises(PositionLostError, match="resnapshot"):
        cap.source.has_changes(foreign)


# --- DDL ------------------------------------------------------------------------------------------------------------


def test_drop_and_rename_away_truncate(db):
    url, database = db
    database.users.insert_one({"_id": 1})
    database.orders.insert_one({"_id": 1})
    cap = Capture(url, ["users", "orders"])
    cap.drain()
    database.users.drop()
    database.orders.rename("orders_old")
    events = cap.events()
    assert [(e.op, e.table) for e in events] == [("t", cap.name("users")), ("t", cap.name("orders"))]
    database.users.insert_one({"_id": 2})  # a collection of the dropped name flows again
    assert row_ops(cap.events()) == [("c", "2")]


def test_a_rename_onto_a_captured_name_resnapshots_it(db):
    url, database = db
    database.users.insert_one({"_id": "old"})
    cap = Capture(url, ["users", "orders"])
    cap.drain()
    database.staging.insert_many([{"_id": i, "v": i} for i in range(5)])
    database.orders.insert_many([{"_id": i} for i in range(3)])  # the stream's events fill most of the batch
    database.staging.rename("users", dropTarget=True)
    batch = cap.next(4)
    name = cap.name("users")
    assert row_ops(list(batch.events()))[:4] == [("c", "0"), ("c", "1"), ("c", "2"), ("t", None)]
    assert batch.change_count <= 4  # the queued snapshot gets what the stream left of the batch
    assert cap.position["snapshot"]["pending"] == [name]
    cap.drain(4)
    assert replay(cap.batches, name).keys() == {str(i) for i in range(5)}
    reads = [e.after["_id"] for b in cap.batches for e in b.events() if e.op == "r" and e.table == name]
    assert reads[-5:] == [str(i) for i in range(5)]


def test_drop_database_truncates_and_capture_goes_on_after_the_invalidate(db):
    url, database = db
    database.users.insert_one({"_id": 1})
    database.orders.insert_one({"_id": 1})
    cap = Capture(url, ["users", "orders"])
    cap.drain()
    database.client.drop_database(database.name)
    events = cap.events()
    assert {(e.op, e.table) for e in events} == {("t", cap.name("users")), ("t", cap.name("orders"))}
    database.users.insert_one({"_id": 2})
    ops: list[tuple[str, str | None]] = []
    for _ in range(3):  # the batch after the invalidate may end at it
        ops += row_ops(cap.events())
    assert ops == [("c", "2")]


def test_index_and_collmod_changes_change_nothing(db):
    url, database = db
    database.users.insert_one({"_id": 1, "v": 1})
    cap = Capture(url, ["users"])
    cap.drain()
    database.users.create_index("v")
    database.command("collMod", "users", changeStreamPreAndPostImages={"enabled": True})
    database.users.drop_index("v_1")
    assert cap.next().is_empty
    database.users.insert_one({"_id": 2, "v": 2})
    assert row_ops(cap.events()) == [("c", "2")]


def test_a_whole_database_captures_collections_created_later(db):
    url, database = db
    database.users.insert_one({"_id": 1})
    cap = Capture(url, [f"{database.name}.*"])
    assert cap.position["tables"] == [cap.name("users")]
    cap.drain()
    database.invoices.insert_many([{"_id": 1, "total": 5}, {"_id": 2, "total": 7}])
    cap.drain()
    assert replay(cap.batches, cap.name("invoices")) == {"1": {"_id": "1", "total": "5"},
                                                         "2": {"_id": "2", "total": "7"}}
    assert cap.position["tables"] == [cap.name("invoices"), cap.name("users")]


# --- inferred schemas -----------------------------------------------------------------------------------------------


def test_a_new_field_is_a_schema_change_before_its_first_document(db):
    url, database = db
    cap = Capture(url, ["users"], snapshot="never")
    database.users.insert_one({"_id": 1, "n": 1})
    cap.next()
    database.users.insert_one({"_id": 2, "n": 2, "email": "b@x"})
    database.users.insert_one({"_id": 3, "n": 3, "email": "c@x"})
    events = cap.events()
    assert [e.op for e in events] == ["s", "c", "c"]
    batch = cap.batches[-1]
    change = batch.schema_changes[0]
    assert change.before is not None and change.before.column_names == ["_id", "n"]
    assert change.after.column_names == ["_id", "n", "email"]
    assert [c.name for c in change.added_columns] == ["email"]
    assert events[0].seq < events[1].seq


def test_types_widen_int_to_decimal_and_to_mixed(db):
    url, database = db
    cap = Capture(url, ["users"], snapshot="never")
    database.users.insert_one({"_id": 1, "price": 5, "code": 5})
    cap.next()
    database.users.insert_one({"_id": 2, "price": 2.5, "code": "abc"})
    batch = cap.next()
    schema = batch.schemas[cap.name("users")]
    types = {c.name: (c.source_type, c.logical_type) for c in schema.columns}
    assert types["price"] == ("decimal", "decimal") and types["code"] == ("mixed", "json")
    assert [e.op for e in batch.events()] == ["s", "c"]
    database.users.insert_one({"_id": 3, "price": 7, "code": 5})
    rows = [e.after for e in cap.events()]
    assert rows == [{"_id": "3", "price": "7", "code": "5"}]
    database.users.insert_one({"_id": 4, "code": "abc"})
    assert [e.after["code"] for e in cap.events()] == ['"abc"']


def test_field_names_with_dots_and_dollars_become_columns(db):
    url, database = db
    cap = Capture(url, ["users"], snapshot="never")
    database.users.insert_one({"_id": 1, "a.b": 1, "$price": Decimal128("9.90"), "nested": {"x.y": {"$z": 1}}})
    database.users.update_one({"_id": 1}, [{"$replaceWith": {"$setField": {"field": {"$literal": "$price"},
                                                                            "input": "$$ROOT",
                                                                            "value": Decimal128("10.00")}}}])
    events = cap.events()
    assert events[1].after == {"_id": "1", "a.b": "1", "$price": "9.90", "nested": '{"x.y": {"$z": 1}}'}
    assert events[2].after["$price"] == "10.00"


def test_a_reserved_field_name_stops_the_table(db):
    url, database = db
    cap = Capture(url, ["users"], snapshot="never")
    database.users.insert_one({"_id": 1, "_cdc_x": 1})
    with pytest.raises(TableRefusedError, match="_cdc_x") as refused:
        cap.next()
    assert refused.value.table == cap.name("users")


def test_a_view_is_refused_before_anything_is_read(db):
    url, database = db
    database.users.insert_one({"_id": 1})
    database.command("create", "active_users", viewOn="users", pipeline=[])
    source = MongoSource(url, source_id=unique_id("mg"), tables=[f"{database.name}.active_users"])
    with pytest.raises(TableRefusedError, match="active_users.*view"):
        source.prepare()


# --- awkward documents ----------------------------------------------------------------------------------------------


def nested(levels: int) -> dict[str, Any]:
    """A document ``levels`` deep (itself included): {"_id": ..., "d": {"d": ... {"leaf": 1}}}."""
    inner: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 2):
        inner = {"d": inner}
    return {"_id": f"deep{levels}", "d": inner}


def test_a_15_mb_document_and_deeply_nested_ones_are_captured_whole(db):
    url, database = db
    # Pre-images on: a 15 MB document's update event with both images (31 MB) is more than mongod can send.
    database.create_collection("docs", changeStreamPreAndPostImages={"enabled": True})
    big = "x" * (15 * 1024 * 1024)
    database.docs.insert_one({"_id": "snap", "big": big})
    database.docs.insert_one(nested(100))
    cap = Capture(url, ["docs"])
    cap.drain()
    database.docs.insert_one({"_id": "stream", "big": big})
    database.docs.insert_one(nested(180))  # the deepest document mongod 6.0 stores
    database.docs.update_one({"_id": "stream"}, {"$set": {"small": 1}})
    database.docs.update_one({"_id": "snap"}, {"$set": {"small": 2}})
    database.docs.delete_one({"_id": "snap"})
    assert cap.source.has_changes(cap.position) is True
    events = [e for batch in cap.drain(3) for e in batch.events() if e.op != "s"]
    assert row_ops(events) == [("c", '"stream"'), ("c", '"deep180"'), ("u", '"stream"'), ("u", '"snap"'),
                               ("d", '"snap"')]
    # 31 MB with both images: read without them (the document as it is now, no before-image).
    assert events[2].before is None and len(events[2].after["big"]) == len(big)
    # The document is gone, the pre-image is 15 MB: the update is rebuilt from it.
    assert len(events[3].before["big"]) == len(big) and events[3].after["small"] == "2"
    state = replay(cap.batches, cap.name("docs"))
    assert state.keys() == {'"stream"', '"deep100"', '"deep180"'}
    assert len(state['"stream"']["big"]) == len(big) and state['"stream"']["small"] == "1"
    for levels in (100, 180):
        text = state[f'"deep{levels}"']["d"]
        assert text.count('{"d": ') == levels - 2 and text.endswith('{"leaf": 1}' + "}" * (levels - 2))


# --- the probe ------------------------------------------------------------------------------------------------------


def test_the_probe_agrees_with_has_changes_and_reports_a_heartbeat_once(db):
    url, database = db
    cap = Capture(url, ["users"], snapshot="never")
    cap.next()
    probe = MongoChangeProbe(url, source_id=cap.source.source_id, tables=cap.tables)

    async def check() -> None:
        try:
            assert await probe.has_changes_after(cap.position) is False
            assert cap.source.has_changes(cap.position) is False
            database.users.insert_one({"_id": 1})
            assert await probe.has_changes_after(cap.position) is True
            assert cap.source.has_changes(cap.position) is True
            cap.next()
            database.other.insert_one({"_id": 1})  # the resume point moves past the position
            assert await probe.has_changes_after(cap.position) is False
            await probe.heartbeat()
            assert await probe.has_changes_after(cap.position) is True
            assert await probe.has_changes_after(cap.position) is False
            assert await probe.has_changes_after(None) is True
        finally:
            await probe.aclose()

    asyncio.run(check())
