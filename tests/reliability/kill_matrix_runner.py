"""The task process of the seeded SIGKILL matrix (``test_kill_matrix.py``): staged runs of one source, killed with
SIGKILL at a chosen point of capture, transform, validate, load or commit.

    python kill_matrix_runner.py CONFIG_DIR SOURCE_ID POINT RUN_PREFIX [RUNS [SKIP]]
    python kill_matrix_runner.py --serve

The first form is one task process, as ``tests/e2e/kill_runner.py`` runs it: ``RUNS`` staged runs at most (run ids
``RUN_PREFIX_0``, ``RUN_PREFIX_1``...; it stops early once the source is drained), killing itself at occurrence
``SKIP + 1`` of ``POINT`` (``none``: never). The second form is a fork server: it imports Airflow and every connector
once (about 5 s of CPU here, more than a whole case), prints ``READY``, then forks one such process per JSON request
on stdin and answers with a JSON line saying how it ended. A request may ask the server to SIGKILL the process after
a delay (the parent's kill at a random moment) instead of arming a point.

The points wrap real calls from outside (no test hook lives in the product), as in ``kill_runner.py``. Before it dies
the process prints ``KILLED <point> batch=<id> seq_from=<n> seq_to=<n> changes=<n> run=<run id> after=<s>``: the
batch in flight, which the test then looks for in what the recovery logged.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the shared helpers

import psycopg
import pymysql
from cdc_testing import staged_run
from pymongo.client_session import ClientSession

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.connectors.delta.ledger_table import DeltaLedger
from airflow_provider_cdc.connectors.delta.sink import DeltaSink
from airflow_provider_cdc.connectors.mongodb.sink import MongoSink
from airflow_provider_cdc.connectors.mongodb.sink_storage import Bookkeeping
from airflow_provider_cdc.connectors.mongodb.source import MongoSource
from airflow_provider_cdc.connectors.mysql.sink import MySqlSink
from airflow_provider_cdc.connectors.mysql.source import MySqlSource
from airflow_provider_cdc.connectors.postgres.sink import PgSink
from airflow_provider_cdc.connectors.postgres.source import PgSource
from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.positions import PositionStore
from airflow_provider_cdc.staging import BatchStore

SOURCES: dict[str, type] = {"postgresql": PgSource, "mysql": MySqlSource, "mongodb": MongoSource}
SINKS: dict[str, type] = {"postgresql": PgSink, "mysql": MySqlSink, "mongodb": MongoSink, "file": DeltaSink}

# The points every source and sink has. Load points differ by sink: LOAD_POINTS.
CAPTURE_POINTS = ["capture:after-prepare", "capture:before-staging", "capture:after-staging"]
STAGE_POINTS = ["transform:before", "transform:after", "validate:before", "validate:after"]
COMMIT_POINTS = ["commit:after-position", "commit:after-audit", "commit:after-ack"]
TRANSACTIONAL_LOAD = ["load:before-first-write", "load:mid-write", "load:after-ledger-insert", "load:before-commit",
                      "load:after-commit"]
# Delta has no transaction across tables: each table's MERGE is a commit, the ledger row the last one.
DELTA_LOAD = ["load:before-first-write", "load:between-table-commits", "load:before-ledger-commit",
              "load:after-commit"]
LOAD_POINTS = {"postgresql": TRANSACTIONAL_LOAD, "mysql": TRANSACTIONAL_LOAD, "mongodb": TRANSACTIONAL_LOAD,
               "file": DELTA_LOAD}


def points_for(sink_type: str, *, stages: bool) -> list[str]:
    """Every point a case into ``sink_type`` can be killed at (the stage points only when the source has stages):
    load and commit first, where exactly-once is decided."""
    return [*LOAD_POINTS[sink_type], *COMMIT_POINTS, *CAPTURE_POINTS, *(STAGE_POINTS if stages else [])]


class Flight:
    """What the process is doing, for the line it prints before it dies: the run, the batch in flight, and whether
    the current load has written its ledger row (a sink's commit after that is the batch's commit)."""

    run_id = ""
    batch_id: str | None = None
    seq_from: int | None = None
    seq_to: int | None = None
    changes: int | None = None
    loading = False
    ledger_written = False
    remaining = 0  # occurrences of the point still to let pass
    started = 0.0


def die(point: str) -> None:
    print(f"KILLED {point} batch={Flight.batch_id} seq_from={Flight.seq_from} seq_to={Flight.seq_to} "
          f"changes={Flight.changes} run={Flight.run_id} "
          f"after={time.monotonic() - Flight.started:.2f}s", flush=True)
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def fire(point: str) -> None:
    """Die at this occurrence of the point, or count it down."""
    if Flight.remaining > 0:
        Flight.remaining -= 1
        return
    die(point)


Predicate = Callable[..., bool]


def always(*_args: Any, **_kwargs: Any) -> bool:
    return True


def after(owner: Any, name: str, point: str, predicate: Predicate = always) -> None:
    """Kill right after ``owner.name`` returns (when ``predicate`` holds for its arguments)."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if predicate(*args, **kwargs):
            fire(point)
        return result

    setattr(owner, name, wrapper)


def before(owner: Any, name: str, point: str, predicate: Predicate = always) -> None:
    """Kill just before ``owner.name`` runs (when ``predicate`` holds for its arguments)."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if predicate(*args, **kwargs):
            fire(point)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def track_flight() -> None:
    """Keep :class:`Flight` current: the batch each capture made (or replayed), and the load's progress."""
    capture_stage, load_stage = pipeline.capture_stage, pipeline.load_stage

    def capture(*args: Any, **kwargs: Any) -> dict[str, Any]:
        summary = capture_stage(*args, **kwargs)
        Flight.batch_id, Flight.seq_from, Flight.seq_to = summary["batch_id"], summary["seq_from"], summary["seq_to"]
        Flight.changes = summary["change_count"]
        return summary

    def load(*args: Any, **kwargs: Any) -> dict[str, Any]:
        Flight.loading, Flight.ledger_written = True, False
        try:
            return load_stage(*args, **kwargs)
        finally:
            Flight.loading = False

    pipeline.capture_stage, pipeline.load_stage = capture, load
    write = BatchStore.write

    def staged(self: BatchStore, batch: Any, *args: Any, **kwargs: Any) -> str:
        if kwargs.get("stage", "capture") == "capture":  # the batch exists now, before it is staged
            Flight.batch_id, Flight.seq_from, Flight.seq_to = batch.batch_id, batch.seq_from, batch.seq_to
            Flight.changes = batch.change_count
        return write(self, batch, *args, **kwargs)

    BatchStore.write = staged  # type: ignore[method-assign]
    for owner, name in [(PgSink, "_insert_ledger"), (MySqlSink, "_insert_ledger"), (Bookkeeping, "insert_ledger")]:
        _note_ledger_row(owner, name)


def _note_ledger_row(owner: Any, name: str) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        Flight.ledger_written = Flight.loading
        return result

    setattr(owner, name, wrapper)


def first_in_load() -> Predicate:
    """True on the first call in each load (the wrapped call's first table of a batch)."""
    calls: dict[str, Any] = {"load": None, "n": 0}

    def predicate(*_args: Any, **_kwargs: Any) -> bool:
        if calls["load"] != (Flight.run_id, Flight.batch_id):
            calls["load"], calls["n"] = (Flight.run_id, Flight.batch_id), 0
        calls["n"] += 1
        return Flight.loading and calls["n"] == 1

    return predicate


def in_load(*_args: Any, **_kwargs: Any) -> bool:
    return Flight.loading


def ledger_pending(*_args: Any, **_kwargs: Any) -> bool:
    """The load wrote its ledger row and has not committed yet: the next commit of the sink is the batch's."""
    return Flight.loading and Flight.ledger_written


def outer_commit(tx: psycopg.Transaction, exc_type: Any = None, *_args: Any) -> bool:
    """psycopg: the outer transaction of the load is about to commit (not a savepoint, not a rollback)."""
    return ledger_pending() and exc_type is None and not tx.savepoint_name


def stage_named(name: str) -> Predicate:
    return lambda _uri, stage, *_a, **_k: stage.name == name


def arm(point: str, source_type: str, sink_type: str) -> None:
    """Wrap the call at which ``point`` kills the process."""
    source, sink = SOURCES[source_type], SINKS[sink_type]
    step, _, where = point.partition(":")
    if point == "none":
        return
    if step == "capture":
        {"after-prepare": lambda: after(source, "prepare", point),
         "before-staging": lambda: before(BatchStore, "write", point,
                                          lambda *a, **k: k.get("stage", "capture") == "capture"),
         "after-staging": lambda: after(BatchStore, "remember_run", point)}[where]()
    elif step in ("transform", "validate"):
        (before if where == "before" else after)(pipeline, "run_stage", point, stage_named(step))
    elif step == "load":
        arm_load(point, where, sink, sink_type)
    elif step == "commit":
        {"after-position": lambda: after(PositionStore, "set", point),
         "after-audit": lambda: after(sink, "record_audit", point),
         "after-ack": lambda: after(source, "acknowledge", point)}[where]()
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def arm_load(point: str, where: str, sink: type, sink_type: str) -> None:
    if where == "after-commit":  # the sink's apply returned: data and ledger row committed
        after(sink, "apply", point)
    elif sink_type == "file":
        {"before-first-write": lambda: before(DeltaSink, "_commit_table", point, first_in_load()),
         "between-table-commits": lambda: after(DeltaSink, "_commit_table", point, first_in_load()),
         "before-ledger-commit": lambda: before(DeltaLedger, "append_row", point, in_load)}[where]()
    elif where == "before-first-write":
        before(sink, "_merge_tables", point)
    elif where == "mid-write":
        after(sink, "_apply_table", point, first_in_load())
    elif where == "after-ledger-insert":
        owner = Bookkeeping if sink_type == "mongodb" else sink
        after(owner, "insert_ledger" if sink_type == "mongodb" else "_insert_ledger", point, in_load)
    elif where == "before-commit":
        {"postgresql": lambda: before(psycopg.Transaction, "__exit__", point, outer_commit),
         "mysql": lambda: before(pymysql.connections.Connection, "commit", point, ledger_pending),
         "mongodb": lambda: before(ClientSession, "commit_transaction", point, ledger_pending)}[sink_type]()
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def drained(hook: CdcHook, summary: dict[str, Any]) -> bool:
    return summary["change_count"] == 0 and "snapshot" not in (hook.positions.get(hook.source_id) or {"snapshot": 1})


def run_task(config_dir: str, source_id: str, point: str, run_prefix: str, runs: int, skip: int) -> None:
    """Staged runs until the point kills the process, the source is drained, or ``runs`` ran."""
    Flight.started = time.monotonic()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("airflow_provider_cdc").setLevel(logging.INFO)
    hook = CdcHook(source_id, config_dir)
    Flight.remaining = skip
    arm(point, hook.source_config.type, hook.sink_config.type)
    track_flight()  # outside the point's wrappers: the batch is known when a point fires
    for i in range(runs):
        Flight.run_id = f"{run_prefix}_{i}"
        Flight.batch_id = Flight.seq_from = Flight.seq_to = Flight.changes = None
        summary = staged_run(hook, Flight.run_id)
        print(f"RUN {Flight.run_id} batch={summary['batch_id']} changes={summary['change_count']} "
              f"at={time.monotonic() - Flight.started:.2f}s", flush=True)
        if drained(hook, summary):
            break
    print(f"DONE point {point} not reached" if point != "none" else "DONE", flush=True)


# --- the fork server --------------------------------------------------------------------------------------------


def preload() -> None:
    """What a case's process would import: the stages too (Great Expectations alone takes seconds)."""
    import great_expectations  # noqa: F401
    from airflow.models import Variable  # noqa: F401
    from sqlalchemy.orm import configure_mappers

    import airflow_provider_cdc.quality.stage
    import airflow_provider_cdc.transform.stage  # noqa: F401

    # The ORM maps Airflow's models on first use (seconds of CPU); nothing connects to the database here.
    configure_mappers()


def run_forked(request: dict[str, Any]) -> None:
    """In the forked child: output to the request's log file, then the task; never returns."""
    code = 0
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdin.close()
        run_task(request["config_dir"], request["source_id"], request["point"], request["run_prefix"],
                 int(request["runs"]), int(request.get("skip", 0)))
    except BaseException:  # the parent reads the traceback in the log
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # not the server's exit handlers


def wait(pid: int, kill_after: float | None, timeout: float) -> dict[str, Any]:
    """Wait for the task process; SIGKILL it after ``kill_after`` seconds (the parent's kill) or ``timeout``."""
    started = time.monotonic()
    deadline = started + (kill_after if kill_after is not None else timeout)
    killed_by = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() >= deadline:
            killed_by = "parent" if kill_after is not None else "timeout"
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.01)
    died = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    return {"pid": pid, "signal": died, "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            # It may have ended by itself just before the kill.
            "killed_by": killed_by if died == signal.SIGKILL else None,
            "seconds": round(time.monotonic() - started, 3)}


def serve() -> None:
    """Answer on the original stdout only: what the imports print (Great Expectations logs to stdout) goes to
    stderr."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    preload()
    print("READY", file=answers, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            answers.close()
            run_forked(request)
        kill_after = request.get("kill_after")
        answer = wait(pid, None if kill_after is None else float(kill_after), float(request.get("timeout", 240)))
        print(json.dumps({**answer, "id": request.get("id")}), file=answers, flush=True)


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        serve()
        return
    if not 5 <= len(sys.argv) <= 7:
        raise SystemExit(__doc__)
    config_dir, source_id, point, run_prefix = sys.argv[1:5]
    runs = int(sys.argv[5]) if len(sys.argv) > 5 else 6
    skip = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    run_task(config_dir, source_id, point, run_prefix, runs, skip)


if __name__ == "__main__":
    main()
