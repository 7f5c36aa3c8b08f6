"""The parallel initial snapshot through real Airflow: ``airflow dags test cdc_<id>`` with ``options.snapshot_ranges``
runs ``snapshot_ranges`` → ``snapshot_range`` (dynamic task mapping, one task instance a key range) → ``capture``.

The run that plans the ranges stages nothing; the next one stages both ranges as two mapped task instances; every
later run finds nothing to stage, so the mapped task is skipped and the capture still runs (its trigger rule is
``none_failed_min_one_success``), emitting one staged chunk a batch. The source changes between runs, and source and
sink end up equal row for row. :mod:`tests.test_parallel_snapshot` covers the protocol itself (keys moving between
ranges, TOAST, killed ranges); this file covers what Airflow makes of the DAG.
"""

from __future__ import annotations

import random

import psycopg
import pytest
from cdc_testing import (
    ON_PG15_ONLY,
    assert_ledger_consistent,
    assert_same_rows,
    create_shop,
    dags_test,
    random_changes,
    unique_id,
    write_config,
)

RANGED = """\
options:
  snapshot_ranges: {ranges}
  snapshot_range_min_rows: 1000
"""

# A staged chunk holds batch_size // 2 rows: 4,000 users in two ranges of about 2,000 are one chunk a range, or two
# where the changes made before staging grew a range past 2,000 rows. Fewer chunks, fewer runs (each ~10-20 s).
BATCH_SIZE = 4000


def position(source_id: str) -> dict:
    from airflow_provider_cdc.positions import PositionStore

    stored = PositionStore().get_document(source_id)
    assert stored is not None, f"no position stored for {source_id}"
    return stored


def latest_run(dag_id: str) -> str:
    """The run id of the newest run of ``dag_id`` in the metadata DB (``airflow dags test`` wrote it there)."""
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(DagRun.run_id).filter(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).first()
    assert row is not None, f"no run of {dag_id} in the metadata DB"
    return row[0]


def task_states(dag_id: str, run_id: str) -> dict[str, dict[int, str]]:
    """task id → {map index: state} of one run (an unmapped task, or a mapped one never expanded, has index -1)."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state).filter(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id).all()
    states: dict[str, dict[int, str]] = {}
    for task_id, map_index, state in rows:
        states.setdefault(task_id, {})[map_index] = str(state)
    return states


def range_results(dag_id: str, run_id: str) -> dict[int, dict]:
    """map index → what that ``snapshot_range`` task instance returned (its XCom): range, chunks, rows, resumed."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.task_id == "snapshot_range",
            XComModel.key == "return_value").all()
        return {row.map_index: XComModel.deserialize_value(row) for row in rows}


def users_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM users").fetchone()
    assert row is not None
    return int(row[0])


def has_changes(source_id: str, config_dir) -> bool:
    """The sensor's question (a run with nothing to capture would wait in its deferred sensor)."""
    from airflow_provider_cdc.hooks.cdc import CdcHook
    from airflow_provider_cdc.pipeline import start_position

    hook = CdcHook(source_id, str(config_dir))
    with hook.connected() as (source, sink):
        return source.has_changes(start_position(source, sink, hook.positions))


def emitted(stored: dict) -> list[int] | None:
    """Chunks emitted per range while a ranged snapshot is pending, else None."""
    ranges = (stored.get("snapshot") or {}).get("ranges")
    return None if ranges is None else ranges["emitted"]


@pytest.mark.timeout(600)
@ON_PG15_ONLY  # the subject is Airflow's mapping; tests/test_parallel_snapshot.py runs the protocol on 15 and 18
def test_mapped_range_tasks_stage_the_snapshot_and_the_dag_converges(pg_database_factory, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=4000, orders=500)
    source_id = unique_id("ranged")
    dag_id = f"cdc_{source_id}"
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users", "orders"], batch_size=BATCH_SIZE, extra=RANGED.format(ranges=2))
    rng = random.Random(20261127)

    runs: list[tuple[str, dict]] = []  # (run id, position after it) of each snapshot run
    users_before: list[int] = []  # source rows of users when each run started
    while True:
        assert len(runs) < 8, f"the snapshot is still pending after {len(runs)} runs: {runs[-1][1].get('snapshot')}"
        users_before.append(users_count(source_url))
        dags_test(source_id, config_dir)
        runs.append((latest_run(dag_id), position(source_id)))
        if "snapshot" not in runs[-1][1]:
            break
        random_changes(source_url, rng, transactions=3, allow_truncate=False)

    # The first run reaches users (4,000 rows, above snapshot_range_min_rows) and only plans its two key ranges.
    planned = runs[0][1]["snapshot"]["ranges"]
    assert planned["table"] == "public.users" and len(planned["splits"]) == 1
    assert emitted(runs[0][1]) == [0, 0]
    states = [task_states(dag_id, run_id) for run_id, _ in runs]
    # The next run stages both ranges, one mapped task instance each.
    assert states[1]["snapshot_ranges"] == {-1: "success"}
    assert states[1]["snapshot_range"] == {0: "success", 1: "success"}
    staged = range_results(dag_id, runs[1][0])
    assert sorted(staged) == [0, 1] and all(r["rows"] > 0 and not r["resumed"] for r in staged.values()), staged
    assert sum(r["rows"] for r in staged.values()) == users_before[1], staged  # every user row, once
    # Every other run has no range to stage (no plan yet, or all staged): the mapped task is skipped, the capture
    # still runs, and so does the rest of the run.
    for i, by_task in enumerate(states):
        rest = {task: by_index for task, by_index in by_task.items() if task != "snapshot_range"}
        assert rest == {task: {-1: "success"} for task in
                        ("wait_for_changes", "snapshot_ranges", "capture", "load", "commit")}, (i, by_task)
        if i != 1:
            assert by_task["snapshot_range"] == {-1: "skipped"}, (i, by_task)
    # From the staging run on, each run emits staged chunks in watermark order, as many as a batch holds (two of
    # batch_size // 2 rows; the stream part before each is read up to its watermark), until a run finds none
    # left: users is complete, and orders (500 rows) is read in that run.
    assert 3 <= len(runs) <= 6, len(runs)  # plan, one or two runs of chunks, completion, orders
    counts = [sum(emitted(stored)) for _, stored in runs[1:] if emitted(stored) is not None]
    assert counts == sorted(set(counts)) and all(0 < b - a <= 2 for a, b in zip([0, *counts], counts)), counts
    # The last run emits what was left (at most a batch's two chunks) and completes the table in the same capture.
    total = staged[0]["chunks"] + staged[1]["chunks"]
    assert counts and total - 2 <= counts[-1] <= total, (counts, staged)

    # The stream alone from here: a few more changes, and runs until the sensor would find nothing.
    random_changes(source_url, rng, transactions=3, allow_truncate=False)
    drained = 0
    while has_changes(source_id, config_dir):
        assert drained < 3, "the stream did not drain in 3 runs"
        dags_test(source_id, config_dir)
        drained += 1
        assert task_states(dag_id, latest_run(dag_id))["snapshot_range"] == {-1: "skipped"}
    assert drained >= 1

    assert assert_same_rows(source_url, sink_url, "users") > 3900
    assert assert_same_rows(source_url, sink_url, "orders") > 400
    assert_ledger_consistent(sink_url, source_id)


@pytest.mark.parametrize("mode", ["staged", "fused"])
@pytest.mark.parametrize("ranges", [None, 1, 2])
def test_the_dag_has_mapped_range_tasks_only_with_snapshot_ranges_above_one(tmp_path, mode, ranges):
    from airflow.sdk.definitions.mappedoperator import MappedOperator
    from airflow.sdk.definitions.xcom_arg import PlainXComArg

    from airflow_provider_cdc.dag_factory import build_dags

    source_id = unique_id("shape")
    url = "postgresql://postgres@127.0.0.1:5432/unused"  # the DAG is only built: nothing connects
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=url, sink_url=url,
                              tables=["users"], mode=mode, extra=RANGED.format(ranges=ranges) if ranges else "")
    dag = build_dags(config_dir)[f"cdc_{source_id}"]

    tail = ["capture", "load", "commit"] if mode == "staged" else ["fused"]
    first = dag.get_task(tail[0])
    if ranges == 2:
        assert sorted(dag.task_ids) == sorted(["wait_for_changes", "snapshot_ranges", "snapshot_range", *tail])
        mapped = dag.get_task("snapshot_range")
        assert isinstance(mapped, MappedOperator)
        assert not isinstance(dag.get_task("snapshot_ranges"), MappedOperator)
        # Expanded over what the listing task returns: one task instance a range index.
        expanded = mapped.expand_input.value
        assert isinstance(expanded, dict) and list(expanded) == ["range_index"]
        arg = expanded["range_index"]
        assert isinstance(arg, PlainXComArg)
        assert (arg.operator.task_id, arg.key) == ("snapshot_ranges", "return_value")
        assert mapped.upstream_task_ids == {"snapshot_ranges"}
        assert dag.get_task("snapshot_ranges").upstream_task_ids == {"wait_for_changes"}
        assert first.upstream_task_ids == {"snapshot_ranges", "snapshot_range"}
        assert first.trigger_rule == "none_failed_min_one_success"
    else:
        assert sorted(dag.task_ids) == sorted(["wait_for_changes", *tail])
        assert first.upstream_task_ids == {"wait_for_changes"}
        assert first.trigger_rule == "all_success"
    assert not any(isinstance(task, MappedOperator) for task in dag.tasks if task.task_id != "snapshot_range")
    for task_id in tail[1:]:
        assert dag.get_task(task_id).trigger_rule == "all_success"
