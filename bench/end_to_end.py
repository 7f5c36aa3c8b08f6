"""End to end (DESIGN section 6): capture → 3 rules → 5 expectations → merge into PostgreSQL → commit, in fused mode,
against the same pipeline without stages on the same workload.

    .venv/bin/python bench/end_to_end.py [--rows N] [--batch-size N] [--only plain|stages] [--order ORDER]
                                         [--max-load L] [--profile] [--json PATH] [--dsn URL]

Workload: benchmark 2's (``bench/run.py``, built by ``benchlib``): table ``bench_wm`` (``id bigint`` key, ``a int``,
``b text`` (an md5), ``c numeric(12,2)``, ``d timestamptz``, ``updated_at timestamptz``) with ``--rows`` rows
(default 1,000,000), then 75 % of that many updates, 10 % deletes and 10 % inserts in interleaved transactions.

Each variant gets its own fresh source and sink databases (unique names, dropped at the end, also on failure):
seed, then ``airflow_provider_cdc.pipeline.run_fused`` with the source from ``connectors.registry.make_source``
(snapshot mode ``initial``: the source creates its slot and publication), a ``PgSink`` from
``connectors.registry.make_sink`` and positions in memory (``benchlib.MemoryPositions``), batch size
``--batch-size`` (default: bench/run.py's 200,000, scaled with ``--rows``):

1. the initial snapshot through the same pipeline and stages until a run captures nothing (not timed: it also
   imports GX and builds its context, once per process, as a long-running task would have done before);
2. the workload; ``VACUUM ANALYZE``; ``CHECKPOINT`` (each variant starts by waiting for a quiet machine,
   ``--max-load``: before seeding, not here, since WAL written by others while the backlog waited would be read by
   the drain);
3. timed: ``run_fused`` until a run captures nothing (that last, empty run counts). Source changes/s = the workload's
   changes ÷ that wall time.

Variants: ``plain`` (no stages) and ``stages``:

- transform (``TransformStage``): ``mask_b`` map ``{{ mask(b) }}`` onto ``b`` itself; ``c_doubled`` map
  ``{{ c * 2 }}`` → ``c_doubled``; ``keep_a`` filter ``{{ a < 900 }}`` (about 90 % kept; the others become deletes);
- validate (``ValidateStage``, one suite, policy quarantine): pattern ``b`` ~ ``^\\*{28}[0-9a-f]{4}$``; range
  ``c_doubled`` in [0, 1990]; not_null ``d``; in_set ``a`` in 0…894; length ``b`` 32…32. About 0.5 % of the judged
  rows fail the range and 0.55 % the in_set (about 1 % together); they are quarantined. (With ``--rows`` below
  100,000, ``c`` stays under 995 and the range refuses nothing.)

The time inside ``source.capture``, each stage's ``apply``, ``sink.apply`` and ``source.acknowledge`` is measured by
wrapping them here (not in the product). Afterwards the sinks are checked against the source: ``plain`` equal
(count and md5), ``stages`` equal to the source passed through the rules wherever the source row passes every rule,
and the quarantine and the extra rows (updates quarantined, whose previous version stays) as the data predicts.

``--profile`` runs the timed drain under cProfile (use a smaller ``--rows``) and prints where the time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import benchlib  # noqa: E402  (sets a private AIRFLOW_HOME before Airflow is imported)
import run as bench_run  # noqa: E402  (bench/run.py: its scale and profile helper)
from benchlib import log  # noqa: E402
from psycopg import sql  # noqa: E402

from airflow_provider_cdc import pipeline  # noqa: E402
from airflow_provider_cdc.config.models import ConnectorConfig, RuleConfig, SourceConfig, SuiteConfig  # noqa: E402
from airflow_provider_cdc.connectors import registry  # noqa: E402
from airflow_provider_cdc.quality.stage import ValidateStage  # noqa: E402
from airflow_provider_cdc.transform.stage import TransformStage  # noqa: E402

TABLE = bench_run.TABLE_WM
FULL_ROWS = bench_run.FULL.wm_rows
FULL_BATCH = bench_run.FULL.batch_size
MASK_KEEP = 4  # mask()'s default keep_last
FILTER_BELOW = 900  # keep_a: a < 900
IN_SET_BELOW = 895  # in_set: a in 0..894
RANGE_MAX = 1990  # range: c_doubled <= 1990, i.e. c <= 995

RULES = [
    RuleConfig(rule_id="mask_b", rule_type="map", tables=[TABLE], source_fields=["b"], target_field="b",
               expression="{{ mask(b) }}"),
    RuleConfig(rule_id="c_doubled", rule_type="map", tables=[TABLE], source_fields=["c"], target_field="c_doubled",
               expression="{{ c * 2 }}"),
    RuleConfig(rule_id="keep_a", rule_type="filter", tables=[TABLE], source_fields=["a"],
               expression=f"{{{{ a < {FILTER_BELOW} }}}}"),
]
SUITE = SuiteConfig(id="bench_checks", tables=[TABLE], rules=[
    {"id": "b_pattern", "type": "pattern", "column": "b", "pattern": r"^\*{28}[0-9a-f]{4}$"},
    {"id": "c_doubled_range", "type": "range", "column": "c_doubled", "min": 0, "max": RANGE_MAX},
    {"id": "d_not_null", "type": "not_null", "column": "d"},
    {"id": "a_in_set", "type": "in_set", "column": "a", "values": list(range(IN_SET_BELOW))},
    {"id": "b_length", "type": "length", "column": "b", "min": 32, "max": 32},
])


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")


# --- timing wrappers (bench only) -----------------------------------------------------------------------------------


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def clear(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def wrap(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1

        return timed


class TimedTransformStage(TransformStage):
    timers: Timers

    def apply(self, batch):  # type: ignore[no-untyped-def]
        return self.timers.wrap("transform", super().apply)(batch)


class TimedValidateStage(ValidateStage):
    timers: Timers

    def apply(self, batch):  # type: ignore[no-untyped-def]
        return self.timers.wrap("validate", super().apply)(batch)


def make_stages(timers: Timers) -> list[Any]:
    transform = TimedTransformStage(RULES)
    validate = TimedValidateStage([SUITE])
    transform.timers = validate.timers = timers
    return [transform, validate]


# --- the machine ------------------------------------------------------------------------------------------------------


def wait_for_quiet(max_load: float, what: str, poll_s: float = 30.0, limit_s: float = 1200.0) -> dict[str, Any]:
    """Poll ``uptime``'s 1-minute load average every ``poll_s`` until it is below ``max_load`` (at most ``limit_s``)."""
    started = time.perf_counter()
    load = os.getloadavg()
    if max_load > 0:
        while load[0] >= max_load and time.perf_counter() - started < limit_s:
            log(f"{what}: load average {load[0]:.2f} >= {max_load}: waiting")
            time.sleep(poll_s)
            load = os.getloadavg()
    waited = time.perf_counter() - started
    quiet = max_load <= 0 or load[0] < max_load
    if not quiet:
        log(f"{what}: still busy after {waited / 60:.0f} min (load {load[0]:.2f}); measuring anyway")
    return {"loadavg": list(load), "waited_s": waited, "quiet": quiet}


def commit_of_head() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


# --- one variant ------------------------------------------------------------------------------------------------------


def drain(source: Any, sink: Any, positions: Any, stages: list[Any], batch_size: int,
          label: str, ahead: bool = True) -> dict[str, Any]:
    """``run_fused`` until a run captures nothing; that last run counts. With ``ahead``, as a fused loop
    (``loop_seconds``) runs: each batch is captured while the one before it loads (``pipeline.CaptureAhead``)."""
    totals: dict[str, Any] = {"captured": 0, "runs": 0, "batches": [], "ops_out": defaultdict(int)}
    capture_ahead = pipeline.CaptureAhead(source, batch_size) if ahead else None
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        summary = pipeline.run_fused(source, sink, positions, max_changes=batch_size, stages=stages,
                                     ahead=capture_ahead)
        seconds = time.perf_counter() - t0
        totals["runs"] += 1
        if summary["captured"] == 0:
            if capture_ahead is not None:
                capture_ahead.settle()  # the last acknowledgement, as a fused loop's end does it
            totals["last_run_s"] = time.perf_counter() - t0
            break
        totals["captured"] += summary["captured"]
        for op, n in summary["ops"].items():
            totals["ops_out"][op] += n
        validate = summary["stage_versions"].get("validate", {}).get("metrics", {})
        failed = sum(m.get("failed", 0) for m in validate.values())
        totals["batches"].append({"captured": summary["captured"], "out": summary["change_count"],
                                  "seconds": seconds, "validate_failed": failed})
        log(f"{label}: run {totals['runs']}: {summary['captured']:,} captured, {summary['change_count']:,} after "
            f"the stages ({summary['ops']}), {seconds:.2f}s")
    totals["seconds"] = time.perf_counter() - started
    totals["ops_out"] = dict(totals["ops_out"])
    return totals


def run_variant(variant: str, args: argparse.Namespace, plan: dict[str, Any], tag: str) -> dict[str, Any]:
    """Fresh source and sink databases, seed, snapshot through the pipeline, workload, timed drain, checks, drop."""
    src_db, sink_db = f"cdc_e2e_{tag}_{variant}_src", f"cdc_e2e_{tag}_{variant}_sink"
    src_dsn, sink_dsn = benchlib.db_dsn(args.dsn, src_db), benchlib.db_dsn(args.dsn, sink_db)
    slot = f"cdc_e2e_{tag}_{variant}"
    result: dict[str, Any] = {"variant": variant, "databases": [src_db, sink_db]}
    closers: list[Callable[[], None]] = []
    # Waiting here, not after the workload: a slot decodes every database's WAL, so WAL that other work writes while
    # the backlog waits would be read (and paid for) by the drain.
    result["before"] = wait_for_quiet(args.max_load, f"{variant}: before seeding")
    try:
        with benchlib.admin_connect(args.dsn) as conn:
            for name in (src_db, sink_db):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with benchlib.admin_connect(src_dsn) as src:
            log(f"{variant}: seeding {TABLE} with {plan['rows']:,} rows")
            benchlib.seed_wm_table(src, TABLE, plan["rows"])

        config = SourceConfig(
            id=f"e2e_{variant}", type="postgresql", connection_string=src_dsn, tables=[f"public.{TABLE}"],
            snapshot="initial", batch_size=plan["batch_size"], sink="e2e_sink", mode="fused",
            options={"slot_name": slot, "publication_name": f"{slot}_pub"},
        )
        connector = ConnectorConfig(id="e2e_sink", type="postgresql", connection_string=sink_dsn)
        source = registry.make_source(config, src_dsn)
        closers.append(source.close)
        sink = registry.make_sink(connector, sink_dsn, config)
        closers.append(sink.close)
        result["classes"] = [f"{type(source).__module__}.{type(source).__name__}",
                             f"{type(sink).__module__}.{type(sink).__name__}"]
        timers = Timers()
        source.capture = timers.wrap("capture", source.capture)  # type: ignore[method-assign]
        source.acknowledge = timers.wrap("acknowledge", source.acknowledge)  # type: ignore[method-assign]
        sink.apply = timers.wrap("sink_apply", sink.apply)  # type: ignore[method-assign]
        stages = make_stages(timers) if variant == "stages" else []
        positions = benchlib.MemoryPositions()

        log(f"{variant}: initial snapshot through the pipeline (not timed)")
        snapshot = drain(source, sink, positions, stages, plan["batch_size"], f"{variant} snapshot")
        result["snapshot"] = {"rows": snapshot["captured"], "seconds": snapshot["seconds"],
                              "parts": dict(timers.seconds), "first_batch_s": snapshot["batches"][0]["seconds"]}
        with benchlib.admin_connect(sink_dsn) as dst:
            dst.execute(f"VACUUM (ANALYZE) {TABLE}")

        schedule = benchlib.wm_schedule(plan["rows"], plan["updates"], plan["deletes"], plan["inserts"],
                                        plan["tx_rows"])
        with benchlib.admin_connect(src_dsn) as src:
            start_lsn = benchlib.wal_lsn(src)
            started = time.perf_counter()
            counts = benchlib.run_wm_workload(src, TABLE, plan["rows"], schedule)
            end_lsn = benchlib.wal_lsn(src)
            result["workload"] = {"counts": counts, "transactions": len(schedule),
                                  "seconds": time.perf_counter() - started,
                                  "wal_bytes": benchlib.wal_bytes(src, start_lsn, end_lsn)}
            src.execute(f"VACUUM (ANALYZE) {TABLE}")
        result["source_changes"] = sum(counts.values())
        log(f"{variant}: workload {counts} in {result['workload']['seconds']:.1f}s, "
            f"{result['workload']['wal_bytes'] / 2**20:.0f} MiB of WAL")

        benchlib.checkpoint(args.dsn)
        with benchlib.admin_connect(src_dsn) as src:
            drain_lsn = benchlib.wal_lsn(src)
            # WAL after the backlog that the drain reads past: VACUUM, CHECKPOINT, and anything else on the server
            result["wal_after_workload"] = benchlib.wal_bytes(src, end_lsn, drain_lsn)
        result["loadavg_drain"] = list(os.getloadavg())
        log(f"{variant}: timed drain (load average {result['loadavg_drain'][0]:.2f}; "
            f"{result['wal_after_workload'] / 2**20:.1f} MiB of WAL since the workload)")
        timers.clear()
        profiler = cProfile.Profile() if args.profile else None
        statements: list[tuple[str, float]] = []
        with contextlib.ExitStack() as stack:
            if profiler is not None:
                stack.enter_context(bench_run.statement_timer(statements))
                profiler.enable()
                stack.callback(profiler.disable)
            ours = drain(source, sink, positions, stages, plan["batch_size"], variant, ahead=not args.no_ahead)
        result["loadavg_after"] = list(os.getloadavg())
        with benchlib.admin_connect(src_dsn) as src:
            # the sink's own writes (same server), and anything else, written while draining
            result["wal_during_drain"] = benchlib.wal_bytes(src, drain_lsn, benchlib.wal_lsn(src))
        ours["parts"] = dict(timers.seconds)
        ours["calls"] = dict(timers.calls)
        result["ours"] = ours
        result["capture_ahead"] = not args.no_ahead
        result["rate"] = result["source_changes"] / ours["seconds"]
        if profiler is not None:
            by_statement: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
            for text, seconds in statements:
                by_statement[text][0] += 1
                by_statement[text][1] += seconds
            result["profile"] = {"by_tottime": bench_run.top_functions(profiler, 25, "tottime"),
                                 "by_cumtime": bench_run.top_functions(profiler, 40, "cumtime"),
                                 "statements": sorted(([text, n, sec] for text, (n, sec) in by_statement.items()),
                                                      key=lambda row: -row[2])[:15]}
        log(f"{variant}: {result['source_changes']:,} source changes in {ours['seconds']:.2f}s: "
            f"{result['rate']:,.0f}/s")
        for close in closers:
            close()
        closers.clear()
        result["verify"] = verify(variant, src_dsn, sink_dsn, plan)
        log(f"{variant}: check: {result['verify']['summary']}")
    finally:
        for close in closers:
            try:
                close()
            except Exception as exc:  # cleanup goes on
                log(f"cleanup: closing a connection failed: {exc}")
        try:
            dropped = benchlib.drop_bench_databases(args.dsn, (src_db, sink_db))
            log(f"cleanup: dropped {', '.join(dropped) or 'nothing'}")
        except Exception as exc:
            log(f"cleanup FAILED, drop by hand: databases {src_db}, {sink_db} and their slots: {exc}")
    return result


# --- checks -----------------------------------------------------------------------------------------------------------


def verify(variant: str, src_dsn: str, sink_dsn: str, plan: dict[str, Any]) -> dict[str, Any]:
    if variant == "plain":
        with benchlib.admin_connect(src_dsn) as src, benchlib.admin_connect(sink_dsn) as dst:
            source = benchlib.table_checksum(src, TABLE, benchlib.WM_COLUMNS)
            sink = benchlib.table_checksum(dst, TABLE, benchlib.WM_COLUMNS)
        ok = source == sink
        return {"ok": ok, "source": source, "sink": sink,
                "summary": f"{'equal' if ok else 'DIFFERENT'}: source {source}, sink {sink}"}
    return verify_stages(src_dsn, sink_dsn, plan)


def verify_stages(src_dsn: str, sink_dsn: str, plan: dict[str, Any]) -> dict[str, Any]:
    """The sink after the rules: every source row that passes the filter and the checks is there, transformed
    (``b`` masked, ``c_doubled`` = 2c, the rest equal); rows the filter drops and deleted rows are not; quarantined
    changes are in ``_cdc_quarantine``; what is left over is the previous version of a quarantined update."""
    passes = (f"a < {IN_SET_BELOW} AND c * 2 BETWEEN 0 AND {RANGE_MAX} AND d IS NOT NULL "
              f"AND b ~ '^[0-9a-f]{{32}}$'")
    stars = "*" * (32 - MASK_KEEP)
    rows, updates = plan["rows"], plan["updates"]
    step = benchlib.permutation_step(rows)
    # the stream's after-images: updated and inserted rows (each row is changed at most once)
    changed = (f"WITH changed AS (SELECT (g::bigint * {step}) % {rows} + 1 AS id FROM generate_series(0, "
               f"{updates - 1}) g UNION ALL SELECT id FROM {TABLE} WHERE id > {rows}) ")
    with benchlib.admin_connect(src_dsn) as src:
        src.execute("SET TimeZone = 'UTC'")
        expected = dict(src.execute(
            f"SELECT id, md5(ROW(id, a, '{stars}' || right(b, {MASK_KEEP}), c, c * 2, d, updated_at)::text) "
            f"FROM {TABLE} WHERE {passes}").fetchall())
        stream_quarantined, stream_filtered = src.execute(
            changed + f"SELECT count(*) FILTER (WHERE a < {FILTER_BELOW} AND NOT ({passes})), "
            f"count(*) FILTER (WHERE a >= {FILTER_BELOW}) FROM {TABLE} JOIN changed USING (id)").fetchone()
    with benchlib.admin_connect(sink_dsn) as dst:
        dst.execute("SET TimeZone = 'UTC'")
        sink = {row[0]: row[1:] for row in dst.execute(
            f"SELECT id, md5(ROW(id, a, b, c, c_doubled, d, updated_at)::text), a < {IN_SET_BELOW} AND c_doubled "
            f"<= {RANGE_MAX} FROM {TABLE}").fetchall()}
        quarantine = dict(dst.execute(
            "SELECT rule_id, count(*) FROM _cdc_quarantine GROUP BY rule_id ORDER BY rule_id").fetchall())
    missing = sum(1 for key in expected if key not in sink)
    different = sum(1 for key, digest in expected.items() if key in sink and sink[key][0] != digest)
    extra = [key for key in sink if key not in expected]
    bad_extra = sum(1 for key in extra if not sink[key][1])
    quarantined_total = sum(quarantine.values())
    snapshot_quarantined = snapshot_failures(rows)
    ok = (missing == 0 and different == 0 and bad_extra == 0 and len(extra) <= stream_quarantined
          and quarantined_total == snapshot_quarantined + stream_quarantined)
    summary = (f"{'as expected' if ok else 'NOT as expected'}: {len(expected):,} source rows pass every rule: "
               f"{missing} missing from the sink, {different} different; {len(extra):,} more sink rows (older "
               f"versions of quarantined updates; {bad_extra} of them failing a rule); quarantine "
               f"{quarantined_total:,} = snapshot {snapshot_quarantined:,} + stream {stream_quarantined:,}: "
               f"{quarantine}; filtered to deletes in the stream: {stream_filtered:,}")
    return {"ok": ok, "expected_rows": len(expected), "missing": missing, "different": different,
            "extra_rows": len(extra), "bad_extra": bad_extra, "quarantine": quarantine,
            "snapshot_quarantined": snapshot_quarantined, "stream_quarantined": stream_quarantined,
            "stream_filtered": stream_filtered, "summary": summary}


def snapshot_failures(rows: int) -> int:
    """Snapshot rows (g = 1..rows: a = g % 1000, c = (g % 100000) / 100) kept by the filter but failing a check."""
    return sum(1 for g in range(1, rows + 1)
               if g % 1000 < FILTER_BELOW and (g % 1000 >= IN_SET_BELOW or (g % 100000) / 100 * 2 > RANGE_MAX))


# --- report -----------------------------------------------------------------------------------------------------------


def plan_for(rows: int, batch_size: int | None) -> dict[str, Any]:
    scaled = max(1_000, round(FULL_BATCH * rows / FULL_ROWS))
    return {"rows": rows, "updates": rows * 3 // 4, "deletes": rows // 10, "inserts": rows // 10,
            "tx_rows": max(1_000, min(bench_run.FULL.tx_rows, rows // 100)),
            "batch_size": batch_size or scaled}


def print_variant(r: dict[str, Any]) -> None:
    ours = r["ours"]
    parts = ours["parts"]
    total = ours["seconds"]
    print(f"\n== {r['variant']}: {r['source_changes']:,} source changes ({r['workload']['counts']}) in "
          f"{total:.2f} s = {r['rate']:,.0f} changes/s; {len(ours['batches'])} batches + 1 empty run "
          f"({ours['last_run_s']:.2f} s); load average before seeding {r['before']['loadavg'][0]:.2f} "
          f"(waited {r['before']['waited_s']:.0f} s), at the drain's start {r['loadavg_drain'][0]:.2f} (our own "
          f"seeding, snapshot and workload included), after it {r['loadavg_after'][0]:.2f}; WAL since the workload "
          f"{r['wal_after_workload'] / 2**20:.1f} MiB, during the drain {r['wal_during_drain'] / 2**20:.0f} MiB")
    if r.get("capture_ahead"):
        print("  each batch captured while the one before it loaded (a fused loop's CaptureAhead): capture's time "
              "below overlaps the others', so the parts add up to more than the wall time")
    named = 0.0
    for key in ("capture", "transform", "validate", "sink_apply", "acknowledge"):
        if key in parts:
            named += parts[key]
            print(f"  {key:<12} {parts[key]:7.2f} s  ({parts[key] / total:5.1%})")
    print(f"  {'rest':<12} {total - named:7.2f} s  (start position, ledger checks, commit bookkeeping, "
          "release_memory; negative: overlap)")
    print(f"  after the stages: {ours['ops_out']}; per batch: "
          + ", ".join(f"{b['captured']:,}→{b['out']:,} in {b['seconds']:.2f}s" for b in ours["batches"]))
    snap = r["snapshot"]
    print(f"  snapshot (not timed): {snap['rows']:,} rows in {snap['seconds']:.2f} s, first batch "
          f"{snap['first_batch_s']:.2f} s; parts {({k: round(v, 2) for k, v in snap['parts'].items()})}")
    print(f"  check: {r['verify']['summary']}")
    if "profile" in r:
        print(bench_run.profile_text("\n  cProfile of the timed drain, top by tottime:", r["profile"]["by_tottime"]))
        print(bench_run.profile_text("\n  same, top by cumtime:", r["profile"]["by_cumtime"]))
        print(bench_run.text_table("\n  same, SQL statements (psycopg execute and copy), by total time:",
                                   ["statement", "calls", "seconds"],
                                   [[text, str(n), f"{sec:.3f}"] for text, n, sec in r["profile"]["statements"]]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=FULL_ROWS,
                        help=f"table size (default {FULL_ROWS:,}, as bench/run.py); the workload scales with it")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"max changes per run (default {FULL_BATCH:,} scaled by rows/{FULL_ROWS:,})")
    parser.add_argument("--only", choices=("plain", "stages"), help="run one variant")
    parser.add_argument("--order", default="plain,stages", help="order of the variants (default plain,stages)")
    parser.add_argument("--max-load", type=float, default=None,
                        help="wait (every 30 s, up to 20 min) for the 1-minute load average to fall below this "
                             "before each variant (default 0.8 at full size, else 0: no wait)")
    parser.add_argument("--profile", action="store_true", help="run the timed drains under cProfile")
    parser.add_argument("--no-ahead", action="store_true",
                        help="capture each batch after the one before it committed (one batch per fused run), "
                             "not while it loads (a fused loop, the default)")
    parser.add_argument("--dsn", default=benchlib.DEFAULT_DSN, help="an administrative connection to the server")
    parser.add_argument("--json", help="also dump the results to this JSON file")
    args = parser.parse_args()
    if args.max_load is None:
        args.max_load = 0.8 if args.rows >= FULL_ROWS else 0.0
    variants = [args.only] if args.only else [v.strip() for v in args.order.split(",") if v.strip()]
    if not set(variants) <= {"plain", "stages"}:
        parser.error("--order takes plain and stages")
    plan = plan_for(args.rows, args.batch_size)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("airflow_provider_cdc").setLevel(logging.ERROR)  # quarantine warnings per batch
    signal.signal(signal.SIGTERM, _terminate)
    start = wait_for_quiet(0, "start")  # the load at the start, recorded; each variant waits for a quiet machine
    started_at = dt.datetime.now(dt.timezone.utc)
    head = commit_of_head()
    info = benchlib.machine_info(args.dsn)
    log(f"{info['nproc']} cores, PostgreSQL {info['pg_version']}, load average {info['loadavg'][0]:.2f}, "
        f"code {info['code']}, plan {plan}")
    tag = f"{os.getpid()}"
    results: list[dict[str, Any]] = []
    try:
        for variant in variants:
            results.append(run_variant(variant, args, plan, tag))
    finally:
        shutil.rmtree(os.environ["CDC_BENCH_AIRFLOW_HOME"], ignore_errors=True)

    print(f"\n{started_at:%Y-%m-%d %H:%M} UTC, HEAD {head} at the start ({info['code']}), {info['nproc']} cores "
          f"({info.get('cpu', '?')}), load average at start {start['loadavg'][0]:.2f}; "
          f"PostgreSQL {info['pg_version']}; plan {plan}")
    for r in results:
        print_variant(r)
    by = {r["variant"]: r for r in results}
    if {"plain", "stages"} <= by.keys():
        plain, staged = by["plain"], by["stages"]
        print(f"\nstages cost: {staged['ours']['seconds'] - plain['ours']['seconds']:+.2f} s "
              f"({staged['rate'] / plain['rate']:.2f}x the rate without stages); target >= 50,000 changes/s: "
              f"{'met' if staged['rate'] >= 50_000 else 'NOT met'} ({staged['rate']:,.0f}/s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"started_at": started_at.isoformat(), "commit": head,
                                               "machine": info, "start": start, "plan": plan, "results": results},
                                              indent=1, default=str))
    return 0 if all(r["verify"]["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
