"""Benchmarks of the PostgreSQL capture and load path against same-run references (DESIGN section 6).

    .venv/bin/python bench/run.py [--quick] [--dsn URL] [--only 1,2,3,big-tx] [--output PATH] [--json PATH]
                                  [--profile-load]

1. capture: ``PgSource.capture`` + ``BatchStore.write`` against a raw fetch of the same pgoutput stream;
2. capture → load → commit (staged) against an ``updated_at`` watermark load, on the same workload;
3. peak RSS of capture → load → commit over a backlog and over a 10× larger one, each in a fresh process;
4. (``--only big-tx``, or ``4``) one 2,000,000-row transaction drained at batch size 50,000:
   ``bench/big_transaction.py``, which owns its databases and its section of BENCHMARKS.md (a run of 1–3 keeps it).

The benchmark creates and drops its own databases (``cdc_bench_src``, ``cdc_bench_sink``) with their slots and
publications, also when it fails or is interrupted. Positions stay in memory (never in Airflow's database) and
batches are staged under a temporary ``file://`` root. A full run writes BENCHMARKS.md; ``--quick`` (10× smaller
workloads, a smoke run) and ``--only`` print only, unless ``--output`` is given. The report names the code it
measured (git commit of the imported ``airflow_provider_cdc``, or ``CDC_BENCH_CODE_VERSION`` when set).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import json
import logging
import os
import pstats
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import benchlib  # noqa: E402  (sets a private AIRFLOW_HOME before Airflow is imported)
import psycopg  # noqa: E402
from benchlib import FETCH_ROWS, RAW_SQL, log, raw_fetch, run_fresh  # noqa: E402


@dataclass(frozen=True)
class Scale:
    name: str
    changes: int  # benchmark 1: row changes in the stream
    tx_rows: int  # rows per source transaction
    batch_size: int  # max_changes per capture (benchmarks 1 and 2)
    wm_rows: int  # benchmark 2: table size
    wm_updates: int
    wm_deletes: int
    wm_inserts: int
    rss_small: int  # benchmark 3: the two backlogs
    rss_large: int
    rss_batch: int


FULL = Scale("full", 1_000_000, 10_000, 200_000, 1_000_000, 750_000, 100_000, 100_000, 100_000, 1_000_000, 100_000)
QUICK = Scale("quick", 100_000, 1_000, 20_000, 100_000, 75_000, 10_000, 10_000, 10_000, 100_000, 10_000)

TABLE_CHANGES = "bench_changes"
PUB_CHANGES = "cdc_bench_changes_pub"
SLOT_CAPTURE = "cdc_bench_capture"
SLOT_RSS_SMALL = "cdc_bench_rss_small"
SLOT_RSS_LARGE = "cdc_bench_rss_large"
TABLE_WM = "bench_wm"
TABLE_WM_COPY = "wm_copy"
SLOT_WM = "cdc_bench_wm"
PUB_WM = "cdc_bench_wm_pub"


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")


# --- benchmark 1: raw fetch vs capture -----------------------------------------------------------------------------


def prepare_changes_workload(ctx: dict[str, Any], scale: Scale, want_capture: bool, want_rss: bool) -> dict[str, Any]:
    """Seed ``bench_changes``, create the slots, run the update/insert workload (the RSS-small slot is created
    part-way, so that its backlog is the last tenth)."""
    seeded = scale.changes // 2
    small_from_tx = (scale.changes - scale.rss_small) // scale.tx_rows
    with benchlib.admin_connect(ctx["src_dsn"]) as conn:
        log(f"bench 1/3: seeding {TABLE_CHANGES} with {seeded:,} rows")
        benchlib.seed_changes_table(conn, TABLE_CHANGES, seeded)
        conn.execute(f"CREATE PUBLICATION {PUB_CHANGES} FOR TABLE {TABLE_CHANGES}")
        if want_capture:
            benchlib.create_slot(conn, SLOT_CAPTURE)
        if want_rss:
            benchlib.create_slot(conn, SLOT_RSS_LARGE)

        def before_tx(k: int) -> None:
            if want_rss and k == small_from_tx:
                benchlib.create_slot(conn, SLOT_RSS_SMALL)

        start = benchlib.wal_lsn(conn)
        log(f"bench 1/3: workload of {scale.changes:,} changes in transactions of {scale.tx_rows:,}")
        started = time.perf_counter()
        counts = benchlib.changes_workload(conn, TABLE_CHANGES, seeded=seeded, changes=scale.changes,
                                           tx_rows=scale.tx_rows, before_tx=before_tx)
        seconds = time.perf_counter() - started
        wal = benchlib.wal_bytes(conn, start, benchlib.wal_lsn(conn))
        conn.execute(f"VACUUM (ANALYZE) {TABLE_CHANGES}")
    log(f"bench 1/3: workload done in {seconds:.1f}s ({counts}), {wal / 2**20:.0f} MiB of WAL")
    return {"counts": counts, "seconds": seconds, "wal_bytes": wal, "transactions": scale.changes // scale.tx_rows}


def server_count(dsn: str, slot: str, publication: str) -> dict[str, Any]:
    """The same peek, counted in SQL: the server's share (decode + output plugin + tuplestore), no transfer."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        messages, size = conn.execute(
            f"SELECT count(*), sum(length(data)) FROM ({RAW_SQL}) AS peek", (slot, publication)
        ).fetchone()
        seconds = time.perf_counter() - started
    return {"messages": int(messages), "bytes": int(size or 0), "seconds": seconds}


def top_functions(profile: cProfile.Profile, n: int, key: str) -> list[dict[str, Any]]:
    stats = pstats.Stats(profile)
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = filename
        for marker in ("site-packages/", str(REPO_ROOT) + "/"):
            if marker in where:
                where = where.split(marker, 1)[1]
        label = func if filename == "~" else f"{func} ({where}:{line})"
        rows.append({"function": label, "ncalls": ncalls, "tottime": tottime, "cumtime": cumtime})
    rows.sort(key=lambda row: row[key], reverse=True)
    return rows[:n]


def bench_capture(ctx: dict[str, Any], scale: Scale) -> dict[str, Any]:
    source = benchlib.PgSource(
        ctx["src_dsn"], source_id="bench_capture", tables=[("public", TABLE_CHANGES)], slot_name=SLOT_CAPTURE,
        publication_name=PUB_CHANGES, snapshot="never", create_slot=False, create_publication=False,
    )
    ctx["closers"].append(source.close)
    source.prepare()
    start = source.initial_position()

    # One batch under cProfile first: where capture's time goes (it also brings the WAL into the page cache).
    log(f"bench 1: profiling one capture of {scale.batch_size:,}")
    profile = cProfile.Profile()
    profile.enable()
    profiled = source.capture(start, scale.batch_size)
    profile.disable()
    profile_result = {
        "changes": profiled.change_count,
        "by_tottime": top_functions(profile, 10, "tottime"),
        "by_cumtime": top_functions(profile, 12, "cumtime"),
    }
    del profiled

    raws = []
    for attempt in (1, 2):
        raws.append(raw_fetch(ctx["src_dsn"], SLOT_CAPTURE, PUB_CHANGES))
        log(f"bench 1: raw fetch #{attempt}: {raws[-1]['messages']:,} messages in {raws[-1]['seconds']:.2f}s")
    server = server_count(ctx["src_dsn"], SLOT_CAPTURE, PUB_CHANGES)
    log(f"bench 1: server-side peek counted in SQL: {server['messages']:,} messages in {server['seconds']:.2f}s")

    store = benchlib.BatchStore(root=ctx["staging_url"] + "/capture")
    position = start
    seconds = {"capture": 0.0, "write": 0.0, "acknowledge": 0.0, "peek": 0.0, "decode": 0.0}
    changes = batches = 0
    parts: dict[str, float] = {"peek": 0.0, "peeks": 0, "decode": 0.0, "decodes": 0}
    per_batch: list[dict[str, Any]] = []  # every capture, the last (empty) one included
    with capture_part_timer(parts):
        while True:
            before = dict(parts)
            t0 = time.perf_counter()
            batch = source.capture(position, scale.batch_size)
            t1 = time.perf_counter()
            seconds["capture"] += t1 - t0
            row = {"changes": batch.change_count, "capture": t1 - t0, "write": 0.0, "acknowledge": 0.0,
                   **{k: parts[k] - before[k] for k in parts}}
            per_batch.append(row)
            seconds["peek"] += row["peek"]
            seconds["decode"] += row["decode"]
            if batch.change_count == 0:
                log(f"bench 1: last capture (empty): {t1 - t0:.2f}s, of which peek {row['peek']:.2f}s")
                break
            store.write(batch)
            t2 = time.perf_counter()
            source.acknowledge(batch.position_to)  # peek does not consume: without this the next capture starts over
            t3 = time.perf_counter()
            row["write"], row["acknowledge"] = t2 - t1, t3 - t2
            seconds["write"] += t2 - t1
            seconds["acknowledge"] += t3 - t2
            changes += batch.change_count
            batches += 1
            position = batch.position_to
            log(f"bench 1: batch {batches}: {batch.change_count:,} changes, capture {t1 - t0:.2f}s (peek "
                f"{row['peek']:.2f}s, decode {row['decode']:.2f}s), stage {t2 - t1:.2f}s, advance {t3 - t2:.2f}s")
            del batch
    source.close()
    staged_bytes = sum(f.stat().st_size for f in Path(ctx["staging_dir"], "capture").rglob("*") if f.is_file())
    return {"raw": raws, "server": server, "changes": changes, "batches": batches, "seconds": seconds,
            "per_batch": per_batch, "staged_bytes": staged_bytes, "profile": profile_result}


@contextlib.contextmanager
def capture_part_timer(parts: dict[str, float]):
    """Meanwhile, add the seconds of every ``StreamCapture._peek_messages`` call (the peek: server decoding +
    transfer + building the Arrow array) to ``parts["peek"]`` and of every ``decode_columnar`` call made by the
    stream module (the columnar decode into per-table Arrow tables) to ``parts["decode"]``, counting the calls in
    ``parts["peeks"]``/``parts["decodes"]``. The stream module imports ``decode_columnar`` by name: that name is
    the one patched. Both are restored on the way out."""
    from airflow_provider_cdc.connectors.postgres import stream

    real_peek, real_decode = stream.StreamCapture._peek_messages, stream.decode_columnar

    def peek(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return real_peek(self, *args, **kwargs)
        finally:
            parts["peek"] += time.perf_counter() - started
            parts["peeks"] += 1

    def decode(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return real_decode(*args, **kwargs)
        finally:
            parts["decode"] += time.perf_counter() - started
            parts["decodes"] += 1

    stream.StreamCapture._peek_messages = peek  # type: ignore[method-assign]
    stream.decode_columnar = decode
    try:
        yield
    finally:
        stream.StreamCapture._peek_messages = real_peek  # type: ignore[method-assign]
        stream.decode_columnar = real_decode


# --- benchmark 3: peak RSS ----------------------------------------------------------------------------------------


def bench_rss(ctx: dict[str, Any], scale: Scale) -> dict[str, Any]:
    runs = {}
    backlogs = (("small", SLOT_RSS_SMALL, scale.rss_small), ("large", SLOT_RSS_LARGE, scale.rss_large))
    for label, slot, backlog in backlogs:
        log(f"bench 3: draining a backlog of {backlog:,} changes in a fresh process (batch size {scale.rss_batch:,})")
        command = [
            sys.executable, str(BENCH_DIR / "rss_child.py"),
            "--src-dsn", ctx["src_dsn"], "--sink-dsn", ctx["sink_dsn"], "--table", TABLE_CHANGES,
            "--slot", slot, "--publication", PUB_CHANGES, "--target-schema", f"rss_{label}",
            "--staging-root", f"{ctx['staging_url']}/rss_{label}", "--batch-size", str(scale.rss_batch),
        ]
        stdout, stderr, returncode = run_fresh(command)
        if returncode != 0:
            raise RuntimeError(f"RSS child for the {label} backlog failed ({returncode}):\n{stderr[-4000:]}")
        result = json.loads(stdout.strip().splitlines()[-1])
        result["backlog"] = backlog
        runs[label] = result
        benchlib.drop_slot(ctx["admin_dsn"], slot)  # release its WAL
        shutil.rmtree(Path(ctx["staging_dir"], f"rss_{label}"), ignore_errors=True)
        log(f"bench 3: {label}: {result['changes']:,} changes in {result['seconds']:.1f}s, "
            f"peak RSS {result['peak_rss_kb'] / 1024:.0f} MiB (baseline {result['baseline_rss_kb'] / 1024:.0f} MiB)")
    return {"batch_size": scale.rss_batch, "runs": runs,
            "ratio": runs["large"]["peak_rss_kb"] / runs["small"]["peak_rss_kb"]}


# --- benchmark 2: capture → load → commit vs watermark load -------------------------------------------------------


def watermark_load(src_dsn: str, sink_dsn: str, watermark: str) -> dict[str, Any]:
    """The reference, as Airflow users write it: rows changed since the watermark through a server-side cursor,
    COPY into a staging table, one INSERT … ON CONFLICT DO UPDATE, new watermark; deletes are never seen."""
    cols = ", ".join(benchlib.WM_COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in benchlib.WM_COLUMNS if c != "id")
    with psycopg.connect(src_dsn) as src, psycopg.connect(sink_dsn) as dst:
        started = time.perf_counter()
        rows = 0
        with src.cursor(name="cdc_bench_watermark") as read, dst.cursor() as cur:
            read.itersize = FETCH_ROWS
            cur.execute(f"CREATE TEMP TABLE wm_stage (LIKE {TABLE_WM_COPY}) ON COMMIT DROP")
            read.execute(f"SELECT {cols} FROM {TABLE_WM} WHERE updated_at > %s", (watermark,))
            with cur.copy(f"COPY wm_stage ({cols}) FROM STDIN") as copy:
                while chunk := read.fetchmany(FETCH_ROWS):
                    for row in chunk:
                        copy.write_row(row)
                    rows += len(chunk)
            copied = time.perf_counter()
            cur.execute(f"INSERT INTO {TABLE_WM_COPY} ({cols}) SELECT {cols} FROM wm_stage "
                        f"ON CONFLICT (id) DO UPDATE SET {updates}")
            merged_rows = cur.rowcount
            cur.execute("SELECT max(updated_at)::text FROM wm_stage")
            new_watermark = cur.fetchone()[0]
            merged = time.perf_counter()
        dst.commit()
        src.rollback()
        done = time.perf_counter()
    return {"rows": rows, "merged_rows": merged_rows, "seconds": done - started, "read_copy_s": copied - started,
            "merge_s": merged - copied, "commit_s": done - merged, "watermark_to": new_watermark}


@contextlib.contextmanager
def statement_timer(statements: list[tuple[str, float]]):
    """Record (statement, seconds) of every psycopg ``execute`` and ``copy`` meanwhile (for ``--profile-load``)."""
    real_execute, real_copy = psycopg.Cursor.execute, psycopg.Cursor.copy

    def text(query: Any, cur: psycopg.Cursor) -> str:
        query = query if isinstance(query, str) else query.as_string(cur.connection)
        return " ".join(query.split())[:90]

    def execute(self: psycopg.Cursor, query: Any, params: Any = None, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return real_execute(self, query, params, **kwargs)
        finally:
            statements.append((text(query, self), time.perf_counter() - started))

    @contextlib.contextmanager
    def copy(self: psycopg.Cursor, statement: Any, params: Any = None, **kwargs: Any):
        started = time.perf_counter()
        with real_copy(self, statement, params, **kwargs) as cp:
            yield cp
        statements.append((text(statement, self) + "  (incl. writing the CSV)", time.perf_counter() - started))

    psycopg.Cursor.execute, psycopg.Cursor.copy = execute, copy  # type: ignore[method-assign]
    try:
        yield
    finally:
        psycopg.Cursor.execute, psycopg.Cursor.copy = real_execute, real_copy  # type: ignore[method-assign]


def bench_watermark(ctx: dict[str, Any], scale: Scale, profile_load: bool) -> dict[str, Any]:
    src_dsn, sink_dsn = ctx["src_dsn"], ctx["sink_dsn"]
    result: dict[str, Any] = {}
    with benchlib.admin_connect(src_dsn) as src, benchlib.admin_connect(sink_dsn) as dst:
        log(f"bench 2: seeding {TABLE_WM} with {scale.wm_rows:,} rows, and its watermark copy in the sink")
        watermark = benchlib.seed_wm_table(src, TABLE_WM, scale.wm_rows)
        dst.execute(benchlib.WM_DDL.format(name=TABLE_WM_COPY))
        with src.cursor().copy(f"COPY {TABLE_WM} TO STDOUT") as out, \
                dst.cursor().copy(f"COPY {TABLE_WM_COPY} FROM STDIN") as into:
            for block in out:
                into.write(block)
        dst.execute(f"VACUUM (ANALYZE) {TABLE_WM_COPY}")
    result["watermark_from"] = watermark

    # Ours: the pipeline creates the slot and publication, then the initial snapshot (not timed) fills the sink.
    source = benchlib.TimedPgSource(
        src_dsn, source_id="bench_wm", tables=[("public", TABLE_WM)], slot_name=SLOT_WM, publication_name=PUB_WM,
        snapshot="initial",
    )
    sink = benchlib.TimedPgSink(sink_dsn, sink_id="bench_sink", target_schema="public", ledger_schema="public")
    ctx["closers"] += [source.close, sink.close]
    store = benchlib.TimedBatchStore(root=ctx["staging_url"] + "/pipeline")
    positions = benchlib.MemoryPositions()
    log(f"bench 2: initial snapshot of {scale.wm_rows:,} rows through the pipeline (not timed in the comparison)")
    snapshot = benchlib.drain(source, sink, positions, store, batch_size=scale.batch_size)
    result["snapshot"] = {"rows": snapshot["changes"], "seconds": snapshot["seconds"], "batches": snapshot["batches"]}
    log(f"bench 2: snapshot: {snapshot['changes']:,} rows in {snapshot['seconds']:.1f}s")
    with benchlib.admin_connect(sink_dsn) as dst:
        dst.execute(f"VACUUM (ANALYZE) {TABLE_WM}")

    schedule = benchlib.wm_schedule(scale.wm_rows, scale.wm_updates, scale.wm_deletes, scale.wm_inserts, scale.tx_rows)
    with benchlib.admin_connect(src_dsn) as src:
        start_lsn = benchlib.wal_lsn(src)
        log(f"bench 2: workload: {scale.wm_updates:,} updates, {scale.wm_deletes:,} deletes, "
            f"{scale.wm_inserts:,} inserts in {len(schedule)} transactions")
        started = time.perf_counter()
        counts = benchlib.run_wm_workload(src, TABLE_WM, scale.wm_rows, schedule)
        result["workload"] = {"counts": counts, "transactions": len(schedule),
                              "seconds": time.perf_counter() - started,
                              "wal_bytes": benchlib.wal_bytes(src, start_lsn, benchlib.wal_lsn(src))}
        src.execute(f"VACUUM (ANALYZE) {TABLE_WM}")
    source_changes = sum(counts.values())
    result["source_changes"] = source_changes
    log(f"bench 2: workload done: {counts} in {result['workload']['seconds']:.1f}s")

    # Ours first: the sink's own WAL (same server) then lies after the changes it reads, as in the reference's case.
    benchlib.checkpoint(ctx["admin_dsn"])
    for timer in (source.seconds, sink.seconds, store.seconds):
        timer.clear()
    log("bench 2: ours: capture_stage → load_stage → commit_stage until drained")
    profiler = cProfile.Profile() if profile_load else None
    profiled: dict[str, Any] = {}

    def on_batch(summary: dict[str, Any]) -> None:
        log(f"bench 2: batch of {summary['change_count']:,} ({summary['ops']}): capture {summary['capture_s']:.2f}s, "
            f"load {summary['load_s']:.2f}s, commit {summary['commit_s']:.2f}s")

    if profiler is not None:
        # --profile-load: the first stream batch's load runs under cProfile (its time then includes the overhead).
        from airflow_provider_cdc import pipeline

        real_load_stage = pipeline.load_stage

        def load_stage(uri: str, sink_: Any, **kwargs: Any) -> Any:
            if profiled:
                return real_load_stage(uri, sink_, **kwargs)
            statements: list[tuple[str, float]] = []
            profiler.enable()
            try:
                with statement_timer(statements):
                    return real_load_stage(uri, sink_, **kwargs)
            finally:
                profiler.disable()
                profiled["by_cumtime"] = top_functions(profiler, 15, "cumtime")
                profiled["by_tottime"] = top_functions(profiler, 10, "tottime")
                profiled["statements"] = statements

        pipeline.load_stage = load_stage
    try:
        ours = benchlib.drain(source, sink, positions, store, batch_size=scale.batch_size, on_batch=on_batch)
    finally:
        if profiler is not None:
            pipeline.load_stage = real_load_stage
    ours["parts"] = {
        "capture": source.seconds["capture"],
        "write": store.seconds["write"],
        "apply": sink.seconds["apply"],
        "acknowledge": source.seconds["acknowledge"],
    }
    result["ours"] = ours
    if profiled:
        result["load_profile"] = profiled
    log(f"bench 2: ours: {ours['changes']:,} changes in {ours['seconds']:.2f}s")

    benchlib.checkpoint(ctx["admin_dsn"])
    log("bench 2: reference: watermark load")
    result["reference"] = watermark_load(src_dsn, sink_dsn, watermark)
    log(f"bench 2: reference: {result['reference']['rows']:,} rows in {result['reference']['seconds']:.2f}s")

    with benchlib.admin_connect(src_dsn) as src, benchlib.admin_connect(sink_dsn) as dst:
        src_sum = benchlib.table_checksum(src, TABLE_WM, benchlib.WM_COLUMNS)
        ours_sum = benchlib.table_checksum(dst, TABLE_WM, benchlib.WM_COLUMNS)
        ref_count = dst.execute(f"SELECT count(*) FROM {TABLE_WM_COPY}").fetchone()[0]
        deleted = benchlib.deleted_keys_sql(scale.wm_rows, scale.wm_updates, scale.wm_deletes)
        ref_sum = benchlib.table_checksum(dst, TABLE_WM_COPY, benchlib.WM_COLUMNS, where=f"WHERE id NOT IN ({deleted})")
        ledger = dst.execute("SELECT count(*) FROM _cdc_ledger WHERE source_id = 'bench_wm'").fetchone()[0]
    result["verify"] = {
        "source": src_sum, "ours": ours_sum, "ours_equal": ours_sum == src_sum, "ledger_batches": ledger,
        "reference_count": ref_count, "reference_extra_rows": ref_count - src_sum[0],
        "reference_without_deleted": ref_sum, "reference_equal_but_deletes": ref_sum == src_sum,
    }
    source.close()
    sink.close()
    return result


# --- reporting -----------------------------------------------------------------------------------------------------


def fmt_int(n: float) -> str:
    return f"{n:,.0f}"


def fmt_s(s: float) -> str:
    return f"{s:.2f}"


def rate(n: float, s: float) -> str:
    return fmt_int(n / s) if s > 0 else "-"


def text_table(title: str, headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    def line(r: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    out = [title, line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    return "\n".join(out)


def md_table(headers: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> str:
    """A Markdown table; columns not in ``left`` (numbers) are right-aligned."""
    align = ["---" if i in left else "---:" for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def capture_tables(b1: dict[str, Any]) -> tuple[list[str], list[list[str]], dict[str, float]]:
    raw = min(b1["raw"], key=lambda r: r["seconds"])
    other = max(b1["raw"], key=lambda r: r["seconds"])
    s = b1["seconds"]
    staged = s["capture"] + s["write"]
    n = b1["changes"]
    raw_rate = raw["messages"] / raw["seconds"]
    figures = {
        "raw_rate": raw_rate,
        "ours_rate": n / staged,
        "ratio": (n / staged) / raw_rate,
        "decode_rate": n / s["capture"],
        "decode_ratio": (n / s["capture"]) / raw_rate,
        # Measured during the timed captures (capture_part_timer); the rest is capture's own Python around them.
        "peek_s": s["peek"],
        "decode_s": s["decode"],
        "rest_s": s["capture"] - s["peek"] - s["decode"],
        "last_peek_s": b1["per_batch"][-1]["peek"] if b1["per_batch"][-1]["changes"] == 0 else 0.0,
    }
    peeks = sum(r["peeks"] for r in b1["per_batch"])
    decodes = sum(r["decodes"] for r in b1["per_batch"])
    headers = ["measure", "items", "seconds", "items/s"]
    rows = [
        ["raw fetch of the pgoutput stream, named cursor, no decoding (reference; best of 2, "
         f"other {fmt_s(other['seconds'])} s)", f"{fmt_int(raw['messages'])} msgs", fmt_s(raw["seconds"]),
         fmt_int(raw_rate)],
        ["same peek counted in SQL (server share only: decode + pgoutput + tuplestore)",
         f"{fmt_int(b1['server']['messages'])} msgs", fmt_s(b1["server"]["seconds"]),
         rate(b1["server"]["messages"], b1["server"]["seconds"])],
        [f"**ours: capture + stage** ({b1['batches']} batches)", f"{fmt_int(n)} changes", fmt_s(staged),
         fmt_int(n / staged)],
        ["  of which capture = peek + decode + the rest (decode-only)", "", fmt_s(s["capture"]),
         fmt_int(n / s["capture"])],
        [f"    peeks (`_peek_messages`: {peeks} calls, the last, empty capture's included)", "",
         fmt_s(s["peek"]), ""],
        [f"    columnar decode (`decode_columnar`: {decodes} calls)", "", fmt_s(s["decode"]),
         rate(n, s["decode"])],
        ["    the rest of capture (batch assembly: begin xids, decoder, Batch)", "", fmt_s(figures["rest_s"]), ""],
        ["  of which staging (Parquet zstd write + manifest)", f"{b1['staged_bytes'] / 2**20:.0f} MiB",
         fmt_s(s["write"]), ""],
        ["slot advance between batches (commit stage's work; not counted above)", "",
         fmt_s(s["acknowledge"]), ""],
    ]
    return headers, rows, figures


def capture_batch_table(b1: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Benchmark 1 capture by capture: where each one's time went (the last row is the empty capture)."""
    headers = ["capture", "changes", "capture s", "peek s", "decode s", "rest of capture s", "staging s",
               "slot advance s"]
    rows = []
    for i, r in enumerate(b1["per_batch"], 1):
        rows.append([str(i) if r["changes"] else f"{i} (empty: the slot is drained)", fmt_int(r["changes"]),
                     fmt_s(r["capture"]), fmt_s(r["peek"]), fmt_s(r["decode"]),
                     fmt_s(r["capture"] - r["peek"] - r["decode"]), fmt_s(r["write"]), fmt_s(r["acknowledge"])])
    return headers, rows


def watermark_tables(b2: dict[str, Any]) -> tuple[list[str], list[list[str]], list[list[str]], dict[str, float]]:
    ref, ours, n = b2["reference"], b2["ours"], b2["source_changes"]
    parts, stages = ours["parts"], ours["stage_seconds"]
    figures = {"ref_rate": n / ref["seconds"], "ours_rate": n / ours["seconds"]}
    figures["ratio"] = figures["ours_rate"] / figures["ref_rate"]
    headers = ["measure", "seconds", "source changes/s", "notes"]
    rows = [
        ["watermark load (reference)", fmt_s(ref["seconds"]), fmt_int(figures["ref_rate"]),
         f"{fmt_int(ref['rows'])} rows moved; misses all {fmt_int(b2['workload']['counts']['d'])} deletes"],
        ["  read (server-side cursor) + COPY into staging table", fmt_s(ref["read_copy_s"]), "", ""],
        ["  INSERT … ON CONFLICT DO UPDATE merge", fmt_s(ref["merge_s"]), "", f"{fmt_int(ref['merged_rows'])} rows"],
        ["  commit", fmt_s(ref["commit_s"]), "", ""],
        [f"**ours: capture_stage → load_stage → commit_stage** ({ours['batches']} batches + 1 empty round)",
         fmt_s(ours["seconds"]), fmt_int(figures["ours_rate"]),
         f"{fmt_int(ours['changes'])} changes captured, deletes included"],
        ["  capture_stage", fmt_s(stages["capture_stage"]), "", ""],
        ["    capture: peek + decode", fmt_s(parts["capture"]), "", ""],
        ["    staging write (Parquet)", fmt_s(parts["write"]), "", ""],
        ["  load_stage", fmt_s(stages["load_stage"]), "", ""],
        ["    staging read (Parquet)", fmt_s(stages["load_stage"] - parts["apply"]), "", ""],
        ["    sink apply: fold, CSV, COPY, MERGE, ledger, commit", fmt_s(parts["apply"]), "", ""],
        ["  commit_stage", fmt_s(stages["commit_stage"]), "", ""],
        ["    slot advance", fmt_s(parts["acknowledge"]), "", ""],
        ["  the last, empty round (finds the slot drained)", fmt_s(ours["last_round_seconds"]), "", ""],
    ]
    v = b2["verify"]
    verify_rows = [
        ["source table", fmt_int(v["source"][0]), v["source"][1], ""],
        ["ours (sink table)", fmt_int(v["ours"][0]), v["ours"][1], "equal" if v["ours_equal"] else "**DIFFERENT**"],
        ["reference copy, all rows", fmt_int(v["reference_count"]), "",
         f"{fmt_int(v['reference_extra_rows'])} rows that the source deleted"],
        ["reference copy without the deleted keys", fmt_int(v["reference_without_deleted"][0]),
         v["reference_without_deleted"][1], "equal" if v["reference_equal_but_deletes"] else "**DIFFERENT**"],
    ]
    return headers, rows, verify_rows, figures


def rss_table(b3: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = ["backlog", "changes", "batches", "seconds", "changes/s", "RSS after start-up", "peak RSS (ru_maxrss)",
               "peak RSS (VmHWM)"]
    rows = []
    for label in ("small", "large"):
        r = b3["runs"][label]
        rows.append([fmt_int(r["backlog"]), fmt_int(r["changes"]), str(r["batches"]), fmt_s(r["seconds"]),
                     rate(r["changes"], r["seconds"]), f"{r['baseline_rss_kb'] / 1024:.0f} MiB",
                     f"{r['peak_rss_kb'] / 1024:.0f} MiB", f"{r['vmhwm_kb'] / 1024:.0f} MiB"])
    return headers, rows


def profile_text(title: str, rows: list[dict[str, Any]]) -> str:
    return text_table(title, ["function", "ncalls", "tottime", "cumtime"],
                      [[r["function"], fmt_int(r["ncalls"]), f"{r['tottime']:.3f}", f"{r['cumtime']:.3f}"]
                       for r in rows])


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


# Targets whose figures come from other scripts (bench/end_to_end.py, bench/continuous_lag.py): a run of 1-3 keeps
# the row the previous report had for them.
MEASURED_ELSEWHERE = ("end to end (", "fused loop: ", "continuous mode at ", "peak RSS, burst backlog",
                      "burst backlog drains", "parallel initial snapshot")


def _sections(markdown: str) -> list[tuple[str, str]]:
    """``(heading, text)`` of each ``## `` section (the text before the first is under heading '')."""
    parts = re.split(r"(?m)^(?=## )", markdown)
    return [(part.splitlines()[0] if part.startswith("## ") else "", part) for part in parts]


def keep_other_reports(previous: str, report: str) -> str:
    """``report`` (benchmarks 1-3, and 4 spliced in) plus what ``previous`` held that this script does not write:
    the sections of the other benchmark scripts (5 and up, in their order, after this report's own), and the rows
    of "Against the targets" for the targets those scripts measure. A full run must never drop them."""
    ours = {heading for heading, _ in _sections(report)}
    kept = [text.rstrip("\n") for heading, text in _sections(previous) if heading and heading not in ours]
    lines = report.splitlines()
    for line in previous.splitlines():
        if not (line.startswith("| ") and line[2:].startswith(MEASURED_ELSEWHERE)):
            continue
        first = line.split(" | ")[0]
        at = [i for i, row in enumerate(lines) if row.split(" | ")[0] == first]
        if at:
            lines[at[0]] = line
        else:  # a row this script does not write at all: after the last row of the targets table
            end = lines.index("## Against the targets")
            while end + 1 < len(lines) and not lines[end + 1].startswith("| "):
                end += 1  # to the table's first row
            while end + 1 < len(lines) and lines[end + 1].startswith("| "):
                end += 1  # to its last
            lines.insert(end + 1, line)
    report = "\n".join(lines)
    return report.rstrip("\n") + ("\n\n" + "\n\n".join(kept) + "\n" if kept else "\n")


def render_markdown(results: dict[str, Any], scale: Scale, info: dict[str, Any], started: dt.datetime,
                    elapsed: float, argv: list[str]) -> str:
    b1, b2, b3 = results.get("capture"), results.get("watermark"), results.get("rss")
    settings = ", ".join(f"{k} {v}" for k, v in info["pg_settings"].items())
    lines = [
        "# Benchmarks",
        "",
        "Measured by `bench/run.py` against same-run references (DESIGN section 6). Regenerate with `make bench`",
        "(a full run rewrites this file; it takes several minutes) on an otherwise idle machine: every figure is",
        "from one run, and on two cores anything else running shows up in it.",
        "",
        "## Machine and run",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}, scale `{scale.name}`, whole run {elapsed / 60:.1f} min",
        f"- machine: {info['nproc']} cores ({info.get('cpu', '?')}), {info.get('ram_gib', '?')} GiB RAM, "
        f"load average at start {info['loadavg'][0]:.2f}"
        + (" (**busy**: other work ran at the same time, figures are noisy)" if info["loadavg"][0] > 0.5 else ""),
        f"- PostgreSQL {info['pg_version']} on the same machine ({settings})",
        f"- code measured: {info['code']}",
        f"- Python {info['python']}, psycopg {info['psycopg']}, pyarrow {info['pyarrow']}, Airflow {info['airflow']}",
        f"- command: `.venv/bin/python bench/run.py{' ' + ' '.join(argv) if argv else ''}` "
        "(`make bench` runs it with no options; `--quick` is a 10× smaller smoke run that writes nothing; "
        "`--dsn URL` picks another server; `--only 1,3` runs a subset; `--only big-tx` runs benchmark 4 alone, "
        "which is not in the default run)",
        "- source and sink are two databases of that one server (`cdc_bench_src`, `cdc_bench_sink`), created and "
        "dropped by the run; positions are kept in memory (the `PositionStore` interface, not Airflow's database); "
        "batches are staged as Parquet under a temporary `file://` directory",
        "",
    ]
    summary_rows = []
    if b1:
        h1, r1, f1 = capture_tables(b1)
        summary_rows.append(["capture: changes decoded and staged per second vs raw fetch", "≥ 0.5×",
                             f"{f1['ratio']:.2f}× ({fmt_int(f1['ours_rate'])} vs {fmt_int(f1['raw_rate'])}/s)",
                             verdict(f1["ratio"] >= 0.5)])
    if b2:
        h2, r2, v2, f2 = watermark_tables(b2)
        summary_rows.append(["capture → load → commit vs watermark load, source changes/s", "≥ 1.0×",
                             f"{f2['ratio']:.2f}× ({fmt_int(f2['ours_rate'])} vs {fmt_int(f2['ref_rate'])}/s)",
                             verdict(f2["ratio"] >= 1.0)])
    if b3:
        summary_rows.append([f"peak RSS, backlog {fmt_int(b3['runs']['large']['backlog'])} vs "
                             f"{fmt_int(b3['runs']['small']['backlog'])}", "≤ 1.10×",
                             f"{b3['ratio']:.2f}× ({b3['runs']['large']['peak_rss_kb'] / 1024:.0f} vs "
                             f"{b3['runs']['small']['peak_rss_kb'] / 1024:.0f} MiB)", verdict(b3["ratio"] <= 1.10)])
    summary_rows += [
        ["end to end (capture → 3 rules → 5 expectations → merge → commit)", "≥ 50,000 changes/s", "not measured",
         "transform and quality stages not built yet"],
        ["continuous mode at 1,000 changes/s: p95 commit-to-sink lag", "< 15 s staged, < 5 s fused", "not measured",
         ""],
    ]
    lines += ["## Against the targets", "",
              md_table(["target (DESIGN §6)", "goal", "this run", "status"], summary_rows, left=(0, 1, 2, 3)), ""]

    if b1:
        w = results["changes_workload"]
        extra = min(r["messages"] for r in b1["raw"]) - b1["changes"]
        lines += [
            "## 1. Capture vs raw fetch",
            "",
            f"Workload: table `{TABLE_CHANGES} (id bigint primary key, a int, b text, c numeric(12,2), d timestamptz)` "
            f"seeded with {fmt_int(scale.changes // 2)} rows before the slot was created, then "
            f"{fmt_int(scale.changes)} changes ({fmt_int(w['counts']['u'])} updates, "
            f"{fmt_int(w['counts']['c'])} inserts) in {w['transactions']} transactions of {fmt_int(scale.tx_rows)} "
            f"rows ({w['wal_bytes'] / 2**20:.0f} MiB of WAL), default replica identity.",
            "",
            f"- reference: `pg_logical_slot_peek_binary_changes(slot, NULL, NULL, 'proto_version', '1', "
            f"'publication_names', pub)` through a psycopg named cursor (binary, {FETCH_ROWS} rows per fetch), rows "
            "counted and dropped; run twice, the faster counts;",
            f"- ours: `PgSource.capture(position, {fmt_int(scale.batch_size)})` + `BatchStore.write(batch)` from the "
            "returned position until a capture comes back empty (that last capture counts). `peek` does not consume, "
            "so the slot is advanced between batches (`PgSource.acknowledge`, the commit stage's job), timed apart;",
            "- the ratio divides our changes/s by the reference's messages/s (messages include BEGIN, COMMIT and "
            f"RELATION: {fmt_int(extra)} more than changes, {100 * extra / b1['changes']:.2f} %).",
            "",
            md_table(h1, r1),
            "",
            f"Ratio: **{f1['ratio']:.2f}×** the raw fetch (target ≥ 0.5×); capture alone (decode-only) "
            f"{f1['decode_ratio']:.2f}×. {capture_split_text(b1, f1, scale)} One batch was profiled with cProfile "
            "before the timed runs (that also warms the page cache for all of them).",
            "",
            "Capture by capture (the peek and decode columns time `StreamCapture._peek_messages` and the stream "
            "module's `decode_columnar`, wrapped for the timed loop only; the rest of capture is the time between "
            "them; staging is `BatchStore.write`):",
            "",
            md_table(*capture_batch_table(b1)),
            "",
        ]
    if b2:
        w = b2["workload"]
        lines += [
            "## 2. Capture → load → commit vs watermark load",
            "",
            f"Workload: table `{TABLE_WM}` (the columns above plus `updated_at timestamptz`, indexed) with "
            f"{fmt_int(scale.wm_rows)} rows; then {fmt_int(w['counts']['u'])} updates, {fmt_int(w['counts']['d'])} "
            f"deletes and {fmt_int(w['counts']['c'])} inserts in {w['transactions']} interleaved transactions of "
            f"{fmt_int(scale.tx_rows)} rows ({w['wal_bytes'] / 2**20:.0f} MiB of WAL); updates and deletes pick rows "
            "spread over the whole table, each row at most once. Rates divide the "
            f"{fmt_int(b2['source_changes'])} source changes by the wall time.",
            "",
            f"- ours: `pipeline.capture_stage` → `load_stage` → `commit_stage` in a loop (staged mode, batch size "
            f"{fmt_int(scale.batch_size)}, `PgSink` hard deletes) until a capture is empty. Snapshot mode `initial`: "
            "the pipeline created the slot, then the initial snapshot went through the same loop "
            f"(**excluded from the timing**: {fmt_int(b2['snapshot']['rows'])} rows in "
            f"{fmt_s(b2['snapshot']['seconds'])} s, {rate(b2['snapshot']['rows'], b2['snapshot']['seconds'])} rows/s), "
            "and only then did the workload run;",
            "- reference: in the sink, a copy of the table loaded before the workload; `SELECT * FROM t WHERE "
            "updated_at > :watermark` through a server-side cursor, rows written with `COPY … FROM STDIN` "
            "(psycopg `write_row`) into a temporary staging table, one `INSERT … ON CONFLICT (id) DO UPDATE`, new "
            "watermark, commit: one transaction. It never sees a delete;",
            "- `CHECKPOINT` before each timed phase; `VACUUM ANALYZE` of the source table after the workload and of "
            "both sink tables after their initial load (autovacuum is off on this server). Ours ran first, the "
            "reference second.",
            "",
            md_table(h2, r2, left=(0, 3)),
            "",
            f"Ratio: **{f2['ratio']:.2f}×** the watermark load (target ≥ 1.0×).",
            "",
            "Verification after both loads (`count(*)` and `md5` of the per-row `md5(ROW(id, a, b, c, d, "
            "updated_at)::text)` in key order, TimeZone UTC):",
            "",
            md_table(["table", "rows", "md5", "vs source"], v2, left=(0, 2, 3)),
            "",
        ]
    if b3:
        lines += [
            "## 3. Peak RSS at two backlog sizes",
            "",
            f"Backlogs of {fmt_int(b3['runs']['small']['backlog'])} and {fmt_int(b3['runs']['large']['backlog'])} "
            f"changes of the benchmark-1 workload (slots created at the right points of it), each drained by "
            f"capture_stage → load_stage → commit_stage in a fresh process (`bench/rss_child.py`) into an empty sink "
            f"schema, batch size {fmt_int(b3['batch_size'])}: the smaller backlog is exactly one full batch, so both "
            "runs hold batches of the same size and the comparison shows whether memory grows with the backlog. "
            "Peak RSS is the child's `getrusage(RUSAGE_SELF).ru_maxrss` at the end, cross-checked with `VmHWM` "
            "from `/proc/self/status`; the start-up figure is taken after imports and connections (Python, pyarrow, "
            "psycopg, Airflow's ObjectStoragePath) before the first batch. The child is forked by an intermediate "
            "`sh`: Linux keeps `ru_maxrss` across `exec`, so a child started directly by the benchmark would report "
            "the benchmark's own peak.",
            "",
            md_table(*rss_table(b3)),
            "",
            f"Ratio of the peaks: **{b3['ratio']:.2f}×** (target ≤ 1.10×). Peak RSS after each batch of the larger "
            f"run (MiB): {', '.join(str(round(k / 1024)) for k in b3['runs']['large']['peak_after_batch_kb'])} "
            "(growth that levels off is the allocators warming up: pymalloc arenas, Arrow's memory pool; growth "
            "that keeps pace with the batches would be something accumulating).",
            "",
        ]
    lines += [
        "## Notes",
        "",
        "- One run, one machine: source database, sink database, the benchmark and (in benchmark 2) the sink's "
        "writes all share the same two cores, and the sink's WAL goes into the same WAL stream that the source's "
        "logical decoding reads through (the last, empty round of benchmark 2 pays for reading past it).",
        "- Benchmark 1's reference fetches the whole stream in one `peek`; ours peeks batch by batch, each bounded by "
        "`upto_nchanges`, as the capture stage does. The slot advances between batches are reported, not counted.",
        "- The watermark reference pulls rows as Python values through psycopg and writes them back with "
        "`write_row`, as a PythonOperator does; a `COPY (SELECT …) TO STDOUT` piped into `COPY FROM` would be "
        "faster and is not measured. It also cannot see deletes: its copy keeps every deleted row.",
        "- Benchmark 3's batch size is the smaller backlog, not benchmark 2's: with a batch larger than the small "
        "backlog the larger run would hold bigger batches and the comparison would measure the batch size.",
        "- The workloads are written within seconds, so their WAL holds no running-xacts record (PostgreSQL logs "
        "one every 15 s of activity and at checkpoints) and the slot's `restart_lsn` stays where the slot was "
        "created while the backlog drains: every `peek` and every `pg_replication_slot_advance` decodes from there "
        "again (the growing slot-advance times show it). A backlog that built up over minutes does not pay this; "
        "one written in a burst does, growing with the square of its size over the batch size.",
        *design_estimates(results),
        "- Not measured yet: the end-to-end target with 3 rules + 5 expectations (comes with the transform and "
        "quality stages), fused mode (`pipeline.run_fused`), continuous-mode lag, REPLICA IDENTITY FULL "
        "(before-images), unchanged TOAST values, wide rows, other connectors, and staging on object storage other "
        "than `file://`.",
        "",
    ]
    return "\n".join(lines)


def capture_split_text(b1: dict[str, Any], f1: dict[str, float], scale: Scale) -> str:
    """Where capture's time went, measured (not estimated from the reference's rate)."""
    full = [r for r in b1["per_batch"] if r["changes"]]
    peeks = ", ".join(fmt_s(r["peek"]) for r in full)
    per_batch = f1["decode_s"] / b1["changes"] * scale.batch_size if b1["changes"] else 0.0
    last = (f"; the last, empty capture's peek {fmt_s(f1['last_peek_s'])} s" if f1["last_peek_s"] else "")
    return (f"Of capture's {fmt_s(b1['seconds']['capture'])} s, {fmt_s(f1['peek_s'])} s went to the peeks "
            f"(batch by batch {peeks} s{last}; each peek decodes again from the slot's `restart_lsn`, see the "
            f"notes), {fmt_s(f1['decode_s'])} s to the columnar decode ({fmt_s(per_batch)} s per "
            f"{fmt_int(scale.batch_size)} changes) and {fmt_s(f1['rest_s'])} s to the rest of capture (batch "
            f"assembly); staging the batches as Parquet took {fmt_s(b1['seconds']['write'])} s more. The reference "
            f"fetched the whole stream in {fmt_s(min(r['seconds'] for r in b1['raw']))} s in one peek.")


def design_estimates(results: dict[str, Any]) -> list[str]:
    """A note comparing the references measured here with the figures DESIGN section 6 quotes for this machine."""
    parts = []
    if results.get("capture"):
        parts.append(f"the raw fetch at {fmt_int(capture_tables(results['capture'])[2]['raw_rate'])} msgs/s "
                     "(DESIGN: ≈ 400k)")
    if results.get("watermark"):
        parts.append(f"the watermark load at {fmt_int(watermark_tables(results['watermark'])[3]['ref_rate'])} "
                     "source changes/s (DESIGN: ≈ 220k)")
    if not parts:
        return []
    return ["- DESIGN section 6 quotes reference figures for this machine; this run measured " + " and ".join(parts)
            + ". The targets are ratios against the references measured in the same run, so those are the figures "
              "used."]


def print_results(results: dict[str, Any]) -> None:
    b1, b2, b3 = results.get("capture"), results.get("watermark"), results.get("rss")
    if b1:
        h, r, f = capture_tables(b1)
        print(text_table("\n== 1. capture vs raw fetch ==", h, [[c.replace("**", "") for c in row] for row in r]))
        print(f"ratio (changes decoded+staged/s ÷ raw msgs/s): {f['ratio']:.2f}x (target >= 0.5x); "
              f"decode-only {f['decode_ratio']:.2f}x")
        print(text_table("\ncapture by capture:", *capture_batch_table(b1)))
        print(profile_text(f"\ncProfile of one capture ({fmt_int(b1['profile']['changes'])} changes), "
                           "top 10 by tottime:", b1["profile"]["by_tottime"]))
        print(profile_text("\nsame capture, top by cumtime:", b1["profile"]["by_cumtime"]))
    if b2:
        h, r, v, f = watermark_tables(b2)
        print(text_table("\n== 2. capture -> load -> commit vs watermark load ==", h,
                         [[c.replace("**", "") for c in row] for row in r]))
        print(f"ratio (ours ÷ watermark, source changes/s): {f['ratio']:.2f}x (target >= 1.0x)")
        print(text_table("\nverification:", ["table", "rows", "md5", "vs source"],
                         [[c.replace("**", "") for c in row] for row in v]))
        if "load_profile" in b2:
            print(profile_text("\ncProfile of the first load_stage, top by cumtime:", b2["load_profile"]["by_cumtime"]))
            print(profile_text("\nsame, top 10 by tottime:", b2["load_profile"]["by_tottime"]))
            print(text_table("\nsame, SQL statements:", ["statement", "seconds"],
                             [[q, f"{sec:.3f}"] for q, sec in b2["load_profile"]["statements"]]))
    if b3:
        print(text_table("\n== 3. peak RSS ==", *rss_table(b3)))
        print(f"peak RSS ratio large/small: {b3['ratio']:.2f}x (target <= 1.10x); "
              f"peaks after each batch of the large run (MiB): "
              f"{[round(k / 1024) for k in b3['runs']['large']['peak_after_batch_kb']]}")


# --- main ----------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller workloads: a smoke run (under a minute)")
    parser.add_argument("--dsn", default=benchlib.DEFAULT_DSN,
                        help=f"an administrative connection to the server (default {benchlib.DEFAULT_DSN}); the "
                             "benchmark creates and drops its own databases there")
    parser.add_argument("--only", default="1,2,3",
                        help="which benchmarks, e.g. 1,3 (default 1,2,3); big-tx (or 4) is the one-large-transaction "
                             "benchmark, bench/big_transaction.py")
    parser.add_argument("--output", help="write the report here (default: BENCHMARKS.md after a full run of all three)")
    parser.add_argument("--json", help="also dump the raw results to this JSON file")
    parser.add_argument("--profile-load", action="store_true",
                        help="also profile the first stream batch's load_stage in benchmark 2 (slows that batch)")
    args = parser.parse_args()
    only = {4 if x.strip() in ("big-tx", "big_tx") else int(x) for x in args.only.split(",") if x.strip()}
    scale = QUICK if args.quick else FULL
    output = args.output or (str(REPO_ROOT / "BENCHMARKS.md")
                             if not args.quick and (only >= {1, 2, 3} or only == {4}) else None)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started_at, started, info = benchlib.begin_run(
        args.dsn, _terminate, lambda info: f"{info['nproc']} cores, PostgreSQL {info['pg_version']} at "
        f"{benchlib.server_host(args.dsn)}, scale {scale.name}, load average {info['loadavg'][0]:.2f}, "
        f"code: {info['code']}")

    staging_dir = tempfile.mkdtemp(prefix="cdc-bench-staging-")
    ctx: dict[str, Any] = {
        "admin_dsn": args.dsn,
        "src_dsn": benchlib.db_dsn(args.dsn, benchlib.SRC_DB),
        "sink_dsn": benchlib.db_dsn(args.dsn, benchlib.SINK_DB),
        "staging_dir": staging_dir,
        "staging_url": f"file://{staging_dir}",
        "closers": [],
    }
    results: dict[str, Any] = {}
    try:
        if only & {1, 2, 3}:
            benchlib.create_bench_databases(args.dsn)
        if only & {1, 3}:
            results["changes_workload"] = prepare_changes_workload(ctx, scale, 1 in only, 3 in only)
        if 1 in only:
            results["capture"] = bench_capture(ctx, scale)
            benchlib.drop_slot(args.dsn, SLOT_CAPTURE)
        if 3 in only:
            results["rss"] = bench_rss(ctx, scale)
        if 2 in only:
            results["watermark"] = bench_watermark(ctx, scale, args.profile_load)
        if 4 in only:
            import big_transaction

            big_started_at, big_started = dt.datetime.now(dt.timezone.utc), time.perf_counter()
            results["big_tx"] = big_transaction.run_benchmark(
                args.dsn, big_transaction.QUICK if args.quick else big_transaction.FULL)
            results["big_tx"]["_timing"] = (big_started_at, time.perf_counter() - big_started)
    finally:
        for close in ctx["closers"]:
            try:
                close()
            except Exception as exc:  # cleanup goes on
                log(f"cleanup: closing a connection failed: {exc}")
        try:
            dropped = benchlib.drop_bench_databases(args.dsn)
            log(f"cleanup: dropped {', '.join(dropped) or 'nothing'}")
        except Exception as exc:
            log(f"cleanup FAILED, drop by hand: slots in and databases {benchlib.BENCH_DATABASES}: {exc}")
        shutil.rmtree(staging_dir, ignore_errors=True)
        shutil.rmtree(os.environ["CDC_BENCH_AIRFLOW_HOME"], ignore_errors=True)
    elapsed = time.perf_counter() - started

    print_results(results)
    big_section = None
    if "big_tx" in results:
        import big_transaction

        big_transaction.print_summary(results["big_tx"])
        big_started_at, big_elapsed = results["big_tx"].pop("_timing")
        command = ".venv/bin/python bench/run.py --only big-tx" + (" --quick" if args.quick else "")
        big_section = big_transaction.render_section(results["big_tx"], info, big_started_at, big_elapsed, command)
    elif output:
        import big_transaction

        big_section = big_transaction.existing_section(Path(output))  # kept from the previous run
    if args.json:
        Path(args.json).write_text(json.dumps({"scale": scale.name, "machine": info, "results": results}, indent=1,
                                              default=str))
    if output:
        import big_transaction

        if only & {1, 2, 3}:
            report = render_markdown(results, scale, info, started_at, elapsed, sys.argv[1:])
        else:  # big-tx alone: only its section changes
            report = Path(output).read_text() if Path(output).exists() else "# Benchmarks\n"
        if big_section:
            report = big_transaction.splice_section(report, big_section)
        if only & {1, 2, 3} and Path(output).exists():
            report = keep_other_reports(Path(output).read_text(), report)
        Path(output).write_text(report)
        log(f"wrote {output}")
    log(f"done in {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
