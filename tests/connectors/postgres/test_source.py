"""PgSource against real servers: events, before-images, TOAST, schema changes, slots, heartbeats, replay."""

from __future__ import annotations

import os

import psycopg
import pytest

from airflow_provider_cdc.connectors.postgres.source import PgSource
from airflow_provider_cdc.errors import PositionLostError, SourceError

# Slot names are cluster-wide: one per test process, so that tests running side by side never share one.
SLOT = f"cdc_t_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"

def make_source(url: str, tables=(("public", "items"),), **kwargs) -> PgSource:
    return PgSource(url, source_id="t", tables=list(tables), slot_name=SLOT, publication_name="cdc_t_pub", **kwargs)


@pytest.fixture
def items(pg_database):
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,3), doc text)")
        conn.execute("INSERT INTO items VALUES (1, 'one', 1.5, NULL), (2, 'two', 2.25, '')")
    return pg_database


def stream_position(source: PgSource) -> dict:
    """Skip the snapshot: a position at the slot's start."""
    source.prepare()
    return {"lsn": source.slot_state()["confirmed_flush_lsn"], "seq": 0, "schemas": {}}


def execute(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def test_prepare_creates_publication_and_slot(items):
    with make_source(items) as source:
        source.prepare()
        source.prepare()  # idempotent
        state = source.slot_state()
    assert state["plugin"] == "pgoutput"
    with psycopg.connect(items) as conn:
        assert conn.execute("SELECT tablename FROM pg_publication_tables WHERE pubname = 'cdc_t_pub'").fetchall() == [
            ("items",)
        ]


def test_prepare_refuses_what_it_may_not_create_and_bad_tables(items):
    with make_source(items, create_slot=False) as source:
        with pytest.raises(SourceError, match=f"replication slot '{SLOT}' does not exist.*create_slot: true"):
            source.prepare()
    with make_source(items, tables=[("public", "nope")]) as source:
        with pytest.raises(SourceError, match=r"tables not found: public\.nope"):
            source.prepare()
    execute(items, "CREATE TABLE nokey (a int)")
    with make_source(items, tables=[("public", "nokey")]) as source:
        with pytest.raises(SourceError, match="public.nokey: has no primary key"):
            source.prepare()


def test_insert_update_delete_truncate_become_events_in_commit_order(items):
    with make_source(items) as source:
        position = stream_position(source)
        execute(
            items,
            "INSERT INTO items VALUES (3, 'three', 3.125, 'tab\there')",
            "UPDATE items SET price = 9.999 WHERE id = 1",
            "DELETE FROM items WHERE id = 2",
            "TRUNCATE items",
        )
        batch = source.capture(position, 1000)
    events = list(batch.events())
    assert [e.op for e in events] == ["s", "c", "u", "d", "t"]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert events[1].after == {"id": "3", "name": "three", "price": "3.125", "doc": "tab\there"}
    assert events[2].after["price"] == "9.999" and events[2].before is None  # default replica identity
    assert events[3].before == {"id": "2", "name": None, "price": None, "doc": None}  # key only
    assert events[4].table == "public.items"
    assert batch.position_to["seq"] == 5
    assert batch.batch_id.startswith("t:") and batch.batch_id.endswith(batch.position_to["lsn"])


def test_replica_identity_full_gives_before_images_and_key_change_is_delete_then_create(items):
    execute(items, "ALTER TABLE items REPLICA IDENTITY FULL")
    with make_source(items) as source:
        position = stream_position(source)
        execute(items, "UPDATE items SET name = 'uno' WHERE id = 1", "UPDATE items SET id = 20 WHERE id = 2",
                "DELETE FROM items WHERE id = 1")
        events = [e for e in source.capture(position, 1000).events() if e.op != "s"]
    assert [e.op for e in events] == ["u", "d", "c", "d"]
    assert events[0].before == {"id": "1", "name": "one", "price": "1.500", "doc": None}
    assert events[0].after["name"] == "uno"
    assert events[1].before["id"] == "2" and events[2].after["id"] == "20" and events[2].after["doc"] == ""
    assert events[3].before == {"id": "1", "name": "uno", "price": "1.500", "doc": None}


def test_unchanged_toast_column_is_marked_not_sent(items):
    big = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 5000) g)"
    with make_source(items) as source:
        position = stream_position(source)
        execute(items, f"UPDATE items SET doc = {big} WHERE id = 1", "UPDATE items SET name = 'renamed' WHERE id = 1")
        updates = [e for e in source.capture(position, 1000).events() if e.op == "u"]
    assert len(updates[0].after["doc"]) == 5000 * 32 and not updates[0].unchanged
    assert updates[1].after["doc"] is None and updates[1].unchanged == frozenset({"doc"})
    assert updates[1].after["name"] == "renamed"


def test_schema_change_emits_s_event_with_the_new_column(items):
    with make_source(items) as source:
        position = stream_position(source)
        execute(items, "INSERT INTO items VALUES (5, 'five', 5, NULL)")
        first = source.capture(position, 1000)
        execute(items, "ALTER TABLE items ADD COLUMN color text", "INSERT INTO items VALUES (6, 'six', 6, NULL, 'red')")
        second = source.capture(first.position_to, 1000)
    assert [c.table for c in first.schema_changes] == ["public.items"]
    (change,) = second.schema_changes
    assert change.after.column_names == ["id", "name", "price", "doc", "color"]
    assert change.after.column("price").source_type == "numeric(10,3)"
    assert change.after.primary_key == ["id"]
    (event,) = [e for e in second.events() if e.op == "c"]
    assert event.after["color"] == "red" and event.seq == change.seq + 1


def test_capture_is_replayable_and_acknowledge_moves_the_slot(items):
    with make_source(items) as source:
        position = stream_position(source)
        execute(items, "INSERT INTO items VALUES (7, 'seven', 7, NULL)", "UPDATE items SET name = 'x' WHERE id = 7")
        first = source.capture(position, 1000)
        again = source.capture(position, 1000)
        assert first.batch_id == again.batch_id
        assert [e.to_dict() for e in first.events()] == [e.to_dict() for e in again.events()]
        assert source.slot_state()["confirmed_flush_lsn"] == position["lsn"]  # capture never acknowledges
        source.acknowledge(first.position_to)
        assert source.slot_state()["confirmed_flush_lsn"] == first.position_to["lsn"]
        source.acknowledge(position)  # never backwards
        assert source.slot_state()["confirmed_flush_lsn"] == first.position_to["lsn"]
        # A position stored ahead of the slot (crash between Variable and acknowledgement) skips what was loaded.
        assert source.capture(first.position_to, 1000).change_count == 0


def test_batch_size_keeps_transactions_whole(items):
    with make_source(items) as source:
        position = stream_position(source)
        with psycopg.connect(items) as conn:
            conn.execute("INSERT INTO items SELECT g, 'bulk', g, NULL FROM generate_series(100, 399) g")
            conn.commit()
            conn.execute("INSERT INTO items SELECT g, 'bulk', g, NULL FROM generate_series(400, 449) g")
            conn.commit()
        first = source.capture(position, 10)
        assert first.change_count == 300  # one transaction of 300 is not split
        second = source.capture(first.position_to, 10)
        assert second.change_count == 50 and second.seq_from == first.seq_to + 1


def test_heartbeat_advances_an_idle_slot(items):
    with make_source(items) as source:
        position = stream_position(source)
        assert not source.has_changes(position)
        source.heartbeat()
        assert source.has_changes(position)
        batch = source.capture(position, 1000)
        assert batch.is_empty and batch.position_to["lsn"] != position["lsn"]
        assert batch.position_to["seq"] == position["seq"]
        source.acknowledge(batch.position_to)
        assert source.slot_state()["confirmed_flush_lsn"] == batch.position_to["lsn"]
        assert not source.has_changes(batch.position_to)


def test_lost_positions_are_clear_errors(items):
    with make_source(items) as source:
        position = stream_position(source)
        execute(items, "INSERT INTO items VALUES (8, 'eight', 8, NULL)")
        batch = source.capture(position, 1000)
        source.acknowledge(batch.position_to)
        with pytest.raises(PositionLostError, match="past the stored position"):
            source.capture(position, 1000)
        execute(items, f"SELECT pg_drop_replication_slot('{SLOT}')")
        with pytest.raises(PositionLostError, match=f"replication slot .{SLOT}. was dropped.*resnapshot t"):
            source.capture(batch.position_to, 1000)


def test_snapshot_reads_tables_in_key_order_in_bounded_chunks(items):
    execute(items, "INSERT INTO items SELECT g, 'n' || g, g, NULL FROM generate_series(3, 25) g")
    with make_source(items) as source:
        source.prepare()
        position, ids = None, []
        for _ in range(10):
            batch = source.capture(position, 10)
            ids += [int(e.after["id"]) for e in batch.events() if e.op == "r"]
            position = batch.position_to
            if "snapshot" not in position:
                break
    assert ids == list(range(1, 26))  # typed key order (text order would put 10 before 2), nothing twice
    assert position["seq"] == 25 + 1  # one schema event



@pytest.mark.parametrize("identity", ["default", "full"])
def test_key_swap_and_key_moves_over_toast_reach_the_sink_faithfully(pg_database_factory, identity):
    """``UPDATE s SET id = 3 - id`` under a deferred key (allowed with REPLICA IDENTITY FULL) and key updates of
    rows whose out-of-line value did not change: each row keeps its own values under its new key."""
    from airflow_provider_cdc.connectors.postgres.sink import PgSink

    url, sink_url = pg_database_factory(), pg_database_factory()
    deferrable = "DEFERRABLE INITIALLY DEFERRED" if identity == "full" else ""
    execute(url, f"CREATE TABLE s (id int PRIMARY KEY {deferrable}, name text, doc text)",
            "ALTER TABLE s ALTER COLUMN doc SET STORAGE EXTERNAL",
            f"ALTER TABLE s REPLICA IDENTITY {identity.upper()}",
            "INSERT INTO s SELECT g, 'n' || g, repeat(md5(g::text), 200) FROM generate_series(1, 6) g")
    with make_source(url, tables=[("public", "s")]) as source, PgSink(sink_url, sink_id="w") as sink:
        source.prepare()
        batch = source.capture(None, 1000)  # snapshot
        sink.apply(batch)
        position = batch.position_to
        statements = ["UPDATE s SET id = id + 100 WHERE id = 5", "UPDATE s SET id = id + 1 WHERE id = 105"]
        if identity == "full":
            statements.append("UPDATE s SET id = 3 - id WHERE id IN (1, 2)")
        execute(url, *statements)
        batch = source.capture(position, 1000)
        sink.apply(batch)
    with psycopg.connect(url) as src, psycopg.connect(sink_url) as dst:
        query = "SELECT id, name, md5(doc) FROM s ORDER BY id"
        assert dst.execute(query).fetchall() == src.execute(query).fetchall()
        assert len(src.execute(query).fetchall()) == 6


def test_deferrable_key_without_full_identity_is_refused_and_never_published(pg_database):
    execute(pg_database, "CREATE TABLE d (id int PRIMARY KEY DEFERRABLE, v text)", "INSERT INTO d VALUES (1, 'a')",
            "CREATE TABLE n (id int PRIMARY KEY, v text)", "ALTER TABLE n REPLICA IDENTITY NOTHING")
    with make_source(pg_database, tables=[("public", "d"), ("public", "n")]) as source:
        with pytest.raises(SourceError, match=r"public\.d: its primary key is DEFERRABLE.*public\.n: REPLICA IDENTITY "
                                              r"NOTHING.*Nothing was published"):
            source.prepare()
    with psycopg.connect(pg_database, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication_tables WHERE pubname = 'cdc_t_pub'").fetchone() == (0,)
        conn.execute("UPDATE d SET v = 'b'")  # the application's own writes still work
        conn.execute("DELETE FROM d")


def test_user_publication_row_filter_reaches_the_snapshot_and_column_lists_are_refused(pg_database):
    execute(pg_database, "CREATE TABLE f (id int PRIMARY KEY, region text, v text)",
            "INSERT INTO f SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'v' || g"
            " FROM generate_series(1, 10) g",
            "CREATE PUBLICATION eu_only FOR TABLE f WHERE (region = 'eu')")
    source = PgSource(pg_database, source_id="t", tables=[("public", "f")], slot_name=SLOT,
                      publication_name="eu_only", create_publication=False)
    with source:
        source.prepare()
        batch = source.capture(None, 1000)
        snapshot_ids = sorted(int(e.after["id"]) for e in batch.events() if e.op == "r")
        assert snapshot_ids == [2, 4, 6, 8, 10]  # what the stream will send changes for
        execute(pg_database, "INSERT INTO f VALUES (11, 'us', 'x'), (12, 'eu', 'y')")
        later = source.capture(batch.position_to, 1000)
        assert [e.after["id"] for e in later.events() if e.op == "c"] == ["12"]
    execute(pg_database, "CREATE PUBLICATION some_columns FOR TABLE f (id, region)")
    source = PgSource(pg_database, source_id="u", tables=[("public", "f")], slot_name="cdc_u",
                      publication_name="some_columns", create_publication=False)
    with source, pytest.raises(SourceError, match=r"publication 'some_columns'.*public\.f has a column list"):
        source.prepare()


def test_a_position_from_another_timeline_or_server_is_lost(items):
    with make_source(items) as source:
        source.prepare()
        position = source.initial_position(snapshot=False)
        assert position["system_id"] and position["timeline"] >= 1
        for key, value, reason in (("timeline", position["timeline"] + 1, "timeline changed"),
                                   ("system_id", "1", "another server")):
            with pytest.raises(PositionLostError, match=f"{reason}.*resnapshot t"):
                source.capture({**position, key: value}, 100)
        assert source.capture(position, 100).is_empty  # the real one still works
