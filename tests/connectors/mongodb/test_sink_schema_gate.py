"""The schema gate in the MongoDB sink, on a real mongod 6.0.5: every schema change under every policy mode (the
documents, the registry and the held tables afterwards), held changes kept in the sink, ``accept_table`` replaying
them exactly once, ``release_table`` discarding them, and the holds that are the sink's own (a key whose documents
cannot follow, a default the change stream does not carry)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from bson import Decimal128
from cdc_testing import Event, batch_of

from airflow_provider_cdc.connectors.mongodb import sink_storage
from airflow_provider_cdc.connectors.mongodb.connection import database_of
from airflow_provider_cdc.connectors.mongodb.sink import MongoSink
from airflow_provider_cdc.connectors.mongodb.sink_storage import Bookkeeping
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.schema import SchemaPolicy
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema

SOURCE = "shop"
DOCS_SUBJECT = "shop.app.docs"
OTHERS_SUBJECT = "shop.app.others"

BASE = TableSchema("app", "docs", (
    Column("id", "integer", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("title", "text", "text", ordinal=2),
    Column("qty", "integer", "integer", ordinal=3),
    Column("total", "bigint", "integer", ordinal=4),
), dialect="postgresql")
OTHERS = TableSchema("app", "others", (
    Column("id", "integer", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("v", "text", "text", ordinal=2),
), dialect="postgresql")
BASE_ROWS = [{"id": 1, "title": "a", "qty": 1, "total": 10}, {"id": 2, "title": "b", "qty": 2, "total": 20}]
MODES = ("evolve", "lenient", "ignore", "stop")


def changed(*added: Column, drop: Sequence[str] = (), retype: dict[str, tuple[str, str]] | None = None,
            rename: dict[str, str] | None = None) -> TableSchema:
    """``BASE`` after an ALTER TABLE at the source (a rename keeps the ordinal, a retype is (type, logical))."""
    columns = []
    for col in BASE.columns:
        if col.name in drop:
            continue
        if retype and col.name in retype:
            col = dataclasses.replace(col, source_type=retype[col.name][0], logical_type=retype[col.name][1])
        if rename and col.name in rename:
            col = dataclasses.replace(col, name=rename[col.name])
        columns.append(col)
    return dataclasses.replace(BASE, columns=(*columns, *added))


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The docs collection after the change (its documents' source fields; ``None``: held, unchanged) and the status
    of the change's version."""

    status: str
    rows: list[dict[str, Any]] | None = None

    @property
    def held(self) -> bool:
        return self.status == "held"


HELD = Outcome("held")


@dataclasses.dataclass(frozen=True)
class Scenario:
    after: TableSchema
    events: list[dict[str, str | None]]  # the docs rows of the batch after the change: an update of 2, an insert of 3
    outcomes: dict[str, Outcome]


def rows_of(*rows: tuple[Any, ...], names: Sequence[str] = ("id", "title", "qty", "total")) -> list[dict[str, Any]]:
    """Documents' fields from tuples (None: the field is absent, as a NULL is)."""
    return [{name: value for name, value in zip(names, row) if value is not None} for row in rows]


ADDED_NOTE = Column("note", "text", "text", ordinal=5)
ADDED_STATUS = Column("status", "varchar(10)", "text", nullable=False, ordinal=5, backfill="new")
ADDED_CODE = Column("code", "text", "text", nullable=False, ordinal=5)
UNCHANGED_ROWS = rows_of((1, "a", 1, 10), (2, "b2", 2, 20), (3, "c", 3, 30))
WITH_NOTE = ("id", "title", "qty", "total", "note")

SCENARIOS: dict[str, Scenario] = {
    "add nullable column": Scenario(
        changed(ADDED_NOTE),
        [{"id": "2", "title": "b2", "qty": "2", "total": "20", "note": "n2"},
         {"id": "3", "title": "c", "qty": "3", "total": "30", "note": "n3"}],
        {
            "evolve": Outcome("applied", rows_of((1, "a", 1, 10), (2, "b2", 2, 20, "n2"), (3, "c", 3, 30, "n3"),
                                                 names=WITH_NOTE)),
            "lenient": Outcome("applied", rows_of((1, "a", 1, 10), (2, "b2", 2, 20, "n2"), (3, "c", 3, 30, "n3"),
                                                  names=WITH_NOTE)),
            "ignore": Outcome("ignored", UNCHANGED_ROWS),
            "stop": HELD,
        },
    ),
    "add NOT NULL column with a default": Scenario(
        changed(ADDED_STATUS),
        [{"id": "2", "title": "b2", "qty": "2", "total": "20", "status": "open"},
         {"id": "3", "title": "c", "qty": "3", "total": "30", "status": "new"}],
        {
            # The document already in the sink gets the default (the source wrote nothing for its row).
            "evolve": Outcome("applied", rows_of((1, "a", 1, 10, "new"), (2, "b2", 2, 20, "open"),
                                                 (3, "c", 3, 30, "new"), names=("id", "title", "qty", "total",
                                                                                "status"))),
            "lenient": Outcome("applied", rows_of((1, "a", 1, 10, "new"), (2, "b2", 2, 20, "open"),
                                                  (3, "c", 3, 30, "new"), names=("id", "title", "qty", "total",
                                                                                 "status"))),
            "ignore": Outcome("ignored", UNCHANGED_ROWS),
            "stop": HELD,
        },
    ),
    "add NOT NULL column without a default": Scenario(
        changed(ADDED_CODE),
        [{"id": "2", "title": "b2", "qty": "2", "total": "20", "code": "x2"},
         {"id": "3", "title": "c", "qty": "3", "total": "30", "code": "x3"}],
        {
            "evolve": HELD,  # BACKWARD: the new schema cannot read older rows (no value for code)
            "lenient": Outcome("applied", rows_of((1, "a", 1, 10), (2, "b2", 2, 20, "x2"), (3, "c", 3, 30, "x3"),
                                                  names=("id", "title", "qty", "total", "code"))),
            "ignore": Outcome("ignored", UNCHANGED_ROWS),
            "stop": HELD,
        },
    ),
    "drop a column": Scenario(
        changed(drop=["qty"]),
        [{"id": "2", "title": "b2", "total": "20"}, {"id": "3", "title": "c", "total": "30"}],
        {
            # evolve follows the drop: the field leaves every document, the old ones too.
            "evolve": Outcome("applied", rows_of((1, "a", None, 10), (2, "b2", None, 20), (3, "c", None, 30))),
            "lenient": Outcome("applied", rows_of((1, "a", 1, 10), (2, "b2", None, 20), (3, "c", None, 30))),
            "ignore": Outcome("ignored", rows_of((1, "a", 1, 10), (2, "b2", None, 20), (3, "c", None, 30))),
            "stop": HELD,
        },
    ),
    "rename a column": Scenario(
        changed(rename={"title": "headline"}),
        [{"id": "2", "headline": "b2", "qty": "2", "total": "20"},
         {"id": "3", "headline": "c", "qty": "3", "total": "30"}],
        {
            # evolve renames the field in the documents already there.
            "evolve": Outcome("applied", rows_of((1, "a", 1, 10), (2, "b2", 2, 20), (3, "c", 3, 30),
                                                 names=("id", "headline", "qty", "total"))),
            "lenient": Outcome("applied", rows_of((1, None, 1, 10, "a"), (2, "b2", 2, 20), (3, "c", 3, 30),
                                                  names=("id", "headline", "qty", "total", "title"))),
            "ignore": Outcome("ignored", rows_of((1, "a", 1, 10), (2, None, 2, 20), (3, None, 3, 30))),
            "stop": HELD,
        },
    ),
    "widen int to bigint": Scenario(
        changed(retype={"qty": ("bigint", "integer")}),
        [{"id": "2", "title": "b2", "qty": "9000000000", "total": "20"},
         {"id": "3", "title": "c", "qty": "3", "total": "30"}],
        {
            "evolve": Outcome("applied", rows_of((1, "a", 1, 10), (2, "b2", 9000000000, 20), (3, "c", 3, 30))),
            "lenient": Outcome("applied", rows_of((1, "a", 1, 10), (2, "b2", 9000000000, 20), (3, "c", 3, 30))),
            "ignore": HELD,  # the sink follows its own schema, whose int cannot hold what the source now writes
            "stop": HELD,
        },
    ),
    "narrow bigint to int": Scenario(
        changed(retype={"total": ("integer", "integer")}),
        [{"id": "2", "title": "b2", "qty": "2", "total": "21"}, {"id": "3", "title": "c", "qty": "3", "total": "30"}],
        {
            "evolve": HELD,
            "lenient": HELD,
            "ignore": Outcome("ignored", rows_of((1, "a", 1, 10), (2, "b2", 2, 21), (3, "c", 3, 30))),
            "stop": HELD,
        },
    ),
    "text to int": Scenario(
        changed(retype={"title": ("integer", "integer")}),
        [{"id": "2", "title": "5", "qty": "2", "total": "20"}, {"id": "3", "title": "6", "qty": "3", "total": "30"}],
        {"evolve": HELD, "lenient": HELD, "ignore": HELD, "stop": HELD},
    ),
}


# --- helpers ------------------------------------------------------------------------------------------------------


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


def documents(client: Any, db: str, collection: str = "docs") -> list[dict[str, Any]]:
    """The collection's documents, their source fields only (no ``_id``, no bookkeeping), by key."""
    return [{name: value for name, value in doc.items() if name != "_id" and not name.startswith("_cdc_")}
            for doc in client[db][collection].find(sort=[("_id", 1)])]


def ledger_versions(client: Any, db: str, batch_id: str) -> dict[str, Any]:
    rows = list(client[db]["_cdc_ledger"].find({"_id": batch_id}))
    assert len(rows) == 1, f"{batch_id}: {len(rows)} ledger rows"
    return rows[0]["schema_versions"]


def statuses(sink: MongoSink, subject: str = DOCS_SUBJECT) -> list[tuple[int, str]]:
    return [(version.version, version.status) for version in sink.schema_versions(SOURCE) if version.subject == subject]


def first_batch(sink: MongoSink, policy: SchemaPolicy, base: TableSchema = BASE,
                rows: Sequence[dict[str, str | None]] | None = None) -> None:
    """Rows 1 and 2 of docs, row 1 of others (seq 1-3): version 1 of each subject."""
    docs = rows or [{"id": "1", "title": "a", "qty": "1", "total": "10"},
                    {"id": "2", "title": "b", "qty": "2", "total": "20"}]
    result = sink.apply(batch_of([("c", 1 + n, row) for n, row in enumerate(docs)], base,
                                 extra={OTHERS: [("c", 3, {"id": "1", "v": "one"})]}), policy=policy)
    assert result.applied and result.held_tables == {}


def change_batch(after: TableSchema, events: Sequence[dict[str, str | None]], *, before: TableSchema = BASE,
                 batch_id: str | None = None) -> ChangeBatch:
    """The schema change at seq 4, then ``events`` (an update and an insert, seq 5-6), and others row 2 at seq 7."""
    change = SchemaChange("app.docs", 4, after=after, before=before)
    docs: list[Event] = [("u" if row["id"] in ("1", "2") else "c", 5 + n, row) for n, row in enumerate(events)]
    return batch_of(docs, after, extra={OTHERS: [("c", 7, {"id": "2", "v": "two"})]}, schema_changes=[change],
                    batch_id=batch_id)


def hold_with(sink: MongoSink, mode: str = "stop", scenario: str = "add nullable column") -> ChangeBatch:
    """Apply the first batch and a change that holds docs under ``mode``; returns the batch that held it."""
    policy = SchemaPolicy(mode=mode)  # type: ignore[arg-type]
    first_batch(sink, policy)
    batch = change_batch(SCENARIOS[scenario].after, SCENARIOS[scenario].events)
    result = sink.apply(batch, policy=policy)
    assert list(result.newly_held) == ["app.docs"]
    return batch


# --- every change under every mode -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_schema_change_under_each_mode(sink, client, db, name, mode):
    scenario = SCENARIOS[name]
    expected = scenario.outcomes[mode]
    policy = SchemaPolicy(mode=mode)  # type: ignore[arg-type]
    first_batch(sink, policy)
    batch = change_batch(scenario.after, scenario.events)
    result = sink.apply(batch, policy=policy)

    assert result.applied and result.schema_changes == 1
    # The other table of the batch flows whatever happens to docs.
    assert documents(client, db, "others") == [{"id": 1, "v": "one"}, {"id": 2, "v": "two"}]
    assert statuses(sink, OTHERS_SUBJECT) == [(1, "applied")]
    assert statuses(sink) == [(1, "applied"), (2, expected.status)]
    note = ledger_versions(client, db, batch.batch_id)["changes"]
    assert [(n["subject"], n["version"], n["mode"], n["outcome"]) for n in note] == [
        (DOCS_SUBJECT, 2, mode, expected.status)]
    if expected.held:
        reason = result.held_tables["app.docs"]
        assert result.newly_held == {"app.docs": reason} and sink.held_tables(SOURCE) == {"app.docs": reason}
        assert f"mode {mode}" in reason and f"schema accept {DOCS_SUBJECT}" in reason
        assert "resnapshot shop --table app.docs" in reason
        assert note[0]["reason"] in reason
        assert result.schema_versions == {DOCS_SUBJECT: 1, OTHERS_SUBJECT: 1}
        # Nothing of docs changed; its changes wait in the sink.
        assert documents(client, db) == BASE_ROWS
        chunks = sink.held_changes(SOURCE, "app.docs")
        assert [(c.batch_id, c.seq_from, c.seq_to, c.rows) for c in chunks] == [(batch.batch_id, 4, 6, 2)]
        assert chunks[0].schema == scenario.after and [c.seq for c in chunks[0].changes] == [4]
    else:
        assert result.held_tables == {} and sink.held_tables(SOURCE) == {}
        assert "reason" not in note[0]
        assert result.schema_versions == {DOCS_SUBJECT: 2, OTHERS_SUBJECT: 1}
        assert documents(client, db) == expected.rows
        assert sink.held_changes(SOURCE, "app.docs") == []


def test_a_widened_column_stores_the_new_type_and_keeps_the_old_values(sink, client, db):
    """A collection has no column type to migrate: the value written after a change has the new BSON type."""
    first_batch(sink, SchemaPolicy())
    scenario = SCENARIOS["widen int to bigint"]
    sink.apply(change_batch(scenario.after, scenario.events))
    types = {doc["_id"]: doc["t"] for doc in client[db]["docs"].aggregate([{"$project": {"t": {"$type": "$qty"}}}])}
    assert types == {1: "int", 2: "long", 3: "int"}
    assert isinstance(client[db]["docs"].find_one({"_id": 2})["qty"], int)


def test_a_drop_alone_in_its_batch_removes_the_field(sink, client, db):
    first_batch(sink, SchemaPolicy())
    batch = change_batch(SCENARIOS["drop a column"].after, [])
    batch.tables.pop("app.docs")
    batch.schemas.pop("app.docs")
    assert sink.apply(batch).applied
    assert documents(client, db) == rows_of((1, "a", None, 10), (2, "b", None, 20))
    assert statuses(sink) == [(1, "applied"), (2, "applied")]


def test_a_rename_and_an_add_with_names_that_are_not_paths(sink, client, db):
    """Renames and defaults reach the server as $literal names: a dotted or $-prefixed name is one field."""
    base = TableSchema("app", "odd", (Column("id", "integer", "integer", primary_key=True, ordinal=1),
                                      Column("a.b", "text", "text", ordinal=2)), dialect="postgresql")
    after = TableSchema("app", "odd", (Column("id", "integer", "integer", primary_key=True, ordinal=1),
                                       Column("$c.d", "text", "text", ordinal=2),
                                       Column("$e", "numeric", "decimal", ordinal=3, backfill="1.50")),
                        dialect="postgresql")
    sink.apply(batch_of([("c", 1, {"id": "1", "a.b": "x"})], base))
    sink.apply(batch_of([("c", 3, {"id": "2", "$c.d": "y", "$e": "2"})], after,
                        schema_changes=[SchemaChange("app.odd", 2, after=after, before=base)]))
    assert documents(client, db, "odd") == [{"id": 1, "$c.d": "x", "$e": Decimal128("1.50")},
                                            {"id": 2, "$c.d": "y", "$e": Decimal128("2")}]


def test_versions_store_the_schema_the_source_and_the_sink_follow(sink):
    policy = SchemaPolicy(mode="lenient")
    first_batch(sink, policy)
    sink.apply(change_batch(SCENARIOS["rename a column"].after, SCENARIOS["rename a column"].events), policy=policy)
    first, second = [version for version in sink.schema_versions(SOURCE) if version.subject == DOCS_SUBJECT]
    assert (first.table, first.sink_table, first.seq, first.batch_id) == (BASE, BASE, 1, "shop:1-3")
    assert second.table == SCENARIOS["rename a column"].after and second.mode == "lenient" and second.seq == 4
    assert [col.name for col in second.sink_table.columns] == ["id", "headline", "qty", "total", "title"]
    assert second.compatibility is not None and second.compatibility["compatible"]
    # Read back, a version is the same version: applying the same schema again registers nothing new.
    again = sink.apply(batch_of([("u", 8, {"id": "1", "headline": "a2"})], SCENARIOS["rename a column"].after),
                       policy=policy)
    assert again.applied and statuses(sink) == [(1, "applied"), (2, "applied")]


def test_a_version_reads_back_exactly_whatever_its_defaults(sink, client, db):
    """A decimal default of 0 is the byte 0 in Avro's JSON ("\\u0000"): stored, read back, the version is the same
    version, so the same schema is never registered twice."""
    price = Column("price", "numeric(12,2)", "decimal", nullable=False, ordinal=5, backfill="0.00", precision=12,
                   scale=2)
    after = changed(price)
    first_batch(sink, SchemaPolicy())
    sink.apply(change_batch(after, [{"id": "2", "title": "b2", "price": "2.50"}]))
    stored = [version for version in sink.schema_versions(SOURCE) if version.subject == DOCS_SUBJECT][-1]
    assert stored.schema["fields"][-1]["default"] == "\x00"
    # Document 1 was there before the column: it holds the default.
    assert documents(client, db) == [{"id": 1, "title": "a", "qty": 1, "total": 10, "price": Decimal128("0.00")},
                                     {"id": 2, "title": "b2", "price": Decimal128("2.50")}]
    assert sink.apply(batch_of([("u", 8, {"id": "1", "title": "a", "price": "1.00"})], after, schema_changes=[
        SchemaChange("app.docs", 8, after=after, before=after)])).applied
    assert statuses(sink) == [(1, "applied"), (2, "applied")]


def test_the_ledger_row_names_the_change_the_mode_and_the_reason(sink, client, db):
    batch = hold_with(sink, "evolve", "text to int")
    recorded = ledger_versions(client, db, batch.batch_id)
    [note] = recorded["changes"]
    assert note["change"] == "title type text -> integer" and note["mode"] == "evolve"
    assert note["level"] == "BACKWARD" and note["outcome"] == "held" and "'title'" in note["reason"]
    assert recorded["held"] == {"app.docs": sink.held_tables(SOURCE)["app.docs"]}
    assert recorded["versions"] == {DOCS_SUBJECT: 1, OTHERS_SUBJECT: 1}
    assert ledger_versions(client, db, "shop:1-3") == {"versions": {DOCS_SUBJECT: 1, OTHERS_SUBJECT: 1},
                                                       "changes": [], "held": {}}


def test_a_newly_held_table_is_logged_once_by_the_sink(sink, caplog):
    with caplog.at_level(logging.INFO, logger="airflow_provider_cdc"):
        hold_with(sink)
    sink_errors = [r for r in caplog.records if r.name == "airflow_provider_cdc.sink.mongodb"
                   and r.levelno == logging.ERROR]
    assert len(sink_errors) == 1
    message = sink_errors[0].getMessage()
    assert "table app.docs is held from batch shop:4-7" in message and "2 changes (seq 4-6)" in message
    assert f"schema accept {DOCS_SUBJECT}" in message and "The other tables keep flowing" in message


# --- the sink's own holds ------------------------------------------------------------------------------------------


def rekeyed(base: TableSchema, key: str) -> TableSchema:
    return dataclasses.replace(base, columns=tuple(dataclasses.replace(col, primary_key=col.name == key)
                                                   for col in base.columns))


# ``total`` NOT NULL, so that it may become the key without a change the gate refuses.
KEYED = dataclasses.replace(BASE, columns=tuple(dataclasses.replace(col, nullable=col.name not in ("id", "total"))
                                                for col in BASE.columns))


def test_a_key_whose_documents_cannot_follow_holds_the_table(sink, client, db):
    first_batch(sink, SchemaPolicy(), KEYED)
    result = sink.apply(change_batch(rekeyed(KEYED, "total"), [{"id": "2", "title": "b", "qty": "5", "total": "20"}],
                                     before=KEYED))
    reason = result.newly_held["app.docs"]
    assert "the key of source table app.docs changed (id integer -> total integer)" in reason
    assert "_id is immutable" in reason and "resnapshot shop --table app.docs" in reason
    assert sink.held_tables(SOURCE) == {"app.docs": reason} and documents(client, db) == BASE_ROWS
    assert documents(client, db, "others") == [{"id": 1, "v": "one"}, {"id": 2, "v": "two"}]


def test_a_default_the_stream_does_not_carry_holds_the_table(sink, client, db):
    first_batch(sink, SchemaPolicy())
    volatile = Column("created", "timestamptz", "timestamptz", ordinal=5, backfill_unknown=True)
    result = sink.apply(change_batch(changed(volatile), [{"id": "3", "title": "c"}]))
    reason = result.newly_held["app.docs"]
    assert "column 'created' was added" in reason and "volatile default" in reason
    assert documents(client, db) == BASE_ROWS


# --- held changes ------------------------------------------------------------------------------------------------


def test_later_batches_of_a_held_table_are_held_too(sink, client, db):
    hold_with(sink)
    later = batch_of([("u", 8, {"id": "3", "title": "c2", "note": "n3b"}), ("d", 9, {"id": "1"})],
                     SCENARIOS["add nullable column"].after, extra={OTHERS: [("c", 10, {"id": "3", "v": "three"})]})
    result = sink.apply(later)
    assert result.applied and result.newly_held == {} and list(result.held_tables) == ["app.docs"]
    assert [(c.batch_id, c.seq_from, c.seq_to, c.rows) for c in sink.held_changes(SOURCE, "app.docs")] == [
        ("shop:4-7", 4, 6, 2), ("shop:8-10", 8, 9, 2)]
    assert documents(client, db) == BASE_ROWS
    assert [doc["v"] for doc in documents(client, db, "others")] == ["one", "two", "three"]
    assert ledger_versions(client, db, "shop:8-10")["held"] == result.held_tables


def test_a_replayed_batch_leaves_one_chunk(sink, client, db):
    batch = hold_with(sink)
    assert not sink.apply(batch).applied  # the ledger has it
    assert len(sink.held_changes(SOURCE, "app.docs")) == 1
    # An overlapping batch (a longer capture from the same position) holds only what is past the high water.
    scenario = SCENARIOS["add nullable column"]
    longer = batch_of([("u", 5, scenario.events[0]), ("c", 6, scenario.events[1]),
                       ("c", 8, {"id": "4", "title": "d", "qty": "4", "total": "40"})], scenario.after,
                      extra={OTHERS: [("c", 7, {"id": "2", "v": "two"})]},
                      schema_changes=[SchemaChange("app.docs", 4, after=scenario.after, before=BASE)])
    assert longer.batch_id == "shop:4-8" and sink.apply(longer).applied
    chunks = sink.held_changes(SOURCE, "app.docs")
    assert [(c.batch_id, c.seq_from, c.seq_to, c.rows) for c in chunks] == [
        ("shop:4-7", 4, 6, 2), ("shop:4-8", 8, 8, 1)]
    assert client[db]["_cdc_held_changes"].count_documents({}) == 2
    assert statuses(sink) == [(1, "applied"), (2, "held")]


def test_held_changes_larger_than_one_part_read_back_whole(sink, client, db, monkeypatch):
    """Held changes are stored in parts (a document holds at most 16 MB); read back, they are one chunk."""
    monkeypatch.setattr(sink_storage, "PART_BYTES", 1000)
    hold_with(sink)
    big = batch_of([("u", 8 + n, {"id": str(10 + n), "title": "x" * 500, "note": str(n)}) for n in range(20)],
                   SCENARIOS["add nullable column"].after)
    sink.apply(big)
    chunks = sink.held_changes(SOURCE, "app.docs")
    assert [(c.seq_from, c.seq_to, c.rows) for c in chunks] == [(4, 6, 2), (8, 27, 20)]
    assert chunks[1].data is not None and chunks[1].data["title"].to_pylist() == ["x" * 500] * 20
    assert client[db]["_cdc_held_changes"].count_documents({"batch_id": big.batch_id}) > 10


# --- accept --------------------------------------------------------------------------------------------------------


def test_accept_replays_the_held_changes_exactly_once(sink, client, db, caplog):
    hold_with(sink)  # stop: the added column holds docs
    later = batch_of([("u", 8, {"id": "3", "title": "c2", "qty": "3", "total": "30", "note": "n3b"}),
                      ("d", 9, {"id": "1"})], SCENARIOS["add nullable column"].after,
                     extra={OTHERS: [("c", 10, {"id": "3", "v": "three"})]})
    sink.apply(later, policy=SchemaPolicy(mode="stop"))
    with caplog.at_level(logging.INFO, logger="airflow_provider_cdc.sink.mongodb"):
        accepted = sink.accept_table(SOURCE, "app.docs", policy=SchemaPolicy(mode="stop"), run_id="accept_1")
    assert (accepted.subject, accepted.table, accepted.accepted_versions) == (DOCS_SUBJECT, "app.docs", [2])
    assert accepted.batch_id == "shop:accept:app.docs:4-9" and accepted.applied
    assert (accepted.replayed_events, accepted.upserted, accepted.deleted) == (4, 2, 1)
    # The documents as the rows at the source: row 2 and 3 changed, row 1 deleted.
    assert documents(client, db) == rows_of((2, "b2", 2, 20, "n2"), (3, "c2", 3, 30, "n3b"), names=WITH_NOTE)
    assert sink.held_tables(SOURCE) == {} and sink.held_changes(SOURCE, "app.docs") == []
    assert statuses(sink) == [(1, "applied"), (2, "accepted")]
    [row] = client[db]["_cdc_ledger"].find({"_id": accepted.batch_id})
    assert (row["seq_from"], row["seq_to"], row["run_id"], row["rows_upserted"], row["rows_deleted"]) == (
        4, 9, "accept_1", 2, 1)
    recorded = row["schema_versions"]
    assert recorded["versions"] == {DOCS_SUBJECT: 2, OTHERS_SUBJECT: 1} and recorded["held"] == {}
    assert [(n["version"], n["mode"], n["outcome"]) for n in recorded["changes"]] == [(2, "stop", "accepted")]
    assert sink.high_water(SOURCE) == 10  # the accept's row is below it and does not move it
    assert "accepted shop.app.docs versions [2]" in caplog.text and "4 held events replayed" in caplog.text
    # Once: a second accept refuses, saying the table is not held.
    with pytest.raises(SinkError, match=r"app.docs of source 'shop' is not held.*no table of it is held") as info:
        sink.accept_table(SOURCE, "app.docs")
    assert info.value.terminal
    # And the table flows again.
    sink.apply(batch_of([("u", 11, {"id": "2", "title": "b3", "note": "n2b"})], SCENARIOS["add nullable column"].after),
               policy=SchemaPolicy(mode="stop"))
    assert documents(client, db)[0] == {"id": 2, "title": "b3", "note": "n2b"}


def test_an_accept_that_fails_before_its_commit_changes_nothing_and_converges(sink, client, db, monkeypatch):
    """The accept is one transaction: a failure before its commit leaves the table held, its held changes and its
    documents as they were, and accepting again finishes the job exactly once."""
    hold_with(sink, "stop", "rename a column")
    sink_docs_before = documents(client, db)
    original = Bookkeeping.insert_ledger

    def crash(self, session, row):
        raise RuntimeError("the process died before the accept's ledger row (simulated)")

    monkeypatch.setattr(Bookkeeping, "insert_ledger", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        sink.accept_table(SOURCE, "app.docs", policy=SchemaPolicy(mode="stop"))
    assert documents(client, db) == sink_docs_before and list(sink.held_tables(SOURCE)) == ["app.docs"]
    assert len(sink.held_changes(SOURCE, "app.docs")) == 1 and statuses(sink) == [(1, "applied"), (2, "held")]
    monkeypatch.setattr(Bookkeeping, "insert_ledger", original)
    accepted = sink.accept_table(SOURCE, "app.docs", policy=SchemaPolicy(mode="stop"))
    assert accepted.applied and accepted.replayed_events == 2
    # Accepted: the field renamed in the documents already there, the held changes replayed.
    assert documents(client, db) == rows_of((1, "a", 1, 10), (2, "b2", 2, 20), (3, "c", 3, 30),
                                            names=("id", "headline", "qty", "total"))
    assert sink.held_tables(SOURCE) == {} and statuses(sink) == [(1, "applied"), (2, "accepted")]


def test_accept_of_a_column_with_a_default_backfills_the_older_documents(sink, client, db):
    hold_with(sink, "stop", "add NOT NULL column with a default")
    sink.accept_table(SOURCE, "app.docs", policy=SchemaPolicy(mode="stop"))
    assert [doc.get("status") for doc in documents(client, db)] == ["new", "open", "new"]


def test_accept_of_text_to_int_writes_the_replayed_values_as_numbers(sink, client, db):
    policy = SchemaPolicy()
    first_batch(sink, policy, rows=[{"id": "1", "title": "7"}, {"id": "2", "title": "8"}])
    scenario = SCENARIOS["text to int"]
    assert sink.apply(change_batch(scenario.after, scenario.events), policy=policy).newly_held
    sink.accept_table(SOURCE, "app.docs", policy=policy)
    # The replayed documents get the new type; the one the held changes never touched keeps its stored value.
    assert documents(client, db) == rows_of((1, "7"), (2, 5, 2, 20), (3, 6, 3, 30))


def test_accept_of_a_table_that_is_not_held_names_the_held_ones(sink):
    hold_with(sink)
    with pytest.raises(SinkError, match=r"app.others of source 'shop' is not held.*held tables: app.docs"):
        sink.accept_table(SOURCE, "app.others")


def test_accept_of_a_key_change_is_refused_while_documents_hold_the_old_key(sink, client, db):
    first_batch(sink, SchemaPolicy(mode="stop"), KEYED)
    sink.apply(change_batch(rekeyed(KEYED, "total"), [{"id": "2", "title": "b", "qty": "5", "total": "20"}],
                            before=KEYED), policy=SchemaPolicy(mode="stop"))
    assert list(sink.held_tables(SOURCE)) == ["app.docs"]
    with pytest.raises(SinkError, match="_id is immutable") as info:
        sink.accept_table(SOURCE, "app.docs", policy=SchemaPolicy(mode="stop"))
    assert info.value.terminal and list(sink.held_tables(SOURCE)) == ["app.docs"]
    assert documents(client, db) == BASE_ROWS and len(sink.held_changes(SOURCE, "app.docs")) == 1


# --- release -------------------------------------------------------------------------------------------------------


def test_release_discards_the_held_changes_and_accepts_the_held_versions(sink, client, db):
    hold_with(sink)
    assert sink.release_table(SOURCE, "app.docs")
    assert sink.held_tables(SOURCE) == {} and sink.held_changes(SOURCE, "app.docs") == []
    assert client[db]["_cdc_held_changes"].count_documents({}) == 0
    assert statuses(sink) == [(1, "applied"), (2, "accepted")]
    assert "docs" not in client[db].list_collection_names()  # dropped: loaded anew by the re-snapshot
    assert not sink.release_table(SOURCE, "app.docs")
    # The re-snapshot loads the table with its current columns, and it flows.
    snapshot = batch_of([("r", 20, {"id": "1", "title": "a", "note": "n1"})], SCENARIOS["add nullable column"].after)
    result = sink.apply(snapshot, policy=SchemaPolicy(mode="stop"))
    assert result.held_tables == {} and documents(client, db) == [{"id": 1, "title": "a", "note": "n1"}]

