"""The status arithmetic of airflow_provider_cdc.api.status, without a server: rates, scores, lag."""

from __future__ import annotations

import datetime as dt

from airflow_provider_cdc.api.status import (
    RunRecord,
    events_per_second,
    failure_rate,
    lag_seconds,
    quality_score,
)
from airflow_provider_cdc.connectors.ledger import LedgerRow

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def row(batch: str, *, run_id: str | None = None, counts=None, seconds: int = 0, metrics=None) -> LedgerRow:
    return LedgerRow(batch_id=batch, source_id="s", position_from={}, position_to={}, seq_from=1, seq_to=2,
                     counts=counts or {"public.users": {"c": 3, "u": 1}}, run_id=run_id,
                     stage_versions=None if metrics is None else {"validate": {"metrics": metrics}},
                     committed_at=T0 + dt.timedelta(seconds=seconds))


def test_quality_score_pools_the_validated_tables():
    metrics = {"public.users": {"evaluated": 8, "passed": 6}, "public.orders": {"evaluated": 2, "passed": 2}}
    assert quality_score(row("b", metrics=metrics)) == 0.8
    assert quality_score(row("b")) is None  # no quality rules ran
    assert quality_score(row("b", metrics={"public.users": {"evaluated": 0, "passed": 0}})) == 1.0


def test_failure_rate_counts_finished_runs_only():
    runs = [RunRecord("a", "failed"), RunRecord("b", "success"), RunRecord("c", "running"), RunRecord("d", "success")]
    assert failure_rate(runs) == (1 / 3, 3)
    assert failure_rate([RunRecord("a", "queued")]) == (None, 0)


def test_events_per_second_is_over_run_time_and_counts_a_run_once():
    runs = [RunRecord("r1", "success", start_date=T0, end_date=T0 + dt.timedelta(seconds=2)),
            RunRecord("r2", "success", start_date=T0, end_date=None)]
    rows = [row("b1", run_id="r1"), row("b2", run_id="r1"), row("b3", run_id="r2"), row("b4")]
    assert events_per_second(rows, runs) == 8 / 2  # b1 and b2 (4 changes each) in r1's 2 s
    assert events_per_second([row("b4")], runs) is None


def test_events_per_second_of_a_running_fused_loop_counts_up_to_its_last_commit():
    runs = [RunRecord("loop", "running", start_date=T0, end_date=None)]
    rows = [row("b2", run_id="loop", seconds=10), row("b1", run_id="loop", seconds=5)]
    assert events_per_second(rows, runs) == 8 / 10


def test_lag_is_the_age_of_the_last_commit():
    assert lag_seconds([row("a", seconds=5), row("b", seconds=10)], T0 + dt.timedelta(seconds=12)) == 2
    assert lag_seconds([], T0) is None
