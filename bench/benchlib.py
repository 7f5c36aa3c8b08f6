"""Helpers shared by ``bench/run.py`` and ``bench/rss_child.py``: databases, workloads, timing, the drain loop.

Nothing here is imported by the package or the tests. The benchmarks own two databases (``cdc_bench_src`` and
``cdc_bench_sink``) and the slots and publications in them; :func:`drop_bench_databases` removes all of it and is
safe to call when none of it exists.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

# Airflow reads its configuration when first imported (the staging layer imports ``airflow.sdk``): give the
# benchmark a private, throw-away AIRFLOW_HOME so that it never touches a real one or Airflow's database.
if "CDC_BENCH_AIRFLOW_HOME" not in os.environ:
    os.environ["CDC_BENCH_AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="cdc-bench-airflow-")
os.environ["AIRFLOW_HOME"] = os.environ["CDC_BENCH_AIRFLOW_HOME"]
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.connectors.postgres.sink import PgSink
from airflow_provider_cdc.connectors.postgres.source import PgSource
from airflow_provider_cdc.staging import BatchStore

# The package logs every batch at INFO; the benchmarks print their own lines.
logging.getLogger("airflow_provider_cdc").setLevel(logging.WARNING)

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
SRC_DB = "cdc_bench_src"
SINK_DB = "cdc_bench_sink"
BENCH_DATABASES = (SRC_DB, SINK_DB)

# The workload table of benchmarks 1 and 3 (the shape the brief names).
CHANGES_DDL = (
    "CREATE TABLE {name} (id bigint PRIMARY KEY, a int NOT NULL, b text NOT NULL, c numeric(12,2), d timestamptz)"
)
# Row values as a function of the key ``g`` (seed rows and inserts alike); ``%%`` because it runs with parameters.
ROW_VALUES = (
    "g, (g %% 1000)::int, md5(g::text), ((g %% 100000) / 100.0)::numeric(12,2), "
    "timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second'"
)


def db_dsn(dsn: str, dbname: str) -> str:
    return make_conninfo(dsn, dbname=dbname)


def admin_connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True)


def rss_kb() -> int:
    """Peak resident set size of this process so far, in KiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def vmhwm_kb() -> int:
    """Peak resident set size of this process image (``VmHWM``, KiB): unlike ru_maxrss, not inherited over exec."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


# --- positions ---------------------------------------------------------------------------------------------------


class MemoryPositions:
    """The ``get``/``set`` of :class:`~airflow_provider_cdc.positions.PositionStore`, in memory.

    The pipeline functions only call these two, so the benchmarks keep positions out of Airflow's database.
    """

    def __init__(self) -> None:
        self._docs: dict[str, dict[str, Any]] = {}

    def get(self, source_id: str) -> dict[str, Any] | None:
        doc = self._docs.get(source_id)
        return None if doc is None else copy.deepcopy(doc["position"])

    def set(self, source_id: str, position: dict[str, Any], *, batch_id: str | None) -> None:
        self._docs[source_id] = {"position": copy.deepcopy(position), "batch_id": batch_id}


# --- timed connectors (same behaviour, with stopwatches) ----------------------------------------------------------


class TimedPgSource(PgSource):
    """:class:`PgSource` that adds up the seconds spent in ``capture`` (peek + decode) and ``acknowledge``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: dict[str, float] = defaultdict(float)

    def capture(self, position: dict[str, Any] | None, max_changes: int):
        started = time.perf_counter()
        try:
            return super().capture(position, max_changes)
        finally:
            self.seconds["capture"] += time.perf_counter() - started

    def acknowledge(self, position: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            super().acknowledge(position)
        finally:
            self.seconds["acknowledge"] += time.perf_counter() - started


class TimedPgSink(PgSink):
    """:class:`PgSink` that adds up the seconds of ``apply`` (fold, COPY, MERGE, ledger, commit: one transaction)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: dict[str, float] = defaultdict(float)

    def apply(self, batch, **kwargs: Any):
        started = time.perf_counter()
        try:
            return super().apply(batch, **kwargs)
        finally:
            self.seconds["apply"] += time.perf_counter() - started


class TimedBatchStore(BatchStore):
    """:class:`BatchStore` that adds up the seconds of ``write`` (Parquet + manifest)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: dict[str, float] = defaultdict(float)

    def write(self, batch, **kwargs: Any) -> str:
        started = time.perf_counter()
        try:
            return super().write(batch, **kwargs)
        finally:
            self.seconds["write"] += time.perf_counter() - started


def drain(
    source: PgSource,
    sink: PgSink,
    positions: MemoryPositions,
    store: BatchStore,
    *,
    batch_size: int,
    on_batch: Callable[[dict[str, Any]], None] | None = None,
    until: Callable[[dict[str, Any]], bool] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Run capture_stage → load_stage → commit_stage (staged mode) until a capture returns no changes, or, with
    ``until``, until ``until(position)`` holds after a round's commit (at most ``limit`` rounds, else an error).

    Every round runs all three stages, the empty last one included (that is how a run finds the source drained),
    and its time counts. Returns the totals, the rounds and the seconds per stage.
    """
    totals: dict[str, Any] = {"changes": 0, "batches": 0, "rounds": 0, "ops": defaultdict(int),
                              "stage_seconds": defaultdict(float), "last_round_seconds": 0.0}
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        captured = pipeline.capture_stage(source, sink, positions, store, max_changes=batch_size)
        t1 = time.perf_counter()
        pipeline.load_stage(captured["manifest_uri"], sink)
        t2 = time.perf_counter()
        pipeline.commit_stage(captured["manifest_uri"], source, sink, positions, store)
        t3 = time.perf_counter()
        totals["rounds"] += 1
        totals["stage_seconds"]["capture_stage"] += t1 - t0
        totals["stage_seconds"]["load_stage"] += t2 - t1
        totals["stage_seconds"]["commit_stage"] += t3 - t2
        if captured["change_count"]:
            totals["changes"] += captured["change_count"]
            totals["batches"] += 1
            for op, n in captured["ops"].items():
                totals["ops"][op] += n
            if on_batch is not None:
                on_batch({**captured, "seconds": t3 - t0, "capture_s": t1 - t0, "load_s": t2 - t1,
                          "commit_s": t3 - t2})
        if until is not None:
            if until(positions.get(source.source_id) or {}):
                break
            if limit is not None and totals["rounds"] >= limit:
                raise RuntimeError(f"not done in {limit} rounds; last position {positions.get(source.source_id)}")
        elif not captured["change_count"]:
            totals["last_round_seconds"] = t3 - t0
            break
    totals["seconds"] = time.perf_counter() - started
    totals["ops"] = dict(totals["ops"])
    totals["stage_seconds"] = dict(totals["stage_seconds"])
    return totals


def run_fresh(command: list[str]) -> tuple[str, str, int]:
    """Run ``command`` as a grandchild, through ``sh``, in its own process group.

    Linux keeps a process's peak RSS across ``exec``: a child that Python starts directly reports this process's
    peak as its own ``ru_maxrss``. Forked by a small ``sh`` instead (``"$@"; exit $?`` keeps sh from exec-ing in
    place), it starts from sh's. On any exception (Ctrl-C, SIGTERM) the whole group is killed.
    """
    proc = subprocess.Popen(["/bin/sh", "-c", '"$@"; exit $?', "sh", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate()
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return stdout, stderr, proc.returncode


# --- databases -----------------------------------------------------------------------------------------------------


def drop_bench_databases(admin_dsn: str, names: tuple[str, ...] = BENCH_DATABASES) -> list[str]:
    """Drop the benchmark databases and the replication slots in them (which would block DROP DATABASE).

    Only sessions connected to these databases are ended (they are the benchmark's own). Returns what was dropped.
    """
    dropped: list[str] = []
    with admin_connect(admin_dsn) as conn:
        for name in names:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            for _attempt in range(50):
                slots = conn.execute(
                    "SELECT slot_name, active FROM pg_replication_slots WHERE database = %s", (name,)
                ).fetchall()
                if not slots:
                    break
                for slot, active in slots:
                    if not active:
                        try:
                            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                            dropped.append(f"slot {slot}")
                        except psycopg.errors.ObjectInUse:
                            pass
                time.sleep(0.1)
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                dropped.append(f"database {name}")
    return dropped


def create_bench_databases(admin_dsn: str) -> None:
    drop_bench_databases(admin_dsn)
    with admin_connect(admin_dsn) as conn:
        for name in BENCH_DATABASES:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_slot(admin_dsn: str, slot: str) -> None:
    with admin_connect(admin_dsn) as conn:
        if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def checkpoint(admin_dsn: str) -> None:
    """Flush dirty buffers before a timed phase, so that one phase does not pay for the writes of another."""
    with admin_connect(admin_dsn) as conn:
        conn.execute("CHECKPOINT")


def create_slot(conn: psycopg.Connection, slot: str) -> str:
    return conn.execute(
        "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,)
    ).fetchone()[0]


def wal_lsn(conn: psycopg.Connection) -> str:
    return conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]


def wal_bytes(conn: psycopg.Connection, start: str, end: str) -> int:
    return int(conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (end, start)).fetchone()[0])


# --- the raw fetch reference (benchmark 1, bench/stream_protocol.py) ------------------------------------------------

RAW_SQL = (
    "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1', "
    "'publication_names', %s)"
)
FETCH_ROWS = 5000  # rows per round trip of the named cursors: PgSource's own itersize, used by the reference too
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_times(pid: int) -> tuple[float, float] | None:
    """User and system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``: the server's processes are
    readable when it runs on this machine); None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


def own_cpu_times() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def cpu_delta(before: tuple[float, float] | None, after: tuple[float, float] | None) -> dict[str, float] | None:
    """``{"user": s, "sys": s}`` spent between two readings of :func:`process_cpu_times`/:func:`own_cpu_times`."""
    if before is None or after is None:
        return None
    return {"user": after[0] - before[0], "sys": after[1] - before[1]}


def raw_fetch(dsn: str, slot: str, publication: str) -> dict[str, Any]:
    """The reference: every pgoutput row of the slot through a named (server-side) cursor, not decoded.

    Besides the messages and the seconds: this process's CPU (``client_cpu``) and the CPU of the backend that ran
    the peek (``server_cpu``, None when its ``/proc`` entry cannot be read), each ``{"user": s, "sys": s}``."""
    with psycopg.connect(dsn) as conn:
        backend = conn.info.backend_pid
        server_before, client_before = process_cpu_times(backend), own_cpu_times()
        started = time.perf_counter()
        messages = 0
        with conn.cursor(name="cdc_bench_raw", binary=True) as cur:
            cur.itersize = FETCH_ROWS
            cur.execute(RAW_SQL, (slot, publication))
            while rows := cur.fetchmany(FETCH_ROWS):
                messages += len(rows)
        seconds = time.perf_counter() - started
        client_after, server_after = own_cpu_times(), process_cpu_times(backend)
        conn.rollback()
    return {"messages": messages, "seconds": seconds, "client_cpu": cpu_delta(client_before, client_after),
            "server_cpu": cpu_delta(server_before, server_after)}


# --- workloads -----------------------------------------------------------------------------------------------------


def seed_changes_table(conn: psycopg.Connection, table: str, rows: int) -> None:
    conn.execute(sql.SQL(CHANGES_DDL).format(name=sql.Identifier(table)))
    if rows:
        conn.execute(sql.SQL("INSERT INTO {} SELECT " + ROW_VALUES + " FROM generate_series(1, %s::bigint) g").format(
            sql.Identifier(table)), (rows,))
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))


def changes_workload(conn: psycopg.Connection, table: str, *, seeded: int, changes: int, tx_rows: int,
                     before_tx: Callable[[int], None] | None = None) -> dict[str, int]:
    """``changes`` row changes in transactions of ``tx_rows``: alternately an UPDATE of ``tx_rows`` seeded rows (in
    key ranges) and an INSERT of ``tx_rows`` new keys. ``before_tx(k)`` runs before transaction ``k`` (to create a
    slot part-way through)."""
    name = sql.Identifier(table)
    update = sql.SQL(
        "UPDATE {} SET a = a + 1, b = md5(b), c = c + 0.01, d = d + interval '1 hour' WHERE id > %s AND id <= %s"
    ).format(name)
    insert = sql.SQL("INSERT INTO {} SELECT " + ROW_VALUES + " FROM generate_series(%s::bigint, %s::bigint) g").format(
        name)
    transactions = changes // tx_rows
    counts = {"u": 0, "c": 0}
    next_update, next_insert = 0, seeded
    for k in range(transactions):
        if before_tx is not None:
            before_tx(k)
        if k % 2 == 0 and next_update + tx_rows <= seeded:
            cur = conn.execute(update, (next_update, next_update + tx_rows))
            next_update += tx_rows
            counts["u"] += cur.rowcount
        else:
            cur = conn.execute(insert, (next_insert + 1, next_insert + tx_rows))
            next_insert += tx_rows
            counts["c"] += cur.rowcount
    return counts


# Benchmark 2: 1M rows with an indexed updated_at; the workload picks rows through a fixed permutation of the keys
# (i → i·P mod R + 1), so updates and deletes hit rows spread over the whole table, never the same row twice.
WM_DDL = (
    "CREATE TABLE {name} (id bigint PRIMARY KEY, a int NOT NULL, b text NOT NULL, c numeric(12,2), d timestamptz,"
    " updated_at timestamptz NOT NULL)"
)
WM_COLUMNS = ("id", "a", "b", "c", "d", "updated_at")
PERMUTATION_STEP = 7919


def permutation_step(rows: int) -> int:
    step = PERMUTATION_STEP
    while math.gcd(step, rows) != 1:
        step += 2
    return step


def seed_wm_table(conn: psycopg.Connection, table: str, rows: int) -> str:
    """Create and fill the watermark table; returns the watermark (max ``updated_at``) as text."""
    name = sql.Identifier(table)
    conn.execute(sql.SQL(WM_DDL).format(name=name))
    conn.execute(sql.SQL(
        "INSERT INTO {} SELECT " + ROW_VALUES + ", timestamptz '2024-06-01 00:00:00+00' + g * interval '1 millisecond'"
        " FROM generate_series(1, %s::bigint) g"
    ).format(name), (rows,))
    conn.execute(sql.SQL("CREATE INDEX {} ON {} (updated_at)").format(sql.Identifier(f"{table}_updated_at_idx"), name))
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(name))
    return conn.execute(sql.SQL("SELECT max(updated_at)::text FROM {}").format(name)).fetchone()[0]


def wm_schedule(rows: int, updates: int, deletes: int, inserts: int, tx_rows: int) -> list[tuple[str, int, int]]:
    """Transactions ``(op, first, last)`` interleaved evenly: updates take permutation indexes [0, updates),
    deletes [updates, updates + deletes), inserts new keys rows+1 …"""
    def chunks(op: str, start: int, count: int) -> list[tuple[str, int, int]]:
        return [(op, lo, min(lo + tx_rows, start + count) - 1) for lo in range(start, start + count, tx_rows)]

    groups = [chunks("u", 0, updates), chunks("d", updates, deletes), chunks("c", rows + 1, inserts)]
    keyed = []
    for group in groups:
        for i, item in enumerate(group):
            keyed.append(((i + 0.5) / len(group), item))
    keyed.sort(key=lambda pair: pair[0])
    return [item for _, item in keyed]


def run_wm_workload(conn: psycopg.Connection, table: str, rows: int,
                    schedule: list[tuple[str, int, int]]) -> dict[str, int]:
    name = sql.Identifier(table)
    step = permutation_step(rows)
    picked = ("ARRAY(SELECT (g * %(step)s::bigint) %% %(rows)s::bigint + 1"
              " FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g)")
    statements = {
        "u": sql.SQL(
            "UPDATE {} SET a = a + 1, b = md5(b), c = c + 0.01, d = d + interval '1 hour', updated_at = now()"
            " WHERE id = ANY(" + picked + ")"
        ).format(name),
        "d": sql.SQL("DELETE FROM {} WHERE id = ANY(" + picked + ")").format(name),
        "c": sql.SQL(
            "INSERT INTO {} SELECT " + ROW_VALUES + ", now() FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g"
        ).format(name),
    }
    counts = {"u": 0, "d": 0, "c": 0}
    for op, lo, hi in schedule:
        cur = conn.execute(statements[op], {"step": step, "rows": rows, "lo": lo, "hi": hi})
        counts[op] += cur.rowcount
    return counts


def deleted_keys_sql(rows: int, updates: int, deletes: int) -> str:
    """A subquery of the keys the benchmark-2 workload deleted (for checking the watermark copy)."""
    step = permutation_step(rows)
    return (f"SELECT (g::bigint * {step}) % {rows} + 1 FROM generate_series({updates}, {updates + deletes - 1}) g")


def table_checksum(conn: psycopg.Connection, table: str, columns: tuple[str, ...], where: str = "") -> tuple[int, str]:
    """Row count and md5 over every row's text (in key order), in UTC so that timestamps print alike."""
    conn.execute("SET TimeZone = 'UTC'")
    row = sql.SQL("ROW({})::text").format(sql.SQL(", ").join(map(sql.Identifier, columns)))
    query = sql.SQL("SELECT count(*), md5(coalesce(string_agg(md5({}), '' ORDER BY id), '')) FROM {} {}").format(
        row, sql.Identifier(table), sql.SQL(where))
    count, digest = conn.execute(query).fetchone()
    return int(count), digest


# --- the machine ---------------------------------------------------------------------------------------------------


def machine_info(admin_dsn: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    info["ram_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["loadavg"] = os.getloadavg()
    info["code"] = code_version()
    with admin_connect(admin_dsn) as conn:
        info["pg_version"] = conn.execute("SHOW server_version").fetchone()[0]
        info["pg_settings"] = dict(conn.execute(
            "SELECT name, current_setting(name) FROM pg_settings WHERE name IN ('shared_buffers', 'work_mem',"
            " 'synchronous_commit', 'max_wal_size', 'wal_level', 'logical_decoding_work_mem', 'autovacuum')"
            " ORDER BY name"
        ).fetchall())
    import pyarrow

    info["psycopg"] = psycopg.__version__
    info["pyarrow"] = pyarrow.__version__
    try:
        import airflow

        info["airflow"] = airflow.__version__
    except ImportError:  # pragma: no cover
        info["airflow"] = "?"
    return info


def code_version() -> str:
    """Which ``airflow_provider_cdc`` was measured: git commit of its checkout and whether it had local changes.

    ``CDC_BENCH_CODE_VERSION`` overrides it (for a copy that is not a git checkout)."""
    if os.environ.get("CDC_BENCH_CODE_VERSION"):
        return os.environ["CDC_BENCH_CODE_VERSION"]
    import subprocess

    import airflow_provider_cdc

    package = os.path.dirname(os.path.abspath(airflow_provider_cdc.__file__))
    try:
        head = subprocess.run(["git", "-C", package, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", package, "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{package} (not a git checkout)"
    return f"commit {head}" + (" with uncommitted changes in airflow_provider_cdc/" if dirty else "")


def server_host(dsn: str) -> str:
    params = conninfo_to_dict(dsn)
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def begin_run(dsn: str, terminate: Callable[[int, Any], None], describe: Callable[[dict[str, Any]], str]
              ) -> tuple[dt.datetime, float, dict[str, Any]]:
    """The start of a benchmark run: SIGTERM handled by ``terminate`` (it drops what the run made), the start time
    (wall clock and monotonic), the machine's facts logged through ``describe``, and a warning if it is busy."""
    signal.signal(signal.SIGTERM, terminate)
    started_at, started = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    info = machine_info(dsn)
    log(describe(info))
    if info["loadavg"][0] > 0.5:
        log("warning: the machine is busy (load average above 0.5): figures will be noisy")
    return started_at, started, info
