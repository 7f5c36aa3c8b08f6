"""A table's snapshot read in parallel key ranges (``parallel_snapshot.py``, ``connectors/postgres/snapshot_ranges.py``)
against real PostgreSQL: ranges staged side by side while the source keeps changing, keys moving between ranges,
unchanged TOAST values, a range killed half-way, and ranges no task staged."""

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


def _ranges(hook: CdcHook) -> dict | None:
    return (hook.positions.get(hook.source_id) or {}).get("snapshot", {}).get("ranges")


def _stage(hook: CdcHook, index: int) -> dict:
    source, sink = hook.get_source(), hook.get_sink()
    try:
        return parallel_snapshot.stage_range(source, sink, hook.positions, index, hook.source_config.batch_size)
    finally:
        source.close()
        sink.close()


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
        stagers = [threading.Thread(target=lambda i=i: results.__setitem__(i, _stage(hook, i))) for i in range(3)]
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
        _stage(hook, 0)
    monkeypatch.setattr(RangeStore, "write_chunk", real_write)
    store = RangeStore(hook.source_id, ranges["plan"])
    assert [c.index for c in store.chunks(0)] == [0, 1] and not store.is_done(0)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET name = 'changed between attempts' WHERE id BETWEEN 300 AND 700")
    again = _stage(hook, 0)
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
    skipped = _stage(hook, 0)
    assert skipped["skipped"] and skipped["rows"] == 0


def test_ddl_between_staging_and_emission_and_a_composite_key(pg_database_factory, tmp_path):
    """Chunks staged before an ADD COLUMN and after it carry the schema they were read with; a table keyed by two
    columns splits on both."""
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE lines (order_id int, line int, sku text, qty int, PRIMARY KEY (order_id, line))")
        conn.execute("INSERT INTO lines SELECT g / 10, g % 10, 'sku-' || g, g % 7 FROM generate_series(1, 3000) g")
        conn.execute("ANALYZE lines")
    source_id = unique_id("ranged_ddl")
    config_dir = tmp_path / "config"
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["lines"],
                 batch_size=800, extra=RANGED.format(ranges=3))
    hook = CdcHook(source_id, str(config_dir))
    staged_run(hook, "plan")
    ranges = _ranges(hook)
    assert ranges is not None and all(len(split) == 2 for split in ranges["splits"]), ranges
    _stage(hook, 0)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE lines ADD COLUMN note text DEFAULT 'n/a'")
        conn.execute("UPDATE lines SET qty = qty + 100, note = 'changed' WHERE line = 3")
        conn.execute("INSERT INTO lines VALUES (5, 11, 'late', 1, 'inserted after the split')")
    _stage(hook, 1)
    _stage(hook, 2)
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
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE p (id int, region text, v text, PRIMARY KEY (id, region))"
                     " PARTITION BY LIST (region)")
        conn.execute("CREATE TABLE p_eu PARTITION OF p FOR VALUES IN ('eu')")
        conn.execute("CREATE TABLE p_us PARTITION OF p FOR VALUES IN ('us')")
        conn.execute("INSERT INTO p SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'v' || g "
                     "FROM generate_series(1, 3000) g")
    source_id = unique_id("ranged_parts")
    config_dir = tmp_path / "config"
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["p"],
                 batch_size=1000, extra=RANGED.format(ranges=2))
    hook = CdcHook(source_id, str(config_dir))
    staged_run(hook, "plan")
    ranges = _ranges(hook)
    assert ranges is not None and ranges["table"] == "public.p" and len(ranges["splits"]) == 1, ranges
    _stage(hook, 1)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE p SET region = 'us' WHERE id % 10 = 0")  # eu -> us: a delete and an insert
        conn.execute("UPDATE p SET v = v || '!' WHERE id BETWEEN 1000 AND 2000")
        conn.execute("DELETE FROM p WHERE id % 97 = 0")
    _stage(hook, 0)
    drain(hook, "rest")
    assert_same_rows(source_url, sink_url, "p")
    assert_ledger_consistent(sink_url, source_id)


def test_staged_chunks_removed_before_emission_stop_the_capture_naming_resnapshot(big_shop):
    hook = _hook(big_shop, ranges=2, batch_size=1000)
    staged_run(hook, "plan")
    ranges = _ranges(hook)
    for index in (0, 1):
        _stage(hook, index)
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
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE f (id int PRIMARY KEY, region text, v text)")
        conn.execute("INSERT INTO f SELECT g, CASE WHEN g % 3 = 0 THEN 'eu' ELSE 'us' END, 'v' || g "
                     "FROM generate_series(1, 3000) g")
        conn.execute("ANALYZE f")
        conn.execute("ALTER TABLE f REPLICA IDENTITY FULL")  # a row filter's columns must be in the identity
        conn.execute("CREATE PUBLICATION ranged_eu FOR TABLE f WHERE (region = 'eu')")
    source_id = unique_id("ranged_filter")
    config_dir = tmp_path / "config"
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["f"],
                 batch_size=1000, extra=RANGED.format(ranges=2) + "  publication_name: ranged_eu\n"
                 "  create_publication: false\n")
    hook = CdcHook(source_id, str(config_dir))
    staged_run(hook, "plan")
    assert _ranges(hook) is not None
    for index in (0, 1):
        assert _stage(hook, index)["rows"] in range(400, 600)  # a third of each half
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE f SET v = 'changed' WHERE id % 30 = 0")
        conn.execute("INSERT INTO f VALUES (5000, 'eu', 'new'), (5001, 'us', 'not published')")
    drain(hook, "rest")
    published = table_rows(source_url, "f", columns=["id", "region", "v"], where="WHERE region = 'eu'")
    assert table_rows(sink_url, "f", columns=["id", "region", "v"]) == published and len(published) == 1001
