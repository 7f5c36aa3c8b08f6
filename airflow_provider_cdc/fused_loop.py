"""A long-running fused run: batch after batch in one task until a time budget is spent (cdc.yaml's
``loop_seconds``), each batch captured, staged through the stage list, loaded and committed exactly as a one-batch
fused run does it (:func:`airflow_provider_cdc.pipeline.run_fused`).

Why: a continuous DAG pays the scheduler for every run (a new DAG run, the sensor, the task's start-up), seconds each
time. A run that keeps going while changes keep coming pays it once per budget, so a change waits only for the
poll and its own batch. The guarantees do not change: every batch has its ledger row and stored position before the
next is loaded, so a kill at any moment replays at most the batch in flight. While a batch goes through the stage
list and the load, the next one is read from the source (:class:`~airflow_provider_cdc.pipeline.CaptureAhead`: the
source's read and the sink's write use both cores); it is used only if it starts where the committed batch ended.
Between batches the loop polls the source (``has_changes``) every ``poll_interval`` until the budget ends; it never
starts a batch after the deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)


def run_for(
    budget: float,
    run_once: Callable[[], Mapping[str, Any]],
    has_changes: Callable[[], bool],
    *,
    poll_interval: float,
    on_batch: Callable[[Mapping[str, Any]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Run ``run_once`` (one fused batch) at least once, then again whenever ``has_changes`` says so, until
    ``budget`` seconds have passed; the combined summary (:func:`combine`). ``on_batch`` sees each batch's
    summary (metrics, asset counts) as it commits."""
    deadline = clock() + max(budget, 0.0)
    summaries: list[Mapping[str, Any]] = []
    while True:
        summary = run_once()
        summaries.append(summary)
        if on_batch is not None:
            on_batch(summary)
        if clock() >= deadline:
            break
        if int(summary.get("captured") or 0):
            continue  # a backlog: the next batch at once
        while clock() + poll_interval < deadline and not has_changes():
            sleep(poll_interval)
        if clock() >= deadline or not has_changes():
            break
    combined = combine(summaries)
    if len(summaries) > 1:
        log.info("fused loop: %d batches, %d changes captured in %.0f s budget", combined["batches"],
                 combined["captured"], budget)
    return combined


def combine(summaries: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One summary of several fused batches: the last batch's fields (its batch id, stage versions, commit, held
    tables), with counts summed over all of them (``captured``, ``change_count``, ``ops``, the load's totals and
    per-table counts) and ``batches``/``batch_ids`` listing them. One batch is returned as it is."""
    if len(summaries) == 1:
        return {**summaries[0], "batches": 1, "batch_ids": [summaries[0].get("batch_id")]}
    last = summaries[-1]
    loads = [s.get("load") or {} for s in summaries]
    load: dict[str, Any] = {**(last.get("load") or {})}
    for key in ("upserted", "deleted", "truncated_tables", "skipped_replayed", "schema_changes", "quarantined"):
        load[key] = sum(int(part.get(key) or 0) for part in loads)
    load["applied"] = any(part.get("applied") for part in loads)
    tables: dict[str, dict[str, int]] = {}
    for part in loads:
        for table, stats in (part.get("tables") or {}).items():
            into = tables.setdefault(table, {})
            for name, value in stats.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    into[name] = into.get(name, 0) + int(value)
    load["tables"] = tables
    load["newly_held"] = {k: v for part in loads for k, v in (part.get("newly_held") or {}).items()}
    ops: dict[str, int] = {}
    for summary in summaries:
        for op, count in (summary.get("ops") or {}).items():
            ops[op] = ops.get(op, 0) + int(count)
    return {
        **last,
        "seq_from": summaries[0].get("seq_from"),
        "captured": sum(int(s.get("captured") or 0) for s in summaries),
        "change_count": sum(int(s.get("change_count") or 0) for s in summaries),
        "ops": ops,
        "load": load,
        "batches": len(summaries),
        "batch_ids": [s.get("batch_id") for s in summaries],
    }
