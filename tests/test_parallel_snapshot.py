"""A table's snapshot read in parallel key ranges (``parallel_snapshot.py``, ``connectors/postgres/snapshot_ranges.py``)
against real PostgreSQL: ranges staged side by side while the source keeps changing, keys moving between ranges,
unchanged TOAST values, a range killed half-way, ranges no task staged, a TRUNCATE while ranges are read or emitted,
a table added to the config later, and the ranged table renamed mid-snapshot."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import psycopg
import pytest
from cdc_testing import (
    assert_ledger_consistent,
    assert_same_rows,
    create_shop,
    drain,
    random_changes,
    stage_snapshot_range,
    staged_run,
    table_rows,
    unique_id,
    write_config,
)

from airflow_provider_cdc import parallel_snapshot
from airflow_provider_cdc.connectors.postgres.snapshot_ranges import RangeStore
from airflow_provider_cdc.errors import SourceError, is_terminal
from airflow_provider_cdc.hooks.cdc import CdcHook

RANGED = """\
options:
  snapshot_ranges: {ranges}
  snapshot_range_min_rows: 100
"""


@pytest.fixture
def big_shop(pg_database_factory, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=3000, orders=3000)
    with psycopg.connect(source_url, autocommit=True) as conn:
        # Out-of-line (TOAST) values that updates leave unchanged: pgoutput does not resend them.
        conn.execute("UPDATE users SET bio = (SELECT string_agg(md5(id::text || g::text), '') "
                     "FROM generate_series(1, 200) g) WHERE id % 7 = 0")
        conn.execute("ANALYZE users")
        conn.execute("ANALYZE orders")
    return unique_id("ranged"), source_url, sink_url, tmp_path / "config"


def _hook(big_shop, ranges: int, batch_size: int = 600) -> CdcHook:
    source_id, source_url, sink_url, config_dir = big_shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url,
                 tables=["users", "orders"], batch_size=batch_size, extra=RANGED.format(ranges=ranges))
    return CdcHook(source_id, str(config_dir))


def _one_table_hook(pg_database_factory, tmp_path, ddl: list[str], table: str, ranges: int, batch_size: int,
                    extra: str = "", prefix: str = "ranged") -> tuple[CdcHook, str, str]:
    """A source database made by ``ddl``, an empty sink database, and a hook on ``table`` read in ``ranges`` key
    ranges (``extra``: more lines under ``options:``); returns (hook, source URL, sink URL)."""
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    with psycopg.connect(source_url, autocommit=True) as conn:
        for statement in ddl:
            conn.execute(statement)
    source_id = unique_id(prefix)
    config_dir = tmp_path / "config"
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=[table],
                 batch_size=batch_size, extra=RANGED.format(ranges=ranges) + extra)
    return CdcHook(source_id, str(config_dir)), source_url, sink_url


def _ranges(hook: CdcHook) -> dict | None:
    return (hook.positions.get(hook.source_id) or {}).get("snapshot", {}).get("ranges")


def _ranges_to_stage(hook: CdcHook) -> list[int]:
    source, sink = hook.get_source(), hook.get_sink()
    try:
        return parallel_snapshot.ranges_to_stage(source, sink, hook.positions)
    finally:
        source.close()
        sink.close()


def _assert_converged(hook: CdcHook, big_shop, prefix: str) -> None:
    """Runs until the source is drained, then source and sink equal row for row, and the ledger consistent."""
    drain(hook, prefix)
    assert_same_rows(big_shop[1], big_shop[2], "users")
    assert_same_rows(big_shop[1], big_shop[2], "orders")
    assert_ledger_consistent(big_shop[2], hook.source_id)


def _move_keys_and_touch_toast(url: str, rng: random.Random) -> None:
    """Rows move to keys in other ranges (and past the last one); rows with TOAST values change other columns."""
    with psycopg.connect(url) as conn:
        top = conn.execute("SELECT max(id) FROM users").fetchone()[0]
        for _ in range(5):
            old = rng.randint(1, top)
            conn.execute("UPDATE users SET id = %s WHERE id = %s", (top + rng.randint(1, 10_000) * 7, old))
        conn.execute("UPDATE users SET balance = balance + 1 WHERE id %% 7 = 0 AND id %% 5 = %s", (rng.randint(0, 4),))
        conn.commit()


def test_ranges_staged_side_by_side_converge_with_changes_made_meanwhile(big_shop):
    hook = _hook(big_shop, ranges=3)
    source_url = big_shop[1]
    rng = random.Random(11)
    planned = staged_run(hook, "plan")  # users is split into ranges; the stream part only
    ranges = _ranges(hook)
    assert ranges is not None and ranges["table"] == "public.users" and len(ranges["splits"]) == 2, ranges
    assert planned["change_count"] == 0
    assert _ranges_to_stage(hook) == [0, 1, 2]

    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_changing() -> None:
        writer_rng = random.Random(5)
        try:
            while not stop.is_set():
                random_changes(source_url, writer_rng, transactions=2, allow_truncate=False)
                _move_keys_and_touch_toast(source_url, writer_rng)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    writer = threading.Thread(target=keep_changing)
    writer.start()
    try:
        results: dict[int, dict] = {}
        stagers = [threading.Thread(target=lambda i=i: results.__setitem__(i, stage_snapshot_range(hook, i)))
                   for i in range(3)]
        for thread in stagers:
            thread.start()
        for thread in stagers:
            thread.join()
    finally:
        stop.set()
        writer.join()
    assert not errors, errors
    assert sorted(results) == [0, 1, 2] and all(r["chunks"] >= 2 for r in results.values()), results
    assert _ranges_to_stage(hook) == []

    runs = 0
    while "snapshot" in hook.positions.get(hook.source_id):
        staged_run(hook, f"emit_{runs}")
        runs += 1
        random_changes(source_url, rng, transactions=2, allow_truncate=False)
        _move_keys_and_touch_toast(source_url, rng)
        assert runs < 100
    assert 2 * runs >= sum(r["chunks"] for r in results.values())  # two chunks a batch at most
    _assert_converged(hook, big_shop, "stream")


def test_a_range_killed_half_way_resumes_after_its_last_chunk(big_shop, monkeypatch):
    hook = _hook(big_shop, ranges=2, batch_size=400)
    source_url = big_shop[1]
    staged_run(hook, "plan")
    ranges = _ranges(hook)
    written = []
    real_write = RangeStore.write_chunk

    def dies_on_the_third(self, *args, **kwargs):
        if len(written) == 2:
            raise RuntimeError("worker killed")
        written.append(args[1])
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(RangeStore, "write_chunk", dies_on_the_third)
    with pytest.raises(RuntimeError, match="worker killed"):
        stage_snapshot_range(hook, 0)
    monkeypatch.setattr(RangeStore, "write_chunk", real_write)
    store = RangeStore(hook.source_id, ranges["plan"])
    assert [c.index for c in store.chunks(0)] == [0, 1] and not store.is_done(0)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET name = 'changed between attempts' WHERE id BETWEEN 300 AND 700")
    again = stage_snapshot_range(hook, 0)
    assert again["resumed"] and again["chunks"] >= 3
    chunks = store.chunks(0)
    keys = [int(k) for c in chunks for k in RangeStore.read_chunk(c).column("id").to_pylist()]
    assert keys == sorted(set(keys))  # no key twice, in order: the retry went on after the last chunk
    assert chunks[1].last == chunks[2].after
    assert _ranges_to_stage(hook) == [1]
    _assert_converged(hook, big_shop, "rest")  # range 1: staged by the capture itself


def test_without_range_tasks_the_capture_stages_the_ranges_itself(big_shop, caplog):
    hook = _hook(big_shop, ranges=2, batch_size=2000)
    source_url = big_shop[1]
    rng = random.Random(3)
    staged_run(hook, "plan")
    assert _ranges(hook) is not None
    runs = 0
    with caplog.at_level("INFO", logger="airflow_provider_cdc.source.postgres"):
        while "snapshot" in hook.positions.get(hook.source_id):
            staged_run(hook, f"run_{runs}")
            random_changes(source_url, rng, transactions=2, allow_truncate=False)
            runs += 1
            assert runs < 50
    assert "was not staged by a snapshot_range task; staging it here" in caplog.text
    assert "the ranged snapshot of public.users is complete" in caplog.text
    _assert_converged(hook, big_shop, "stream")


def test_small_tables_and_one_range_read_serially(big_shop):
    hook = _hook(big_shop, ranges=1)
    staged_run(hook, "first")
    assert _ranges(hook) is None and "snapshot" in hook.positions.get(hook.source_id)
    assert _ranges_to_stage(hook) == []
    skipped = stage_snapshot_range(hook, 0)
    assert skipped["skipped"] and skipped["rows"] == 0


def test_ddl_between_staging_and_emission_and_a_composite_key(pg_database_factory, tmp_path):
    """Chunks staged before an ADD COLUMN and after it carry the schema they were read with; a table keyed by two
    columns splits on both."""
    hook, source_url, sink_url = _one_table_hook(pg_database_factory, tmp_path, [
        "CREATE TABLE lines (order_id int, line int, sku text, qty int, PRIMARY KEY (order_id, line))",
        "INSERT INTO lines SELECT g / 10, g % 10, 'sku-' || g, g % 7 FROM generate_series(1, 3000) g",
        "ANALYZE lines",
    ], "lines", ranges=3, batch_size=800, prefix="ranged_ddl")
    source_id = hook.source_id
    staged_run(hook, "plan")
    ranges = _ranges(hook)
    assert ranges is not None and all(len(split) == 2 for split in ranges["splits"]), ranges
    stage_snapshot_range(hook, 0)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE lines ADD COLUMN note text DEFAULT 'n/a'")
        conn.execute("UPDATE lines SET qty = qty + 100, note = 'changed' WHERE line = 3")
        conn.execute("INSERT INTO lines VALUES (5, 11, 'late', 1, 'inserted after the split')")
    stage_snapshot_range(hook, 1)
    stage_snapshot_range(hook, 2)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("DELETE FROM lines WHERE order_id = 150")
        conn.execute("UPDATE lines SET sku = sku || '!' WHERE order_id < 20")
    store = RangeStore(source_id, ranges["plan"])
    first, later = store.chunks(0)[0], store.chunks(2)[0]
    assert "note" not in [c["name"] for c in first.schema["columns"]]
    assert "note" in [c["name"] for c in later.schema["columns"]]
    drain(hook, "rest")
    assert "snapshot" not in hook.positions.get(source_id)
    assert_same_rows(source_url, sink_url, "lines")
    assert_ledger_consistent(sink_url, source_id)


def test_a_partitioned_table_is_split_across_its_partitions(pg_database_factory, tmp_path):
    """The parent of a partitioned table has no row estimate of its own (counted instead) and is read with its
    partitions; rows moving between partitions while the ranges are read converge like any other change."""
    hook, source_url, sink_url = _one_table_hook(pg_database_factory, tmp_path, [
        "CREATE TABLE p (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)",
        "CREATE TABLE p_eu PARTITION OF p FOR VALUES IN ('eu')",
        "CREATE TABLE p_us PARTITION OF p FOR VALUES IN ('us')",
        "INSERT INTO p SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'v' || g FROM generate_series(1, 3000) g",
    ], "p", ranges=2, batch_size=1000, prefix="ranged_parts")
    source_id = hook.source_id
    staged_run(hook, "plan")
    ranges = _ranges(hook)
    assert ranges is not None and ranges["table"] == "public.p" and len(ranges["splits"]) == 1, ranges
    stage_snapshot_range(hook, 1)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE p SET region = 'us' WHERE id % 10 = 0")  # eu -> us: a delete and an insert
        conn.execute("UPDATE p SET v = v || '!' WHERE id BETWEEN 1000 AND 2000")
        conn.execute("DELETE FROM p WHERE id % 97 = 0")
    stage_snapshot_range(hook, 0)
    drain(hook, "rest")
    assert_same_rows(source_url, sink_url, "p")
    assert_ledger_consistent(sink_url, source_id)


def test_staged_chunks_removed_before_emission_stop_the_capture_naming_resnapshot(big_shop):
    hook = _hook(big_shop, ranges=2, batch_size=1000)
    staged_run(hook, "plan")
    ranges = _ranges(hook)
    for index in (0, 1):
        stage_snapshot_range(hook, index)
    store = RangeStore(hook.source_id, ranges["plan"])
    last = store.chunks(1)[-1]
    assert last.index >= 1
    (Path(last.uri.removeprefix("file://")).with_suffix(".json")).unlink()  # retention, or a person, removed it
    with pytest.raises(SourceError, match=rf"range 1 of the ranged snapshot .* lacks chunk {last.index}.*resnapshot") \
            as raised:
        staged_run(hook, "after")
    assert is_terminal(raised.value)
    assert _ranges(hook)["emitted"] == [0, 0]  # nothing was emitted, nothing stored
    (Path(store.chunks(0)[0].uri.removeprefix("file://")).with_suffix(".json")).unlink()  # a gap, not the end
    with pytest.raises(SourceError, match=r"range 0 of the ranged snapshot .* lacks chunk 0"):
        staged_run(hook, "again")


def test_range_tasks_keep_to_the_publications_row_filter(pg_database_factory, tmp_path):
    """A user-owned publication with a row filter: the ranges read only the rows the stream sends changes for."""
    hook, source_url, sink_url = _one_table_hook(pg_database_factory, tmp_path, [
        "CREATE TABLE f (id int PRIMARY KEY, region text, v text)",
        "INSERT INTO f SELECT g, CASE WHEN g % 3 = 0 THEN 'eu' ELSE 'us' END, 'v' || g FROM generate_series(1, 3000) g",
        "ANALYZE f",
        "ALTER TABLE f REPLICA IDENTITY FULL",  # a row filter's columns must be in the identity
        "CREATE PUBLICATION ranged_eu FOR TABLE f WHERE (region = 'eu')",
    ], "f", ranges=2, batch_size=1000, prefix="ranged_filter",
        extra="  publication_name: ranged_eu\n  create_publication: false\n")
    staged_run(hook, "plan")
    assert _ranges(hook) is not None
    for index in (0, 1):
        assert stage_snapshot_range(hook, index)["rows"] in range(400, 600)  # a third of each half
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE f SET v = 'changed' WHERE id % 30 = 0")
        conn.execute("INSERT INTO f VALUES (5000, 'eu', 'new'), (5001, 'us', 'not published')")
    drain(hook, "rest")
    published = table_rows(source_url, "f", columns=["id", "region", "v"], where="WHERE region = 'eu'")
    assert table_rows(sink_url, "f", columns=["id", "region", "v"]) == published and len(published) == 1001


def _chunk_count(hook: CdcHook) -> int:
    ranges = _ranges(hook)
    store = RangeStore(hook.source_id, ranges["plan"])
    return sum(len(store.chunks(i)) for i in range(len(ranges["emitted"])))


def _sink_keys(sink_url: str) -> list[int]:
    return sorted(int(row[0]) for row in table_rows(sink_url, "users", columns=["id"]))


def _sql(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


# Rows written after a TRUNCATE: keys in every range of a three-way split of 1..3000, and past the last one.
AFTER_TRUNCATE = ("INSERT INTO users (id, email, name, balance) VALUES (5, 'five@example.com', 'after', 5), "
                  "(1500, 'mid@example.com', 'after', 15), (2999, 'end@example.com', 'after', 29), "
                  "(90000, 'past@example.com', 'after', 90)")


def test_a_truncate_while_the_chunks_are_emitted_removes_the_rows_of_chunks_read_before_it(big_shop):
    """Chunks read before a TRUNCATE but emitted after the stream's part up to it would bring truncated rows back:
    each chunk is placed at its watermark, so the truncate (later in the stream) removes them again."""
    hook = _hook(big_shop, ranges=3)
    source_url, sink_url = big_shop[1], big_shop[2]
    staged_run(hook, "plan")
    for index in range(3):
        stage_snapshot_range(hook, index)
    total = _chunk_count(hook)
    staged_run(hook, "emit_0")
    emitted = sum(_ranges(hook)["emitted"])
    assert 0 < emitted < total, (emitted, total)
    assert table_rows(sink_url, "users", columns=["id"])  # the sink holds rows of the chunks emitted so far
    _sql(source_url, "UPDATE users SET name = 'before the truncate' WHERE id % 100 = 0",
         "TRUNCATE users", AFTER_TRUNCATE, "UPDATE orders SET status = 'paid' WHERE id % 10 = 0")
    staged_run(hook, "emit_1")
    assert "snapshot" in hook.positions.get(hook.source_id)  # chunks read before the truncate are still to come
    _sql(source_url, "UPDATE users SET name = 'after the truncate' WHERE id = 1500")
    _assert_converged(hook, big_shop, "rest")
    assert _sink_keys(sink_url) == [5, 1500, 2999, 90000]


def test_a_truncate_between_the_staging_of_two_ranges(big_shop):
    """Range 0 is read before a TRUNCATE (old rows, earlier watermarks), ranges 1 and 2 after it (only the rows
    written since): the truncate lands between them, and the old rows of range 0 do not survive it."""
    hook = _hook(big_shop, ranges=3)
    source_url, sink_url = big_shop[1], big_shop[2]
    staged_run(hook, "plan")
    assert stage_snapshot_range(hook, 0)["rows"] > 0
    _sql(source_url, "TRUNCATE users", AFTER_TRUNCATE)
    assert stage_snapshot_range(hook, 1)["rows"] == 1  # key 1500
    _sql(source_url, "UPDATE users SET balance = 0 WHERE id = 5", "DELETE FROM users WHERE id = 2999")
    assert stage_snapshot_range(hook, 2)["rows"] == 1  # key 90000 (2999 went before range 2 was read)
    _assert_converged(hook, big_shop, "rest")
    assert _sink_keys(sink_url) == [5, 1500, 90000]


def test_a_range_emptied_by_a_truncate_before_it_is_staged(big_shop):
    """Range 1 holds no row any more when it is staged (a TRUNCATE after the plan, new rows in the other ranges
    only): it is done with no chunk, and the sink holds only the rows written after the truncate."""
    hook = _hook(big_shop, ranges=3)
    source_url, sink_url = big_shop[1], big_shop[2]
    staged_run(hook, "plan")
    assert stage_snapshot_range(hook, 0)["rows"] > 0
    _sql(source_url, "TRUNCATE users", AFTER_TRUNCATE, "DELETE FROM users WHERE id = 1500")
    assert stage_snapshot_range(hook, 1) == {"range": 1, "chunks": 0, "rows": 0, "resumed": False}
    assert _ranges_to_stage(hook) == [2]
    _assert_converged(hook, big_shop, "rest")
    assert _sink_keys(sink_url) == [5, 2999, 90000]


def test_a_truncate_between_two_chunks_of_one_range(big_shop, monkeypatch):
    """A TRUNCATE commits after a range's first chunk is read and before its second: the first chunk's rows are
    removed by it, the second holds only the rows written since."""
    hook = _hook(big_shop, ranges=2, batch_size=400)
    source_url, sink_url = big_shop[1], big_shop[2]
    staged_run(hook, "plan")
    real_write = RangeStore.write_chunk

    def truncate_after_the_first(self, index, n, *args, **kwargs):
        real_write(self, index, n, *args, **kwargs)
        if n == 0:
            _sql(source_url, "TRUNCATE users", AFTER_TRUNCATE)

    monkeypatch.setattr(RangeStore, "write_chunk", truncate_after_the_first)
    stage_snapshot_range(hook, 0)
    monkeypatch.setattr(RangeStore, "write_chunk", real_write)
    store = RangeStore(hook.source_id, _ranges(hook)["plan"])
    chunks = store.chunks(0)
    assert chunks[0].rows == 200 and [int(k) for c in chunks[1:] for k in
                                      RangeStore.read_chunk(c).column("id").to_pylist()] == [1500]
    _assert_converged(hook, big_shop, "rest")
    assert _sink_keys(sink_url) == [5, 1500, 2999, 90000]


def test_a_table_added_to_the_config_later_is_split_into_ranges(big_shop):
    """``orders`` flows alone; ``users`` is added with the ranged options: it gets its own snapshot in key ranges
    while ``orders`` keeps streaming, and both converge."""
    source_id, source_url, sink_url, config_dir = big_shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["orders"],
                 batch_size=5000)
    hook = CdcHook(source_id, str(config_dir))
    drain(hook, "orders")
    assert_same_rows(source_url, sink_url, "orders")
    _sql(source_url, "UPDATE users SET name = 'changed before it was added' WHERE id % 50 = 0",
         "UPDATE orders SET status = 'paid' WHERE id % 30 = 0")

    hook = _hook(big_shop, ranges=3)
    staged_run(hook, "added")
    ranges = _ranges(hook)
    assert ranges is not None and ranges["table"] == "public.users" and len(ranges["splits"]) == 2, ranges
    assert hook.positions.get(source_id)["snapshot"]["pending"] == ["public.users"]
    rng = random.Random(7)
    stage_snapshot_range(hook, 1)
    random_changes(source_url, rng, transactions=3, allow_truncate=False)
    _move_keys_and_touch_toast(source_url, rng)
    stage_snapshot_range(hook, 0)
    stage_snapshot_range(hook, 2)
    random_changes(source_url, rng, transactions=3, allow_truncate=False)
    staged_run(hook, "emit_0")
    with psycopg.connect(sink_url) as conn:
        # orders kept streaming while users was being read
        assert conn.execute("SELECT count(*) FROM orders WHERE status = 'paid'").fetchone()[0] >= 100
    _move_keys_and_touch_toast(source_url, rng)
    _assert_converged(hook, big_shop, "rest")


@pytest.mark.parametrize("changed_before_the_rename", [
    pytest.param("WHERE id BETWEEN 1 AND 20 AND id % 7 <> 0 OR id IN (2101, 2102)", id="plain"),
    # Updates that did not resend a TOAST value, of keys no emitted chunk holds: with the table gone they are
    # dropped (its chunks never come), not loaded onto rows the sink never had, which refused the whole batch.
    pytest.param("WHERE id BETWEEN 1 AND 20 OR id IN (2100, 2101)", id="unresent_toast"),
])
def test_a_renamed_table_mid_ranged_snapshot_stops_flowing_and_the_other_keeps_flowing(big_shop, caplog,
                                                                                       changed_before_the_rename):
    """The documented outcome for a configured table renamed at the source (README, "a configured table is dropped
    or renamed"): it stops flowing with a warning, its sink table is kept, the other tables keep flowing. Nothing of
    ``users_old`` reaches the sink as ``users``: not the chunks staged before the rename, not later changes; what
    the sink holds of ``users`` is as the source held it at the rename. Rows whose ids are multiples of 7 have an
    out-of-line (TOAST) ``bio`` that an update of other columns does not resend."""
    hook = _hook(big_shop, ranges=3)
    source_url, sink_url = big_shop[1], big_shop[2]
    staged_run(hook, "plan")
    assert stage_snapshot_range(hook, 0)["chunks"] > 0
    # Changed after range 0 was read and before the rename: streamed as users, in keys no chunk is emitted for yet.
    _sql(source_url, f"UPDATE users SET name = 'before the rename', balance = balance + 1 {changed_before_the_rename}",
         "ALTER TABLE users RENAME TO users_old")
    at_rename = {r[0]: r for r in table_rows(source_url, "users_old")}
    _sql(source_url, "UPDATE users_old SET name = 'after the rename' WHERE id BETWEEN 1 AND 3000",
         "INSERT INTO users_old (id, email, name) VALUES (50000, 'x@example.com', 'after the rename')",
         "UPDATE orders SET status = 'after the rename' WHERE id % 10 = 0")
    with caplog.at_level("WARNING", logger="airflow_provider_cdc.source"):
        assert stage_snapshot_range(hook, 1)["chunks"] == 0  # nothing is read from a table of another name
        drain(hook, "rest")
    assert "table public.users no longer exists at the source (dropped or renamed)" in caplog.text
    assert "snapshot" not in hook.positions.get(hook.source_id)
    assert_same_rows(source_url, sink_url, "orders")
    sink = table_rows(sink_url, "users")
    assert all(row == at_rename.get(row[0]) for row in sink), [r for r in sink if r != at_rename.get(r[0])][:3]
    assert {row[2] for row in sink} <= {"before the rename"}
    assert_ledger_consistent(sink_url, hook.source_id)
    _sql(source_url, "INSERT INTO orders (user_id, amount, status) VALUES (1, 1, 'later')",
         "UPDATE users_old SET name = 'later' WHERE id = 1")
    drain(hook, "later")
    assert_same_rows(source_url, sink_url, "orders")
    assert table_rows(sink_url, "users") == sink
