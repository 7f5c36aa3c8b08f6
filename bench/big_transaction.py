"""Benchmark 4: one transaction far larger than a batch, drained in windows (peak RSS, time, server load).

    .venv/bin/python bench/big_transaction.py [--quick] [--dsn URL] [--output PATH | --no-write] [--json PATH]
    .venv/bin/python bench/run.py --only big-tx          (the same, from the benchmark runner)

A table of 2,000,000 rows (``id bigint primary key`` and four columns, about 60 bytes of values) in a fresh source
database; a slot and a publication (snapshot ``never``), then ONE ``UPDATE`` of every row in one transaction. Then:

1. the trigger/sensor probe: one ``PgSource.has_changes(position)`` (and the probe's ``has_changes_after``) against that
   backlog in a fresh process: seconds and the growth of that process's RSS;
2. capture → load → commit at batch size 50,000 in a fresh process (``bench/rss_child.py``) into a fresh sink
   database: batches, seconds, changes/s, the child's peak RSS; the source server meanwhile: its backends' private
   memory (``RssAnon`` from ``/proc``, sampled), the slot's spill counters (``pg_stat_replication_slots``), the
   database's temporary files (``pg_stat_database``), and that it stayed up;
3. for comparison, the same child draining 2,000,000 changes of the same table in 200 transactions of 10,000 rows
   (a new slot), into another sink schema;
4. after each drain, the sink table against the source: row count and md5 over every row.

A full run writes its section into BENCHMARKS.md (between the ``big-tx`` markers, the other sections kept);
``--quick`` (10x smaller) prints only. The databases (``cdc_bench_bigtx_src``, ``cdc_bench_bigtx_sink``) and their
slots are dropped at the end, also on failure or interruption.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import benchlib  # noqa: E402  (sets a private AIRFLOW_HOME before Airflow is imported)
import psycopg  # noqa: E402
from benchlib import log, run_fresh  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402

SRC_DB = "cdc_bench_bigtx_src"
SINK_DB = "cdc_bench_bigtx_sink"
DATABASES = (SRC_DB, SINK_DB)
TABLE = "big_t"
COLUMNS = ("id", "a", "b", "c", "d")
PUBLICATION = "cdc_bench_bigtx_pub"
SLOT_BIG = "cdc_bench_bigtx_one"
SLOT_SPREAD = "cdc_bench_bigtx_spread"
APP_CHILD = "cdc_bench_bigtx_drain"
APP_SINK = "cdc_bench_bigtx_sink"
APP_PROBE = "cdc_bench_bigtx_probe"
UPDATE = "UPDATE {table} SET a = a + 1, b = md5(b), c = c + 0.01, d = d + interval '1 hour'"
MARK_BEGIN = "<!-- big-tx:begin (bench/big_transaction.py writes this section) -->"
MARK_END = "<!-- big-tx:end -->"
SLOT_STATS = ("spill_txns", "spill_count", "spill_bytes", "stream_txns", "total_txns", "total_bytes")


@dataclass(frozen=True)
class Scale:
    name: str
    rows: int
    batch_size: int
    tx_rows: int  # the comparison's transactions


FULL = Scale("full", 2_000_000, 50_000, 10_000)
QUICK = Scale("quick", 200_000, 5_000, 1_000)


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")


# --- the server's side ---------------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int] | None:
    """``VmHWM``, ``VmRSS``, ``RssAnon`` (KiB) of a local process, None when it is gone or not readable."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            out = {}
            for line in fh:
                key = line.split(":", 1)[0]
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssShmem"):
                    out[key] = int(line.split()[1])
            return out
    except OSError:
        return None


class BackendSampler:
    """Polls the server backends of the given ``application_name``s (every 0.1 s) for their memory, when the server
    runs on this machine: peak ``RssAnon`` (private memory: reorder buffer, tuplestores, sorts) and peak ``VmHWM``
    (that plus the shared buffers the backend touched) per application."""

    def __init__(self, admin_dsn: str, apps: tuple[str, ...]) -> None:
        self.admin_dsn, self.apps = admin_dsn, apps
        self.peaks: dict[str, dict[str, int]] = {app: {"RssAnon": 0, "VmHWM": 0, "backends": 0} for app in apps}
        self._seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.readable = True

    def __enter__(self) -> BackendSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        with benchlib.admin_connect(self.admin_dsn) as conn:
            pids: list[tuple[int, str]] = []
            polls = 0
            while not self._stop.is_set():
                if polls % 5 == 0:
                    pids = [(int(p), a) for p, a in conn.execute(
                        "SELECT pid, application_name FROM pg_stat_activity WHERE application_name = ANY(%s)",
                        (list(self.apps),)).fetchall()]
                polls += 1
                for pid, app in pids:
                    status = proc_status(pid)
                    if status is None:
                        if not os.path.exists(f"/proc/{pid}"):
                            continue
                        self.readable = False
                        continue
                    peak = self.peaks[app]
                    peak["RssAnon"] = max(peak["RssAnon"], status.get("RssAnon", 0))
                    peak["VmHWM"] = max(peak["VmHWM"], status.get("VmHWM", 0))
                    if pid not in self._seen:
                        self._seen.add(pid)
                        peak["backends"] += 1
                self._stop.wait(0.1)


def slot_stats(conn: psycopg.Connection, slot: str) -> dict[str, int]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(f"SELECT {', '.join(SLOT_STATS)} FROM pg_stat_replication_slots WHERE slot_name = %s",
                       (slot,)).fetchone()
    return {k: int(v or 0) for k, v in zip(SLOT_STATS, row)} if row else {k: 0 for k in SLOT_STATS}


def db_stats(conn: psycopg.Connection, db: str) -> dict[str, int]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    files, size = conn.execute("SELECT temp_files, temp_bytes FROM pg_stat_database WHERE datname = %s",
                               (db,)).fetchone()
    return {"temp_files": int(files), "temp_bytes": int(size)}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def wait_gone(conn: psycopg.Connection, apps: tuple[str, ...], timeout: float = 30.0) -> None:
    """Wait until the backends of a finished child have exited (they flush their statistics on exit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not conn.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = ANY(%s)",
                            (list(apps),)).fetchone():
            break
        time.sleep(0.1)
    time.sleep(1.0)  # PostgreSQL 15 flushes pending statistics at most once a second


def server_state(conn: psycopg.Connection) -> dict[str, str]:
    return {"postmaster_start": conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()[0]}


# --- the probe child -----------------------------------------------------------------------------------------------


def vmrss_kb() -> int:
    return (proc_status(os.getpid()) or {}).get("VmRSS", 0)


def probe_child(args: argparse.Namespace) -> None:
    """One ``has_changes`` (then the triggerer's ``PgChangeProbe.has_changes_after``) against the backlog; prints one
    JSON line."""
    from airflow_provider_cdc.connectors.postgres.probe import PgChangeProbe

    source = benchlib.PgSource(
        args.src_dsn, source_id="bench_bigtx_probe", tables=[("public", TABLE)], slot_name=args.slot,
        publication_name=PUBLICATION, snapshot="never", create_slot=False, create_publication=False,
    )
    source.prepare()
    position = source.initial_position(snapshot=False)
    probe = PgChangeProbe(args.src_dsn, source_id="bench_bigtx_probe", tables=[f"public.{TABLE}"], slot_name=args.slot,
                          publication_name=PUBLICATION)
    asyncio.run(asyncio.sleep(0))  # the event loop's own start-up, not the probe's
    out: dict[str, Any] = {"position_lsn": position["lsn"]}
    for name in ("has_changes", "has_changes_async"):
        before_peak, before_rss = benchlib.rss_kb(), vmrss_kb()
        started = time.perf_counter()
        if name == "has_changes":
            answer = source.has_changes(position)
        else:
            answer = asyncio.run(probe.has_changes_after(position))
        seconds = time.perf_counter() - started
        out[name] = {"answer": answer, "seconds": seconds, "peak_before_kb": before_peak,
                     "peak_after_kb": benchlib.rss_kb(), "rss_before_kb": before_rss, "rss_after_kb": vmrss_kb()}
    asyncio.run(probe.aclose())
    source.close()
    print(json.dumps(out))


# --- the benchmark -------------------------------------------------------------------------------------------------


def with_app(dsn: str, app: str) -> str:
    return make_conninfo(dsn, application_name=app)


def drain_child(ctx: dict[str, Any], slot: str, schema: str, batch_size: int) -> dict[str, Any]:
    command = [
        sys.executable, str(BENCH_DIR / "rss_child.py"),
        "--src-dsn", with_app(ctx["src_dsn"], APP_CHILD), "--sink-dsn", with_app(ctx["sink_dsn"], APP_SINK),
        "--table", TABLE, "--slot", slot, "--publication", PUBLICATION, "--target-schema", schema,
        "--staging-root", f"{ctx['staging_url']}/{schema}", "--batch-size", str(batch_size), "--details",
    ]
    with benchlib.admin_connect(ctx["admin_dsn"]) as admin:
        slot_before, temp_before = slot_stats(admin, slot), db_stats(admin, SRC_DB)
        sink_temp_before = db_stats(admin, SINK_DB)
        with BackendSampler(ctx["admin_dsn"], (APP_CHILD, APP_SINK)) as sampler:
            stdout, stderr, returncode = run_fresh(command)
        if returncode != 0:
            raise RuntimeError(f"drain child for {schema} failed ({returncode}):\n{stderr[-6000:]}")
        wait_gone(admin, (APP_CHILD, APP_SINK))
        result = json.loads(stdout.strip().splitlines()[-1])
        result["slot"] = delta(slot_stats(admin, slot), slot_before)
        result["temp"] = delta(db_stats(admin, SRC_DB), temp_before)
        result["sink_temp"] = delta(db_stats(admin, SINK_DB), sink_temp_before)
        result["backends"] = sampler.peaks if sampler.readable else None
    shutil.rmtree(Path(ctx["staging_dir"], schema), ignore_errors=True)
    return result


def probe(ctx: dict[str, Any], slot: str) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--probe-child",
               "--src-dsn", with_app(ctx["src_dsn"], APP_PROBE), "--slot", slot]
    with benchlib.admin_connect(ctx["admin_dsn"]) as admin:
        slot_before, temp_before = slot_stats(admin, slot), db_stats(admin, SRC_DB)
        with BackendSampler(ctx["admin_dsn"], (APP_PROBE,)) as sampler:
            stdout, stderr, returncode = run_fresh(command)
        if returncode != 0:
            raise RuntimeError(f"probe child failed ({returncode}):\n{stderr[-6000:]}")
        wait_gone(admin, (APP_PROBE,))
        result = json.loads(stdout.strip().splitlines()[-1])
        result["slot"] = delta(slot_stats(admin, slot), slot_before)
        result["temp"] = delta(db_stats(admin, SRC_DB), temp_before)
        result["backends"] = sampler.peaks if sampler.readable else None
    return result


def verify(ctx: dict[str, Any], schema: str) -> dict[str, Any]:
    with benchlib.admin_connect(ctx["src_dsn"]) as src, benchlib.admin_connect(ctx["sink_dsn"]) as dst:
        source = benchlib.table_checksum(src, TABLE, COLUMNS)
        dst.execute(f"SET search_path = {schema}")
        sink = benchlib.table_checksum(dst, TABLE, COLUMNS)
    return {"source": source, "sink": sink, "equal": source == sink}


def run_benchmark(admin_dsn: str, scale: Scale) -> dict[str, Any]:
    """The whole benchmark; creates and always drops its databases and slots."""
    staging_dir = tempfile.mkdtemp(prefix="cdc-bench-bigtx-")
    ctx = {"admin_dsn": admin_dsn, "src_dsn": benchlib.db_dsn(admin_dsn, SRC_DB),
           "sink_dsn": benchlib.db_dsn(admin_dsn, SINK_DB), "staging_dir": staging_dir,
           "staging_url": f"file://{staging_dir}"}
    results: dict[str, Any] = {"scale": scale.__dict__}
    try:
        benchlib.drop_bench_databases(admin_dsn, DATABASES)
        with benchlib.admin_connect(admin_dsn) as admin:
            for name in DATABASES:
                admin.execute(f"CREATE DATABASE {name}")
            results["server_before"] = server_state(admin)
        with benchlib.admin_connect(ctx["src_dsn"]) as src:
            log(f"big-tx: seeding {TABLE} with {scale.rows:,} rows")
            started = time.perf_counter()
            benchlib.seed_changes_table(src, TABLE, scale.rows)
            src.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE {TABLE}")
            results["table_bytes"] = src.execute(f"SELECT pg_table_size('{TABLE}')").fetchone()[0]
            results["row_bytes"] = float(src.execute(
                f"SELECT avg(pg_column_size(t.*)) FROM (SELECT * FROM {TABLE} LIMIT 10000) t").fetchone()[0])
            log(f"big-tx: seeded in {time.perf_counter() - started:.1f}s")
            src.execute("CHECKPOINT")
            benchlib.create_slot(src, SLOT_BIG)
            start = benchlib.wal_lsn(src)
            log(f"big-tx: one UPDATE of all {scale.rows:,} rows in one transaction")
            started = time.perf_counter()
            updated = src.execute(UPDATE.format(table=TABLE)).rowcount
            results["big_update"] = {"rows": updated, "seconds": time.perf_counter() - started,
                                     "wal_bytes": benchlib.wal_bytes(src, start, benchlib.wal_lsn(src))}
            src.execute(f"VACUUM (ANALYZE) {TABLE}")
        log(f"big-tx: update done in {results['big_update']['seconds']:.1f}s, "
            f"{results['big_update']['wal_bytes'] / 2**20:.0f} MiB of WAL")

        log("big-tx: probe: one has_changes() against the backlog, in a fresh process")
        results["probe"] = probe(ctx, SLOT_BIG)
        p = results["probe"]["has_changes"]
        log(f"big-tx: probe: {p['answer']} in {p['seconds']:.2f}s, RSS {p['rss_before_kb'] / 1024:.0f} → "
            f"{p['rss_after_kb'] / 1024:.0f} MiB (peak {p['peak_before_kb'] / 1024:.0f} → "
            f"{p['peak_after_kb'] / 1024:.0f} MiB)")

        log(f"big-tx: draining the one-transaction backlog at batch size {scale.batch_size:,} in a fresh process")
        results["one_tx"] = drain_child(ctx, SLOT_BIG, "big_one", scale.batch_size)
        results["one_tx"]["verify"] = verify(ctx, "big_one")
        r = results["one_tx"]
        log(f"big-tx: one transaction: {r['changes']:,} changes in {r['batches']} batches, {r['seconds']:.1f}s, "
            f"peak RSS {r['peak_rss_kb'] / 1024:.0f} MiB; sink equal to source: {r['verify']['equal']}")
        benchlib.drop_slot(admin_dsn, SLOT_BIG)

        with benchlib.admin_connect(ctx["src_dsn"]) as src:
            src.execute("CHECKPOINT")
            benchlib.create_slot(src, SLOT_SPREAD)
            transactions = scale.rows // scale.tx_rows
            log(f"big-tx: comparison workload: {transactions} UPDATE transactions of {scale.tx_rows:,} rows")
            start = benchlib.wal_lsn(src)
            started = time.perf_counter()
            updated = 0
            for k in range(transactions):
                updated += src.execute(UPDATE.format(table=TABLE) + " WHERE id > %s AND id <= %s",
                                       (k * scale.tx_rows, (k + 1) * scale.tx_rows)).rowcount
            results["spread_update"] = {"rows": updated, "transactions": transactions,
                                        "seconds": time.perf_counter() - started,
                                        "wal_bytes": benchlib.wal_bytes(src, start, benchlib.wal_lsn(src))}
            src.execute(f"VACUUM (ANALYZE) {TABLE}")
        log(f"big-tx: draining the {transactions}-transaction backlog at batch size {scale.batch_size:,}")
        results["spread"] = drain_child(ctx, SLOT_SPREAD, "big_spread", scale.batch_size)
        results["spread"]["verify"] = verify(ctx, "big_spread")
        r = results["spread"]
        log(f"big-tx: spread: {r['changes']:,} changes in {r['batches']} batches, {r['seconds']:.1f}s, "
            f"peak RSS {r['peak_rss_kb'] / 1024:.0f} MiB; sink equal to source: {r['verify']['equal']}")
        benchlib.drop_slot(admin_dsn, SLOT_SPREAD)

        with benchlib.admin_connect(admin_dsn) as admin:
            results["server_after"] = server_state(admin)
        results["server_stayed_up"] = results["server_after"] == results["server_before"]
        results["ratio"] = results["one_tx"]["peak_rss_kb"] / results["spread"]["peak_rss_kb"]
    finally:
        try:
            dropped = benchlib.drop_bench_databases(admin_dsn, DATABASES)
            log(f"big-tx: cleanup: dropped {', '.join(dropped) or 'nothing'}")
        except Exception as exc:
            log(f"big-tx: cleanup FAILED, drop by hand: slots in and databases {DATABASES}: {exc}")
        shutil.rmtree(staging_dir, ignore_errors=True)
    return results


# --- reporting -----------------------------------------------------------------------------------------------------


def mib(kb: float) -> str:
    return f"{kb / 1024:.0f} MiB"


def render_section(results: dict[str, Any], info: dict[str, Any], started: dt.datetime, elapsed: float,
                   command: str) -> str:
    from run import fmt_int, fmt_s, md_table, rate  # the runner's table helpers

    sc = results["scale"]
    one, spread, pr = results["one_tx"], results["spread"], results["probe"]
    windows = sum(1 for b in one.get("batch_details", []) if b["partial"])
    settings = ", ".join(f"{k} {v}" for k, v in info["pg_settings"].items())
    busy = " (**busy**: other work ran at the same time, figures are noisy)" if info["loadavg"][0] > 0.5 else ""

    def drain_row(label: str, r: dict[str, Any]) -> list[str]:
        return [label, fmt_int(r["changes"]), str(r["batches"]), fmt_s(r["seconds"]), rate(r["changes"], r["seconds"]),
                mib(r["baseline_rss_kb"]), f"**{mib(r['peak_rss_kb'])}**", mib(r["vmhwm_kb"])]

    def server_row(label: str, r: dict[str, Any], apps: tuple[str, ...]) -> list[str]:
        s, t, b = r["slot"], r["temp"], r.get("backends")
        mem = "not readable" if not b else ", ".join(
            f"{mib(b[a]['RssAnon'])} / {mib(b[a]['VmHWM'])}" for a in apps if b[a]["backends"])
        return [label, fmt_int(s["total_txns"]), f"{s['total_bytes'] / 2**20:,.0f} MiB", fmt_int(s["spill_txns"]),
                fmt_int(s["spill_count"]), f"{s['spill_bytes'] / 2**20:,.0f} MiB", fmt_int(t["temp_files"]),
                f"{t['temp_bytes'] / 2**20:,.0f} MiB", mem]

    probe_rows = []
    for name in ("has_changes", "has_changes_async"):
        p = pr[name]
        probe_rows.append([f"`PgSource.{name}(position)`", str(p["answer"]), fmt_s(p["seconds"]),
                           mib(p["rss_before_kb"]), mib(p["rss_after_kb"]),
                           f"{(p['rss_after_kb'] - p['rss_before_kb']) / 1024:+.1f} MiB",
                           f"{(p['peak_after_kb'] - p['peak_before_kb']) / 1024:+.1f} MiB"])
    verify_rows = []
    for label, r in (("after the one-transaction drain (schema `big_one`)", one),
                     (f"after the {results['spread_update']['transactions']}-transaction drain (schema `big_spread`)",
                      spread)):
        v = r["verify"]
        verify_rows.append([label, fmt_int(v["source"][0]), v["source"][1], fmt_int(v["sink"][0]), v["sink"][1],
                            "equal" if v["equal"] else "**DIFFERENT**"])
    per_window = [b["seconds"] for b in one.get("batch_details", [])]
    passes = max(one["slot"]["total_txns"], 1)
    growth = [one["peak_after_batch_kb"][i] for i in (0, len(one["peak_after_batch_kb"]) // 2, -1)]
    lines = [
        MARK_BEGIN,
        f"## 4. One {fmt_int(sc['rows'])}-row transaction, batch size {fmt_int(sc['batch_size'])}",
        "",
        f"The issue's case: a {fmt_int(sc['rows'])}-row `UPDATE` in one transaction, drained with `batch_size: "
        f"{fmt_int(sc['batch_size'])}`, must not exhaust the worker, the triggerer or the source server "
        "(`PgSource` splits a transaction larger than a batch into windows: the position gets a `partial` key, "
        "the slot stays before the transaction until its last window is loaded).",
        "",
        f"- command: `{command}` (also `.venv/bin/python bench/run.py --only big-tx`; `--quick` is a 10× smaller "
        "smoke run that writes nothing). It does not rerun benchmarks 1–3, and their full run keeps this section",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}, scale `{sc['name']}`, whole run {elapsed / 60:.1f} min; "
        f"machine: {info['nproc']} cores ({info.get('cpu', '?')}), {info.get('ram_gib', '?')} GiB RAM, load "
        f"average at start {info['loadavg'][0]:.2f}{busy}; PostgreSQL {info['pg_version']} on the same machine "
        f"({settings}); code measured: {info['code']}",
        f"- workload: a fresh source database `{SRC_DB}`, table `{TABLE} (id bigint primary key, a int, b text, "
        f"c numeric(12,2), d timestamptz)` with {fmt_int(sc['rows'])} rows (on average "
        f"{results['row_bytes']:.0f} bytes a row, {results['table_bytes'] / 2**20:.0f} MiB), default replica "
        "identity; publication and slot (`pgoutput`, snapshot `never`) created after the seed; then `UPDATE "
        f"{TABLE} SET a = a + 1, b = md5(b), c = c + 0.01, d = d + interval '1 hour'` in one transaction: "
        f"{fmt_int(results['big_update']['rows'])} rows, {results['big_update']['wal_bytes'] / 2**20:.0f} MiB of "
        f"WAL, {fmt_s(results['big_update']['seconds'])} s",
        "- drain: capture_stage → load_stage → commit_stage (staged mode, `PgSink` into a fresh sink database "
        f"`{SINK_DB}`) until a capture is empty, in a fresh process (`bench/rss_child.py`, forked through `sh` so "
        "that `ru_maxrss` is its own, as in benchmark 3); comparison: a new slot, then the same `UPDATE` over the "
        f"same {fmt_int(sc['rows'])} rows in {results['spread_update']['transactions']} transactions of "
        f"{fmt_int(sc['tx_rows'])} rows ({results['spread_update']['wal_bytes'] / 2**20:.0f} MiB of WAL), drained "
        "the same way into another sink schema",
        "",
        "### The worker: drain time and peak RSS",
        "",
        md_table(["backlog", "changes", "batches", "seconds", "changes/s", "RSS after start-up",
                  "peak RSS (ru_maxrss)", "peak RSS (VmHWM)"],
                 [drain_row("one transaction", one),
                  drain_row(f"{results['spread_update']['transactions']} transactions of {fmt_int(sc['tx_rows'])}",
                            spread)]),
        "",
        f"Ratio of the peaks, one transaction ÷ spread: **{results['ratio']:.2f}×**. {windows} of the "
        f"{one['batches']} batches of the one-transaction drain ended inside the transaction (a `partial` "
        "position); the last one completed it. Peak RSS after each batch (MiB), one transaction: "
        f"{', '.join(str(round(k / 1024)) for k in one['peak_after_batch_kb'])}; spread: "
        f"{', '.join(str(round(k / 1024)) for k in spread['peak_after_batch_kb'])}.",
        "",
        "Seconds per batch of the one-transaction drain (capture + load + commit): "
        + ", ".join(f"{s:.1f}" for s in per_window)
        + f". Stage totals: capture {fmt_s(one['stage_seconds']['capture_stage'])} s, load "
        f"{fmt_s(one['stage_seconds']['load_stage'])} s, commit {fmt_s(one['stage_seconds']['commit_stage'])} s "
        f"(spread: {fmt_s(spread['stage_seconds']['capture_stage'])}, {fmt_s(spread['stage_seconds']['load_stage'])}, "
        f"{fmt_s(spread['stage_seconds']['commit_stage'])} s).",
        "",
        f"Where the time goes: capture is {100 * one['stage_seconds']['capture_stage'] / one['seconds']:.0f} % of "
        "the one-transaction drain. Every window is one peek that decodes the whole transaction again from the "
        f"slot's `restart_lsn` ({passes} decoding passes over the drain, each spilling about "
        f"{one['slot']['spill_bytes'] / passes / 2**20:,.0f} MiB of reorder buffer to disk past "
        "`logical_decoding_work_mem`) and materializes the output (about "
        f"{one['temp']['temp_bytes'] / max(one['batches'], 1) / 2**20:,.0f} MiB of temporary files per batch) "
        "before keeping one window of it: the server's work grows with the transaction's size times the number of "
        "windows, i.e. with the square of the transaction's size at a fixed batch size. The worker's memory does "
        f"not grow that way: peak RSS {mib(growth[0])} after the first batch, {mib(growth[1])} half-way, "
        f"{mib(growth[2])} at the end (the spread drain levels off earlier; whether the slow creep here would "
        "continue over many more windows is not measured).",
        "",
        "### The triggerer / sensor: one probe",
        "",
        f"In a fresh process, with the {fmt_int(sc['rows'])}-change backlog in the slot and the position at the "
        "slot's start: the calling process's RSS (`VmRSS`) and peak RSS (`ru_maxrss`) around the call (connection "
        "already open for the sync call; the async call opens its own).",
        "",
        md_table(["call", "answer", "seconds", "RSS before", "RSS after", "RSS growth", "peak RSS growth"], probe_rows),
        "",
        "The calling process only receives commit messages; the server still decodes the whole transaction for "
        f"each probe (about {pr['slot']['spill_bytes'] / max(pr['slot']['total_txns'], 1) / 2**20:,.0f} MiB spilled "
        f"and {pr['temp']['temp_bytes'] / max(pr['slot']['total_txns'], 1) / 2**20:,.0f} MiB of temporary files per "
        "call, see below), so each poll costs the source server that until the transaction is drained.",
        "",
        "### The source server",
        "",
        "Counters for the slot (`pg_stat_replication_slots`: every peek decodes the backlog again from the slot's "
        "`restart_lsn`, so these add up over all the peeks of the phase) and the source database's temporary files "
        "(`pg_stat_database`), as differences over each phase. Backend memory: the phase's source backends sampled "
        "every 0.1 s from `/proc/<pid>/status` (same machine), peak `RssAnon` (private memory) / peak `VmHWM` (that "
        "plus the shared buffers it touched); for the drains the second pair is the sink's backend.",
        "",
        md_table(["phase", "txns decoded", "decoded bytes", "spilled txns", "spill count", "spilled bytes",
                  "temp files", "temp bytes", "backend peak RssAnon / VmHWM"],
                 [server_row("probe (`has_changes` + `has_changes_async`)", pr, (APP_PROBE,)),
                  server_row("drain, one transaction", one, (APP_CHILD, APP_SINK)),
                  server_row(f"drain, {results['spread_update']['transactions']} transactions", spread,
                             (APP_CHILD, APP_SINK))]),
        "",
        "The server stayed up: "
        + ("**yes** (`pg_postmaster_start_time()` unchanged, every connection of the run answered to the end)."
           if results["server_stayed_up"] else "**NO**: the postmaster restarted during the run."),
        "",
        "### Exactly once",
        "",
        "`count(*)` and `md5` of the per-row `md5(ROW(id, a, b, c, d)::text)` in key order, source table against "
        "the sink table, after each drain:",
        "",
        md_table(["check", "source rows", "source md5", "sink rows", "sink md5", "result"], verify_rows,
                 left=(0, 2, 4, 5)),
        "",
        MARK_END,
    ]
    return "\n".join(lines)


def splice_section(markdown: str, section: str) -> str:
    """Put ``section`` in place of the marked block of ``markdown``, or before ``## Notes`` (else at the end)."""
    pattern = re.compile(re.escape(MARK_BEGIN) + r".*?" + re.escape(MARK_END) + r"\n?", re.S)
    if pattern.search(markdown):
        return pattern.sub(lambda _m: section + "\n", markdown, count=1)
    if "\n## Notes\n" in markdown:
        head, tail = markdown.split("\n## Notes\n", 1)
        return head.rstrip("\n") + "\n\n" + section + "\n\n## Notes\n" + tail
    return markdown.rstrip("\n") + "\n\n" + section + "\n"


def existing_section(path: Path) -> str | None:
    """The marked block of an existing report (so that a run of benchmarks 1–3 keeps it)."""
    if not path.exists():
        return None
    match = re.search(re.escape(MARK_BEGIN) + r".*?" + re.escape(MARK_END), path.read_text(), re.S)
    return match.group(0) if match else None


def print_summary(results: dict[str, Any]) -> None:
    one, spread, pr = results["one_tx"], results["spread"], results["probe"]
    print(json.dumps({
        "one_tx": {k: one[k] for k in ("changes", "batches", "seconds", "baseline_rss_kb", "peak_rss_kb", "vmhwm_kb",
                                        "slot", "temp", "backends", "verify")},
        "spread": {k: spread[k] for k in ("changes", "batches", "seconds", "baseline_rss_kb", "peak_rss_kb",
                                           "vmhwm_kb", "slot", "temp", "backends", "verify")},
        "peak_ratio": results["ratio"],
        "probe": pr,
        "server_stayed_up": results["server_stayed_up"],
    }, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller: a smoke run that writes nothing")
    parser.add_argument("--dsn", default=benchlib.DEFAULT_DSN, help="an administrative connection to the server")
    parser.add_argument("--output", help="report to splice the section into (default BENCHMARKS.md after a full run)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--json", help="also dump the raw results to this JSON file")
    parser.add_argument("--render-json", metavar="PATH",
                        help="do not run: write the section of a run saved with --json "
                             "(into --output or BENCHMARKS.md)")
    parser.add_argument("--probe-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src-dsn", help=argparse.SUPPRESS)
    parser.add_argument("--slot", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_child:
        probe_child(args)
        return 0

    if args.render_json:
        saved = json.loads(Path(args.render_json).read_text())
        section = render_section(saved["results"], saved["machine"], dt.datetime.fromisoformat(saved["started"]),
                                 saved["elapsed"], saved["command"])
        path = Path(args.output or REPO_ROOT / "BENCHMARKS.md")
        path.write_text(splice_section(path.read_text() if path.exists() else "", section))
        log(f"big-tx: wrote its section into {path}")
        shutil.rmtree(os.environ["CDC_BENCH_AIRFLOW_HOME"], ignore_errors=True)
        return 0

    signal.signal(signal.SIGTERM, _terminate)
    scale = QUICK if args.quick else FULL
    output = None if args.no_write else args.output or (None if args.quick else str(REPO_ROOT / "BENCHMARKS.md"))
    started_at = dt.datetime.now(dt.timezone.utc)
    started = time.perf_counter()
    info = benchlib.machine_info(args.dsn)
    host = str(conninfo_to_dict(args.dsn).get("host", "localhost"))
    log(f"big-tx: {info['nproc']} cores, PostgreSQL {info['pg_version']} at {benchlib.server_host(args.dsn)}, "
        f"scale {scale.name}, load average {info['loadavg'][0]:.2f}, code: {info['code']}")
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("/"):
        log("big-tx: the server is not on this machine: its backends' memory will not be read")
    try:
        results = run_benchmark(args.dsn, scale)
    finally:
        shutil.rmtree(os.environ["CDC_BENCH_AIRFLOW_HOME"], ignore_errors=True)
    elapsed = time.perf_counter() - started
    print_summary(results)
    command = ".venv/bin/python bench/big_transaction.py" + (" --quick" if args.quick else "") + (
        f" --dsn {args.dsn}" if args.dsn != benchlib.DEFAULT_DSN else "")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": results, "started": started_at.isoformat(),
                                               "elapsed": elapsed, "command": command}, indent=1, default=str))
    if output:
        section = render_section(results, info, started_at, elapsed, command)
        path = Path(output)
        path.write_text(splice_section(path.read_text() if path.exists() else "", section))
        log(f"big-tx: wrote its section into {output}")
    log(f"big-tx: done in {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
