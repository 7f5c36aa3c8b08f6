"""A configured table dropped or renamed during its serial initial snapshot (PostgreSQL 15 and 18).

README: "a configured table is dropped or renamed | it stops flowing, with a warning in the task log; the other
tables keep flowing; its sink table is kept". The serial snapshot (no ``snapshot_ranges``) reads ``users`` chunk by
chunk; changes of keys past its last chunk are dropped from the stream while it runs (the snapshot reads them
later). When the table is gone before the snapshot reaches them, the changes of those keys still ahead in the stream
must not be loaded either: they would land on rows the sink never had (a row with only the columns an update sent,
or an update that did not resend its out-of-line TOAST value, which the sink refuses, holding every table's batch).
The ranged snapshot's counterpart is in ``test_parallel_snapshot.py``."""

from __future__ import annotations

import psycopg
import pytest
from cdc_testing import (
    assert_ledger_consistent,
    assert_same_rows,
    create_shop,
    staged_run,
    table_rows,
    unique_id,
    write_config,
)

from airflow_provider_cdc.hooks.cdc import CdcHook

USERS, BATCH = 400, 60  # the snapshot of users needs several chunks; a run's stream part reads about BATCH / 2


def _position(hook: CdcHook) -> dict:
    position = hook.positions.get(hook.source_id)
    assert position is not None, f"no stored position for {hook.source_id}"
    return position


def _drain(hook: CdcHook, prefix: str, max_runs: int = 50) -> None:
    """Staged runs until the stream is read to its end and no snapshot is pending. Unlike ``drain``, a run that
    loads nothing does not end it while the position still moves: the changes of a gone table (and of users_old)
    are read and dropped, in runs that load nothing, ahead of later changes of orders."""
    last = None
    for i in range(max_runs):
        summary = staged_run(hook, f"{prefix}_{i}")
        position = _position(hook)
        if summary["change_count"] == 0 and "snapshot" not in position and position["lsn"] == last:
            return
        last = position["lsn"]
    raise AssertionError(f"source {hook.source_id} did not drain in {max_runs} runs")


def _sql(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:  # autocommit: one transaction per statement
        for statement in statements:
            conn.execute(statement)


@pytest.fixture
def shop(pg_database_factory, tmp_path):
    """A source with users and orders, users rows with ids multiple of 7 holding a 128 kB ``bio`` (stored out of
    line: an update of other columns does not resend it), an empty sink, and a hook reading both tables serially."""
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=USERS, orders=200)
    # Before the slot exists (the first run creates it): the snapshot reads these values, the stream never sends them.
    _sql(source_url, "UPDATE users SET bio = (SELECT string_agg(md5(id::text || g::text), '') "
                     "FROM generate_series(1, 4000) g) WHERE id % 7 = 0")
    source_id = unique_id("gone")
    config_dir = tmp_path / "config"
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url,
                 tables=["users", "orders"], batch_size=BATCH)
    return CdcHook(source_id, str(config_dir)), source_url, sink_url


@pytest.mark.parametrize("going, read_rows_changed", [
    pytest.param("ALTER TABLE users RENAME TO users_old", False, id="renamed"),
    pytest.param("DROP TABLE users", False, id="dropped"),
    # Rows the snapshot had read (and the sink holds), changed before the table went: their changes reach the sink.
    pytest.param("ALTER TABLE users RENAME TO users_old", True, id="renamed-read-rows-changed"),
    pytest.param("DROP TABLE users", True, id="dropped-read-rows-changed"),
])
def test_a_table_gone_mid_serial_snapshot_stops_flowing_and_the_other_keeps_flowing(shop, caplog, going,
                                                                                     read_rows_changed):
    """Updates of users rows past the snapshot's last key (every seventh without resending its TOAST ``bio``), each
    its own transaction so that they reach the capture over several runs, then users goes. Runs keep succeeding;
    the sink's users holds the rows the snapshot read, as the source held them when the table went, and nothing
    else; orders keeps flowing, before and after."""
    hook, source_url, sink_url = shop
    staged_run(hook, "first")
    first_after = _position(hook)["snapshot"]["after"]
    assert first_after is not None and int(first_after[0]) < USERS
    staged_run(hook, "second")
    snapshot = _position(hook)["snapshot"]
    assert snapshot["pending"][0] == "public.users", snapshot
    after = int(snapshot["after"][0])
    assert int(first_after[0]) < after < USERS - BATCH  # several chunks read, rows left to read
    assert sorted(int(r[0]) for r in table_rows(sink_url, "users", columns=["id"])) == list(range(1, after + 1))

    # Keys the snapshot has not read, some with an out-of-line bio the updates do not resend.
    changed = list(range(after + 1, after + BATCH + 1))
    assert sum(1 for key in changed if key % 7 == 0) >= 5
    _sql(source_url, *(f"UPDATE users SET name = 'before it went', balance = balance + 1 WHERE id = {key}"
                       for key in changed))
    if read_rows_changed:  # 7 and 14 among them: updates that do not resend bio, of rows the sink holds
        _sql(source_url, *(f"UPDATE users SET name = 'read, then changed', balance = balance + 1 WHERE id = {key}"
                           for key in range(1, 21)))
    at_going = {row[0]: row for row in table_rows(source_url, "users")}
    _sql(source_url, going)
    if going.startswith("ALTER"):
        _sql(source_url, "UPDATE users_old SET name = 'after it went' WHERE id <= 100 OR id % 3 = 0",
             "INSERT INTO users_old (id, email, name) VALUES (50000, 'x@example.com', 'after it went')",
             "DELETE FROM users_old WHERE id IN (2, 3)")
    _sql(source_url, "UPDATE orders SET status = 'after it went' WHERE id % 10 = 0",
         "INSERT INTO orders (user_id, amount, status) VALUES (1, 1, 'after it went')",
         "DELETE FROM orders WHERE id IN (5, 6)")

    with caplog.at_level("WARNING", logger="airflow_provider_cdc.source"):
        _drain(hook, "rest")  # a SinkError (a row the sink never had) would fail here
    assert "table public.users is gone at the source (dropped or renamed) during its snapshot" in caplog.text
    # The scenario reached the case under test: changes of users still ahead in the stream when it went.
    assert "of public.users, of keys its snapshot never read before the table went, are not loaded" in caplog.text
    assert "snapshot" not in _position(hook)

    assert_same_rows(source_url, sink_url, "orders")
    sink = table_rows(sink_url, "users")
    # What the snapshot read, as the source held it when the table went; the keys it never read are absent.
    assert sorted(int(row[0]) for row in sink) == list(range(1, after + 1))
    assert all(row == at_going[row[0]] for row in sink), [r[:5] for r in sink if r != at_going.get(r[0])][:3]
    assert not {row[2] for row in sink} & {"before it went", "after it went"}
    assert sum(1 for row in sink if row[5] and len(row[5]) == 128_000) == after // 7  # TOAST values kept
    assert_ledger_consistent(sink_url, hook.source_id)

    # Later: orders keeps flowing, users (under any name) does not.
    later = ["INSERT INTO orders (user_id, amount, status) VALUES (2, 2, 'later')",
             "UPDATE orders SET amount = amount + 1 WHERE id % 20 = 1"]
    if going.startswith("ALTER"):
        later.append("UPDATE users_old SET name = 'later' WHERE id <= 10")
    _sql(source_url, *later)
    _drain(hook, "later")
    assert_same_rows(source_url, sink_url, "orders")
    assert table_rows(sink_url, "users") == sink
    assert_ledger_consistent(sink_url, hook.source_id)
    # The stream is past the point where users went: nothing of it is kept in the position any more.
    assert "gone" not in _position(hook)
