"""The stages as plain functions against real servers: snapshot convergence and crash recovery paths."""

from __future__ import annotations

import dataclasses
import json
import random

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
from test_stages import UpperNames

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.connectors.base import Position, PositionStore
from airflow_provider_cdc.errors import CdcError, is_terminal
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.summaries import FusedResult


class MemoryPositions:
    """A PositionStore in memory: the pipeline needs nothing more than the protocol."""

    def __init__(self) -> None:
        self.documents: dict[str, dict] = {}

    def get(self, source_id: str) -> Position | None:
        doc = self.documents.get(source_id)
        return None if doc is None else {k: v for k, v in doc.items() if k != "batch_id"}

    def set(self, source_id: str, position: Position, *, batch_id: str | None) -> None:
        self.documents[source_id] = {**position, "batch_id": batch_id}

    def delete(self, source_id: str) -> None:
        self.documents.pop(source_id, None)


class DropEverything:
    """A filtering stage that leaves nothing of the batch."""

    name = "drop_all"

    def apply(self, batch: ChangeBatch) -> ChangeBatch:
        return dataclasses.replace(batch, tables={q: t.slice(0, 0) for q, t in batch.tables.items()})

    def versions(self) -> dict:
        return {"keeps": "nothing"}


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
        with pytest.raises(CdcError, match=f"batch {captured['batch_id']} is not in the sink ledger") as raised:
            pipeline.commit_stage(captured["manifest_uri"], source, sink, hook.positions, hook.store)
        assert is_terminal(raised.value)  # retrying the commit cannot load the batch: fail at once
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
        conn.execute("UPDATE typed SET note = 'line\nbreak\\back', f = 'NaN' "
                     "WHERE id = '00000000-0000-0000-0000-000000000002'")
    drain(hook, "stream")
    assert assert_same_rows(source_url, sink_url, "typed") == 3
    with psycopg.connect(sink_url) as conn:
        declared = dict(conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'typed'::regclass AND attnum > 0").fetchall())
    assert declared["n"] == "numeric(38,10)" and declared["ts"] == "timestamp with time zone"
    assert declared["tags"] == "text[]" and declared["note"] == "character varying(20)"


def ledger_versions(sink_url: str, source_id: str) -> list:
    with psycopg.connect(sink_url) as conn:
        rows = conn.execute("SELECT batch_id, stage_versions FROM _cdc_ledger WHERE source_id = %s ORDER BY seq_to",
                            (source_id,)).fetchall()
    return [(batch_id, json.loads(v) if isinstance(v, str) else v) for batch_id, v in rows]


def test_fused_run_applies_the_stage_list_with_any_position_store(shop):
    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["users"])
    hook = CdcHook(source_id, str(config_dir))
    positions = MemoryPositions()
    assert isinstance(positions, PositionStore)
    source, sink = hook.get_source(), hook.get_sink()
    try:
        summary = pipeline.run_fused(source, sink, positions, max_changes=1000, run_id="fused_1",
                                     stages=[UpperNames()])
    finally:
        source.close()
        sink.close()

    assert summary["stage_versions"] == {"upper": {"v": 1}}
    assert summary["captured"] == summary["change_count"] == 300
    # the typed view a TaskFlow task reads it through
    result = FusedResult.of(summary)
    assert (result.captured, result.batch.change_count, result.batch.ops["r"]) == (300, 300, 300)
    assert result.load.applied and result.load.upserted == 300 and result.commit.position_stored
    assert result.batch_ids == [summary["batch_id"]] == [result.load.batch_id]
    assert positions.documents[source_id]["batch_id"] == summary["batch_id"]
    assert hook.positions.get(source_id) is None  # the Variable was never touched
    assert ledger_versions(sink_url, source_id) == [(summary["batch_id"], {"upper": {"v": 1}})]
    names = [row[2] for row in table_rows(sink_url, "users", columns=["id", "email", "name"])]
    assert names and all(name == name.upper() for name in names)


def test_stage_task_replays_identically_and_a_stage_that_drops_everything_still_commits(shop):
    source_id, source_url, sink_url, config_dir = shop
    write_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url, tables=["users"])
    hook = CdcHook(source_id, str(config_dir))
    drain(hook, "init")
    ledger_before = ledger_versions(sink_url, source_id)
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET name = 'gone' WHERE id <= 4")
    source, sink = hook.get_source(), hook.get_sink()
    try:
        captured = pipeline.capture_stage(source, sink, hook.positions, hook.store, max_changes=1000, run_id="r1")
        staged = pipeline.run_stage(captured["manifest_uri"], DropEverything(), hook.store)
        again = pipeline.run_stage(captured["manifest_uri"], DropEverything(), hook.store)  # the task cleared
        assert again == staged
        assert staged["manifest_uri"] != captured["manifest_uri"]
        assert (staged["batch_id"], staged["seq_from"], staged["seq_to"]) == \
            (captured["batch_id"], captured["seq_from"], captured["seq_to"])
        assert (captured["change_count"], staged["change_count"]) == (4, 0)
        assert staged["stage_versions"] == {"drop_all": {"keeps": "nothing"}}

        loaded = pipeline.load_stage(staged["manifest_uri"], sink, run_id="r1")
        assert loaded["empty"] is True and loaded["applied"] is False
        committed = pipeline.commit_stage(staged["manifest_uri"], source, sink, hook.positions, hook.store)
        assert committed["position_stored"] is True
    finally:
        source.close()
        sink.close()

    assert ledger_versions(sink_url, source_id) == ledger_before  # nothing applied, nothing recorded
    assert hook.positions.get(source_id)["seq"] == captured["seq_to"]
    with psycopg.connect(sink_url) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE name = 'gone'").fetchone() == (0,)
    # The next run starts after the dropped range: the four updates are not captured again.
    assert staged_run(hook, "r2")["change_count"] == 0


# --- schema changes: the run that holds a table fails once, later runs warn -------------------------------------


def staged_run_with_policy(hook, run_id: str) -> tuple[dict, dict]:
    """One staged run as the DAG's tasks do it: load under the source's policy, commit with load's ``newly_held``."""
    source, sink = hook.get_source(), hook.get_sink()
    try:
        captured = pipeline.capture_stage(source, sink, hook.positions, hook.store,
                                          max_changes=hook.source_config.batch_size, run_id=run_id)
        loaded = pipeline.load_stage(captured["manifest_uri"], sink, run_id=run_id, policy=hook.schema_policy)
        committed = pipeline.commit_stage(captured["manifest_uri"], source, sink, hook.positions, hook.store,
                                          newly_held=loaded["newly_held"])
        return captured, committed
    finally:
        source.close()
        sink.close()


def fused_run_with_policy(hook, run_id: str) -> tuple[dict, dict]:
    source, sink = hook.get_source(), hook.get_sink()
    try:
        summary = pipeline.run_fused(source, sink, hook.positions, max_changes=hook.source_config.batch_size,
                                     run_id=run_id, policy=hook.schema_policy)
        return summary, summary["commit"]
    finally:
        source.close()
        sink.close()


RUNS = {"staged": staged_run_with_policy, "fused": fused_run_with_policy}


@pytest.fixture
def two_tables(pg_database_factory, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, code text, note text)")
        conn.execute("INSERT INTO t SELECT g, (g * 10)::text, 'n' || g FROM generate_series(1, 5) g")
        conn.execute("CREATE TABLE o (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO o VALUES (1, 'one')")
    source_id = unique_id("held")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["t", "o"])
    hook = CdcHook(source_id, str(config_dir))
    yield hook, source_url, sink_url
    if hook.positions.get(source_id) is not None:
        hook.positions.delete(source_id)


@pytest.mark.parametrize("mode", ["staged", "fused"])
def test_the_run_that_holds_a_table_fails_once_after_committing_and_later_runs_warn(two_tables, mode, caplog):
    hook, source_url, sink_url = two_tables
    run = RUNS[mode]
    source_id = hook.source_id
    run(hook, "snapshot")
    before = table_rows(sink_url, "t")

    # text -> integer is not BACKWARD compatible: t is held from this batch on; o's change lands in the same run.
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE t ALTER COLUMN code TYPE int USING code::int")
        conn.execute("UPDATE t SET code = 99 WHERE id = 1")
        conn.execute("INSERT INTO o VALUES (2, 'two')")
    with pytest.raises(pipeline.TablesHeldError) as raised:
        run(hook, "holds")
    error = raised.value
    assert is_terminal(error) and list(error.held) == ["public.t"]
    message = str(error)
    for words in (f"{source_id}.public.t", "code", "text -> integer", "evolve", "BACKWARD",
                  f"python -m airflow_provider_cdc schema accept {source_id}.public.t",
                  f"python -m airflow_provider_cdc resnapshot {source_id} --table public.t"):
        assert words in message, message
    # Committed before failing: o's change is in, the position moved past the batch, t is untouched.
    assert_same_rows(source_url, sink_url, "o")
    assert table_rows(sink_url, "t") == before
    position = hook.positions.get(source_id)
    assert position["seq"] == ledger_rows_of(sink_url, source_id)[-1][2]

    # Still held: the next run succeeds, warns for t, keeps o flowing and lists t in its summary.
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("INSERT INTO o VALUES (3, 'three')")
        conn.execute("UPDATE t SET note = 'later' WHERE id = 2")
    with pytest.warns(pipeline.SchemaChangeHeldWarning, match=r"table public\.t is still held") as warned, \
            caplog.at_level("WARNING", logger="airflow_provider_cdc.pipeline"):
        summary, committed = run(hook, "still_held")
    assert len(warned) == 1 and f"schema accept {source_id}.public.t" in str(warned[0].message)
    assert any(r.levelname == "WARNING" and "public.t is still held" in r.getMessage() for r in caplog.records)
    assert list(committed["held_tables"]) == ["public.t"]
    if mode == "fused":
        assert list(summary["held_tables"]) == ["public.t"]
    assert_same_rows(source_url, sink_url, "o")
    assert table_rows(sink_url, "t") == before
    assert hook.positions.get(source_id)["seq"] == summary["seq_to"]


def ledger_rows_of(sink_url: str, source_id: str) -> list[tuple]:
    with psycopg.connect(sink_url) as conn:
        return conn.execute("SELECT batch_id, seq_from, seq_to FROM _cdc_ledger WHERE source_id = %s ORDER BY seq_to",
                            (source_id,)).fetchall()


def test_a_policy_reaches_the_sink_and_a_run_without_new_holds_reports_none(two_tables):
    hook, source_url, sink_url = two_tables
    write_config(hook.config.directory, source_id=hook.source_id, source_url=source_url, sink_url=sink_url,
                 tables=["t", "o"], extra="schema_changes: {mode: stop}\n")
    hook = CdcHook(hook.source_id, str(hook.config.directory))
    assert hook.schema_policy.mode == "stop"
    _, committed = staged_run_with_policy(hook, "snapshot")
    assert committed["held_tables"] == {}
    # Adding a nullable column is compatible, but mode stop holds any change of an existing table.
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE o ADD COLUMN extra int")
        conn.execute("UPDATE o SET extra = 1")
    with pytest.raises(pipeline.TablesHeldError, match=r"public\.o.*mode stop"):
        staged_run_with_policy(hook, "stopped")
    assert "extra" not in table_rows_columns(sink_url, "o")


def table_rows_columns(sink_url: str, table: str) -> list[str]:
    with psycopg.connect(sink_url) as conn:
        return [d.name for d in conn.execute(f"SELECT * FROM {table} LIMIT 0").description]
