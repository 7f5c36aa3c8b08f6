"""The MySQL/MariaDB source on a real MariaDB with row binlog: settings, snapshot, stream, DDL, positions."""

from __future__ import annotations

import asyncio
import logging

import pymysql
import pytest
from cdc_testing import unique_id

from airflow_provider_cdc.connectors.mysql.options import MySqlSourceOptions
from airflow_provider_cdc.connectors.mysql.probe import MySqlChangeProbe
from airflow_provider_cdc.connectors.mysql.source import MySqlSource
from airflow_provider_cdc.errors import PositionLostError, SourceError, TableRefusedError

pytestmark = pytest.mark.timeout(180)


def run(url: str, statements: str) -> None:
    conn = pymysql.connect(**_kwargs(url), autocommit=True, client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
    with conn, conn.cursor() as cur:
        cur.execute(statements)
        while cur.nextset():
            pass


def _kwargs(url: str) -> dict:
    from airflow_provider_cdc.connectors.mysql.connection import connect_kwargs, database_of

    return {**connect_kwargs(url), "database": database_of(url), "charset": "utf8mb4"}


class Capture:
    """A source and its position, captured batch after batch (what the pipeline does, minus the sink)."""

    def __init__(self, url: str, tables: list[str], *, snapshot: str = "initial", **options) -> None:
        from airflow_provider_cdc.connectors.mysql.connection import database_of

        self.url = url
        self.db = database_of(url)
        self.source = MySqlSource(url, source_id=unique_id("my"), tables=[(self.db, t) for t in tables],
                                  snapshot=snapshot, options=MySqlSourceOptions(**options))
        self.source.prepare()
        self.position = self.source.initial_position()

    def next(self, max_changes: int = 10_000):
        batch = self.source.capture(self.position, max_changes)
        self.position = batch.position_to
        return batch

    def events(self, max_changes: int = 10_000) -> list:
        return list(self.next(max_changes).events())


@pytest.fixture
def db(mariadb_database):
    run(mariadb_database, "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50), qty INT, "
                          "price DECIMAL(12,2), note TEXT)")
    return mariadb_database


def test_snapshot_then_every_kind_of_change(db):
    run(db, "INSERT INTO items VALUES (1, 'a', 1, 1.50, NULL), (2, 'b', 2, 2.25, 'x')")
    cap = Capture(db, ["items"])
    events = cap.events()
    assert [(e.op, e.after["id"], e.after["price"]) for e in events if e.op == "r"] == [("r", "1", "1.50"),
                                                                                      ("r", "2", "2.25")]
    assert [e.op for e in events][0] == "s"
    assert "snapshot" not in cap.position
    run(db, "INSERT INTO items VALUES (3, 'c', 3, 3, 'n'); UPDATE items SET qty = 20 WHERE id = 2;"
            "DELETE FROM items WHERE id = 1; UPDATE items SET id = 30 WHERE id = 3; TRUNCATE items;"
            "INSERT INTO items VALUES (4, 'd', 4, 4, NULL)")
    events = cap.events()
    got = [(e.op, (e.after or e.before or {}).get("id")) for e in events]
    assert got == [("c", "3"), ("u", "2"), ("d", "1"), ("d", "3"), ("c", "30"), ("t", None), ("c", "4")]
    update = events[1]
    assert update.after == {"id": "2", "name": "b", "qty": "20", "price": "2.25", "note": "x"}
    moved = events[4]
    assert moved.before["id"] == "3" and moved.after["name"] == "c"
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert cap.events() == []  # drained


def test_capturing_the_same_position_again_gives_the_same_batch(db):
    cap = Capture(db, ["items"], snapshot="never")
    start = cap.position
    run(db, "INSERT INTO items VALUES (1, 'a', 1, 1, NULL); UPDATE items SET qty = 2")
    first = cap.source.capture(start, 100)
    again = cap.source.capture(start, 100)
    assert first.batch_id == again.batch_id
    assert [e.to_dict() for e in first.events()] == [e.to_dict() for e in again.events()]


def test_a_large_transaction_stays_whole_and_the_next_batch_starts_after_it(db):
    cap = Capture(db, ["items"], snapshot="never")
    rows = ", ".join(f"({i}, 'n{i}', {i}, {i}, NULL)" for i in range(1, 1501))
    run(db, f"BEGIN; INSERT INTO items VALUES {rows}; COMMIT; INSERT INTO items VALUES (5000, 'after', 1, 1, NULL)")
    batch = cap.next(1000)
    assert batch.change_count == 1500
    assert batch.tables[f"{cap.db}.items"]["_cdc_tx_id"].unique().to_pylist() != [None]
    rest = cap.next(1000)
    assert [e.after["id"] for e in rest.events()] == ["5000"]


def test_rename_drop_re_add_and_reorder_follow_column_identity(db):
    run(db, "INSERT INTO items VALUES (1, 'a', 1, 1, 'n1')")
    cap = Capture(db, ["items"])
    cap.next()
    ids = dict(cap.position["schemas"][f"{cap.db}.items"]["ids"])
    run(db, "INSERT INTO items VALUES (2, 'b', 2, 2, 'n2'); ALTER TABLE items RENAME COLUMN note TO remark;"
            "ALTER TABLE items MODIFY qty INT FIRST; ALTER TABLE items DROP COLUMN name;"
            "ALTER TABLE items ADD COLUMN name VARCHAR(50) DEFAULT 'dflt';"
            "INSERT INTO items (id, qty, price, remark, name) VALUES (3, 3, 3, 'n3', 'c')")
    batch = cap.next()
    name = f"{cap.db}.items"
    final = batch.schemas[name]
    assert final.column_names == ["qty", "id", "price", "remark", "name"]
    by_name = {c.name: c.ordinal for c in final.columns}
    assert by_name["remark"] == ids["note"]  # renamed: the same column
    assert by_name["qty"] == ids["qty"]  # moved: the same column
    assert by_name["name"] != ids["name"]  # dropped and added again: a new column
    assert final.column("name").backfill == "dflt"
    rows = {e.after["id"]: e.after for e in batch.events() if e.op == "c"}
    # Written before the rename: its note arrives as remark, in its own column.
    assert rows["2"]["remark"] == "n2" and rows["3"]["remark"] == "n3" and rows["3"]["name"] == "c"
    assert len([c for c in batch.schema_changes if c.table == name]) >= 1


def test_a_purged_binlog_is_a_lost_position_naming_resnapshot(db, mariadb_server):
    cap = Capture(db, ["items"], snapshot="never")
    run(db, "INSERT INTO items VALUES (1, 'a', 1, 1, NULL)")
    mariadb_server.purge_binlogs()
    with pytest.raises(PositionLostError, match=r"purged.*resnapshot"):
        cap.source.capture(cap.position, 100)
    with pytest.raises(PositionLostError, match="resnapshot"):
        cap.source.has_changes(cap.position)
    probe = MySqlChangeProbe(db, source_id=cap.source.source_id, tables=cap.source.qualified_tables)
    with pytest.raises(PositionLostError, match="resnapshot"):
        asyncio.run(probe.has_changes_after(cap.position))


def test_changes_elsewhere_on_the_server_move_an_idle_source_forward(db, mariadb_database_factory):
    other = mariadb_database_factory("other")
    cap = Capture(db, ["items"], snapshot="never")
    assert cap.source.has_changes(cap.position) is False
    run(other, "CREATE TABLE busy (id INT PRIMARY KEY); INSERT INTO busy VALUES (1), (2)")
    assert cap.source.has_changes(cap.position) is True
    probe = MySqlChangeProbe(db, source_id=cap.source.source_id, tables=cap.source.qualified_tables)
    assert asyncio.run(probe.has_changes_after(cap.position)) is True
    before = cap.position
    batch = cap.next()
    assert batch.is_empty and cap.source.position_order(cap.position) > cap.source.position_order(before)
    assert cap.source.has_changes(cap.position) is False


def test_resume_by_gtid(db):
    cap = Capture(db, ["items"], snapshot="never", position_mode="gtid")
    run(db, "INSERT INTO items VALUES (1, 'a', 1, 1, NULL)")
    first = cap.next()
    assert first.change_count == 1 and cap.position["gtid"] and cap.position["gtid_kind"] == "mariadb"
    run(db, "INSERT INTO items VALUES (2, 'b', 2, 2, NULL)")
    assert [e.after["id"] for e in cap.events()] == ["2"]


def test_wrong_server_settings_are_named_with_their_fix(db, mariadb_server):
    with mariadb_server.connect() as conn, conn.cursor() as cur:
        cur.execute("SET GLOBAL binlog_row_image = 'MINIMAL'")
        try:
            source = MySqlSource(db, source_id="s", tables=[(_kwargs(db)["database"], "items")])
            with pytest.raises(SourceError, match=r"binlog_row_image is MINIMAL.*SET GLOBAL binlog_row_image"):
                source.prepare()
        finally:
            cur.execute("SET GLOBAL binlog_row_image = 'FULL'")


def test_tables_without_a_usable_key_are_refused_at_start(db):
    run(db, "CREATE TABLE nokey (a INT, b TEXT); CREATE TABLE ukey (a INT NOT NULL, b TEXT, UNIQUE KEY (a))")
    with pytest.raises(TableRefusedError, match="nokey"):
        Capture(db, ["items", "nokey"])
    cap = Capture(db, ["ukey"], snapshot="never")
    run(db, "INSERT INTO ukey VALUES (1, 'x'); UPDATE ukey SET b = 'y' WHERE a = 1")
    events = cap.events()
    assert [(e.op, e.after["b"]) for e in events if e.op != "s"] == [("c", "x"), ("u", "y")]
    assert cap.position["schemas"][f"{cap.db}.ukey"]["table"]["columns"][0]["primary_key"] is True


def test_an_online_schema_change_cut_over_reads_the_table_again(db, caplog):
    run(db, "INSERT INTO items VALUES (1, 'a', 1, 1, NULL), (2, 'b', 2, 2, NULL)")
    cap = Capture(db, ["items"])
    cap.next()
    # gh-ost's shape: a shadow table, altered and filled outside the captured table, then an atomic swap.
    run(db, "CREATE TABLE _items_gho LIKE items; ALTER TABLE _items_gho ADD COLUMN flag INT DEFAULT 7;"
            "INSERT INTO _items_gho (id, name, qty, price, note) SELECT id, name, qty, price, note FROM items;"
            "UPDATE _items_gho SET flag = 9 WHERE id = 2;"
            "RENAME TABLE items TO _items_del, _items_gho TO items; INSERT INTO items VALUES (3, 'c', 3, 3, NULL, 5)")
    rows: dict[str, str | None] = {}
    with caplog.at_level(logging.WARNING, logger="airflow_provider_cdc"):
        for _ in range(5):
            batch = cap.next()
            for e in batch.events():
                if e.op in ("r", "c", "u"):
                    rows[e.after["id"]] = e.after.get("flag")
            if "snapshot" not in cap.position:
                break
    assert "online schema change" in caplog.text
    # Read again under the new schema: every row with its flag.
    assert rows == {"1": "7", "2": "9", "3": "5"}


def test_snapshot_converges_with_changes_made_while_it_runs(db):
    run(db, "INSERT INTO items VALUES " + ", ".join(f"({i}, 'n{i}', {i}, {i}, NULL)" for i in range(1, 101)))
    cap = Capture(db, ["items"])
    state: dict[str, dict] = {}

    def apply(batch):
        for e in batch.events():
            if e.op in ("r", "c", "u"):
                state[e.after["id"]] = e.after
            elif e.op == "d":
                state.pop(e.before["id"], None)
            elif e.op == "t":
                state.clear()

    apply(cap.next(20))
    run(db, "UPDATE items SET qty = -1 WHERE id IN (5, 50, 95); DELETE FROM items WHERE id IN (6, 60);"
            "INSERT INTO items VALUES (500, 'new', 1, 1, NULL); UPDATE items SET id = 600 WHERE id = 70")
    while True:
        batch = cap.next(20)
        apply(batch)
        if batch.is_empty and "snapshot" not in cap.position:
            break
    conn = pymysql.connect(**_kwargs(db))
    with conn, conn.cursor() as cur:
        cur.execute("SELECT id, qty FROM items ORDER BY id")
        expected = {str(i): str(q) for i, q in cur.fetchall()}
    assert {k: v["qty"] for k, v in state.items()} == expected
