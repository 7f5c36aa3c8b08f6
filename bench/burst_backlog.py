"""Does a burst backlog drain in time linear in its size? (issue 12, item 2)

``pg_logical_slot_peek_binary_changes`` and ``pg_replication_slot_advance`` both decode from the slot's
``restart_lsn``, which moves only to points where the server logged the running transactions (every 15 s of
activity, and at checkpoints). If it stayed behind, every batch would decode more of the backlog again, and the time
per batch would grow through the drain: quadratic in the backlog. This benchmark makes bursts of two sizes (default
1,000,000 and 5,000,000 changes, 10,000 a transaction, on benchmark 1's table) while the slot waits, then drains each
with the staged pipeline (capture_stage -> load_stage -> commit_stage, batch size 200,000) and reports:

- seconds per million changes for each size (linear: the same for both);
- each batch's seconds, the first and last fifth of the drain compared (linear: flat);
- how far the slot's ``restart_lsn`` stayed behind the position each batch started from (the WAL re-decoded).

Run: ``.venv/bin/python bench/burst_backlog.py [--sizes 1000000,5000000] [--batch-size 200000]``; a smoke run:
``--sizes 100000,300000 --batch-size 50000``. It prints a Markdown section for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib

SRC_DB, SINK_DB = "cdc_bench_burst_src", "cdc_bench_burst_sink"
TABLE, SLOT, PUB = "bench_burst", "cdc_bench_burst", "cdc_bench_burst_pub"
TX_ROWS = 10_000


def slot_lag(conn: Any, position_lsn: str) -> int:
    """Bytes of WAL between the slot's restart_lsn and ``position_lsn`` (what a peek decodes before new data)."""
    row = conn.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, restart_lsn) FROM pg_replication_slots "
                       "WHERE slot_name = %s", (position_lsn, SLOT)).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def one_size(admin_dsn: str, size: int, batch_size: int, staging: str, rss: bool = False) -> dict[str, Any]:
    benchlib.drop_bench_databases(admin_dsn, (SRC_DB, SINK_DB))
    with benchlib.admin_connect(admin_dsn) as conn:
        for name in (SRC_DB, SINK_DB):
            conn.execute(f"CREATE DATABASE {name}")
    src, sink_dsn = benchlib.db_dsn(admin_dsn, SRC_DB), benchlib.db_dsn(admin_dsn, SINK_DB)
    seeded = size // 2
    with benchlib.admin_connect(src) as conn:
        benchlib.seed_changes_table(conn, TABLE, seeded)
        conn.execute(f"CREATE PUBLICATION {PUB} FOR TABLE {TABLE}")
        benchlib.create_slot(conn, SLOT)
        start = benchlib.wal_lsn(conn)
        benchlib.log(f"burst of {size:,} changes ({TX_ROWS:,} a transaction) while the slot waits")
        t0 = time.perf_counter()
        counts = benchlib.changes_workload(conn, TABLE, seeded=seeded, changes=size, tx_rows=TX_ROWS)
        burst_seconds = time.perf_counter() - t0
        wal = benchlib.wal_bytes(conn, start, benchlib.wal_lsn(conn))
    benchlib.checkpoint(admin_dsn)
    if rss:
        return {"size": size, "counts": counts, "burst_seconds": burst_seconds, "wal_bytes": wal,
                **drain_in_fresh_process(admin_dsn, src, sink_dsn, size, batch_size, staging)}
    source = benchlib.TimedPgSource(src, source_id="bench_burst", tables=[("public", TABLE)], slot_name=SLOT,
                                    publication_name=PUB, snapshot="never")
    sink = benchlib.TimedPgSink(sink_dsn, sink_id="bench_burst_sink", target_schema="public",
                                ledger_schema="public")
    store = benchlib.TimedBatchStore(root=f"file://{staging}/burst_{size}")
    positions = benchlib.MemoryPositions()
    batches: list[dict[str, Any]] = []
    watcher = benchlib.admin_connect(src)

    def on_batch(info: dict[str, Any]) -> None:
        position = positions.get("bench_burst") or {}
        batches.append({"changes": info["change_count"], "seconds": info["seconds"], "capture": info["capture_s"],
                        "load": info["load_s"], "commit": info["commit_s"],
                        "restart_behind": slot_lag(watcher, position["lsn"]) if position.get("lsn") else 0})

    try:
        benchlib.log(f"draining {size:,} changes, batch size {batch_size:,}")
        totals = benchlib.drain(source, sink, positions, store, batch_size=batch_size, on_batch=on_batch)
    finally:
        watcher.close()
        source.close()
        sink.close()
    benchlib.drop_slot(admin_dsn, SLOT)
    benchlib.drop_bench_databases(admin_dsn, (SRC_DB, SINK_DB))
    assert totals["changes"] == size, f"drained {totals['changes']:,} of {size:,} changes"
    return {"size": size, "counts": counts, "burst_seconds": burst_seconds, "wal_bytes": wal, "totals": totals,
            "batches": batches, "stage_seconds": totals["stage_seconds"], "source_seconds": dict(source.seconds)}


def drain_in_fresh_process(admin_dsn: str, src: str, sink_dsn: str, size: int, batch_size: int,
                           staging: str) -> dict[str, Any]:
    """Benchmark 3's child (bench/rss_child.py) drains the slot in a process of its own: its peak RSS is the drain's
    alone."""
    command = [sys.executable, str(Path(__file__).resolve().parent / "rss_child.py"), "--src-dsn", src,
               "--sink-dsn", sink_dsn, "--table", TABLE, "--slot", SLOT, "--publication", PUB, "--target-schema",
               "public", "--staging-root", f"file://{staging}/rss_{size}", "--batch-size", str(batch_size),
               "--details"]
    benchlib.log(f"draining {size:,} changes in a fresh process, batch size {batch_size:,}")
    stdout, stderr, returncode = benchlib.run_fresh(command)
    benchlib.drop_slot(admin_dsn, SLOT)
    benchlib.drop_bench_databases(admin_dsn, (SRC_DB, SINK_DB))
    if returncode != 0:
        raise RuntimeError(f"the drain of {size:,} changes failed ({returncode}):\n{stderr[-4000:]}")
    child = json.loads(stdout.strip().splitlines()[-1])
    assert child["changes"] == size, f"drained {child['changes']:,} of {size:,} changes"
    batches = [{"changes": b["changes"], "seconds": b["seconds"], "restart_behind": 0}
               for b in child["batch_details"]]
    return {"totals": {"seconds": child["seconds"], "batches": child["batches"], "changes": child["changes"]},
            "batches": batches, "stage_seconds": child["stage_seconds"], "peak_rss_kb": child["peak_rss_kb"],
            "baseline_rss_kb": child["baseline_rss_kb"], "peak_after_batch_kb": child["peak_after_batch_kb"]}


def fifth(values: list[float], last: bool) -> float:
    n = max(1, len(values) // 5)
    return statistics.mean(values[-n:] if last else values[:n])


def render(results: list[dict[str, Any]], info: dict[str, Any], batch_size: int, command: str) -> str:
    lines = ["## 13. A burst backlog drains in linear time (`bench/burst_backlog.py`, issue 12 item 2)", "",
             f"- command: `{command}`; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: "
             f"{info['nproc']} cores, load average at start {info['loadavg'][0]:.2f}; PostgreSQL "
             f"{info['pg_version']}; code {info['code']}",
             f"- workload: benchmark 1's table, half the burst's size seeded, then the burst: alternately UPDATE and "
             f"INSERT of {TX_ROWS:,} rows a transaction, while the slot waits; `CHECKPOINT`; then capture_stage -> "
             f"load_stage -> commit_stage (staged mode, batch size {batch_size:,}) until a capture is empty", "",
             "| burst | WAL | batches | drain seconds | s per 1M changes | batch s, first fifth | batch s, last fifth |"
             " restart_lsn behind the position, median / max | capture | load | commit (slot advance) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        secs = [b["seconds"] for b in r["batches"]]
        behind = [b["restart_behind"] for b in r["batches"]] or [0]
        stage = r["stage_seconds"]
        lines.append(
            f"| {r['size']:,} | {r['wal_bytes'] / 2**20:,.0f} MiB | {r['totals']['batches']} | "
            f"{r['totals']['seconds']:.1f} | {r['totals']['seconds'] / r['size'] * 1e6:.1f} | "
            f"{fifth(secs, False):.2f} | {fifth(secs, True):.2f} | "
            f"{statistics.median(behind) / 2**20:,.0f} / {max(behind) / 2**20:,.0f} MiB | "
            f"{stage.get('capture_stage', 0):.1f} | {stage.get('load_stage', 0):.1f} | "
            f"{stage.get('commit_stage', 0):.1f} |")
    if all("peak_rss_kb" in r for r in results):
        lines += ["", "Peak RSS of the drain (its own process, `ru_maxrss`; the restart_lsn column is not measured "
                      "in this mode):", "",
                  "| burst | RSS after start-up | peak RSS | peak after each fifth of the batches |",
                  "| ---: | ---: | ---: | --- |"]
        for r in results:
            peaks = r["peak_after_batch_kb"]
            step = max(1, len(peaks) // 5)
            lines.append(f"| {r['size']:,} | {r['baseline_rss_kb'] / 1024:.0f} MiB | {r['peak_rss_kb'] / 1024:.0f} MiB"
                         f" | {', '.join(f'{k / 1024:.0f}' for k in peaks[step - 1::step])} MiB |")
        lines += ["", f"Peak RSS, {results[-1]['size']:,} vs {results[0]['size']:,}: "
                      f"**{results[-1]['peak_rss_kb'] / results[0]['peak_rss_kb']:.2f}×** (target ≤ 1.10×)."]
    if len(results) >= 2:
        small, large = results[0], results[-1]
        ratio = (large["totals"]["seconds"] / large["size"]) / (small["totals"]["seconds"] / small["size"])
        lines += ["", f"Seconds per change, {large['size']:,} vs {small['size']:,}: **{ratio:.2f}×** (1.00× is "
                      "linear; a quadratic drain would be about "
                      f"{large['size'] / small['size']:.0f}× here)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,5000000", help="burst sizes, comma-separated")
    parser.add_argument("--batch-size", type=int, default=200_000)
    parser.add_argument("--rss", action="store_true",
                        help="drain each burst in a fresh process (bench/rss_child.py) and compare peak RSS "
                             "(issue 12, item 6: 1M vs 10M)")
    parser.add_argument("--dsn", default=benchlib.DEFAULT_DSN, help="an administrative connection to the server")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    info = benchlib.machine_info(args.dsn)
    results = []
    with tempfile.TemporaryDirectory(prefix="cdc-bench-burst-") as staging:
        for size in sizes:
            results.append(one_size(args.dsn, size, args.batch_size, staging, args.rss))
            r = results[-1]
            benchlib.log(f"{size:,}: {r['totals']['seconds']:.1f}s, {r['totals']['batches']} batches, per batch "
                         f"{[round(b['seconds'], 2) for b in r['batches']]}")
    print(render(results, info, args.batch_size, "bench/burst_backlog.py " + " ".join(sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
