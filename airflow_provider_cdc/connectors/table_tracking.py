"""Which configured tables a source captures, as its position document records them: shared by every source.

A position keeps ``tables`` (the tables captured so far) and, while a snapshot runs, ``snapshot`` (``pending``: the
tables still to read, in order; ``after``: the last key read of the first one). A table added to the configuration
later gets its own snapshot while the others keep streaming; a table removed stops flowing; ``resnapshot --table``
queues a table again. Pending snapshots are remembered by table name, so editing ``tables`` mid-snapshot skips
nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow_provider_cdc.errors import SourceError

log = logging.getLogger("airflow_provider_cdc.source")


def reconcile(position: dict[str, Any], configured: list[str], *, snapshot_mode: str, source_id: str) -> dict[str, Any]:
    """``position`` brought in line with the ``configured`` tables: new ones get a snapshot (under ``snapshot:
    initial``), removed ones stop."""
    position = {k: v for k, v in position.items() if k != "from_ledger"}
    captured = position.get("tables")
    snapshot = position.get("snapshot")
    if snapshot is not None and "pending" not in snapshot:  # older positions: a list index
        snapshot = {"pending": configured[snapshot.get("table", 0):], "after": snapshot.get("after")}
    if captured is None:
        captured = list(configured)
    pending = list(snapshot["pending"]) if snapshot else []
    after = snapshot["after"] if snapshot else None
    added = [t for t in configured if t not in captured]
    removed = [t for t in captured if t not in configured]
    if added:
        if snapshot_mode == "initial":
            log.info("source %s: tables %s were added to the configuration: each gets its own snapshot while "
                     "the other tables keep streaming", source_id, ", ".join(added))
            pending += [t for t in added if t not in pending]
        else:
            log.info("source %s: tables %s were added (snapshot: never): streaming their changes from now on",
                     source_id, ", ".join(added))
    if removed:
        log.info("source %s: tables %s were removed from the configuration: they stop flowing (their sink tables "
                 "are kept)", source_id, ", ".join(removed))
    ranges = snapshot.get("ranges") if snapshot else None
    if pending and pending[0] not in configured:
        after = ranges = None
    pending = [t for t in pending if t in configured]
    position["tables"] = list(configured)
    if pending:
        position["snapshot"] = {"pending": pending, "after": after}
        if ranges is not None:  # a table read in key ranges (PostgreSQL's snapshot_ranges.py)
            position["snapshot"]["ranges"] = ranges
    else:
        position.pop("snapshot", None)
    return position


def queue_snapshot(position: dict[str, Any], tables: list[str], configured: list[str], *,
                   source_id: str) -> dict[str, Any]:
    """``position`` with ``tables`` queued for a new snapshot (the other tables keep streaming); a table already
    being read starts over."""
    pending = list(position.get("snapshot", {}).get("pending", []))
    after = position.get("snapshot", {}).get("after")
    ranges = position.get("snapshot", {}).get("ranges")
    for name in tables:
        if name not in configured:
            raise SourceError(source_id, f"table {name} is not in this source's 'tables'")
        if name in pending:
            if pending[0] == name:
                after = ranges = None  # start that table over
            continue
        pending.append(name)
    snapshot = {"pending": pending, "after": after}
    if ranges is not None:
        snapshot["ranges"] = ranges
    return {**position, "snapshot": snapshot}


def pending_work(position: dict[str, Any] | None, tables: list[str]) -> bool:
    """Work that needs no look at the source's log: no position yet, a snapshot pending, or configured tables not
    captured yet (they get a snapshot) or removed."""
    if position is None or position.get("snapshot") is not None:
        return True
    return "tables" in position and sorted(position["tables"]) != sorted(tables)
