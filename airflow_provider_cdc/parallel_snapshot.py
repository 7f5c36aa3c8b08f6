"""The library side of a parallel initial snapshot: which key ranges still need staging, and staging one of them.

The DAG runs :func:`ranges_to_stage` in one task and :func:`stage_range` in a task mapped over its answer (dynamic
task mapping), so that a Celery or Kubernetes executor spreads the ranges over its workers; the capture task then
emits the staged chunks in watermark order (``connectors/postgres/snapshot_ranges.py`` explains why that converges
with the stream). A source that cannot split its snapshot has no ranges: the mapped task is skipped.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow_provider_cdc.connectors.base import Position, PositionStore, Sink, Source
from airflow_provider_cdc.pipeline import start_position

log = logging.getLogger(__name__)


def _ranges(source: Source, sink: Sink, positions: PositionStore) -> tuple[dict[str, Any] | None, Position | None]:
    """The stored position's ranged snapshot (None: none pending), and the position."""
    position = start_position(source, sink, positions)
    snapshot = (position or {}).get("snapshot") or {}
    return (snapshot.get("ranges") if hasattr(source, "stage_range") else None), position


def ranges_to_stage(source: Source, sink: Sink, positions: PositionStore) -> list[int]:
    """The ranges of the stored position's ranged snapshot that are not staged completely (empty: none pending)."""
    ranges, _ = _ranges(source, sink, positions)
    if ranges is None:
        return []
    todo = source.ranges_to_stage(ranges)  # type: ignore[attr-defined]
    log.info("source %s: the snapshot of %s has %d key ranges; %d to stage: %s", source.source_id, ranges["table"],
             len(ranges["emitted"]), len(todo), todo)
    return todo


def stage_range(source: Source, sink: Sink, positions: PositionStore, index: int, batch_size: int) -> dict[str, Any]:
    """Stage range ``index`` of the stored position's ranged snapshot (resuming where a killed attempt stopped)."""
    from airflow_provider_cdc.connectors.postgres.snapshot_ranges import chunk_rows

    ranges, position = _ranges(source, sink, positions)
    if ranges is None or index >= len(ranges["emitted"]):
        log.info("source %s: no ranged snapshot with a range %d is pending; nothing to stage", source.source_id,
                 index)
        return {"range": index, "chunks": 0, "rows": 0, "skipped": True}
    # What the capture checks first, and where the publication's row filters come from: a range holds only the rows
    # the stream will send changes for.
    source.prepare(position)
    return source.stage_range(ranges, index, chunk_rows(batch_size))  # type: ignore[attr-defined]
