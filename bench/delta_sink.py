"""Benchmark 5: the Delta Lake file sink's apply rate, on the shape of benchmark 2's workload.

    .venv/bin/python bench/delta_sink.py [--rows 1000000] [--batch 200000] [--root DIR]

A 1,000,000-row initial snapshot (``r`` events), then 750,000 updates spread over the table, 100,000 deletes and
100,000 inserts, in batches of ``--batch`` changes, each applied with ``DeltaSink.apply`` (fold, typed view,
one MERGE commit per table with its application transaction, ledger row). Batches are built in memory in the
value contract's portable forms, as a source would hand them over: this measures the sink alone. Rates divide
the changes of a phase by its wall time; the peak RSS of the process is reported too.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import tempfile
import time

from airflow_provider_cdc.connectors.delta.options import DeltaSinkOptions
from airflow_provider_cdc.connectors.delta.sink import DeltaSink
from airflow_provider_cdc.events import ChangeBatch, TableChangesBuilder
from airflow_provider_cdc.tables import Column, TableSchema

TABLE = TableSchema("public", "bench_wm", (
    Column("id", "bigint", "integer", nullable=False, primary_key=True),
    Column("a", "integer", "integer", nullable=False),
    Column("b", "text", "text", nullable=False),
    Column("c", "numeric(12,2)", "decimal", precision=12, scale=2),
    Column("d", "timestamp with time zone", "timestamptz"),
    Column("updated_at", "timestamp with time zone", "timestamptz"),
), dialect="postgresql")


def row(i: int, version: int) -> list[str | None]:
    return [str(i), str(i * 7 + version), f"row {i} v{version} " + "x" * 20, f"{i % 100000}.{i % 100:02d}",
            "2024-05-01T12:00:00.25Z", f"2024-06-01T00:{version % 60:02d}:00Z"]


def batch(events: list[tuple[str, int, int]], seq0: int) -> ChangeBatch:
    builder = TableChangesBuilder(TABLE)
    for n, (op, key, version) in enumerate(events):
        image = row(key, version) if op != "d" else [str(key)] + [None] * 5
        builder.append(op, seq0 + n, 1_714_550_400_000 + seq0 + n, "tx", "0/1", image)
    return ChangeBatch(
        source_id="bench", batch_id=f"bench:{seq0}-{seq0 + len(events) - 1}", position_from={"seq": seq0 - 1},
        position_to={"seq": seq0 + len(events) - 1}, seq_from=seq0, seq_to=seq0 + len(events) - 1,
        tables={TABLE.qualified_name: builder.finish()}, schemas={TABLE.qualified_name: TABLE},
        connector="postgresql",
    )


def apply_all(sink: DeltaSink, events: list[tuple[str, int, int]], size: int, seq: int) -> tuple[float, int]:
    started = time.perf_counter()
    for start in range(0, len(events), size):
        chunk = events[start:start + size]
        result = sink.apply(batch(chunk, seq))
        assert result.applied, result
        seq += len(chunk)
    return time.perf_counter() - started, seq


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=200_000)
    parser.add_argument("--root", help="where the Delta tables go (default: a temporary directory, removed)")
    args = parser.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="cdc-bench-delta-")
    rng = random.Random(42)
    n = args.rows
    try:
        sink = DeltaSink(root, sink_id="lake", target_schema="public", delete_mode="hard", options=DeltaSinkOptions())
        snapshot = [("r", i, 0) for i in range(1, n + 1)]
        snap_s, seq = apply_all(sink, snapshot, args.batch, 1)
        picked = rng.sample(range(1, n + 1), n * 85 // 100)
        updates, deletes = picked[: n * 75 // 100], picked[n * 75 // 100:]
        workload = [("u", k, 1) for k in updates] + [("d", k, 0) for k in deletes] + [
            ("c", n + i, 1) for i in range(1, n // 10 + 1)]
        rng.shuffle(workload)
        work_s, _ = apply_all(sink, workload, args.batch, seq)
        sink.close()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"Delta sink, batches of {args.batch:,}:")
        print(f"  snapshot  {len(snapshot):>9,} r events  {snap_s:7.2f} s  {len(snapshot) / snap_s:>9,.0f} changes/s")
        print(f"  workload  {len(workload):>9,} u/d/c      {work_s:7.2f} s  {len(workload) / work_s:>9,.0f} changes/s")
        print(f"  peak RSS  {peak:,.0f} MiB")
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
