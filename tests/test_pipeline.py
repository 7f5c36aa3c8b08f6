"""The stages as plain functions against real servers: snapshot convergence and crash recovery paths."""

from __future__ import annotations

import random

import psycopg
import pytest

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.hooks.cdc import CdcHook
from cdc_testing import (
    assert_ledger_consistent,
    assert_same_rows,
    create_shop,
    drain,
    random_changes,
    staged_run,
    unique_id,
    write_config,
)


@pytest.fixture
def shop(pg_database_factory, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=300, orders=300)
    source_id = unique_id("pipe")
    return source_id, source_url, sink_url, tmp_path / "config"


def test_snapshot_converges_with_changes_made_while_it_runs(shop):
    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url,
                 tables=["users", "orders"], batch_size=70)
    hook = CdcHook(source_id, str(config_dir))
    rng = random.Random(7)
    runs = 0
    while runs == 0 or "snapshot" in hook.positions.get(source_id):
        staged_run(hook, f"snap_{runs}")
        runs += 1
        # Between chunks: rows already read and rows not yet read change, appear and disappear.
        random_changes(source_url, rng, transactions=3)
    assert runs >= 4  # several chunks, each read after other changes
    drain(hook, "stream")
    assert_same_rows(source_url, sink_url, "users")
    assert_same_rows(source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)


def test_commit_that_never_ran_is_recovered_from_the_ledger(shop):
    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["users"])
    hook = CdcHook(source_id, str(config_dir))
    drain(hook, "init")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET name = 'first' WHERE id <= 5")
    first = staged_run(hook, "crashed", commit=False)  # loaded, but the position was never stored
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET name = 'second' WHERE id <= 3")
    second = staged_run(hook, "next")
    assert second["seq_from"] == first["seq_to"] + 1  # resumed after the ledger's batch, not the Variable's
    assert second["change_count"] == 3
    assert_same_rows(source_url, sink_url, "users")
    assert_ledger_consistent(sink_url, source_id)


def test_cleared_capture_replays_the_same_range_and_commit_needs_the_load(shop):
    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["users"])
    hook = CdcHook(source_id, str(config_dir))
    drain(hook, "init")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("DELETE FROM users WHERE id <= 10")
    captured = staged_run(hook, "run_a", load=False, commit=False)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("DELETE FROM users WHERE id BETWEEN 11 AND 20")
    sink = hook.get_sink()
    source = hook.get_source()
    try:
        with pytest.raises(CdcError, match=f"batch {captured['batch_id']} is not in the sink ledger"):
            pipeline.commit_stage(captured["manifest_uri"], source, sink, hook.positions, hook.store)
        again = pipeline.capture_stage(source, sink, hook.positions, hook.store, max_changes=1000, run_id="run_a")
        assert again == captured  # the identical change range, though more changes arrived since
        first_load = pipeline.load_stage(again["manifest_uri"], sink)
        second_load = pipeline.load_stage(again["manifest_uri"], sink)
        assert first_load["applied"] and first_load["deleted"] == 10
        assert not second_load["applied"]
        pipeline.commit_stage(again["manifest_uri"], source, sink, hook.positions, hook.store)
    finally:
        source.close()
        sink.close()
    drain(hook, "after")
    assert_same_rows(source_url, sink_url, "users")
    assert_ledger_consistent(sink_url, source_id)


def test_types_survive_snapshot_and_stream_exactly(pg_database_factory, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    ddl = """CREATE TABLE typed (
        id uuid PRIMARY KEY, n numeric(38,10), f double precision, b boolean, ts timestamptz, t timestamp,
        d date, tm time, j jsonb, raw bytea, tags text[], note varchar(20), iv interval, amount money)"""
    row = ("'%s', 12345678901234567890.0123456789, 0.1, true, '2024-02-29 23:59:59.123456+05:30', "
           "'2024-01-01 00:00:00', '1999-12-31', '12:34:56', '{\"a\": [1, \"x\"]}', '\\x00ff10', "
           "ARRAY['a,b', 'c\"d', NULL], '', '1 day 02:00', 12.34")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(ddl)
        conn.execute(f"INSERT INTO typed VALUES ({row % '00000000-0000-0000-0000-000000000001'})")
        conn.execute("INSERT INTO typed (id, note) VALUES ('00000000-0000-0000-0000-000000000002', NULL)")
    source_id = unique_id("typed")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["typed"])
    hook = CdcHook(source_id, str(config_dir))
    drain(hook, "snap")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO typed VALUES ({row % '00000000-0000-0000-0000-000000000003'})")
        conn.execute("UPDATE typed SET note = 'line\nbreak\\back', f = 'NaN' WHERE id = '00000000-0000-0000-0000-000000000002'")
    drain(hook, "stream")
    assert assert_same_rows(source_url, sink_url, "typed") == 3
    with psycopg.connect(sink_url) as conn:
        declared = dict(conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'typed'::regclass AND attnum > 0").fetchall())
    assert declared["n"] == "numeric(38,10)" and declared["ts"] == "timestamp with time zone"
    assert declared["tags"] == "text[]" and declared["note"] == "character varying(20)"
