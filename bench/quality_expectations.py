"""The validate stage's core: 5 expectations over a 100,000-row batch table through real GX, and what a task pays
once.

Run by hand: ``.venv/bin/python bench/quality_expectations.py [rows]``. In memory, no database: one Arrow table shaped
like a batch table (``id``, ``email``, ``name``, ``price numeric(12,2)``, ``status``: portable text plus the ``_cdc_*``
bookkeeping, three inserts to one update), through ``QualitySuites.validate`` with the suite

    pattern   email ~ '^[^@\\s]+@[^@\\s]+\\.[a-z]+$'
    range     price in [0, 10000]
    not_null  name
    in_set    status in (active, inactive, pending)
    length    name has 2 to 40 characters

about 1 % of the rows failing one of them. Reported:

- the first batch of a task: importing GX, then building the context and the suite (one-time costs);
- the fixed cost of one validation (a 10-row batch, median);
- 100,000 rows: rows/s (median of 5 runs) and the per-row cost above the fixed one, with the time split into
  building the frame and GX's validation;
- the same 100,000 rows with 10 % failing every rule (where GX's per-row work grows).

The target (DESIGN section 6, issue 11) is >= 200,000 rows/s for 5 expectations on the 2-core machine.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time

import pyarrow as pa

from airflow_provider_cdc.config.models import SuiteConfig
from airflow_provider_cdc.events import changes_table
from airflow_provider_cdc.quality import QualitySuites
from airflow_provider_cdc.quality.frame import build_frame, plan_frame
from airflow_provider_cdc.tables import Column, TableSchema

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
RUNS = 5
SMALL = 10
TS_MS = 1_714_564_800_000
SCHEMA = TableSchema("public", "users", (
    Column("id", "bigint", "integer", nullable=False, primary_key=True),
    Column("email", "text", "text"),
    Column("name", "text", "text"),
    Column("price", "numeric(12,2)", "decimal", precision=12, scale=2),
    Column("status", "text", "text"),
), "postgresql")
SUITE = SuiteConfig(id="users_checks", tables=["users"], rules=[
    {"type": "pattern", "column": "email", "pattern": r"^[^@\s]+@[^@\s]+\.[a-z]+$"},
    {"type": "range", "column": "price", "min": 0, "max": 10000},
    {"type": "not_null", "column": "name"},
    {"type": "in_set", "column": "status", "values": ["active", "inactive", "pending"]},
    {"type": "length", "column": "name", "min": 2, "max": 40},
])


def batch_table(rows: int, bad_every: int) -> pa.Table:
    """``rows`` changes; every ``bad_every``-th row fails a rule (rotating through the five), or all five when
    ``bad_every`` is 10 (the heavy case)."""
    heavy = bad_every == 10

    def bad(i: int, rule: int) -> bool:
        return i % bad_every == 0 and (heavy or (i // bad_every) % 5 == rule)

    emails = ["not-an-email" if bad(i, 0) else f"user{i}@example{i % 97}.com" for i in range(rows)]
    prices = ["-1.00" if bad(i, 1) else f"{(i * 7919) % 1_000_000 / 100:.2f}" for i in range(rows)]
    names = [None if bad(i, 2) else ("X" if bad(i, 4) else f"User Number {i}") for i in range(rows)]
    statuses = ["deleted" if bad(i, 3) else ("active", "inactive", "pending")[i % 3] for i in range(rows)]
    if heavy:  # a NULL name fails not_null only; give half of the heavy rows a one-letter name instead
        names = ["X" if n is None and i % 20 == 0 else n for i, n in enumerate(names)]
    return changes_table(
        SCHEMA, ["u" if i % 4 == 0 else "c" for i in range(rows)], list(range(1, rows + 1)),
        [TS_MS + i for i in range(rows)], [f"tx{i // 100}" for i in range(rows)], [f"0/{i:X}" for i in range(rows)],
        [None] * rows, [[str(i) for i in range(rows)], emails, names, prices, statuses],
    )


def median_seconds(suites: QualitySuites, table: pa.Table, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = suites.validate(table, SCHEMA)
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    logging.getLogger("airflow_provider_cdc").setLevel(logging.WARNING)
    table = batch_table(ROWS, 100)
    heavy = batch_table(ROWS, 10)
    small = table.slice(0, SMALL)
    print(f"{ROWS:,}-row batch table ({table.nbytes / 1e6:.0f} MB); 5 expectations")

    started = time.perf_counter()
    from airflow_provider_cdc.quality.gx import import_gx

    import_gx()
    import_seconds = time.perf_counter() - started
    suites = QualitySuites.from_config([SUITE])
    started = time.perf_counter()
    suites.validate(small, SCHEMA)
    first_seconds = time.perf_counter() - started
    print(f"first batch of a task: import GX {import_seconds:.2f} s (once per process), then context + suite + a "
          f"{SMALL}-row validation {first_seconds * 1000:.0f} ms")

    fixed, _ = median_seconds(suites, small, 21)
    print(f"fixed cost per validation ({SMALL}-row batch, median of 21): {fixed * 1000:.1f} ms")

    seconds, result = median_seconds(suites, table, RUNS)
    assert result is not None
    per_row_us = (seconds - fixed) / ROWS * 1e6
    metrics = result.metrics  # type: ignore[attr-defined]
    print(f"{ROWS:,} rows, 1 % failing: {ROWS / seconds:,.0f} rows/s ({seconds:.3f} s, median of {RUNS}); "
          f"{per_row_us:.2f} us per row above the fixed cost; {metrics['failed']:,} rows failed, "
          f"{len(result.violations):,} violations")  # type: ignore[attr-defined]

    checks = list(suites.suites[0].checks)
    plan = plan_frame(checks, SCHEMA)
    frame_times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        frame = build_frame(table, SCHEMA, plan)
        frame_times.append(time.perf_counter() - started)
    built = suites.built_suite(suites.suites[0], SCHEMA)
    gx_times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        suites.batch(frame.data).validate(built.gx_suite, result_format={
            "result_format": "COMPLETE", "unexpected_index_column_names": ["_cdc_row"],
            "exclude_unexpected_values": True})
        gx_times.append(time.perf_counter() - started)
    print(f"  of which: building the frame {statistics.median(frame_times) * 1000:.0f} ms, GX batch + validation "
          f"{statistics.median(gx_times) * 1000:.0f} ms (medians)")

    heavy_seconds, heavy_result = median_seconds(suites, heavy, RUNS)
    print(f"{ROWS:,} rows, 10 % failing every rule: {ROWS / heavy_seconds:,.0f} rows/s ({heavy_seconds:.3f} s, "
          f"median of {RUNS}); {len(heavy_result.violations):,} violations")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
