"""The schema gate in the PostgreSQL sink, on real servers (15 and 18): every schema change under every policy mode
(the sink table's columns, its rows, the registry and the held tables afterwards), held changes kept in the sink,
``accept_table`` replaying them exactly once, and ``release_table`` discarding them."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from cdc_testing import Event, batch_of

from airflow_provider_cdc.connectors.postgres.sink import PgSink
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.schema import SchemaPolicy
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema

SOURCE = "shop"
DOCS_SUBJECT = "shop.public.docs"
OTHERS_SUBJECT = "shop.public.others"

BASE = TableSchema("public", "docs", (
    Column("id", "integer", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("title", "text", "text", ordinal=2),
    Column("qty", "integer", "integer", ordinal=3),
    Column("total", "bigint", "integer", ordinal=4),
), dialect="postgresql")
OTHERS = TableSchema("public", "others", (
    Column("id", "integer", "integer", nullable=False, primary_key=True, ordinal=1),
    Column("v", "text", "text", ordinal=2),
), dialect="postgresql")
BASE_TYPES = {"id": "integer", "title": "text", "qty": "integer", "total": "bigint"}
BASE_ROWS = [("1", "a", "1", "10"), ("2", "b", "2", "20")]
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
    rows: list[tuple[str | None, ...]] | None = None

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
ADDED_STATUS = Column("status", "character varying(10)", "text", nullable=False, ordinal=5, backfill="new")
ADDED_CODE = Column("code", "text", "text", nullable=False, ordinal=5)
UNCHANGED_TYPES_ROWS = [("1", "a", "1", "10"), ("2", "b2", "2", "20"), ("3", "c", "3", "30")]

SCENARIOS: dict[str, Scenario] = {
    "add nullable column": Scenario(
        changed(ADDED_NOTE),
        [{"id": "2", "title": "b2", "qty": "2", "total": "20", "note": "n2"},
         {"id": "3", "title": "c", "qty": "3", "total": "30", "note": "n3"}],
        {
            "evolve": Outcome("applied", {**BASE_TYPES, "note": "text"},
                              [("1", "a", "1", "10", None), ("2", "b2", "2", "20", "n2"), ("3", "c", "3", "30", "n3")]),
            "lenient": Outcome("applied", {**BASE_TYPES, "note": "text"},
                               [("1", "a", "1", "10", None), ("2", "b2", "2", "20", "n2"),
                                ("3", "c", "3", "30", "n3")]),
            "ignore": Outcome("ignored", BASE_TYPES, UNCHANGED_TYPES_ROWS),
            "stop": HELD,
        },
    ),
    "add NOT NULL column with a default": Scenario(
        changed(ADDED_STATUS),
        [{"id": "2", "title": "b2", "qty": "2", "total": "20", "status": "open"},
         {"id": "3", "title": "c", "qty": "3", "total": "30", "status": "new"}],
        {
            # The rows already in the sink get the default (the source wrote no WAL for them).
            "evolve": Outcome("applied", {**BASE_TYPES, "status": "character varying(10)"},
                              [("1", "a", "1", "10", "new"), ("2", "b2", "2", "20", "open"),
                               ("3", "c", "3", "30", "new")]),
            "lenient": Outcome("applied", {**BASE_TYPES, "status": "character varying(10)"},
                               [("1", "a", "1", "10", "new"), ("2", "b2", "2", "20", "open"),
                                ("3", "c", "3", "30", "new")]),
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
            # lenient adds it as nullable: older rows hold NULL there.
            "lenient": Outcome("applied", {**BASE_TYPES, "code": "text"},
                               [("1", "a", "1", "10", None), ("2", "b2", "2", "20", "x2"),
                                ("3", "c", "3", "30", "x3")]),
            "ignore": Outcome("ignored", BASE_TYPES, UNCHANGED_TYPES_ROWS),
            "stop": HELD,
        },
    ),
    "drop a column": Scenario(
        changed(drop=["qty"]),
        [{"id": "2", "title": "b2", "total": "20"}, {"id": "3", "title": "c", "total": "30"}],
        {
            "evolve": Outcome("applied", {"id": "integer", "title": "text", "total": "bigint"},
                              [("1", "a", "10"), ("2", "b2", "20"), ("3", "c", "30")]),
            # Kept: NULL in the rows changed since.
            "lenient": Outcome("applied", BASE_TYPES,
                               [("1", "a", "1", "10"), ("2", "b2", None, "20"), ("3", "c", None, "30")]),
            "ignore": Outcome("ignored", BASE_TYPES,
                              [("1", "a", "1", "10"), ("2", "b2", None, "20"), ("3", "c", None, "30")]),
            "stop": HELD,
        },
    ),
    "rename a column": Scenario(
        changed(rename={"title": "headline"}),
        [{"id": "2", "headline": "b2", "qty": "2", "total": "20"},
         {"id": "3", "headline": "c", "qty": "3", "total": "30"}],
        {
            "evolve": Outcome("applied", {"id": "integer", "headline": "text", "qty": "integer", "total": "bigint"},
                              UNCHANGED_TYPES_ROWS),
            # lenient renames nothing: the new name is a new column beside the old one.
            "lenient": Outcome("applied", {**BASE_TYPES, "headline": "text"},
                               [("1", "a", "1", "10", None), ("2", None, "2", "20", "b2"),
                                ("3", None, "3", "30", "c")]),
            "ignore": Outcome("ignored", BASE_TYPES,
                              [("1", "a", "1", "10"), ("2", None, "2", "20"), ("3", None, "3", "30")]),
            "stop": HELD,
        },
    ),
    "widen integer to bigint": Scenario(
        changed(retype={"qty": ("bigint", "integer")}),
        [{"id": "2", "title": "b2", "qty": "9000000000", "total": "20"},
         {"id": "3", "title": "c", "qty": "3", "total": "30"}],
        {
            "evolve": Outcome("applied", {**BASE_TYPES, "qty": "bigint"},
                              [("1", "a", "1", "10"), ("2", "b2", "9000000000", "20"), ("3", "c", "3", "30")]),
            "lenient": Outcome("applied", {**BASE_TYPES, "qty": "bigint"},
                               [("1", "a", "1", "10"), ("2", "b2", "9000000000", "20"), ("3", "c", "3", "30")]),
            "ignore": HELD,  # the sink's integer column cannot hold what the source now writes
            "stop": HELD,
        },
    ),
    "narrow bigint to integer": Scenario(
        changed(retype={"total": ("integer", "integer")}),
        [{"id": "2", "title": "b2", "qty": "2", "total": "21"}, {"id": "3", "title": "c", "qty": "3", "total": "30"}],
        {
            "evolve": HELD,
            "lenient": HELD,
            # The sink's bigint holds every integer: it stays as it is.
            "ignore": Outcome("ignored", BASE_TYPES,
                              [("1", "a", "1", "10"), ("2", "b2", "2", "21"), ("3", "c", "3", "30")]),
            "stop": HELD,
        },
    ),
    "text to integer": Scenario(
        changed(retype={"title": ("integer", "integer")}),
        [{"id": "2", "title": "5", "qty": "2", "total": "20"}, {"id": "3", "title": "6", "qty": "3", "total": "30"}],
        {"evolve": HELD, "lenient": HELD, "ignore": HELD, "stop": HELD},
    ),
}


# --- helpers ------------------------------------------------------------------------------------------------------


@pytest.fixture
def sink(pg_database: str) -> Iterator[PgSink]:
    with PgSink(pg_database, sink_id="warehouse") as sink:
        yield sink


def query(url: str, statement: str, params: Sequence[Any] = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def column_types(url: str, table: str) -> dict[str, str]:
    """The sink table's source columns (no bookkeeping) with ``format_type``, in column order."""
    return dict(query(url, "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid ="
                           " %s::regclass AND attnum > 0 AND NOT attisdropped AND attname NOT LIKE '\\_cdc\\_%%'"
                           " ORDER BY attnum", (f"public.{table}",)))


def table_rows(url: str, table: str) -> list[tuple]:
    """Every row of the sink table, its source columns as text, by key."""
    columns = ", ".join(psycopg.sql.Identifier(name).as_string() + "::text" for name in column_types(url, table))
    return query(url, f"SELECT {columns} FROM public.{table} ORDER BY id")


def ledger_versions(url: str, batch_id: str) -> dict[str, Any]:
    rows = query(url, "SELECT schema_versions FROM public._cdc_ledger WHERE batch_id = %s", (batch_id,))
    assert len(rows) == 1, f"{batch_id}: {len(rows)} ledger rows"
    return rows[0][0]


def statuses(sink: PgSink, subject: str = DOCS_SUBJECT) -> list[tuple[int, str]]:
    return [(version.version, version.status) for version in sink.schema_versions(SOURCE) if version.subject == subject]


def first_batch(sink: PgSink, policy: SchemaPolicy, base: TableSchema = BASE,
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
    change = SchemaChange("public.docs", 4, after=after, before=before)
    docs: list[Event] = [("u" if row["id"] in ("1", "2") else "c", 5 + n, row) for n, row in enumerate(events)]
    return batch_of(docs, after, extra={OTHERS: [("c", 7, {"id": "2", "v": "two"})]}, schema_changes=[change],
                    batch_id=batch_id)


def hold_with(sink: PgSink, mode: str = "stop", scenario: str = "add nullable column") -> ChangeBatch:
    """Apply the first batch and a change that holds docs under ``mode``; returns the batch that held it."""
    policy = SchemaPolicy(mode=mode)  # type: ignore[arg-type]
    first_batch(sink, policy)
    batch = change_batch(SCENARIOS[scenario].after, SCENARIOS[scenario].events)
    result = sink.apply(batch, policy=policy)
    assert list(result.newly_held) == ["public.docs"]
    return batch


# --- every change under every mode -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_schema_change_under_each_mode(sink, pg_database, name, mode):
    scenario = SCENARIOS[name]
    expected = scenario.outcomes[mode]
    policy = SchemaPolicy(mode=mode)  # type: ignore[arg-type]
    first_batch(sink, policy)
    batch = change_batch(scenario.after, scenario.events)
    result = sink.apply(batch, policy=policy)

    assert result.applied and result.schema_changes == 1
    # The other table of the batch flows whatever happens to docs.
    assert table_rows(pg_database, "others") == [("1", "one"), ("2", "two")]
    assert statuses(sink, OTHERS_SUBJECT) == [(1, "applied")]
    assert statuses(sink) == [(1, "applied"), (2, expected.status)]
    note = ledger_versions(pg_database, batch.batch_id)["changes"]
    assert [(n["subject"], n["version"], n["mode"], n["outcome"]) for n in note] == [
        (DOCS_SUBJECT, 2, mode, expected.status)]
    if expected.held:
        reason = result.held_tables["public.docs"]
        assert result.newly_held == {"public.docs": reason} and sink.held_tables(SOURCE) == {"public.docs": reason}
        assert f"mode {mode}" in reason and f"schema accept {DOCS_SUBJECT}" in reason
        assert "resnapshot shop --table public.docs" in reason
        assert note[0]["reason"] in reason
        assert result.schema_versions == {DOCS_SUBJECT: 1, OTHERS_SUBJECT: 1}
        # Nothing of docs changed; its changes wait in the sink.
        assert column_types(pg_database, "docs") == BASE_TYPES
        assert table_rows(pg_database, "docs") == BASE_ROWS
        chunks = sink.held_changes(SOURCE, "public.docs")
        assert [(c.batch_id, c.seq_from, c.seq_to, c.rows) for c in chunks] == [(batch.batch_id, 4, 6, 2)]
        assert chunks[0].schema == scenario.after and [c.seq for c in chunks[0].changes] == [4]
    else:
        assert result.held_tables == {} and sink.held_tables(SOURCE) == {}
        assert "reason" not in note[0]
        assert result.schema_versions == {DOCS_SUBJECT: 2, OTHERS_SUBJECT: 1}
        assert column_types(pg_database, "docs") == expected.types
        assert table_rows(pg_database, "docs") == expected.rows
        assert sink.held_changes(SOURCE, "public.docs") == []


def test_a_drop_alone_in_its_batch_drops_the_column(sink, pg_database):
    first_batch(sink, SchemaPolicy())
    after = SCENARIOS["drop a column"].after
    batch = change_batch(after, [])
    batch.tables.pop("public.docs")
    batch.schemas.pop("public.docs")
    assert sink.apply(batch).applied
    assert column_types(pg_database, "docs") == {"id": "integer", "title": "text", "total": "bigint"}
    assert table_rows(pg_database, "docs") == [("1", "a", "10"), ("2", "b", "20")]
    assert statuses(sink) == [(1, "applied"), (2, "applied")]


def test_versions_store_the_schema_the_source_and_the_sink_follow(sink):
    policy = SchemaPolicy(mode="lenient")
    first_batch(sink, policy)
    sink.apply(change_batch(SCENARIOS["rename a column"].after, SCENARIOS["rename a column"].events), policy=policy)
    versions = [version for version in sink.schema_versions(SOURCE) if version.subject == DOCS_SUBJECT]
    first, second = versions
    assert (first.table, first.sink_table, first.seq, first.batch_id) == (BASE, BASE, 1, "shop:1-3")
    assert second.table == SCENARIOS["rename a column"].after and second.mode == "lenient" and second.seq == 4
    assert [col.name for col in second.sink_table.columns] == ["id", "headline", "qty", "total", "title"]
    assert second.compatibility is not None and second.compatibility["compatible"]
    assert second.schema["fields"][1]["name"] == "headline" and second.schema["fields"][1]["aliases"] == ["title"]
    assert second.id == second.key[:16] and len(second.fingerprint) == 16 and second.registered_at
    # Read back, a version is the same version: applying the same schema again registers nothing new.
    again = sink.apply(batch_of([("u", 8, {"id": "1", "headline": "a2"})], SCENARIOS["rename a column"].after),
                       policy=policy)
    assert again.applied and statuses(sink) == [(1, "applied"), (2, "applied")]


def test_a_version_reads_back_exactly_whatever_its_defaults(sink, pg_database):
    """A decimal default of 0 is the byte 0 in Avro's JSON ("\\u0000", which jsonb refuses): stored, read back,
    the version is the same version, so the same schema is never registered twice."""
    price = Column("price", "numeric(12,2)", "decimal", nullable=False, ordinal=5, backfill="0.00", precision=12,
                   scale=2)
    after = changed(price)
    first_batch(sink, SchemaPolicy())
    sink.apply(change_batch(after, [{"id": "2", "title": "b2", "price": "2.50"}]))
    stored = [version for version in sink.schema_versions(SOURCE) if version.subject == DOCS_SUBJECT][-1]
    assert stored.schema["fields"][-1]["default"] == "\x00"
    # Row 1 was there before the column: it holds the default.
    assert table_rows(pg_database, "docs") == [("1", "a", "1", "10", "0.00"), ("2", "b2", None, None, "2.50")]
    assert sink.apply(batch_of([("u", 8, {"id": "1", "title": "a", "price": "1.00"})], after, schema_changes=[
        SchemaChange("public.docs", 8, after=after, before=after)])).applied
    assert statuses(sink) == [(1, "applied"), (2, "applied")]


def test_a_decimal_the_sink_cannot_narrow_holds_the_table_with_the_sinks_reason(sink, pg_database):
    """Avro cannot tell numeric(12,4) from numeric(6,2); the sink can, and holds the table itself."""
    wide = dataclasses.replace(BASE, columns=(*BASE.columns, Column("price", "numeric(12,4)", "decimal", ordinal=5,
                                                                    precision=12, scale=4)))
    narrow = dataclasses.replace(wide, columns=(*BASE.columns, Column("price", "numeric(6,2)", "decimal", ordinal=5,
                                                                      precision=6, scale=2)))
    first_batch(sink, SchemaPolicy(), wide, [{"id": "1", "price": "1.2345"}])
    batch = change_batch(narrow, [{"id": "1", "price": "1.23"}], before=wide)
    result = sink.apply(batch)
    reason = result.newly_held["public.docs"]
    assert "'price'" in reason and "numeric(12,4) -> numeric(6,2)" in reason
    assert statuses(sink) == [(1, "applied"), (2, "held")]
    [note] = ledger_versions(pg_database, batch.batch_id)["changes"]
    assert (note["outcome"], note["reason"]) == ("held", reason)
    assert column_types(pg_database, "docs")["price"] == "numeric(12,4)"
    assert table_rows(pg_database, "others") == [("1", "one"), ("2", "two")]
    assert "schema accept shop.public.docs" in reason
    # Accepted, the column is converted as the source's ALTER TABLE did (rounded to the new scale).
    assert sink.accept_table(SOURCE, "public.docs").accepted_versions == [2]
    assert column_types(pg_database, "docs")["price"] == "numeric(6,2)"
    assert table_rows(pg_database, "docs") == [("1", None, None, None, "1.23")]


def test_the_ledger_row_names_the_change_the_mode_and_the_reason(sink, pg_database):
    batch = hold_with(sink, "evolve", "text to integer")
    recorded = ledger_versions(pg_database, batch.batch_id)
    [note] = recorded["changes"]
    assert note["change"] == "title type text -> integer" and note["mode"] == "evolve" and note["level"] == "BACKWARD"
    assert note["outcome"] == "held" and "'title'" in note["reason"]
    assert recorded["held"] == {"public.docs": sink.held_tables(SOURCE)["public.docs"]}
    assert recorded["versions"] == {DOCS_SUBJECT: 1, OTHERS_SUBJECT: 1}
    applied = ledger_versions(pg_database, "shop:1-3")
    assert applied == {"versions": {DOCS_SUBJECT: 1, OTHERS_SUBJECT: 1}, "changes": [], "held": {}}


def test_a_newly_held_table_is_logged_once_by_the_sink(sink, caplog):
    with caplog.at_level(logging.INFO, logger="airflow_provider_cdc"):
        hold_with(sink)
    sink_errors = [r for r in caplog.records if r.name == "airflow_provider_cdc.sink.postgres"
                   and r.levelno == logging.ERROR]
    assert len(sink_errors) == 1
    message = sink_errors[0].getMessage()
    assert "table public.docs is held from batch shop:4-7" in message and "2 changes (seq 4-6)" in message
    assert f"schema accept {DOCS_SUBJECT}" in message and "The other tables keep flowing" in message


# --- held changes ------------------------------------------------------------------------------------------------


def test_later_batches_of_a_held_table_are_held_too(sink, pg_database):
    hold_with(sink)
    later = batch_of([("u", 8, {"id": "3", "title": "c2", "note": "n3b"}), ("d", 9, {"id": "1"})],
                     SCENARIOS["add nullable column"].after, extra={OTHERS: [("c", 10, {"id": "3", "v": "three"})]})
    result = sink.apply(later)
    assert result.applied and result.newly_held == {} and list(result.held_tables) == ["public.docs"]
    assert [(c.batch_id, c.seq_from, c.seq_to, c.rows) for c in sink.held_changes(SOURCE, "public.docs")] == [
        ("shop:4-7", 4, 6, 2), ("shop:8-10", 8, 9, 2)]
    assert table_rows(pg_database, "docs") == BASE_ROWS
    assert table_rows(pg_database, "others") == [("1", "one"), ("2", "two"), ("3", "three")]
    assert ledger_versions(pg_database, "shop:8-10")["held"] == result.held_tables


def test_a_replayed_batch_leaves_one_chunk(sink, pg_database):
    batch = hold_with(sink)
    assert not sink.apply(batch).applied  # the ledger has it
    assert len(sink.held_changes(SOURCE, "public.docs")) == 1
    # An overlapping batch (a longer capture from the same position) holds only what is past the high water.
    scenario = SCENARIOS["add nullable column"]
    longer = batch_of([("u", 5, scenario.events[0]), ("c", 6, scenario.events[1]),
                       ("c", 8, {"id": "4", "title": "d", "qty": "4", "total": "40"})], scenario.after,
                      extra={OTHERS: [("c", 7, {"id": "2", "v": "two"})]},
                      schema_changes=[SchemaChange("public.docs", 4, after=scenario.after, before=BASE)])
    assert longer.batch_id == "shop:4-8" and sink.apply(longer).applied
    chunks = sink.held_changes(SOURCE, "public.docs")
    assert [(c.batch_id, c.seq_from, c.seq_to, c.rows) for c in chunks] == [
        ("shop:4-7", 4, 6, 2), ("shop:4-8", 8, 8, 1)]
    assert query(pg_database, "SELECT count(*) FROM public._cdc_held_changes") == [(2,)]
    assert statuses(sink) == [(1, "applied"), (2, "held")]


# --- accept --------------------------------------------------------------------------------------------------------


def test_accept_replays_the_held_changes_exactly_once(sink, pg_database, caplog):
    hold_with(sink)  # stop: the added column holds docs
    later = batch_of([("u", 8, {"id": "3", "title": "c2", "qty": "3", "total": "30", "note": "n3b"}),
                      ("d", 9, {"id": "1"})], SCENARIOS["add nullable column"].after,
                     extra={OTHERS: [("c", 10, {"id": "3", "v": "three"})]})
    sink.apply(later, policy=SchemaPolicy(mode="stop"))
    with caplog.at_level(logging.INFO, logger="airflow_provider_cdc.sink.postgres"):
        accepted = sink.accept_table(SOURCE, "public.docs", policy=SchemaPolicy(mode="stop"), run_id="accept_1")
    assert (accepted.subject, accepted.table, accepted.accepted_versions) == (DOCS_SUBJECT, "public.docs", [2])
    assert accepted.batch_id == "shop:accept:public.docs:4-9" and accepted.applied
    assert (accepted.replayed_events, accepted.upserted, accepted.deleted) == (4, 2, 1)
    # The rows as at the source: the column added, row 2 and 3 changed, row 1 deleted.
    assert column_types(pg_database, "docs") == {**BASE_TYPES, "note": "text"}
    assert table_rows(pg_database, "docs") == [("2", "b2", "2", "20", "n2"), ("3", "c2", "3", "30", "n3b")]
    assert sink.held_tables(SOURCE) == {} and sink.held_changes(SOURCE, "public.docs") == []
    assert statuses(sink) == [(1, "applied"), (2, "accepted")]
    assert query(pg_database, "SELECT seq_from, seq_to, run_id, rows_upserted, rows_deleted FROM public._cdc_ledger"
                              " WHERE batch_id = %s", (accepted.batch_id,)) == [(4, 9, "accept_1", 2, 1)]
    recorded = ledger_versions(pg_database, accepted.batch_id)
    assert recorded["versions"] == {DOCS_SUBJECT: 2, OTHERS_SUBJECT: 1} and recorded["held"] == {}
    assert [(n["version"], n["mode"], n["outcome"]) for n in recorded["changes"]] == [(2, "stop", "accepted")]
    assert sink.high_water(SOURCE) == 10  # the accept's row is below it and does not move it
    assert "accepted shop.public.docs versions [2]" in caplog.text and "4 held events replayed" in caplog.text
    # Once: a second accept refuses, saying the table is not held.
    with pytest.raises(SinkError, match=r"public.docs of source 'shop' is not held.*no table of it is held") as info:
        sink.accept_table(SOURCE, "public.docs")
    assert info.value.terminal
    # And the table flows again.
    sink.apply(batch_of([("u", 11, {"id": "2", "title": "b3", "note": "n2b"})], SCENARIOS["add nullable column"].after),
               policy=SchemaPolicy(mode="stop"))
    assert table_rows(pg_database, "docs")[0] == ("2", "b3", None, None, "n2b")


def test_accept_converts_a_narrowed_column_in_place(sink, pg_database):
    hold_with(sink, "evolve", "narrow bigint to integer")
    accepted = sink.accept_table(SOURCE, "public.docs")
    assert accepted.applied and accepted.accepted_versions == [2]
    assert column_types(pg_database, "docs") == {**BASE_TYPES, "total": "integer"}
    assert table_rows(pg_database, "docs") == [("1", "a", "1", "10"), ("2", "b2", "2", "21"), ("3", "c", "3", "30")]
    assert sink.held_tables(SOURCE) == {}


def test_accept_of_text_to_integer_converts_values_that_are_numbers(sink, pg_database):
    policy = SchemaPolicy()
    first_batch(sink, policy, rows=[{"id": "1", "title": "7"}, {"id": "2", "title": "8"}])
    scenario = SCENARIOS["text to integer"]
    assert sink.apply(change_batch(scenario.after, scenario.events), policy=policy).newly_held
    sink.accept_table(SOURCE, "public.docs", policy=policy)
    assert column_types(pg_database, "docs")["title"] == "integer"
    assert table_rows(pg_database, "docs") == [("1", "7", None, None), ("2", "5", "2", "20"), ("3", "6", "3", "30")]


def test_accept_of_text_to_integer_with_a_word_in_the_sink_fails_and_changes_nothing(sink, pg_database):
    batch = hold_with(sink, "evolve", "text to integer")  # the sink's titles are 'a' and 'b'
    with pytest.raises(SinkError) as info:
        sink.accept_table(SOURCE, "public.docs")
    message = str(info.value)
    assert "column 'title'" in message and "from text to integer" in message
    assert 'invalid input syntax for type integer: "a"' in message
    assert "python -m airflow_provider_cdc resnapshot shop --table public.docs" in message
    assert info.value.terminal and info.value.table == "public.docs"
    # Still held, nothing changed, the held changes still there.
    assert list(sink.held_tables(SOURCE)) == ["public.docs"]
    assert column_types(pg_database, "docs") == BASE_TYPES and table_rows(pg_database, "docs") == BASE_ROWS
    assert [c.batch_id for c in sink.held_changes(SOURCE, "public.docs")] == [batch.batch_id]
    assert statuses(sink) == [(1, "applied"), (2, "held")]
    assert query(pg_database, "SELECT count(*) FROM public._cdc_ledger WHERE batch_id LIKE 'shop:accept:%%'") == [(0,)]


def test_accept_of_a_table_that_is_not_held_names_the_held_ones(sink):
    hold_with(sink)
    with pytest.raises(SinkError, match=r"public.others of source 'shop' is not held.*held tables: public.docs"):
        sink.accept_table(SOURCE, "public.others")


# --- release -------------------------------------------------------------------------------------------------------


def test_release_discards_the_held_changes_and_accepts_the_held_versions(sink, pg_database):
    hold_with(sink)
    assert sink.release_table(SOURCE, "public.docs")
    assert sink.held_tables(SOURCE) == {} and sink.held_changes(SOURCE, "public.docs") == []
    assert query(pg_database, "SELECT count(*) FROM public._cdc_held_changes") == [(0,)]
    assert statuses(sink) == [(1, "applied"), (2, "accepted")]
    assert query(pg_database, "SELECT to_regclass('public.docs')") == [(None,)]  # made anew by the re-snapshot
    assert not sink.release_table(SOURCE, "public.docs")
    # The re-snapshot loads the table with its current columns, and it flows.
    snapshot = batch_of([("r", 20, {"id": "1", "title": "a", "note": "n1"})], SCENARIOS["add nullable column"].after)
    result = sink.apply(snapshot, policy=SchemaPolicy(mode="stop"))
    assert result.held_tables == {} and table_rows(pg_database, "docs") == [("1", "a", None, None, "n1")]
