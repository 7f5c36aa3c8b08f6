"""The schema gate in the MySQL sink, on a real MariaDB 10.11: every schema change under every policy mode (the sink
table's columns, its rows, the registry and the held tables afterwards), held changes kept in the sink,
``accept_table`` replaying them exactly once, and ``release_table`` discarding them. The source is a MySQL one, so
its declared types are the sink's."""

from __future__ import annotations

import dataclasses
import decimal
import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pymysql
import pytest
from cdc_testing import Event, batch_of

from airflow_provider_cdc.connectors.mysql import sink_storage
from airflow_provider_cdc.connectors.mysql.connection import connect, database_of, quote_name
from airflow_provider_cdc.connectors.mysql.sink import MySqlSink
from airflow_provider_cdc.connectors.mysql.sink_types import canonical_type
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.schema import SchemaPolicy
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema

SOURCE = "shop"
DOCS_SUBJECT = "shop.app.docs"
OTHERS_SUBJECT = "shop.app.others"

BASE = TableSchema("app", "docs", (
    Column("id", "int(11)", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("title", "text", "text", ordinal=2),
    Column("qty", "int(11)", "integer", ordinal=3),
    Column("total", "bigint(20)", "integer", ordinal=4),
), dialect="mysql")
OTHERS = TableSchema("app", "others", (
    Column("id", "int(11)", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("v", "varchar(20)", "text", ordinal=2),
), dialect="mysql")
BASE_TYPES = {"id": "int", "title": "text", "qty": "int", "total": "bigint"}
BASE_ROWS = [(1, "a", 1, 10), (2, "b", 2, 20)]
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
    """What the sink looks like after the change: the docs table's columns and rows (``None``: held, unchanged)
    and the status of the change's version."""

    status: str
    types: dict[str, str] | None = None
    rows: list[tuple[Any, ...]] | None = None

    @property
    def held(self) -> bool:
        return self.status == "held"


HELD = Outcome("held")


@dataclasses.dataclass(frozen=True)
class Scenario:
    after: TableSchema
    events: list[dict[str, str | None]]  # the docs rows of the batch after the change: an update of 2, an insert of 3
    outcomes: dict[str, Outcome]


ADDED_NOTE = Column("note", "text", "text", ordinal=5)
ADDED_STATUS = Column("status", "varchar(10)", "text", nullable=False, ordinal=5, backfill="new")
ADDED_CODE = Column("code", "text", "text", nullable=False, ordinal=5)
UNCHANGED_TYPES_ROWS = [(1, "a", 1, 10), (2, "b2", 2, 20), (3, "c", 3, 30)]

SCENARIOS: dict[str, Scenario] = {
    "add nullable column": Scenario(
        changed(ADDED_NOTE),
        [{"id": "2", "title": "b2", "qty": "2", "total": "20", "note": "n2"},
         {"id": "3", "title": "c", "qty": "3", "total": "30", "note": "n3"}],
        {
            "evolve": Outcome("applied", {**BASE_TYPES, "note": "text"},
                              [(1, "a", 1, 10, None), (2, "b2", 2, 20, "n2"), (3, "c", 3, 30, "n3")]),
            "lenient": Outcome("applied", {**BASE_TYPES, "note": "text"},
                               [(1, "a", 1, 10, None), (2, "b2", 2, 20, "n2"), (3, "c", 3, 30, "n3")]),
            "ignore": Outcome("ignored", BASE_TYPES, UNCHANGED_TYPES_ROWS),
            "stop": HELD,
        },
    ),
    "add NOT NULL column with a default": Scenario(
        changed(ADDED_STATUS),
        [{"id": "2", "title": "b2", "qty": "2", "total": "20", "status": "open"},
         {"id": "3", "title": "c", "qty": "3", "total": "30", "status": "new"}],
        {
            # The rows already in the sink get the default (MySQL 8 INSTANT and PostgreSQL write nothing for them).
            "evolve": Outcome("applied", {**BASE_TYPES, "status": "varchar(10)"},
                              [(1, "a", 1, 10, "new"), (2, "b2", 2, 20, "open"), (3, "c", 3, 30, "new")]),
            "lenient": Outcome("applied", {**BASE_TYPES, "status": "varchar(10)"},
                               [(1, "a", 1, 10, "new"), (2, "b2", 2, 20, "open"), (3, "c", 3, 30, "new")]),
            "ignore": Outcome("ignored", BASE_TYPES, UNCHANGED_TYPES_ROWS),
            "stop": HELD,
        },
    ),
    "add NOT NULL column without a default": Scenario(
        changed(ADDED_CODE),
        [{"id": "2", "title": "b2", "qty": "2", "total": "20", "code": "x2"},
         {"id": "3", "title": "c", "qty": "3", "total": "30", "code": "x3"}],
        {
            "evolve": HELD,  # BACKWARD: the new schema cannot read older rows (no value for code)
            "lenient": Outcome("applied", {**BASE_TYPES, "code": "text"},
                               [(1, "a", 1, 10, None), (2, "b2", 2, 20, "x2"), (3, "c", 3, 30, "x3")]),
            "ignore": Outcome("ignored", BASE_TYPES, UNCHANGED_TYPES_ROWS),
            "stop": HELD,
        },
    ),
    "drop a column": Scenario(
        changed(drop=["qty"]),
        [{"id": "2", "title": "b2", "total": "20"}, {"id": "3", "title": "c", "total": "30"}],
        {
            "evolve": Outcome("applied", {"id": "int", "title": "text", "total": "bigint"},
                              [(1, "a", 10), (2, "b2", 20), (3, "c", 30)]),
            "lenient": Outcome("applied", BASE_TYPES, [(1, "a", 1, 10), (2, "b2", None, 20), (3, "c", None, 30)]),
            "ignore": Outcome("ignored", BASE_TYPES, [(1, "a", 1, 10), (2, "b2", None, 20), (3, "c", None, 30)]),
            "stop": HELD,
        },
    ),
    "rename a column": Scenario(
        changed(rename={"title": "headline"}),
        [{"id": "2", "headline": "b2", "qty": "2", "total": "20"},
         {"id": "3", "headline": "c", "qty": "3", "total": "30"}],
        {
            "evolve": Outcome("applied", {"id": "int", "headline": "text", "qty": "int", "total": "bigint"},
                              UNCHANGED_TYPES_ROWS),
            "lenient": Outcome("applied", {**BASE_TYPES, "headline": "text"},
                               [(1, "a", 1, 10, None), (2, None, 2, 20, "b2"), (3, None, 3, 30, "c")]),
            "ignore": Outcome("ignored", BASE_TYPES, [(1, "a", 1, 10), (2, None, 2, 20), (3, None, 3, 30)]),
            "stop": HELD,
        },
    ),
    "widen int to bigint": Scenario(
        changed(retype={"qty": ("bigint(20)", "integer")}),
        [{"id": "2", "title": "b2", "qty": "9000000000", "total": "20"},
         {"id": "3", "title": "c", "qty": "3", "total": "30"}],
        {
            "evolve": Outcome("applied", {**BASE_TYPES, "qty": "bigint"},
                              [(1, "a", 1, 10), (2, "b2", 9000000000, 20), (3, "c", 3, 30)]),
            "lenient": Outcome("applied", {**BASE_TYPES, "qty": "bigint"},
                               [(1, "a", 1, 10), (2, "b2", 9000000000, 20), (3, "c", 3, 30)]),
            "ignore": HELD,  # the sink's int column cannot hold what the source now writes
            "stop": HELD,
        },
    ),
    "narrow bigint to int": Scenario(
        changed(retype={"total": ("int(11)", "integer")}),
        [{"id": "2", "title": "b2", "qty": "2", "total": "21"}, {"id": "3", "title": "c", "qty": "3", "total": "30"}],
        {
            "evolve": HELD,
            "lenient": HELD,
            "ignore": Outcome("ignored", BASE_TYPES, [(1, "a", 1, 10), (2, "b2", 2, 21), (3, "c", 3, 30)]),
            "stop": HELD,
        },
    ),
    "text to int": Scenario(
        changed(retype={"title": ("int(11)", "integer")}),
        [{"id": "2", "title": "5", "qty": "2", "total": "20"}, {"id": "3", "title": "6", "qty": "3", "total": "30"}],
        {"evolve": HELD, "lenient": HELD, "ignore": HELD, "stop": HELD},
    ),
}


# --- helpers ------------------------------------------------------------------------------------------------------


@pytest.fixture
def url(mariadb_database_factory) -> str:
    return mariadb_database_factory("gate")


@pytest.fixture
def sink(url: str) -> Iterator[MySqlSink]:
    with MySqlSink(url, sink_id="warehouse", target_schema=database_of(url)) as sink:
        yield sink


def query(url: str, statement: str, params: Sequence[Any] | None = None) -> list[tuple]:
    conn = connect(url, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return [tuple(row) for row in cur.fetchall()] if cur.description else []
    finally:
        conn.close()


def column_types(url: str, table: str) -> dict[str, str]:
    """The sink table's source columns (no bookkeeping) with canonical types, in column order."""
    found = query(url, "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE"
                       " TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION", (database_of(url), table))
    return {name: canonical_type(type_) for found_table, name, type_ in found
            if found_table == table and not name.startswith("_cdc_")}


def table_rows(url: str, table: str) -> list[tuple]:
    """Every row of the sink table, its source columns, by key."""
    columns = ", ".join(quote_name(name) for name in column_types(url, table))
    return query(url, f"SELECT {columns} FROM {quote_name(table)} ORDER BY id")


def ledger_versions(url: str, batch_id: str) -> dict[str, Any]:
    rows = query(url, "SELECT schema_versions FROM _cdc_ledger WHERE batch_id = %s", (batch_id,))
    assert len(rows) == 1, f"{batch_id}: {len(rows)} ledger rows"
    return json.loads(rows[0][0])


def statuses(sink: MySqlSink, subject: str = DOCS_SUBJECT) -> list[tuple[int, str]]:
    return [(version.version, version.status) for version in sink.schema_versions(SOURCE) if version.subject == subject]


def first_batch(sink: MySqlSink, policy: SchemaPolicy, base: TableSchema = BASE,
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


def hold_with(sink: MySqlSink, mode: str = "stop", scenario: str = "add nullable column") -> ChangeBatch:
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
def test_schema_change_under_each_mode(sink, url, name, mode):
    scenario = SCENARIOS[name]
    expected = scenario.outcomes[mode]
    policy = SchemaPolicy(mode=mode)  # type: ignore[arg-type]
    first_batch(sink, policy)
    batch = change_batch(scenario.after, scenario.events)
    result = sink.apply(batch, policy=policy)

    assert result.applied and result.schema_changes == 1
    # The other table of the batch flows whatever happens to docs.
    assert table_rows(url, "others") == [(1, "one"), (2, "two")]
    assert statuses(sink, OTHERS_SUBJECT) == [(1, "applied")]
    assert statuses(sink) == [(1, "applied"), (2, expected.status)]
    note = ledger_versions(url, batch.batch_id)["changes"]
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
        assert column_types(url, "docs") == BASE_TYPES
        assert table_rows(url, "docs") == BASE_ROWS
        chunks = sink.held_changes(SOURCE, "app.docs")
        assert [(c.batch_id, c.seq_from, c.seq_to, c.rows) for c in chunks] == [(batch.batch_id, 4, 6, 2)]
        assert chunks[0].schema == scenario.after and [c.seq for c in chunks[0].changes] == [4]
    else:
        assert result.held_tables == {} and sink.held_tables(SOURCE) == {}
        assert "reason" not in note[0]
        assert result.schema_versions == {DOCS_SUBJECT: 2, OTHERS_SUBJECT: 1}
        assert column_types(url, "docs") == expected.types
        assert table_rows(url, "docs") == expected.rows
        assert sink.held_changes(SOURCE, "app.docs") == []


def test_a_drop_alone_in_its_batch_drops_the_column(sink, url):
    first_batch(sink, SchemaPolicy())
    batch = change_batch(SCENARIOS["drop a column"].after, [])
    batch.tables.pop("app.docs")
    batch.schemas.pop("app.docs")
    assert sink.apply(batch).applied
    assert column_types(url, "docs") == {"id": "int", "title": "text", "total": "bigint"}
    assert table_rows(url, "docs") == [(1, "a", 10), (2, "b", 20)]
    assert statuses(sink) == [(1, "applied"), (2, "applied")]


def test_versions_store_the_schema_the_source_and_the_sink_follow(sink):
    policy = SchemaPolicy(mode="lenient")
    first_batch(sink, policy)
    sink.apply(change_batch(SCENARIOS["rename a column"].after, SCENARIOS["rename a column"].events), policy=policy)
    first, second = [version for version in sink.schema_versions(SOURCE) if version.subject == DOCS_SUBJECT]
    assert (first.table, first.sink_table, first.seq, first.batch_id) == (BASE, BASE, 1, "shop:1-3")
    assert second.table == SCENARIOS["rename a column"].after and second.mode == "lenient" and second.seq == 4
    assert [col.name for col in second.sink_table.columns] == ["id", "headline", "qty", "total", "title"]
    assert second.compatibility is not None and second.compatibility["compatible"]
    assert second.schema["fields"][1]["name"] == "headline" and second.schema["fields"][1]["aliases"] == ["title"]
    assert second.id == second.key[:16] and len(second.fingerprint) == 16
    assert second.registered_at.endswith("+00:00")
    # Read back, a version is the same version: applying the same schema again registers nothing new.
    again = sink.apply(batch_of([("u", 8, {"id": "1", "headline": "a2"})], SCENARIOS["rename a column"].after),
                       policy=policy)
    assert again.applied and statuses(sink) == [(1, "applied"), (2, "applied")]


def test_a_version_reads_back_exactly_whatever_its_defaults(sink, url):
    """A decimal default of 0 is the byte 0 in Avro's JSON ("\\u0000"): stored, read back, the version is the same
    version, so the same schema is never registered twice."""
    price = Column("price", "decimal(12,2)", "decimal", nullable=False, ordinal=5, backfill="0.00", precision=12,
                   scale=2)
    after = changed(price)
    first_batch(sink, SchemaPolicy())
    sink.apply(change_batch(after, [{"id": "2", "title": "b2", "price": "2.50"}]))
    stored = [version for version in sink.schema_versions(SOURCE) if version.subject == DOCS_SUBJECT][-1]
    assert stored.schema["fields"][-1]["default"] == "\x00"
    # Row 1 was there before the column: it holds the default.
    assert table_rows(url, "docs") == [(1, "a", 1, 10, decimal.Decimal("0.00")),
                                       (2, "b2", None, None, decimal.Decimal("2.50"))]
    assert sink.apply(batch_of([("u", 8, {"id": "1", "title": "a", "price": "1.00"})], after, schema_changes=[
        SchemaChange("app.docs", 8, after=after, before=after)])).applied
    assert statuses(sink) == [(1, "applied"), (2, "applied")]


def test_a_decimal_the_sink_cannot_narrow_holds_the_table_with_the_sinks_reason(sink, url):
    """Avro cannot tell decimal(12,4) from decimal(6,2); the sink can, and holds the table itself."""
    wide = dataclasses.replace(BASE, columns=(*BASE.columns, Column("price", "decimal(12,4)", "decimal", ordinal=5,
                                                                    precision=12, scale=4)))
    narrow = dataclasses.replace(wide, columns=(*BASE.columns, Column("price", "decimal(6,2)", "decimal", ordinal=5,
                                                                      precision=6, scale=2)))
    first_batch(sink, SchemaPolicy(), wide, [{"id": "1", "price": "1.2345"}])
    batch = change_batch(narrow, [{"id": "1", "price": "1.23"}], before=wide)
    result = sink.apply(batch)
    reason = result.newly_held["app.docs"]
    assert "'price'" in reason and "decimal(12,4) -> decimal(6,2)" in reason
    assert statuses(sink) == [(1, "applied"), (2, "held")]
    [note] = ledger_versions(url, batch.batch_id)["changes"]
    assert (note["outcome"], note["reason"]) == ("held", reason)
    assert column_types(url, "docs")["price"] == "decimal(12,4)"
    assert table_rows(url, "others") == [(1, "one"), (2, "two")]
    assert "schema accept shop.app.docs" in reason
    # Accepted, the column is converted as the source's ALTER TABLE did (rounded to the new scale).
    assert sink.accept_table(SOURCE, "app.docs").accepted_versions == [2]
    assert column_types(url, "docs")["price"] == "decimal(6,2)"
    assert table_rows(url, "docs") == [(1, None, None, None, decimal.Decimal("1.23"))]


def test_the_ledger_row_names_the_change_the_mode_and_the_reason(sink, url):
    batch = hold_with(sink, "evolve", "text to int")
    recorded = ledger_versions(url, batch.batch_id)
    [note] = recorded["changes"]
    assert note["change"] == "title type text -> int(11)" and note["mode"] == "evolve" and note["level"] == "BACKWARD"
    assert note["outcome"] == "held" and "'title'" in note["reason"]
    assert recorded["held"] == {"app.docs": sink.held_tables(SOURCE)["app.docs"]}
    assert recorded["versions"] == {DOCS_SUBJECT: 1, OTHERS_SUBJECT: 1}
    assert ledger_versions(url, "shop:1-3") == {"versions": {DOCS_SUBJECT: 1, OTHERS_SUBJECT: 1}, "changes": [],
                                                "held": {}}


def test_a_newly_held_table_is_logged_once_by_the_sink(sink, caplog):
    with caplog.at_level(logging.INFO, logger="airflow_provider_cdc"):
        hold_with(sink)
    sink_errors = [r for r in caplog.records if r.name == "airflow_provider_cdc.sink.mysql"
                   and r.levelno == logging.ERROR]
    assert len(sink_errors) == 1
    message = sink_errors[0].getMessage()
    assert "table app.docs is held from batch shop:4-7" in message and "2 changes (seq 4-6)" in message
    assert f"schema accept {DOCS_SUBJECT}" in message and "The other tables keep flowing" in message


# --- held changes ------------------------------------------------------------------------------------------------


def test_later_batches_of_a_held_table_are_held_too(sink, url):
    hold_with(sink)
    later = batch_of([("u", 8, {"id": "3", "title": "c2", "note": "n3b"}), ("d", 9, {"id": "1"})],
                     SCENARIOS["add nullable column"].after, extra={OTHERS: [("c", 10, {"id": "3", "v": "three"})]})
    result = sink.apply(later)
    assert result.applied and result.newly_held == {} and list(result.held_tables) == ["app.docs"]
    assert [(c.batch_id, c.seq_from, c.seq_to, c.rows) for c in sink.held_changes(SOURCE, "app.docs")] == [
        ("shop:4-7", 4, 6, 2), ("shop:8-10", 8, 9, 2)]
    assert table_rows(url, "docs") == BASE_ROWS
    assert table_rows(url, "others") == [(1, "one"), (2, "two"), (3, "three")]
    assert ledger_versions(url, "shop:8-10")["held"] == result.held_tables


def test_a_replayed_batch_leaves_one_chunk(sink, url):
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
    assert query(url, "SELECT COUNT(*) FROM _cdc_held_changes") == [(2,)]
    assert statuses(sink) == [(1, "applied"), (2, "held")]


def test_held_changes_larger_than_one_part_read_back_whole(sink, monkeypatch):
    """Held changes are stored in parts (a row must fit in max_allowed_packet); read back, they are one chunk."""
    monkeypatch.setattr(sink_storage, "PART_BYTES", 1000)
    hold_with(sink)
    big = batch_of([("u", 8 + n, {"id": str(10 + n), "title": "x" * 500, "note": str(n)}) for n in range(20)],
                   SCENARIOS["add nullable column"].after)
    sink.apply(big)
    chunks = sink.held_changes(SOURCE, "app.docs")
    assert [(c.seq_from, c.seq_to, c.rows) for c in chunks] == [(4, 6, 2), (8, 27, 20)]
    assert chunks[1].data is not None and chunks[1].data["title"].to_pylist() == ["x" * 500] * 20


# --- accept --------------------------------------------------------------------------------------------------------


def test_accept_replays_the_held_changes_exactly_once(sink, url, caplog):
    hold_with(sink)  # stop: the added column holds docs
    later = batch_of([("u", 8, {"id": "3", "title": "c2", "qty": "3", "total": "30", "note": "n3b"}),
                      ("d", 9, {"id": "1"})], SCENARIOS["add nullable column"].after,
                     extra={OTHERS: [("c", 10, {"id": "3", "v": "three"})]})
    sink.apply(later, policy=SchemaPolicy(mode="stop"))
    with caplog.at_level(logging.INFO, logger="airflow_provider_cdc.sink.mysql"):
        accepted = sink.accept_table(SOURCE, "app.docs", policy=SchemaPolicy(mode="stop"), run_id="accept_1")
    assert (accepted.subject, accepted.table, accepted.accepted_versions) == (DOCS_SUBJECT, "app.docs", [2])
    assert accepted.batch_id == "shop:accept:app.docs:4-9" and accepted.applied
    assert (accepted.replayed_events, accepted.upserted, accepted.deleted) == (4, 2, 1)
    # The rows as at the source: the column added, row 2 and 3 changed, row 1 deleted.
    assert column_types(url, "docs") == {**BASE_TYPES, "note": "text"}
    assert table_rows(url, "docs") == [(2, "b2", 2, 20, "n2"), (3, "c2", 3, 30, "n3b")]
    assert sink.held_tables(SOURCE) == {} and sink.held_changes(SOURCE, "app.docs") == []
    assert statuses(sink) == [(1, "applied"), (2, "accepted")]
    assert query(url, "SELECT seq_from, seq_to, run_id, rows_upserted, rows_deleted FROM _cdc_ledger"
                      " WHERE batch_id = %s", (accepted.batch_id,)) == [(4, 9, "accept_1", 2, 1)]
    recorded = ledger_versions(url, accepted.batch_id)
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
    assert table_rows(url, "docs")[0] == (2, "b3", None, None, "n2b")


def test_an_accept_interrupted_after_its_ddl_converges(sink, url, monkeypatch):
    """The accept's DDL commits on its own; a crash before the replay commits leaves the table held with its held
    changes, and accepting again finishes the job exactly once."""
    hold_with(sink, "evolve", "narrow bigint to int")
    original = MySqlSink._insert_ledger

    def crash(self, cur, row):
        raise pymysql.err.OperationalError(2013, "Lost connection to server during query (simulated)")

    monkeypatch.setattr(MySqlSink, "_insert_ledger", crash)
    with pytest.raises(SinkError, match="Lost connection") as info:
        sink.accept_table(SOURCE, "app.docs")
    assert not info.value.terminal
    assert column_types(url, "docs")["total"] == "int"  # the conversion committed
    assert table_rows(url, "docs") == BASE_ROWS and list(sink.held_tables(SOURCE)) == ["app.docs"]
    assert len(sink.held_changes(SOURCE, "app.docs")) == 1 and statuses(sink) == [(1, "applied"), (2, "held")]
    monkeypatch.setattr(MySqlSink, "_insert_ledger", original)
    accepted = sink.accept_table(SOURCE, "app.docs")
    assert accepted.applied and accepted.replayed_events == 2
    assert table_rows(url, "docs") == [(1, "a", 1, 10), (2, "b2", 2, 21), (3, "c", 3, 30)]
    assert sink.held_tables(SOURCE) == {} and statuses(sink) == [(1, "applied"), (2, "accepted")]


def test_accept_of_text_to_int_converts_values_that_are_numbers(sink, url):
    policy = SchemaPolicy()
    first_batch(sink, policy, rows=[{"id": "1", "title": "7"}, {"id": "2", "title": "8"}])
    scenario = SCENARIOS["text to int"]
    assert sink.apply(change_batch(scenario.after, scenario.events), policy=policy).newly_held
    sink.accept_table(SOURCE, "app.docs", policy=policy)
    assert column_types(url, "docs")["title"] == "int"
    assert table_rows(url, "docs") == [(1, 7, None, None), (2, 5, 2, 20), (3, 6, 3, 30)]


def test_accept_of_text_to_int_with_a_word_in_the_sink_fails_and_changes_nothing(sink, url):
    batch = hold_with(sink, "evolve", "text to int")  # the sink's titles are 'a' and 'b'
    with pytest.raises(SinkError) as info:
        sink.accept_table(SOURCE, "app.docs")
    message = str(info.value)
    assert "column 'title'" in message and "from text to int(11)" in message
    assert "Truncated incorrect INTEGER value: 'a'" in message
    assert "python -m airflow_provider_cdc resnapshot shop --table app.docs" in message
    assert info.value.terminal and info.value.table.endswith(".docs")
    # Still held, nothing changed, the held changes still there.
    assert list(sink.held_tables(SOURCE)) == ["app.docs"]
    assert column_types(url, "docs") == BASE_TYPES and table_rows(url, "docs") == BASE_ROWS
    assert [c.batch_id for c in sink.held_changes(SOURCE, "app.docs")] == [batch.batch_id]
    assert statuses(sink) == [(1, "applied"), (2, "held")]
    assert query(url, "SELECT COUNT(*) FROM _cdc_ledger WHERE batch_id LIKE 'shop:accept:%'") == [(0,)]


def test_accept_of_a_table_that_is_not_held_names_the_held_ones(sink):
    hold_with(sink)
    with pytest.raises(SinkError, match=r"app.others of source 'shop' is not held.*held tables: app.docs"):
        sink.accept_table(SOURCE, "app.others")


# --- release -------------------------------------------------------------------------------------------------------


def test_release_discards_the_held_changes_and_accepts_the_held_versions(sink, url):
    hold_with(sink)
    assert sink.release_table(SOURCE, "app.docs")
    assert sink.held_tables(SOURCE) == {} and sink.held_changes(SOURCE, "app.docs") == []
    assert query(url, "SELECT COUNT(*) FROM _cdc_held_changes") == [(0,)]
    assert statuses(sink) == [(1, "applied"), (2, "accepted")]
    assert column_types(url, "docs") == {}  # dropped: made anew by the re-snapshot
    assert not sink.release_table(SOURCE, "app.docs")
    # The re-snapshot loads the table with its current columns, and it flows.
    snapshot = batch_of([("r", 20, {"id": "1", "title": "a", "note": "n1"})], SCENARIOS["add nullable column"].after)
    result = sink.apply(snapshot, policy=SchemaPolicy(mode="stop"))
    assert result.held_tables == {} and table_rows(url, "docs") == [(1, "a", None, None, "n1")]
