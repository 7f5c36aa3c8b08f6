"""A batch captured again from the same position while a snapshot is pending loses nothing and applies nothing twice
(``airflow_provider_cdc.connectors.recapture``, and the Delta sink's roll-back of a crashed batch).

While a snapshot is pending, a capture reads the log first and then a page of rows, numbered after however many log
changes it read, and read as they are at that moment: a second capture from the same position, after more changes,
is another batch (other ``seq`` numbers, another page). Here the first one is interrupted in the Delta sink between
its two tables' commits (the way a SIGKILL leaves it: one table took the batch, the ledger has nothing), the source
changes, the next run captures again from the stored position and loads: the table that took the first batch must
be rolled back, not skipped by its transaction version nor filtered by it. Then the source drains into the sink, and
both hold the same rows.

The other tests load both captures, the earlier one first, for a MariaDB and a MongoDB source (PostgreSQL's is in
``test_failures_concurrent_runs.py``): the later one is stale, refused by the load and left out by the commit. The
Delta sink refuses it on its own too, when it is handed the batch directly.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cdc_testing import assert_ledger_consistent, drain, staged_run
from contract.pairs import normalise, pg_rows
from deltalake import DeltaTable

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.connectors.delta import sink as delta_sink
from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.staging import BatchStore
from airflow_provider_cdc.tables import Column
from reliability.conftest import (
    assert_sink_ledger_consistent,
    fault_before,
    source_columns,
    stored_position,
)

pytestmark = [pytest.mark.timeout(300)]

TABLES = ("orders", "users")  # the Delta sink commits its tables in this (sorted) order


class Killed(BaseException):
    """Stands for the SIGKILL: nothing in the product catches it, so nothing after it runs."""


def delta_rows(root: Path, table: str, columns: list[Column]) -> list[dict[str, Any]]:
    rows = DeltaTable(str(root / "public" / table)).to_pyarrow_table().to_pylist()
    return sorted(({c.name: normalise(r[c.name], c) for c in columns} for r in rows), key=repr)


def assert_same(source_url: str, root: Path, table: str) -> int:
    columns = source_columns(source_url, table)
    source = sorted(pg_rows(source_url, "public", table, columns), key=repr)
    sink = delta_rows(root, table, columns)
    missing, extra = [r for r in source if r not in sink], [r for r in sink if r not in source]
    assert not missing and not extra, (f"{table}: {len(source)} source rows, {len(sink)} sink rows; missing in the "
                                       f"sink {missing[:3]}, extra in the sink {extra[:3]}")
    return len(source)


def change(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def test_a_kill_between_two_table_commits_then_a_renumbered_recapture_loses_nothing(source_pg, shop_pipeline,
                                                                                   tmp_path, monkeypatch):
    root = tmp_path / "lake"
    shop = shop_pipeline(source_pg, root, name="recapture", users=20, orders=150, batch_size=60)
    source_url, source_id, hook = shop.source_url, shop.source_id, shop.hook
    staged_run(hook, "first")  # the snapshot's first page: the 20 users and orders 1-40
    start = stored_position(source_id)
    assert start is not None and start["snapshot"] == {"pending": ["public.orders"], "after": ["40"]}

    # Log changes before the batch that gets killed: users stream, orders up to key 40 stream too.
    change(source_url, "UPDATE users SET balance = balance + 1 WHERE id <= 5",
           "UPDATE orders SET status = 'paid' WHERE id = 10")

    def kill() -> None:
        raise Killed("SIGKILL between the two table commits")

    fired = fault_before(monkeypatch, delta_sink, "merge_table", kill, at_call=2)
    with pytest.raises(Killed):
        staged_run(hook, "killed")
    monkeypatch.undo()
    assert fired == [1]
    with hook.connected() as (_, sink):
        assert [row.batch_id for row in sink.ledger_rows(source_id)] == [start["batch_id"]]  # nothing committed
        orders_uri = sink.table_uri("orders")
    assert stored_position(source_id) == start
    crashed = DeltaTable(orders_uri).history(1)[0][delta_sink.BATCH_KEY]  # orders took the killed batch
    assert crashed != start["batch_id"]

    # More changes before the next run: the page the killed batch read changes (an update, a delete, rows past its
    # end), and the log part before the page grows, so the next capture numbers everything differently.
    change(source_url,
           "UPDATE orders SET amount = 999, status = 'changed' WHERE id IN (50, 51, 90)",
           "DELETE FROM orders WHERE id IN (60, 61, 62)",
           "UPDATE orders SET status = 'paid again' WHERE id IN (20, 21)",
           "DELETE FROM orders WHERE id = 30",
           "INSERT INTO users (id, email, name, balance) SELECT g, 'late' || g || '@example.com', 'Late ' || g, g "
           "FROM generate_series(100, 120) g",
           "INSERT INTO orders (user_id, amount, status) SELECT 100 + g % 20, g, 'late' FROM generate_series(1, 10) g")
    again = staged_run(hook, "again")
    assert again["seq_from"] == start["seq"] + 1 and again["batch_id"] != crashed
    restored = [commit for commit in DeltaTable(orders_uri).history(5)
                if commit.get("operation") == "RESTORE"]
    assert restored and restored[0][delta_sink.ROLLED_BACK_KEY] == crashed, restored

    change(source_url, "UPDATE orders SET status = 'last' WHERE id IN (41, 95, 149)",
           "DELETE FROM users WHERE id = 3")
    drain(hook, "after")
    for table in TABLES:
        assert_same(source_url, root, table)
    with hook.connected() as (_, sink):
        ledger = assert_sink_ledger_consistent(sink, source_id)
    assert crashed not in [batch_id for batch_id, _, _ in ledger]


# --- two captures from one position, both loaded: the later one is stale, for every source --------------------------


def capture(hook: CdcHook, run_id: str) -> dict[str, Any]:
    with hook.connected() as (source, sink):
        return pipeline.capture_stage(source, sink, hook.positions, hook.store,
                                      max_changes=hook.source_config.batch_size, run_id=run_id)


def load_and_commit(hook: CdcHook, summary: dict[str, Any], run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    with hook.connected() as (source, sink):
        loaded = pipeline.load_stage(summary["manifest_uri"], sink, run_id=run_id, policy=hook.schema_policy)
        committed = pipeline.commit_stage(summary["manifest_uri"], source, sink, hook.positions, hook.store,
                                          newly_held=loaded["newly_held"])
    return loaded, committed


def overlapping_captures(hook: CdcHook, change_source: Callable[[bool], None]) -> None:
    """The first page loads; then two captures from the same position, with source changes before each (a few, then
    more: the later capture's log part is longer); the earlier one loads and commits first, then the later one,
    which must be refused as stale, storing nothing; then the source drains."""
    load_and_commit(hook, capture(hook, "first"), "first")
    assert "snapshot" in (stored_position(hook.source_id) or {}), "the snapshot must still be pending"
    change_source(False)
    continuous = capture(hook, "continuous")
    change_source(True)
    manual = capture(hook, "manual")  # from the same stored position: the snapshot is still pending
    assert continuous["seq_from"] == manual["seq_from"] and continuous["batch_id"] != manual["batch_id"]
    load_and_commit(hook, continuous, "continuous")
    stored = stored_position(hook.source_id)
    loaded, committed = load_and_commit(hook, manual, "manual")
    assert loaded["stale"] and not loaded["applied"] and manual["batch_id"] in loaded["reason"], loaded
    assert committed["superseded"] and not committed["position_stored"], committed
    assert stored_position(hook.source_id) == stored
    with hook.connected() as (_, sink):
        assert not sink.has_batch(manual["batch_id"])
    drain(hook, "after")


def test_mariadb_two_captures_from_one_position_during_a_snapshot_lose_no_change(private_mariadb, sink_pg,
                                                                                 shop_pipeline):
    from e2e.test_mariadb_pipeline import assert_same, execute, random_changes

    shop = shop_pipeline(private_mariadb, sink_pg, name="mrecapture", users=100, orders=150, batch_size=60)
    source_url, sink_url, source_id, hook = shop.source_url, shop.sink_url, shop.source_id, shop.hook

    def change_source(more: bool) -> None:
        execute(source_url, "UPDATE users SET balance = balance + 1 WHERE id <= 3")
        if more:  # streamed keys, a key past the page, and rows of the table whose snapshot has not started
            execute(source_url, "UPDATE users SET name = concat(name, '!') WHERE id <= 12; "
                    "DELETE FROM users WHERE id IN (5, 70); DELETE FROM orders WHERE id IN (7, 8); "
                    "INSERT INTO users (id, email, name, balance) VALUES (500, 'late@example.com', 'Late', 1)")

    overlapping_captures(hook, change_source)
    random_changes(source_url, random.Random(17), 4)
    drain(hook, "random")
    assert_same(source_url, sink_url, "users")
    assert_same(source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)


def test_mongodb_two_captures_from_one_position_during_a_snapshot_lose_no_change(private_mongod, sink_pg,
                                                                                 shop_pipeline):
    from e2e.test_mongodb_pipeline import assert_same, random_changes, source_db, user_doc

    shop = shop_pipeline(private_mongod, sink_pg, name="mgrecapture", users=100, orders=150, batch_size=60)
    source_url, sink_url, source_id, hook = shop.source_url, shop.sink_url, shop.source_id, shop.hook

    def change_source(more: bool) -> None:
        with source_db(source_url) as db:
            db.users.update_many({"_id": {"$lte": 3}}, {"$inc": {"visits": 1}})
            if more:  # streamed keys, a key past the page, and documents of a collection not read yet
                db.users.update_many({"_id": {"$lte": 12}}, {"$set": {"name": "changed"}})
                db.users.delete_many({"_id": {"$in": [5, 70]}})
                db.orders.delete_one({})
                db.users.insert_one(user_doc(500))

    overlapping_captures(hook, change_source)
    random_changes(source_url, random.Random(17), 4)
    drain(hook, "random")
    assert_same(source_id, source_url, sink_url, "users")
    assert_same(source_id, source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)


def test_the_delta_sink_refuses_a_stale_batch_itself(source_pg, shop_pipeline, tmp_path):
    """The same overlap into the Delta sink, the stale batch handed to the sink directly (as a load that checked
    before the other batch committed would): refused, nothing written; then the source drains and both agree."""
    root = tmp_path / "lake"
    shop = shop_pipeline(source_pg, root, name="drecapture", users=30, orders=100, batch_size=60)
    source_url, source_id, hook = shop.source_url, shop.source_id, shop.hook
    load_and_commit(hook, capture(hook, "first"), "first")
    change(source_url, "UPDATE users SET balance = balance + 1 WHERE id <= 4")
    continuous = capture(hook, "continuous")
    change(source_url, "UPDATE users SET name = name || '!' WHERE id <= 12", "DELETE FROM orders WHERE id = 70")
    manual = capture(hook, "manual")
    assert continuous["seq_from"] == manual["seq_from"] and continuous["batch_id"] != manual["batch_id"]
    load_and_commit(hook, continuous, "continuous")
    with hook.connected() as (_, sink):
        versions = {table: DeltaTable(sink.table_uri(table)).version() for table in TABLES}
        ledger = [row.batch_id for row in sink.ledger_rows(source_id)]
        result = sink.apply(BatchStore.read(manual["manifest_uri"]), run_id="manual")
        assert not result.applied and result.upserted == 0
        assert {table: DeltaTable(sink.table_uri(table)).version() for table in TABLES} == versions
        assert [row.batch_id for row in sink.ledger_rows(source_id)] == ledger
    drain(hook, "after")
    for table in TABLES:
        assert_same(source_url, root, table)
    with hook.connected() as (_, sink):
        assert_sink_ledger_consistent(sink, source_id)
