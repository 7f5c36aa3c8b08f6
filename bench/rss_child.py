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

import benchlib  # noqa: E402  (sets a private AIRFLOW_HOME before Airflow is imported)


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
    totals = benchlib.drain(source, sink, positions, store, batch_size=args.batch_size,
                            on_batch=lambda _summary: peaks.append(benchlib.rss_kb()))
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
    }))


if __name__ == "__main__":
    main()
