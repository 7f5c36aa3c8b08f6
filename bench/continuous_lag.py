"""Continuous mode (DESIGN section 6, issue 12 item 4): commit-to-sink lag at 1,000 changes/s offered, through a
real ``airflow standalone`` (LocalExecutor), in three variants: staged, fused (one batch per run) and fused with
``loop_seconds`` (one run loops over batches until its time budget).

    .venv/bin/python bench/continuous_lag.py [--minutes 5] [--variants staged,fused,loop] [--loop-seconds 120]
                                             [--poll-interval 0.5] [--rate 1000] [--tx-per-second 10]
                                             [--seed-rows 200000] [--batch-size 50000] [--json PATH] [--dsn URL]

Each variant gets fresh everything, dropped or stopped at the end whatever happens: source, sink and Airflow
metadata databases on the machine's PostgreSQL (``--dsn``, default 127.0.0.1:5432; ``bash
scripts/ensure_pg15_logical.sh`` makes it logical), a config folder (connectors.yaml + cdc.yaml, one source
``lagbench``, schedule ``@continuous``) and a private ``AIRFLOW_HOME`` in a temporary folder, and ``airflow
standalone`` started as scripts/demo.py starts it (the bundle ``dags/`` with ``CDC_CONFIG_DIR``; simple auth
manager; metadata on PostgreSQL) with the LocalExecutor, in its own session: at the end every process of that
session gets SIGTERM, then SIGKILL (task processes put themselves in process groups of their own, so the whole
session is stopped, not only the leader's group).

1. seed ``public.lag_rows`` (``--seed-rows`` rows), start Airflow, unpause ``cdc_lagbench`` through the REST API
   and wait until its initial snapshot is in the sink (the sink holds every seeded row and the position Variable
   has no pending snapshot);
2. the meter (below) goes onto the sink table;
3. the generator offers ``--rate`` changes/s for ``--minutes``: ``--tx-per-second`` transactions a second on an
   absolute schedule, each half new rows (INSERT) and half updates of seeded rows (each seeded row updated at most
   once, so no change is folded into another one and each change shows up in the sink exactly once);
4. wait until every offered change is in the sink; read the runs and task instances from the REST API; stop
   Airflow; drop the databases.

The meter: a ``DEFERRABLE INITIALLY DEFERRED`` constraint trigger ``AFTER INSERT OR UPDATE ... FOR EACH ROW`` on the
sink table writes ``(id, gen_tx, NEW._cdc_ts, clock_timestamp(), txid_current())`` into ``lag_meter.events``.
A deferred trigger runs at the sink transaction's COMMIT, after every statement of the transaction (MERGE, ledger,
audit), and MERGE fires row triggers per row. A row is visible once its transaction commits, so a change's
visibility time is the latest ``clock_timestamp()`` of its sink transaction (the last of its deferred triggers; only
the commit record's flush comes after it). ``_cdc_ts`` is the source commit's timestamp from pgoutput's COMMIT
message, in milliseconds (the sink stores ``to_timestamp(ms / 1000.0)``). Lag = visibility − ``_cdc_ts`` (0–1 ms too
long from the truncation). Cross-check: the generator writes its transaction number into each row (``gen_tx``)
and notes the wall clock just before and just after each COMMIT; ``_cdc_ts`` must lie between them (same machine,
same clock).

The scheduler's share: from ``/api/v2/dags/cdc_lagbench/dagRuns`` and ``.../dagRuns/~/taskInstances``
(``scheduled_when``, ``queued_when``, ``start_date``, ``end_date``) every instant of the measured window is
labelled: a pipeline task running (capture, load, commit, fused: start_date..end_date, which includes the task
process's own start-up and the DAG file's parse), the sensor running (``wait_for_changes``), a task queued
(queued_when..start_date: the executor and the worker process starting), a task scheduled but not yet queued
(scheduled_when..queued_when), or none of these (the scheduler between tasks and runs: DAG run creation, dependency
checks). Each change's lag interval [source commit, visible] is split by these labels; the shares are summed over
all changes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from server_process import free_port, port_is_free  # noqa: E402

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
SOURCE_ID = "lagbench"
DAG_ID = f"cdc_{SOURCE_ID}"
TABLE = "lag_rows"
ADMIN_USER = "admin"
SENSOR_TASK = "wait_for_changes"
VARIANTS = ("staged", "fused", "loop")
UPDATE_STEP = 7919  # updates pick seeded keys i -> (i * step) mod seed + 1: spread out, each at most once
GRID = 0.01  # seconds per cell of the attribution timeline
# Attribution labels, highest priority first (see the module's docstring).
LABELS = ("execute", "sensor execute", "sensor deferred", "task start-up/finish", "queued", "scheduled", "between")
SCHEDULER_LABELS = ("queued", "scheduled", "between")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Stop(Exception):
    """SIGINT or SIGTERM: clean up and leave."""


def _on_signal(signum: int, _frame: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stop(signal.Signals(signum).name)


def loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# --- databases -----------------------------------------------------------------------------------------------------


def as_url(dsn: str, dbname: str) -> str:
    """A postgresql:// URL (connectors.yaml and SQLAlchemy take URLs, not key=value conninfo)."""
    params = conninfo_to_dict(dsn)
    user = params.get("user", "postgres")
    host = params.get("host", "127.0.0.1")
    port = params.get("port", 5432)
    password = f":{params['password']}" if params.get("password") else ""
    return f"postgresql://{user}{password}@{host}:{port}/{dbname}"


def drop_databases(dsn: str, names: list[str]) -> None:
    """Drop ``names`` (ours) and the replication slots in them; only sessions on these databases are ended."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:
            for _attempt in range(100):
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
                slots = conn.execute("SELECT slot_name, active FROM pg_replication_slots WHERE database = %s",
                                     (name,)).fetchall()
                if not slots:
                    break
                for slot, active in slots:
                    if not active:
                        with suppress(psycopg.errors.ObjectInUse, psycopg.errors.UndefinedObject):
                            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                time.sleep(0.1)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_databases(dsn: str, names: list[str]) -> None:
    drop_databases(dsn, names)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def seed_source(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, gen_tx int NOT NULL, v int NOT NULL, payload text NOT NULL,"
            " updated_at timestamptz NOT NULL)").format(sql.Identifier(TABLE)))
        conn.execute(sql.SQL(
            "INSERT INTO {} SELECT g, -1, (g %% 1000)::int, md5(g::text), clock_timestamp()"
            " FROM generate_series(1, %s::bigint) g").format(sql.Identifier(TABLE)), (rows,))
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(TABLE)))


METER_SQL = f"""
CREATE SCHEMA lag_meter;
CREATE UNLOGGED TABLE lag_meter.events (id bigint, gen_tx int, cdc_ts timestamptz, seen_at timestamptz, xid bigint);
CREATE FUNCTION lag_meter.note() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO lag_meter.events VALUES (NEW.id, NEW.gen_tx, NEW._cdc_ts, clock_timestamp(), txid_current());
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER lag_meter_note AFTER INSERT OR UPDATE ON public.{TABLE}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION lag_meter.note();
"""


def install_meter(sink_url: str) -> None:
    with psycopg.connect(sink_url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '30s'")
        with conn.transaction():
            conn.execute(METER_SQL)


# --- the generator ---------------------------------------------------------------------------------------------------


class Generator(threading.Thread):
    """``rate`` changes/s in ``tx_per_second`` transactions/s for ``seconds``, on an absolute schedule: transaction
    k is due at start + k / tx_per_second (late ones go at once, so the offered total is kept). Each transaction:
    INSERT of the next new keys, UPDATE of the next seeded keys (a permutation: each seeded row at most once)."""

    def __init__(self, url: str, *, seed_rows: int, rate: float, tx_per_second: float, seconds: float) -> None:
        super().__init__(name="generator", daemon=True)
        self.url = url
        self.seed_rows = seed_rows
        self.per_tx = max(2, round(rate / tx_per_second))
        self.tx_per_second = tx_per_second
        self.transactions = int(round(seconds * tx_per_second))
        self.inserts_per_tx = self.per_tx // 2
        self.updates_per_tx = self.per_tx - self.inserts_per_tx
        if self.transactions * self.updates_per_tx > seed_rows:
            raise ValueError(f"--seed-rows must be at least {self.transactions * self.updates_per_tx} "
                             "(each seeded row is updated at most once)")
        self.step = UPDATE_STEP
        while math.gcd(self.step, seed_rows) != 1:
            self.step += 2
        self.log: list[tuple[int, float, float, int]] = []  # (tx, before COMMIT, after COMMIT, changes)
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.late_max = 0.0
        self.error: BaseException | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _run(self) -> None:
        name = sql.Identifier(TABLE)
        insert = sql.SQL("INSERT INTO {} SELECT g, %s, (g %% 1000)::int, md5(g::text), clock_timestamp()"
                         " FROM generate_series(%s::bigint, %s::bigint) g").format(name)
        update = sql.SQL("UPDATE {} SET gen_tx = %s, v = v + 1, payload = md5(payload),"
                         " updated_at = clock_timestamp() WHERE id = ANY(%s)").format(name)
        with psycopg.connect(self.url) as conn:
            next_insert = self.seed_rows + 1
            next_update = 0
            start = time.time() + 0.2
            self.started_at = start
            for k in range(self.transactions):
                if self.stop_event.is_set():
                    break
                due = start + k / self.tx_per_second
                now = time.time()
                if due > now:
                    time.sleep(due - now)
                else:
                    self.late_max = max(self.late_max, now - due)
                keys = [(i * self.step) % self.seed_rows + 1
                        for i in range(next_update, next_update + self.updates_per_tx)]
                next_update += self.updates_per_tx
                conn.execute(insert, (k, next_insert, next_insert + self.inserts_per_tx - 1))
                next_insert += self.inserts_per_tx
                cur = conn.execute(update, (k, keys))
                if cur.rowcount != self.updates_per_tx:
                    raise RuntimeError(f"update of transaction {k} touched {cur.rowcount} rows")
                before = time.time()
                conn.commit()
                after = time.time()
                self.log.append((k, before, after, self.per_tx))
            self.finished_at = time.time()


# --- Airflow ---------------------------------------------------------------------------------------------------------


def choose_api_port() -> int:
    for port in (18080, 18081, 18082):
        if port_is_free(port, "127.0.0.1") and port_is_free(port, "0.0.0.0"):
            return port
    while True:
        port = free_port("0.0.0.0")
        if port_is_free(port, "127.0.0.1"):
            return port


def write_config(directory: Path, *, source_url: str, sink_url: str, mode: str, poll_interval: float,
                 batch_size: int, loop_seconds: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "connectors.yaml").write_text(textwrap.dedent(f"""\
        connectors:
          - id: source_db
            type: postgresql
            connection_string: {source_url}
          - id: warehouse
            type: postgresql
            connection_string: {sink_url}
        """))
    loop = f"    loop_seconds: {loop_seconds:g}\n" if loop_seconds else ""
    (directory / "cdc.yaml").write_text(textwrap.dedent(f"""\
        sources:
          - id: {SOURCE_ID}
            type: postgresql
            connector: source_db
            tables: [public.{TABLE}]
            snapshot: initial
            batch_size: {batch_size}
            poll_interval: {poll_interval:g}
            sink: warehouse
            target_schema: public
            delete_mode: hard
            schedule: "@continuous"
            mode: {mode}
        """) + loop)


def airflow_env(home: Path, config_dir: Path, metadata_url: str, api_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for key in list(env):
        if key.startswith("AIRFLOW__") or key in ("AIRFLOW_HOME", "CDC_STAGING_URL", "CDC_BENCH_AIRFLOW_HOME"):
            del env[key]
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # unpaused through the REST API once parsed
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url.replace("postgresql://", "postgresql+psycopg2://"),
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{api_port}/execution/",
        "CDC_CONFIG_DIR": str(config_dir),
    })
    return env


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (what we started: the standalone leader and every descendant that did not
    start a session of its own; task processes make their own process groups but stay in the session)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                members.append(int(entry))
    return members


def stop_session(proc: subprocess.Popen, name: str, timeout: float = 30) -> None:
    """SIGINT the leader (``airflow standalone`` stops its components on Ctrl-C; SIGTERM would end the leader
    alone and orphan them), then SIGTERM and at last SIGKILL whatever of its session is left."""
    sid = proc.pid
    steps = ((lambda: proc.send_signal(signal.SIGINT), timeout),
             (lambda: [os.kill(pid, signal.SIGTERM) for pid in session_members(sid)], 10),
             (lambda: [os.kill(pid, signal.SIGKILL) for pid in session_members(sid)], 10))
    for send, wait in steps:
        with suppress(ProcessLookupError):
            send()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            if proc.returncode is not None and not session_members(sid):
                return
            time.sleep(0.2)
    left = session_members(sid)
    if left:
        log(f"{name}: processes still alive after SIGKILL: {left}")
    with suppress(subprocess.TimeoutExpired):
        proc.wait(5)


class Api:
    def __init__(self, port: int, home: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.home = home
        self.token: str | None = None

    def _request(self, method: str, path: str, body: Any = None, *, auth: bool = True, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.login()}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
        return json.loads(text) if text else None

    def login(self) -> str:
        if self.token is None:
            passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
            self.token = self._request("POST", "/auth/token", {"username": ADMIN_USER,
                                                               "password": passwords[ADMIN_USER]},
                                       auth=False)["access_token"]
        return self.token

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def patch(self, path: str, body: Any) -> Any:
        return self._request("PATCH", path, body)

    def healthy(self) -> bool:
        try:
            self._request("GET", "/api/v2/monitor/health", auth=False, timeout=3)
            return True
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def paged(self, path: str, key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            sep = "&" if "?" in path else "?"
            page = self.get(f"{path}{sep}limit=100&offset={len(items)}")
            batch = list(page[key])
            items += batch
            if not batch or len(items) >= (page.get("total_entries") or 0):
                return items


def wait_until(what: str, check: Any, timeout: float, proc: subprocess.Popen, standalone_log: Path,
               interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"airflow standalone exited with {proc.returncode} while waiting for {what}; "
                               f"see {standalone_log}:\n{tail(standalone_log)}")
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}; see {standalone_log}")


def tail(path: Path, lines: int = 30) -> str:
    with suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


# --- analysis --------------------------------------------------------------------------------------------------------


def ts(value: str | None) -> float | None:
    return None if value is None else dt.datetime.fromisoformat(value).timestamp()


def percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(values.max()),
            "mean": float(values.mean()), "min": float(values.min())}


def task_phases(home: Path, ti: dict[str, Any]) -> dict[str, list[tuple[float, float | None]]]:
    """Windows of the task's own log: ``execute`` (the operator's code: from the end of the Task SDK's "Pre Execute"
    group — worker start-up, DAG bundle, parse of the DAG file — to the start of its "Post Execute" group; the end
    is None while it still runs) and ``deferred`` (a sensor that deferred: from "Pausing task as DEFERRED" to the
    next "Pre Execute", i.e. the triggerer's polls, the trigger's event, the scheduler queueing the task again and
    a new worker starting)."""
    path = (home / "logs" / f"dag_id={ti['dag_id']}" / f"run_id={ti['dag_run_id']}" / f"task_id={ti['task_id']}"
            / f"attempt={max(1, int(ti.get('try_number') or 1))}.log")
    phases: dict[str, list[tuple[float, float | None]]] = {"execute": [], "deferred": []}
    group = None
    began = paused = None
    with suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                event, at = record.get("event"), ts(record["timestamp"])
            except (ValueError, KeyError, TypeError):
                continue
            if event == "::group::Pre Execute":
                group = "pre"
                if paused is not None:
                    phases["deferred"].append((paused, at))
                    paused = None
            elif event == "::group::Post Execute":
                group = "post"
                if began is not None:
                    phases["execute"].append((began, at))
                    began = None
            elif event == "::endgroup::":
                if group == "pre":
                    began = at
                group = None
            elif isinstance(event, str) and event.startswith("Pausing task as DEFERRED"):
                paused = at
    if began is not None:
        phases["execute"].append((began, None))
    return phases


def timeline(tis: list[dict[str, Any]], start: float, end: float) -> np.ndarray:
    """A label per GRID cell of [start, end): index into LABELS ("between" where nothing else applies). Where
    intervals meet, the label earlier in LABELS wins."""
    cells = int(math.ceil((end - start) / GRID)) + 1
    labels = np.full(cells, LABELS.index("between"), dtype=np.int8)

    def paint(label: str, lo: float | None, hi: float | None) -> None:
        if lo is None or hi is None or hi <= lo:
            return
        a = max(0, int((lo - start) / GRID))
        b = min(cells, int(math.ceil((hi - start) / GRID)))
        if a < b:
            segment = labels[a:b]
            rank = LABELS.index(label)
            segment[segment > rank] = rank  # lower index = higher priority

    for ti in tis:
        scheduled, queued = ts(ti.get("scheduled_when")), ts(ti.get("queued_when"))
        started, ended = ts(ti.get("start_date")), ts(ti.get("end_date"))
        ended = ended if ended is not None else (end if started is not None else None)
        paint("scheduled", scheduled, queued or started)
        paint("queued", queued, started)
        paint("task start-up/finish", started, ended)
        phases = ti.get("_phases") or {}
        for lo, hi in phases.get("execute", []):
            paint("sensor execute" if ti["task_id"] == SENSOR_TASK else "execute", lo, hi if hi is not None else ended)
        for lo, hi in phases.get("deferred", []):
            paint("sensor deferred", lo, hi)
    return labels


def attribute(labels: np.ndarray, start: float, commit: np.ndarray, visible: np.ndarray) -> dict[str, float]:
    """Seconds of all changes' lag spent under each label (cumulative sums: exact to one GRID cell)."""
    shares: dict[str, float] = {}
    a = np.clip(((commit - start) / GRID).astype(np.int64), 0, len(labels))
    b = np.clip(((visible - start) / GRID).astype(np.int64), 0, len(labels))
    for i, label in enumerate(LABELS):
        cum = np.concatenate([[0], np.cumsum(labels == i)])
        shares[label] = float((cum[b] - cum[a]).sum() * GRID)
    return shares


def mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def run_summary(runs: list[dict[str, Any]], tis: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    """Per-run timings of the runs overlapping [start, end]: how long runs take, the gap between one run's end and
    the next one's start, and for each task the mean seconds scheduled → queued → started → execute begins → execute
    ends → ended."""
    def overlaps(run: dict[str, Any]) -> bool:
        begin = ts(run.get("start_date"))
        finish = ts(run.get("end_date")) or end
        return begin is not None and begin <= end and finish >= start

    inside = sorted((r for r in runs if overlaps(r)), key=lambda r: ts(r["start_date"]))
    durations = [ts(r["end_date"]) - ts(r["start_date"]) for r in inside if r.get("end_date")]
    gaps = [ts(current["start_date"]) - ts(previous["end_date"])
            for previous, current in zip(inside, inside[1:]) if previous.get("end_date")]
    by_task: dict[str, dict[str, list[float]]] = {}
    run_ids = {r["dag_run_id"] for r in inside}
    for ti in tis:
        if ti["dag_run_id"] not in run_ids or not ti.get("start_date"):
            continue
        parts = by_task.setdefault(ti["task_id"], {"scheduled_to_queued": [], "queued_to_started": [],
                                                   "started_to_execute": [], "execute": [],
                                                   "execute_to_end": [], "started_to_end": [], "deferred": [],
                                                   "deferrals": []})
        started, ended = ts(ti["start_date"]), ts(ti.get("end_date"))
        phases = ti.get("_phases") or {}
        if ti.get("queued_when") and not phases.get("deferred"):  # a resumed task's queued_when is its last
            parts["queued_to_started"].append(started - ts(ti["queued_when"]))
            if ti.get("scheduled_when"):
                parts["scheduled_to_queued"].append(ts(ti["queued_when"]) - ts(ti["scheduled_when"]))
        windows = phases.get("execute") or []
        if windows:
            parts["started_to_execute"].append(windows[0][0] - started)
            if windows[-1][1] is not None:
                parts["execute"].append(sum(hi - lo for lo, hi in windows if hi is not None))
                if ended is not None:
                    parts["execute_to_end"].append(ended - windows[-1][1])
        parts["deferred"].append(sum(hi - lo for lo, hi in phases.get("deferred") or []))
        parts["deferrals"].append(len(phases.get("deferred") or []))
        if ended is not None:
            parts["started_to_end"].append(ended - started)
    return {
        "runs": len(inside),
        "run_seconds_mean": mean(durations),
        "between_runs_mean": mean(gaps),
        "between_runs_max": max(gaps) if gaps else None,
        "tasks": {task: {k: mean(v) for k, v in parts.items()} for task, parts in by_task.items()},
        "states": {state: sum(1 for r in inside if r["state"] == state) for state in {r["state"] for r in inside}},
    }


def analyse(sink_url: str, generator: Generator, runs: list[dict[str, Any]], tis: list[dict[str, Any]],
            home: Path) -> dict[str, Any]:
    for ti in tis:
        ti["_phases"] = task_phases(home, ti)
    with psycopg.connect(sink_url) as conn:
        rows = conn.execute(
            "WITH v AS (SELECT xid, max(seen_at) AS visible FROM lag_meter.events GROUP BY xid)"
            " SELECT e.gen_tx, extract(epoch FROM e.cdc_ts)::float8, extract(epoch FROM v.visible)::float8,"
            " e.xid FROM lag_meter.events e JOIN v USING (xid) ORDER BY e.gen_tx").fetchall()
        duplicates = conn.execute(
            "SELECT count(*) FROM (SELECT id, gen_tx FROM lag_meter.events GROUP BY 1, 2 HAVING count(*) > 1) d"
        ).fetchone()[0]
    gen_tx = np.array([r[0] for r in rows], dtype=np.int64)
    commit = np.array([r[1] for r in rows], dtype=np.float64)
    visible = np.array([r[2] for r in rows], dtype=np.float64)
    xids = np.array([r[3] for r in rows], dtype=np.int64)
    lag = visible - commit

    offered = sum(n for *_, n in generator.log)
    before = {k: b for k, b, _, _ in generator.log}
    after = {k: a for k, _, a, _ in generator.log}
    # Cross-check: each row's _cdc_ts (ms, truncated) against its transaction's wall clock around COMMIT.
    gen_before = np.array([before.get(int(k), np.nan) for k in gen_tx])
    gen_after = np.array([after.get(int(k), np.nan) for k in gen_tx])
    early = gen_before - commit  # > 0.001 would mean _cdc_ts before the generator called COMMIT
    late = commit - gen_after  # > 0 would mean _cdc_ts after COMMIT returned
    lag_from_ack = visible - gen_after

    start = min(generator.started_at or commit.min(), float(commit.min()) if len(commit) else math.inf)
    end = float(visible.max()) if len(visible) else time.time()
    gen_seconds = (generator.finished_at or 0) - (generator.started_at or 0)
    minute = ((commit - start) // 60).astype(np.int64)
    labels = timeline(tis, start, end)
    shares = attribute(labels, start, commit, visible)
    total = sum(shares.values()) or 1.0

    # Sink transactions (batches) during the window.
    batch_sizes = np.unique(xids, return_counts=True)[1] if len(xids) else np.array([])
    return {
        "offered": offered,
        "generator_seconds": gen_seconds,
        "offered_per_s": offered / gen_seconds if gen_seconds else None,
        "generator_late_max_s": generator.late_max,
        "commit_seconds": percentiles(np.array([a - b for _, b, a, _ in generator.log])),
        "delivered": int(len(rows)),
        "duplicates": int(duplicates),
        "delivered_per_s": len(rows) / (end - start) if len(rows) else None,
        "lag": percentiles(lag),
        "lag_from_ack": percentiles(lag_from_ack),
        "lag_first_minute_excluded": percentiles(lag[commit >= start + 60]),
        "lag_p95_by_minute": [float(np.percentile(lag[minute == m], 95)) for m in np.unique(minute)],
        "visible_during_generator_per_s": (float(np.sum(visible <= (generator.finished_at or end))) / gen_seconds
                                           if gen_seconds else None),
        "crosscheck": {"cdc_ts_before_commit_call_max_s": float(np.nanmax(early)) if len(early) else None,
                       "cdc_ts_after_commit_returned_max_s": float(np.nanmax(late)) if len(late) else None,
                       "rows_outside_window": int(np.sum((early > 0.001) | (late > 0.0))),
                       "rows_checked": int(np.sum(~np.isnan(gen_before)))},
        "sink_batches": int(len(batch_sizes)),
        "sink_batch_rows": percentiles(batch_sizes.astype(float)) if len(batch_sizes) else {},
        "lag_shares_s": shares,
        "lag_shares": {k: v / total for k, v in shares.items()},
        "scheduler_share": sum(shares[k] for k in SCHEDULER_LABELS) / total,
        "airflow_share": sum(shares[k] for k in (*SCHEDULER_LABELS, "task start-up/finish", "sensor deferred"))
        / total,
        "wall_shares": {label: float(np.mean(labels == i)) for i, label in enumerate(LABELS)},
        "window_s": end - start,
        "airflow": run_summary(runs, tis, start, end),
    }


# --- one variant -----------------------------------------------------------------------------------------------------


def run_variant(variant: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    tag = f"{variant}_{os.getpid()}"
    names = {"source": f"cdc_lag_{tag}_src", "sink": f"cdc_lag_{tag}_sink", "airflow": f"cdc_lag_{tag}_airflow"}
    home = work / variant / "airflow"
    config_dir = work / variant / "config"
    standalone_log = work / variant / "airflow-standalone.log"
    home.mkdir(parents=True)
    result: dict[str, Any] = {"variant": variant, "load_at_start": loadavg(),
                              "started_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")}
    log(f"variant {variant}: load average {result['load_at_start']}")
    mode = "staged" if variant == "staged" else "fused"
    loop_seconds = args.loop_seconds if variant == "loop" else 0
    proc: subprocess.Popen | None = None
    generator: Generator | None = None
    try:
        create_databases(args.dsn, list(names.values()))
        source_url, sink_url = as_url(args.dsn, names["source"]), as_url(args.dsn, names["sink"])
        seed_source(source_url, args.seed_rows)
        write_config(config_dir, source_url=source_url, sink_url=sink_url, mode=mode,
                     poll_interval=args.poll_interval, batch_size=args.batch_size, loop_seconds=loop_seconds)
        port = choose_api_port()
        env = airflow_env(home, config_dir, as_url(args.dsn, names["airflow"]), port)
        with open(standalone_log, "wb") as out:
            cmd = [str(Path(sys.executable).parent / "airflow"), "standalone"]
            proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        api = Api(port, home)
        t0 = time.monotonic()
        wait_until("the API server", api.healthy, 300, proc, standalone_log)
        wait_until("the admin password", lambda: (home / "simple_auth_manager_passwords.json.generated").exists(),
                   60, proc, standalone_log)

        def dag_parsed() -> bool:
            try:
                return bool(api.get(f"/api/v2/dags/{DAG_ID}"))
            except urllib.error.HTTPError:
                return False

        wait_until(f"DAG {DAG_ID} to be parsed", dag_parsed, 300, proc, standalone_log)
        api.patch(f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        log(f"variant {variant}: Airflow up and {DAG_ID} unpaused after {time.monotonic() - t0:.0f} s (port {port})")

        def snapshot_done() -> bool:
            try:
                variable = api.get(f"/api/v2/variables/cdc.position.{SOURCE_ID}")
            except urllib.error.HTTPError:
                return False
            position = json.loads(variable["value"])
            if "snapshot" in position:
                return False
            with psycopg.connect(sink_url, autocommit=True) as conn:
                exists = conn.execute("SELECT to_regclass(%s)", (f"public.{TABLE}",)).fetchone()[0]
                count = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TABLE))
                                     ).fetchone()[0] if exists else 0
            return count == args.seed_rows

        t1 = time.monotonic()
        wait_until("the initial snapshot", snapshot_done, 600, proc, standalone_log, interval=2)
        log(f"variant {variant}: snapshot of {args.seed_rows} rows in the sink after {time.monotonic() - t1:.0f} s")
        install_meter(sink_url)
        time.sleep(args.settle)  # the snapshot's last run ends; the DAG waits for changes
        result["load_at_generator_start"] = loadavg()
        generator = Generator(source_url, seed_rows=args.seed_rows, rate=args.rate,
                              tx_per_second=args.tx_per_second, seconds=args.minutes * 60)
        generator.start()
        loads = []
        while generator.is_alive():
            generator.join(10)
            loads.append(os.getloadavg()[0])
            if proc.poll() is not None:
                raise RuntimeError(f"airflow standalone exited with {proc.returncode}; see {standalone_log}")
        if generator.error is not None:
            raise RuntimeError(f"the generator failed: {generator.error}") from generator.error
        result["load_during_mean"] = float(np.mean(loads)) if loads else None
        offered = sum(n for *_, n in generator.log)
        log(f"variant {variant}: generator done, {offered} changes offered; waiting for the sink")

        def caught_up() -> bool:
            with psycopg.connect(sink_url, autocommit=True) as conn:
                return conn.execute("SELECT count(*) FROM lag_meter.events").fetchone()[0] >= offered

        wait_until("every change in the sink", caught_up, args.drain_timeout, proc, standalone_log, interval=1)
        runs = api.paged(f"/api/v2/dags/{DAG_ID}/dagRuns", "dag_runs")
        tis = api.paged(f"/api/v2/dags/{DAG_ID}/dagRuns/~/taskInstances", "task_instances")
        if args.keep_metadata:  # the raw data, for another look after the databases are gone
            (work / variant / "generator.json").write_text(json.dumps(
                {"started_at": generator.started_at, "finished_at": generator.finished_at, "log": generator.log}))
            with psycopg.connect(sink_url) as conn, open(work / variant / "events.csv", "wb") as out, \
                    conn.cursor().copy("COPY lag_meter.events TO STDOUT WITH (FORMAT csv)") as copy:
                for data in copy:
                    out.write(data)
        result.update(analyse(sink_url, generator, runs, tis, home))
        result["load_at_end"] = loadavg()
        if args.keep_metadata:
            (work / variant / "runs.json").write_text(json.dumps({"runs": runs, "tis": tis}, indent=1))
        log(f"variant {variant}: lag p50 {result['lag']['p50']:.2f} s, p95 {result['lag']['p95']:.2f} s, "
            f"p99 {result['lag']['p99']:.2f} s, max {result['lag']['max']:.2f} s")
        return result
    finally:
        if generator is not None:
            generator.stop_event.set()
            generator.join(10)
        if proc is not None:
            stop_session(proc, "airflow standalone")
        with suppress(Exception):
            drop_databases(args.dsn, list(names.values()))


# --- report ----------------------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    titles = {"staged": "staged", "fused": "fused, one batch per run",
              "loop": f"fused, loop_seconds {args.loop_seconds:g}"}
    lines = ["| variant | load avg at start (1/5/15 min) | offered changes/s | delivered changes/s | p50 | p95 | p99 |"
             " max | p95 without the first minute | runs | sink batches |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        if "lag" not in r:
            lines.append(f"| {titles[r['variant']]} | {r['load_at_start']} | failed: {r.get('error')} |")
            continue
        lines.append(
            f"| {titles[r['variant']]} | {r['load_at_start']} | {fmt(r['offered_per_s'], 0)} |"
            f" {fmt(r['delivered_per_s'], 0)} | {fmt(r['lag']['p50'])} s | {fmt(r['lag']['p95'])} s |"
            f" {fmt(r['lag']['p99'])} s | {fmt(r['lag']['max'])} s |"
            f" {fmt(r['lag_first_minute_excluded'].get('p95'))} s |"
            f" {r['airflow']['runs']} | {r['sink_batches']} |")
    lines += ["", "| variant | " + " | ".join(f"lag share: {label}" for label in LABELS)
              + " | scheduler (queued + scheduled + between)"
              " | Airflow (scheduler + task start-up/finish + sensor deferred) |",
              "| --- |" + " ---: |" * (len(LABELS) + 2)]
    for r in results:
        if "lag" in r:
            lines.append(f"| {titles[r['variant']]} | "
                         + " | ".join(f"{100 * r['lag_shares'][label]:.1f} %" for label in LABELS)
                         + f" | {100 * r['scheduler_share']:.1f} % | {100 * r['airflow_share']:.1f} % |")
    return "\n".join(lines)


def code_version() -> str:
    """The commit measured, and whether airflow_provider_cdc/ had local changes (Airflow runs the working tree)."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *argv], capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "airflow_provider_cdc", "dags")
    return f"commit {git('rev-parse', '--short', 'HEAD')}" + (
        " with uncommitted changes in airflow_provider_cdc/ or dags/" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--loop-seconds", type=float, default=120.0)
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--tx-per-second", type=float, default=10.0)
    parser.add_argument("--seed-rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds between the snapshot and the generator")
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--keep-metadata", action="store_true",
                        help="keep the work folder (Airflow logs, runs.json) instead of deleting it")
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    work = Path(tempfile.mkdtemp(prefix="cdc-lag-"))
    code = code_version()
    log(f"work folder {work}; {os.cpu_count()} cores; load average {loadavg()}; code {code}")
    results: list[dict[str, Any]] = []
    status = 0
    try:
        for variant in variants:
            try:
                results.append(run_variant(variant, args, work))
            except (Stop, KeyboardInterrupt):
                raise
            except Exception as exc:
                log(f"variant {variant} failed: {type(exc).__name__}: {exc}")
                results.append({"variant": variant, "load_at_start": loadavg(),
                                "error": f"{type(exc).__name__}: {exc}"})
                status = 1
    except (Stop, KeyboardInterrupt) as exc:
        log(f"stopped ({exc}); everything started was stopped")
        status = 130
    finally:
        if args.json is not None:
            args.json.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v)
                                                      for k, v in vars(args).items()}, "code": code,
                                             "results": results}, indent=2, default=str))
        if not args.keep_metadata:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    print(report(results, args))
    return status


if __name__ == "__main__":
    sys.exit(main())
