"""One scenario suite over every (source, sink) pair: what the connector contract promises, proved on real servers.

Here: PostgreSQL (15 and 18) into PostgreSQL, into a Delta Lake table, into MariaDB and into MongoDB; MariaDB as the
source is in ``test_contract_mariadb_source.py``, which reuses :class:`Pair` and :class:`MemoryPositions`. Each
scenario changes the source, runs the pipeline's own functions (capture → load → commit, with an in-memory position
store), and compares the sink with the source row for row as Python values, so that a typed sink and a text sink are
held to the same standard.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from cdc_testing import table_rows, unique_id

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.config import SourceConfig
from airflow_provider_cdc.connectors.postgres.catalog import logical_type
from airflow_provider_cdc.connectors.registry import make_source
from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.pipeline import TablesHeldError
from airflow_provider_cdc.tables import Column
from contract.pairs import SinkUnderTest, delta_sink, mariadb_sink, mongodb_sink, pg_rows, postgres_sink

pytestmark = pytest.mark.timeout(300)

DDL = """
CREATE TABLE items (id bigint PRIMARY KEY, name text, qty int, price numeric(12,2), note text);
CREATE TABLE pairs (region text, num int, label text, PRIMARY KEY (region, num));
CREATE TABLE kinds (
    id bigint PRIMARY KEY, i int, big bigint, n numeric(38,10), f double precision, b boolean, t text,
    tz timestamptz, ts timestamp, d date, tm time, j jsonb, js json, by bytea, u uuid, arr int[]
);
"""
TABLES = ["public.items", "public.pairs", "public.kinds"]


class MemoryPositions:
    """The PositionStore protocol without Airflow: the suite tests connectors, not Variables."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def get(self, source_id: str) -> dict[str, Any] | None:
        doc = self.docs.get(source_id)
        return None if doc is None else {k: v for k, v in doc.items() if k != "batch_id"}

    def set(self, source_id: str, position: dict[str, Any], *, batch_id: str | None) -> None:
        self.docs[source_id] = {**position, "batch_id": batch_id}

    def delete(self, source_id: str) -> None:
        self.docs.pop(source_id, None)


class Pair:
    """A source database and one sink, run through the pipeline's stage functions.

    This class is the PostgreSQL source; another source subclasses it with its own ``source_type``, :meth:`sql`,
    :meth:`columns` and :meth:`source_rows` (how it changes its database and reads it back as Python values)."""

    source_type = "postgresql"
    source_schema = "public"  # where the source tables live (a MySQL source: its database)

    def __init__(self, source_url: str, sink: SinkUnderTest, *, delete_mode: str = "hard",
                 tables: list[str] = TABLES, batch_size: int = 10_000, options: dict[str, Any] | None = None) -> None:
        self.url = source_url
        self.under_test = sink
        self.source_id = unique_id("contract")
        self.target_schema = f"t_{self.source_id}"
        self.config = SourceConfig(
            id=self.source_id, type=self.source_type, connection_string=source_url, tables=tables,
            sink="warehouse", target_schema=self.target_schema, delete_mode=delete_mode, batch_size=batch_size,
            options=options or {},
        )
        self.positions = MemoryPositions()
        self.source = make_source(self.config, source_url)
        self.sink = sink.make(self.target_schema, delete_mode)

    def close(self) -> None:
        self.source.close()
        self.sink.close()
        if self.under_test.drop is not None:
            self.under_test.drop(self.target_schema)

    def sql(self, statement: str, params: Any = None) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(statement, params)

    def run(self) -> int:
        """Runs until a batch is empty and no snapshot is pending; returns the number of changes loaded. As a fused
        loop does, each batch is captured while the one before it loads."""
        loaded = 0
        ahead = pipeline.CaptureAhead(self.source, self.config.batch_size)
        for _ in range(20):
            summary = pipeline.run_fused(self.source, self.sink, self.positions, max_changes=self.config.batch_size,
                                         ahead=ahead)
            loaded += summary["change_count"]
            if summary["change_count"] == 0 and "snapshot" not in (self.positions.get(self.source_id) or {}):
                ahead.settle()  # the last acknowledgement, as the loop's end does it
                return loaded
        raise AssertionError("the source did not drain in 20 runs")

    def capture(self):
        return pipeline.capture_batch(self.source, self.sink, self.positions, self.config.batch_size)

    def table(self, name: str) -> str:
        """The batch's name of a source table (``schema.table``)."""
        return f"{self.source_schema}.{name}"

    def source_rows(self, table: str, columns: list[Column]) -> list[dict[str, Any]]:
        return pg_rows(self.url, self.source_schema, table, columns)

    def columns(self, table: str) -> list[Column]:
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = ('public.' || quote_ident(%s))::regclass"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (table,)).fetchall()
        return [Column(name, declared, logical_type(declared)) for name, declared in rows]

    def assert_same(self, table: str) -> int:
        columns = self.columns(table)
        expected = self.source_rows(table, columns)
        got = self.under_test.read(self.target_schema, table, columns, True)
        expected.sort(key=repr)
        got.sort(key=repr)
        assert got == expected, f"{self.under_test.name} {table}: sink differs from source"
        return len(expected)


@pytest.fixture(params=["postgresql", "delta", "mariadb", "mongodb"])
def sink_under_test(request, pg_database_factory, tmp_path) -> SinkUnderTest:
    if request.param == "postgresql":
        return postgres_sink(pg_database_factory("contract_sink"))
    if request.param == "mongodb":
        # A MongoDB sink writes into the database named by target_schema (it creates it); the URL names none.
        return mongodb_sink(request.getfixturevalue("mongo_server").url(""))
    if request.param == "mariadb":
        # A MariaDB sink writes into the database named by target_schema (it creates it); the URL's database is
        # only where it connects.
        return mariadb_sink(request.getfixturevalue("mariadb_database_factory")("contract_sink"))
    return delta_sink(tmp_path / "lake")


@pytest.fixture
def pair_factory(pg_database_factory, sink_under_test):
    made: list[Pair] = []

    def make(*, delete_mode: str = "hard", ddl: str = DDL, tables: list[str] = TABLES) -> Pair:
        url = pg_database_factory("contract_src")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(ddl)
        pair = Pair(url, sink_under_test, delete_mode=delete_mode, tables=tables)
        made.append(pair)
        return pair

    yield make
    for pair in made:
        pair.close()


@pytest.fixture
def pair(pair_factory) -> Pair:
    return pair_factory()


# ----------------------------------------------------------------------------------------------------- scenarios


def test_snapshot_then_stream_reaches_the_sink(pair):
    pair.sql("INSERT INTO items SELECT g, 'item ' || g, g, g * 1.5 FROM generate_series(1, 50) g")
    assert pair.run() == 50
    pair.sql("UPDATE items SET qty = qty + 1 WHERE id <= 10; DELETE FROM items WHERE id > 45;"
             "INSERT INTO items VALUES (100, 'new', 1, 9.99)")
    assert pair.run() == 16
    assert pair.assert_same("items") == 46


def test_replaying_a_batch_is_a_no_op(pair):
    pair.run()
    pair.sql("INSERT INTO items SELECT g, 'x', g, 1 FROM generate_series(1, 5) g")
    batch = pair.capture()
    first = pipeline.load_batch(batch, pair.sink)
    again = pipeline.load_batch(batch, pair.sink)
    assert first["applied"] is True and again["applied"] is False
    assert pair.sink.has_batch(batch.batch_id) and pair.sink.high_water(pair.source_id) == batch.seq_to
    pipeline.commit_position(pair.source, pair.sink, pair.positions, batch_id=batch.batch_id,
                             position_to=batch.position_to, needs_ledger=True)
    assert pair.assert_same("items") == 5
    assert pair.run() == 0


def test_an_older_change_never_overwrites_a_newer_one(pair):
    pair.run()
    pair.sql("INSERT INTO items VALUES (1, 'old', 1, 1)")
    old = pair.capture()
    pipeline.load_batch(old, pair.sink)
    pipeline.commit_position(pair.source, pair.sink, pair.positions, batch_id=old.batch_id,
                             position_to=old.position_to, needs_ledger=True)
    pair.sql("UPDATE items SET name = 'new', qty = 2 WHERE id = 1")
    pair.run()
    # The ledger forgets the old batch (as after a lost ledger), so only the per-row guard stands in the way.
    pair.sink.forget_source(pair.source_id)
    result = pipeline.load_batch(old, pair.sink)
    assert result["applied"] is True
    assert pair.assert_same("items") == 1


def test_changes_to_one_key_fold_in_order(pair):
    pair.run()
    pair.sql("""
        BEGIN;
        INSERT INTO items VALUES (1, 'a', 1, 1), (2, 'b', 2, 2), (3, 'c', 3, 3);
        UPDATE items SET name = 'a2' WHERE id = 1;
        UPDATE items SET name = 'a3', qty = 10 WHERE id = 1;
        DELETE FROM items WHERE id = 2;
        DELETE FROM items WHERE id = 3;
        INSERT INTO items VALUES (3, 'c again', 30, 3.5);
        UPDATE items SET id = 4 WHERE id = 3;
        COMMIT;
    """)
    pair.run()
    assert pair.assert_same("items") == 2


def test_composite_keys_including_a_change_of_one_part(pair):
    pair.sql("INSERT INTO pairs VALUES ('eu', 1, 'a'), ('eu', 2, 'b'), ('us', 1, 'c')")
    pair.run()
    pair.sql("UPDATE pairs SET num = 3 WHERE region = 'eu' AND num = 1; UPDATE pairs SET label = 'z' "
             "WHERE region = 'us'; DELETE FROM pairs WHERE region = 'eu' AND num = 2;"
             "INSERT INTO pairs VALUES ('eu', 2, 'again')")
    pair.run()
    assert pair.assert_same("pairs") == 3


def test_a_truncate_in_the_middle_of_a_batch(pair):
    pair.sql("INSERT INTO items SELECT g, 'before', g, 1 FROM generate_series(1, 20) g")
    pair.run()
    pair.sql("BEGIN; UPDATE items SET name = 'touched'; COMMIT; TRUNCATE items;"
             "INSERT INTO items VALUES (5, 'after', 5, 5), (50, 'after', 50, 50);"
             " UPDATE items SET qty = 6 WHERE id = 5")
    batch = pair.capture()
    assert "t" in batch.op_totals()
    pipeline.load_batch(batch, pair.sink)
    pipeline.commit_position(pair.source, pair.sink, pair.positions, batch_id=batch.batch_id,
                             position_to=batch.position_to, needs_ledger=True)
    assert pair.assert_same("items") == 2


def test_soft_delete_then_reinsert(pair_factory):
    pair = pair_factory(delete_mode="soft")
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1), (2, 'b', 2, 2)")
    pair.run()
    pair.sql("DELETE FROM items WHERE id IN (1, 2)")
    pair.run()
    rows = {r["id"]: r for r in pair.under_test.raw(pair.target_schema, "items")}
    assert rows[1]["_cdc_deleted_at"] is not None and rows[2]["_cdc_deleted_at"] is not None
    assert pair.assert_same("items") == 0
    pair.sql("INSERT INTO items VALUES (1, 'back', 7, 7)")
    pair.run()
    rows = {r["id"]: r for r in pair.under_test.raw(pair.target_schema, "items")}
    assert rows[1]["_cdc_deleted_at"] is None and rows[1]["name"] == "back"
    assert rows[2]["_cdc_deleted_at"] is not None
    assert pair.assert_same("items") == 1


def test_a_value_the_source_did_not_resend_keeps_its_sink_value(pair):
    # A toasted value is not in the WAL of an update that did not change it: the sink must keep what it has.
    pair.sql("INSERT INTO items VALUES"
             " (1, 'a', 1, 1, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g))")
    pair.run()
    pair.sql("UPDATE items SET qty = 2 WHERE id = 1")
    batch = pair.capture()
    # The source may send the value as unchanged (the sink keeps its own) or re-read it: either way the sink ends
    # up with the value, never with a placeholder or NULL.
    assert batch.change_count == 1
    pipeline.load_batch(batch, pair.sink)
    pipeline.commit_position(pair.source, pair.sink, pair.positions, batch_id=batch.batch_id,
                             position_to=batch.position_to, needs_ledger=True)
    assert pair.assert_same("items") == 1


def test_a_failed_load_leaves_no_ledger_row_and_the_position_where_it_was(pair, monkeypatch):
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1); INSERT INTO pairs VALUES ('eu', 1, 'a')")
    pair.run()
    position = pair.positions.get(pair.source_id)
    pair.sql("UPDATE items SET qty = 2; UPDATE pairs SET label = 'b'")
    batch = pair.capture()
    # The last table's values become unreadable for any sink: the load must fail before anything is vouched for.
    broken = batch.tables["public.pairs"]
    batch.tables["public.pairs"] = broken.set_column(
        broken.column_names.index("num"), "num", pa.array(["not a number"] * broken.num_rows, pa.string()))
    with pytest.raises(CdcError):
        pipeline.load_batch(batch, pair.sink)
    assert not pair.sink.has_batch(batch.batch_id)
    assert pair.positions.get(pair.source_id) == position
    if pair.sink.capabilities.transactional:
        assert pair.under_test.read(pair.target_schema, "items", pair.columns("items"), True)[0]["qty"] == 1
    # Nothing was acknowledged: the next run captures the same changes again and converges.
    pair.run()
    assert pair.assert_same("items") == 1 and pair.assert_same("pairs") == 1


KINDS_ROW = {
    "id": 1, "i": -7, "big": 9223372036854775807, "n": decimal.Decimal("1234567890123456789012345678.0123456789"),
    "f": 1.5e-300, "b": True, "t": "héllo, \"wörld\"\n\\",
    "tz": dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=dt.timezone.utc),
    "ts": dt.datetime(1999, 12, 31, 23, 59, 59, 999999), "d": dt.date(2024, 2, 29), "tm": dt.time(23, 59, 59, 500000),
    "j": {"a": [1, 2, {"b": None}], "ü": "x"}, "js": {"k": 1}, "by": b"\x00\xde\xad\\\x0a",
    "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "arr": [1, None, 3],
}


def test_every_logical_type_round_trips(pair):
    from psycopg.types.json import Json, Jsonb

    columns = list(KINDS_ROW)
    insert = (f"INSERT INTO kinds ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})")

    base = KINDS_ROW
    if pair.sink.capabilities.dialect == "mongodb":
        # Two of these values have no BSON form, so a MongoDB sink cannot hold them as they are (its own tests show
        # that it refuses the one and truncates the other, as documented): a Decimal128 holds 34 significant digits,
        # not the 38 of this numeric(38,10), and a BSON date holds milliseconds, not microseconds.
        base = {**KINDS_ROW, "n": decimal.Decimal("1234567890123456789012.0123456789"),
                "ts": dt.datetime(1999, 12, 31, 23, 59, 59, 999000)}

    def row(**changes):
        values = {**base, **changes}
        values["j"], values["js"] = Jsonb(values["j"]), Json(values["js"])
        return [values[c] for c in columns]

    pair.sql(insert, row())
    pair.sql(insert, row(id=2, b=False, by=b"", t="", n=decimal.Decimal("-0.0000000001"), arr=[]))
    pair.sql(insert, [3] + [None] * (len(columns) - 1))
    pair.run()  # by snapshot
    pair.sql(insert, row(id=4, tz=dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc), f=-0.25))
    pair.sql("UPDATE kinds SET i = i + 1, t = t || '!' WHERE id = 1")
    pair.run()  # by stream
    assert pair.assert_same("kinds") == 4


# ------------------------------------------------------------------------- rows of EDGE_CASES.md, on every pair


def test_names_that_need_quoting_and_names_that_differ_only_in_case(pair_factory):
    pair = pair_factory(
        ddl='CREATE TABLE "Mixed_Ü" ("Id Key" int PRIMARY KEY, "select" text, "a b" text, "quote""d" int, _op text,'
            ' _position int, "ünï" text);'
            'CREATE TABLE "mixed_ü" (id int PRIMARY KEY, v text);'
            'CREATE TABLE "select" (id int PRIMARY KEY, "from" text)',
        tables=["public.Mixed_Ü", "public.mixed_ü", "public.select"],
    )
    pair.sql('INSERT INTO "Mixed_Ü" VALUES (1, \'s\', \'a\', 1, \'op\', 7, \'é\'),'
             ' (2, \'t\', \'b\', 2, NULL, NULL, NULL);'
             'INSERT INTO "mixed_ü" VALUES (1, \'lower\'); INSERT INTO "select" VALUES (1, \'f\')')
    pair.run()
    pair.sql('UPDATE "Mixed_Ü" SET "a b" = \'changed\', "quote""d" = 3 WHERE "Id Key" = 1;'
             'DELETE FROM "Mixed_Ü" WHERE "Id Key" = 2; UPDATE "mixed_ü" SET v = \'still lower\'')
    pair.run()
    assert pair.assert_same("Mixed_Ü") == 1
    assert pair.assert_same("mixed_ü") == 1
    assert pair.assert_same("select") == 1


def test_keys_of_numeric_uuid_and_bytea_types_are_one_key_each(pair_factory):
    pair = pair_factory(
        ddl="CREATE TABLE knum (id numeric PRIMARY KEY, v text); CREATE TABLE kuuid (id uuid PRIMARY KEY, v text);"
            "CREATE TABLE kbytes (id bytea PRIMARY KEY, v text)",
        tables=["public.knum", "public.kuuid", "public.kbytes"],
    )
    pair.sql("INSERT INTO knum VALUES (1.0, 'a'), (2, 'b'); INSERT INTO kuuid VALUES "
             "('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'a'); INSERT INTO kbytes VALUES ('\\x00ff', 'a'), ('', 'e')")
    pair.run()
    # 1.00 is the key 1.0 written in other text: the same row, never a second one.
    pair.sql("UPDATE knum SET id = 1.00, v = 'a2' WHERE id = 1; UPDATE knum SET v = 'b2' WHERE id = 2.000;"
             "UPDATE kuuid SET v = 'a2'; UPDATE kbytes SET v = 'a2' WHERE id = '\\x00ff';"
             "DELETE FROM kbytes WHERE id = ''")
    pair.run()
    assert pair.assert_same("knum") == 2
    assert pair.assert_same("kuuid") == 1
    assert pair.assert_same("kbytes") == 1


def test_values_with_no_portable_form_round_trip_exactly_or_stop_before_any_damage(pair):
    pair.sql("INSERT INTO kinds (id, t) VALUES (1, 'fine')")
    pair.run()
    position = pair.positions.get(pair.source_id)
    pair.sql("INSERT INTO kinds (id, tz, d, n) VALUES (2, 'infinity', '0044-03-15 BC', 'NaN'),"
             " (3, '-infinity', '10000-01-01', 1)")
    if pair.sink.capabilities.dialect == "postgresql":
        pair.run()  # the same kind of sink: exact, specials included (compared as PostgreSQL text)
        columns = ["id", "tz", "d", "n"]
        assert table_rows(pair.url, "kinds", columns=columns) == table_rows(
            pair.under_test.location, f"{pair.target_schema}.kinds", columns=columns)
        return
    # A typed sink has no timestamp for infinity nor a decimal NaN: a clear error naming column and value, and
    # nothing of the batch written.
    refusal = r"column '(n|tz|d)'.*'(NaN|infinity|-infinity)'.*nothing of this batch"
    with pytest.raises(CdcError, match=refusal) as caught:
        pair.run()
    assert getattr(caught.value, "terminal", False)
    assert pair.positions.get(pair.source_id) == position
    assert [r["id"] for r in pair.under_test.read(pair.target_schema, "kinds", pair.columns("kinds"), True)] == [1]


def test_add_column_with_a_default_shows_on_existing_rows(pair):
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1), (2, 'b', 2, 2)")
    pair.run()
    pair.sql("ALTER TABLE items ADD COLUMN flag boolean NOT NULL DEFAULT true;"
             "ALTER TABLE items ADD COLUMN label text DEFAULT 'none'; UPDATE items SET qty = 5 WHERE id = 2;"
             "INSERT INTO items (id, name, flag) VALUES (3, 'c', false)")
    pair.run()
    assert pair.assert_same("items") == 3


def test_ddl_inside_a_transaction_between_changes_keeps_every_value_in_its_column(pair):
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1, 'n1')")
    pair.run()
    pair.sql("BEGIN; INSERT INTO items VALUES (2, 'b', 2, 2, 'n2'); ALTER TABLE items RENAME COLUMN note TO remark;"
             "ALTER TABLE items ADD COLUMN extra int; INSERT INTO items VALUES (3, 'c', 3, 3, 'n3', 33);"
             "UPDATE items SET remark = 'r1' WHERE id = 1; COMMIT")
    pair.run()
    assert pair.assert_same("items") == 3


def test_a_lossy_type_change_holds_only_that_table(pair):
    pair.sql("INSERT INTO items VALUES (1, 'a', 1, 1); INSERT INTO pairs VALUES ('eu', 1, 'a')")
    pair.run()
    pair.sql("ALTER TABLE items ALTER COLUMN name TYPE int USING length(name); UPDATE items SET qty = 9;"
             "UPDATE pairs SET label = 'flows'")
    with pytest.raises(TablesHeldError, match="items"):
        pair.run()
    assert "public.items" in pair.sink.held_tables(pair.source_id)
    assert pair.assert_same("pairs") == 1  # the other table kept flowing
    rows = pair.under_test.read(pair.target_schema, "items", pair.columns("items")[2:3], True)
    assert rows == [{"qty": 1}]  # nothing of the held table was applied


def test_a_second_capture_of_a_snapshot_page_is_refused_under_the_sinks_lock(pair, caplog):
    pair.sql("INSERT INTO items SELECT g, 'item ' || g, g, g * 1.5 FROM generate_series(1, 50) g")
    page = pipeline.capture_batch(pair.source, pair.sink, pair.positions, 20)  # the snapshot's first page
    pipeline.load_batch(page, pair.sink)
    pipeline.commit_position(pair.source, pair.sink, pair.positions, batch_id=page.batch_id,
                             position_to=page.position_to, needs_ledger=True)
    first = pipeline.capture_batch(pair.source, pair.sink, pair.positions, 20)  # the next page
    pair.sql("UPDATE items SET qty = 0 WHERE id = 5")  # a key read already: the log part of the next capture
    second = pipeline.capture_batch(pair.source, pair.sink, pair.positions, 20)  # the same range, captured again
    assert second.batch_id != first.batch_id and second.seq_from == first.seq_from
    assert pipeline.load_batch(first, pair.sink)["applied"] is True
    # Straight to the sink, past the pipeline's own check: the sink refuses it under its lock, and says why.
    with caplog.at_level("INFO"):
        result = pair.sink.apply(second)
    assert result.applied is False and result.stale is not None and "captured while a snapshot" in result.stale
    assert "already in the ledger" not in caplog.text
    assert not pair.sink.has_batch(second.batch_id) and pair.sink.high_water(pair.source_id) == first.seq_to
    summary = pipeline.load_batch(second, pair.sink)
    assert summary["stale"] is True and summary["applied"] is False
    pipeline.commit_position(pair.source, pair.sink, pair.positions, batch_id=first.batch_id,
                             position_to=first.position_to, needs_ledger=True)
    pair.run()
    assert pair.assert_same("items") == 50
