"""Runs CDC stages in a child process and SIGKILLs itself at a chosen point (used by test_kill.py).

The kill points wrap real calls from outside (no test hook lives in the product): psycopg's ``execute`` and
``commit`` on the sink, the staging writer, the position store and the source's acknowledgement.

    python kill_runner.py CONFIG_DIR SOURCE_ID KILL_POINT [RUNS]
    python kill_runner.py --dag DAG_FILE KILL_POINT [RUNS]     (dag.test() of a hand-written DAG)
    python kill_runner.py --fused-loop CONFIG_DIR SOURCE_ID KILL_POINT NTH
        (fused runs with a capture ahead, as a ``loop_seconds`` task runs them, until the source is drained; the
        point fires at its NTH occurrence, so that a batch captured ahead is in flight)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared helpers

from cdc_testing import staged_run

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.connectors.postgres.source import PgSource
from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.positions import PositionStore
from airflow_provider_cdc.staging import BatchStore


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


NTH = {"left": 1}  # the occurrence of the kill point that kills (--fused-loop); 1: the first


def nth(predicate):
    def counted(*args, **kwargs) -> bool:
        if not predicate(*args, **kwargs):
            return False
        NTH["left"] -= 1
        return NTH["left"] == 0
    return counted


def after(cls, name, predicate=lambda *a, **k: True):
    original = getattr(cls, name)
    predicate = nth(predicate)

    def wrapper(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if predicate(self, *args, **kwargs):
            die()
        return result

    setattr(cls, name, wrapper)


def before(cls, name, predicate=lambda *a, **k: True):
    original = getattr(cls, name)
    predicate = nth(predicate)

    def wrapper(self, *args, **kwargs):
        if predicate(self, *args, **kwargs):
            die()
        return original(self, *args, **kwargs)

    setattr(cls, name, wrapper)


def sql_text(query) -> str:
    return query if isinstance(query, str) else repr(query)


LOADING = {"now": False}


def track_loading() -> None:
    """Mark the loads (staged: load_stage; fused: load_batch), so that a kill point finds the sink's own commit."""
    for name in ("load_stage", "load_batch"):
        original = getattr(pipeline, name)

        def loading(*args, _original=original, **kwargs):
            LOADING["now"] = True
            try:
                return _original(*args, **kwargs)
            finally:
                LOADING["now"] = False

        setattr(pipeline, name, loading)


def outer_commit(tx, exc_type=None, *args) -> bool:
    """The sink transaction of a load is about to commit (not a savepoint, not a failure)."""
    return LOADING["now"] and exc_type is None and not tx.savepoint_name


KILL_POINTS = {
    # capture stage
    "capture:before-staging": lambda: before(BatchStore, "write"),
    "capture:after-staging": lambda: after(BatchStore, "remember_run"),
    # load stage (mid-load: inside the sink transaction)
    "load:after-first-merge": lambda: after(psycopg.Cursor, "execute",
                                            lambda cur, q, *a, **k: "MERGE" in sql_text(q).upper()),
    "load:after-ledger-insert": lambda: after(psycopg.Cursor, "execute",
                                              lambda cur, q, *a, **k: "INSERT INTO" in sql_text(q)
                                              and "_cdc_ledger" in sql_text(q)),
    "load:before-commit": lambda: before(psycopg.Transaction, "__exit__", outer_commit),
    "load:after-commit": lambda: after(psycopg.Transaction, "__exit__", outer_commit),
    # commit stage
    "commit:after-position": lambda: after(PositionStore, "set"),
    "commit:after-ack": lambda: after(PgSource, "acknowledge"),
    # a fused loop's capture of the next batch, in its thread, while the batch before it loads
    "ahead:after-capture": lambda: after(
        PgSource, "capture", lambda *a, **k: threading.current_thread().name.startswith("cdc-capture-ahead")),
    "none": lambda: None,
}


def run_fused_loop(config_dir: str, source_id: str) -> None:
    """Fused runs with a capture ahead until one captures nothing and no snapshot is pending (positions in
    Airflow Variables, as the operator keeps them)."""
    hook = CdcHook(source_id, config_dir)
    source, sink = hook.get_source(), hook.get_sink()
    ahead = pipeline.CaptureAhead(source, hook.source_config.batch_size)
    for i in range(200):
        summary = pipeline.run_fused(source, sink, hook.positions, max_changes=hook.source_config.batch_size,
                                     ahead=ahead)
        print("RUN", i, summary["captured"], flush=True)
        if not summary["captured"] and "snapshot" not in (hook.positions.get(source_id) or {}):
            ahead.settle()
            return
    raise AssertionError("not drained in 200 fused runs")


def run_dag_file(path: str, point: str, runs: int) -> None:
    """``dag.test()`` of the DAG file's ``dag`` (a hand-written DAG: its Connections come from the environment),
    ``runs`` times, with the kill point armed: the real operators, in Airflow, die where the point says."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("killed_dag", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    track_loading()
    KILL_POINTS[point]()
    for i in range(runs):
        state = module.dag.test().state
        print("RUN", i, state, flush=True)


def main() -> None:
    if sys.argv[1] == "--dag":
        run_dag_file(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 1)
        return
    if sys.argv[1] == "--fused-loop":
        config_dir, source_id, point, nth_time = sys.argv[2:6]
        NTH["left"] = int(nth_time)
        track_loading()
        KILL_POINTS[point]()
        run_fused_loop(config_dir, source_id)
        return
    config_dir, source_id, point = sys.argv[1:4]
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    hook = CdcHook(source_id, config_dir)
    track_loading()
    KILL_POINTS[point]()
    for i in range(runs):
        summary = staged_run(hook, f"kill_{os.getpid()}_{i}")
        print("RUN", i, summary["change_count"], flush=True)


if __name__ == "__main__":
    main()
