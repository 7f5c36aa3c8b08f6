"""Benchmark 3's child: drain one slot's backlog with capture → load → commit in a fresh process, report peak RSS.

Started by ``bench/run.py`` (one process per backlog size, so that each peak is its own); prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # sets a private AIRFLOW_HOME before Airflow is imported


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--src-dsn", required=True)
    parser.add_argument("--sink-dsn", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--slot", required=True)
    parser.add_argument("--publication", required=True)
    parser.add_argument("--target-schema", required=True)
    parser.add_argument("--staging-root", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--details", action="store_true",
                        help="also report each batch: changes, seconds per stage, whether its position is inside a "
                             "transaction (``partial``)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    source = benchlib.PgSource(
        args.src_dsn, source_id=f"bench_{args.slot}", tables=[("public", args.table)], slot_name=args.slot,
        publication_name=args.publication, snapshot="never", create_slot=False, create_publication=False,
    )
    sink = benchlib.PgSink(args.sink_dsn, sink_id="bench_rss", target_schema=args.target_schema,
                           ledger_schema=args.target_schema)
    store = benchlib.BatchStore(root=args.staging_root)
    positions = benchlib.MemoryPositions()
    source.prepare()
    store.batch_dir(source.source_id, "start-up")  # imports Airflow's ObjectStoragePath now, not in the first batch
    baseline = benchlib.rss_kb()  # imports, connections, Airflow's ObjectStoragePath: everything but the batches
    started = time.perf_counter()
    peaks: list[int] = []
    details: list[dict] = []

    def on_batch(summary: dict) -> None:
        peaks.append(benchlib.rss_kb())
        if args.details:
            stored = positions.get(source.source_id) or {}
            details.append({"changes": summary["change_count"], "seconds": summary["seconds"],
                            "capture_s": summary["capture_s"], "load_s": summary["load_s"],
                            "commit_s": summary["commit_s"], "partial": stored.get("partial")})

    totals = benchlib.drain(source, sink, positions, store, batch_size=args.batch_size, on_batch=on_batch)
    seconds = time.perf_counter() - started
    source.close()
    sink.close()
    print(json.dumps({
        "changes": totals["changes"],
        "batches": totals["batches"],
        "ops": totals["ops"],
        "seconds": seconds,
        "baseline_rss_kb": baseline,
        "peak_rss_kb": benchlib.rss_kb(),
        "vmhwm_kb": benchlib.vmhwm_kb(),
        "peak_after_batch_kb": peaks,
        "stage_seconds": totals["stage_seconds"],
        "last_round_seconds": totals["last_round_seconds"],
        **({"batch_details": details} if args.details else {}),
    }))


if __name__ == "__main__":
    main()
