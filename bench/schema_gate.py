"""The schema gate's own cost per batch (``schema.gate.decide``), in memory, without a sink.

Run by hand: ``.venv/bin/python bench/schema_gate.py``. Two cases on a 50,000-event batch of one table: no schema
change (what every batch pays), and a change under ``lenient`` that projects every event onto the sink's columns (the
most work the gate itself does). The sink's extra work (one read of the versions per apply, the writes of new
versions and held changes) is inside the sink benchmarks' totals.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cdc_testing import batch_of, item

from airflow_provider_cdc.schema import SchemaPolicy, decide
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema

EVENTS = 50_000
TABLE = TableSchema("public", "t", (
    Column("id", "bigint", "integer", False, True, 1),
    Column("a", "text", "text", ordinal=2),
    Column("b", "numeric(12,2)", "decimal", precision=12, scale=2, ordinal=3),
), "postgresql")


def per_batch_ms(batch, versions, policy: SchemaPolicy, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        decide(batch, versions, {}, policy, 0)
    return (time.perf_counter() - started) / repeat * 1000


def main() -> None:
    batch = batch_of([("u", i, item(i % 10_000, a="x", b="1.00")) for i in range(1, EVENTS + 1)], TABLE)
    versions = decide(batch, [], {}).registrations
    print(f"no schema change, evolve: {per_batch_ms(batch, versions, SchemaPolicy(), 20):.2f} ms per "
          f"{EVENTS:,}-event batch")
    changed = dataclasses.replace(TABLE, columns=(*TABLE.columns[:2], Column("c", "text", "text", ordinal=4)))
    first = EVENTS + 2
    lenient = batch_of([("u", i, item(i % 10_000, a="x", c="y")) for i in range(first, first + EVENTS)], changed,
                       schema_changes=[SchemaChange("public.t", EVENTS + 1, changed, before=TABLE)])
    print(f"drop b + add c under lenient (every event projected): "
          f"{per_batch_ms(lenient, versions, SchemaPolicy(mode='lenient'), 10):.2f} ms per {EVENTS:,}-event batch")


if __name__ == "__main__":
    main()
