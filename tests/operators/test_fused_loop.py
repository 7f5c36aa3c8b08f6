"""The long-running fused run (``loop_seconds``): batches until the budget is spent, idle polling between them,
counts combined; and for real, one ``dag.test()`` run of a fused DAG that loads a snapshot and later changes in
several committed batches."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from cdc_testing import assert_ledger_consistent, assert_same_rows, create_shop, ledger_rows, unique_id, write_config

from airflow_provider_cdc.config.loader import ConfigError
from airflow_provider_cdc.fused_loop import combine, run_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def batch(n: int, captured: int, table_counts: dict[str, int] | None = None) -> dict:
    tables = {t: {"upserted": c, "deleted": 0, "truncates": 0} for t, c in (table_counts or {}).items()}
    return {"batch_id": f"s:{n}", "seq_from": n * 10, "seq_to": n * 10 + 9, "captured": captured,
            "change_count": captured, "ops": {"c": captured} if captured else {},
            "load": {"batch_id": f"s:{n}", "applied": bool(captured), "upserted": captured, "deleted": 0,
                     "tables": tables}}


def test_a_backlog_runs_batch_after_batch_then_idles_until_the_budget():
    clock = FakeClock()
    pending = [100, 100, 40]  # a backlog of three batches, then nothing
    runs: list[int] = []
    polls: list[float] = []

    def run_once() -> dict:
        clock.now += 1
        captured = pending.pop(0) if pending else 0
        runs.append(captured)
        return batch(len(runs), captured, {"public.t": captured})

    def has_changes() -> bool:
        polls.append(clock.now)
        return False

    seen: list[str] = []
    summary = run_for(30, run_once, has_changes, poll_interval=2, clock=clock, sleep=clock.sleep,
                      on_batch=lambda s: seen.append(s["batch_id"]))
    assert runs == [100, 100, 40, 0]  # the fourth run finds the backlog drained; then it polls
    assert seen == ["s:1", "s:2", "s:3", "s:4"]
    assert polls[0] == 4 and polls[-1] >= 26 and clock.now <= 30  # idle until the budget, never past it
    assert summary["batches"] == 4 and summary["captured"] == 240 and summary["batch_id"] == "s:4"
    assert summary["seq_from"] == 10 and summary["load"]["upserted"] == 240
    assert summary["load"]["tables"]["public.t"]["upserted"] == 240


def test_changes_found_while_idle_start_the_next_batch():
    clock = FakeClock()
    arrivals = {6.0}  # a change arrives at t=6
    runs: list[float] = []

    def run_once() -> dict:
        runs.append(clock.now)
        captured = 5 if runs and any(a <= clock.now for a in arrivals) and len(runs) == 2 else 0
        clock.now += 0.5
        return batch(len(runs), captured)

    def has_changes() -> bool:
        return len(runs) == 1 and clock.now >= 6

    summary = run_for(20, run_once, has_changes, poll_interval=1, clock=clock, sleep=clock.sleep)
    assert runs[0] == 0 and 6 <= runs[1] <= 7.5  # picked up within one poll interval
    assert summary["captured"] == 5


def test_no_budget_is_one_batch_as_before():
    summary = run_for(0, lambda: batch(1, 7), lambda: pytest.fail("an idle one-batch run does not poll"),
                      poll_interval=1)
    assert summary["batches"] == 1 and summary["batch_ids"] == ["s:1"] and summary["captured"] == 7


def test_combine_keeps_the_last_batch_and_sums_the_counts():
    one, two = batch(1, 3, {"a": 3}), batch(2, 4, {"a": 1, "b": 3})
    two["load"]["newly_held"] = {"b": "refused"}
    combined = combine([one, two])
    assert combined["load"]["tables"] == {"a": {"upserted": 4, "deleted": 0, "truncates": 0},
                                          "b": {"upserted": 3, "deleted": 0, "truncates": 0}}
    assert combined["load"]["newly_held"] == {"b": "refused"} and combined["ops"] == {"c": 7}
    assert combined["batch_ids"] == ["s:1", "s:2"]


def test_loop_seconds_is_for_fused_mode_only(tmp_path):
    from airflow_provider_cdc.config import load_config

    config_dir = write_config(tmp_path, source_id="s", source_url="postgresql://h/db", sink_url="postgresql://h/w",
                              tables=["t"], extra="loop_seconds: 30\n")
    with pytest.raises(ConfigError, match="loop_seconds.*applies to mode: fused only"):
        load_config(config_dir)


# --- for real ------------------------------------------------------------------------------------------------


def test_one_run_loads_the_snapshot_and_later_changes_in_several_batches(pg_database_factory, tmp_path,
                                                                          monkeypatch):
    from airflow_provider_cdc.dag_factory import build_dags

    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=120, orders=0)
    source_id = unique_id("loop")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users"], batch_size=50, mode="fused", extra="loop_seconds: 25\n")

    def write_later() -> None:
        # Once the snapshot is in (its three batches committed), change rows while the run is still going.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if len(ledger_rows(sink_url, source_id)) >= 3:
                    break
            except psycopg.Error:
                pass  # the ledger does not exist yet
            time.sleep(0.2)
        with psycopg.connect(source_url, autocommit=True) as conn:
            conn.execute("UPDATE users SET name = 'later' WHERE id <= 30")
            conn.execute("DELETE FROM users WHERE id > 110")
            conn.execute("INSERT INTO users (id, email, name, balance) VALUES (500, 'x@y.z', 'new', 1)")

    writer = threading.Thread(target=write_later, daemon=True)
    monkeypatch.setenv("CDC_CONFIG_DIR", str(config_dir))
    dag = build_dags(config_dir)[f"cdc_{source_id}"]
    started = time.monotonic()
    writer.start()
    dag_run = dag.test()
    writer.join(5)
    assert dag_run.state == "success"
    assert time.monotonic() - started >= 25  # the run stayed for its budget
    assert_same_rows(source_url, sink_url, "users")  # the later changes too, in the same run
    with psycopg.connect(sink_url) as conn:
        run_ids = {r for (r,) in conn.execute("SELECT DISTINCT run_id FROM _cdc_ledger WHERE source_id = %s",
                                              (source_id,))}
    assert run_ids == {dag_run.run_id}
    assert len(ledger_rows(sink_url, source_id)) >= 4  # snapshot batches + the later changes, each committed
    assert_ledger_consistent(sink_url, source_id)
    # The loop read batches ahead and deferred their acknowledgements; it settled the last one before it ended.
    from airflow_provider_cdc.positions import PositionStore

    stored = PositionStore().get(source_id)
    with psycopg.connect(source_url) as conn:
        (confirmed,) = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                                    " WHERE database = current_database()").fetchone()
    assert confirmed == stored["lsn"]
