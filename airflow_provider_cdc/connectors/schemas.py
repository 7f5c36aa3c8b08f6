"""How a position remembers each table's schema (every source: the stream decoders and the snapshots).

The position keeps, per table, a fingerprint (to notice a change) and the columns themselves, so that the next
batch's schema event has a ``before``: a rename is told from a drop by the column's ordinal.
"""

from __future__ import annotations

import hashlib
from typing import Any

from airflow_provider_cdc.tables import TableSchema


def fingerprint_hash(table: TableSchema) -> str:
    return hashlib.sha1(table.fingerprint().encode()).hexdigest()[:16]


def remembered(table: TableSchema) -> dict[str, Any]:
    """How a position remembers a table's schema: the fingerprint to notice a change, and the columns, so that the
    next batch's schema event has a ``before`` (a rename is told from a drop by the column's ordinal)."""
    return {"fp": fingerprint_hash(table), "table": table.to_dict()}


def seen_fingerprint(entry: Any) -> str | None:
    """The fingerprint of a position's ``schemas`` entry (older positions kept the bare hash)."""
    return entry.get("fp") if isinstance(entry, dict) else entry


def seen_schema(entry: Any) -> TableSchema | None:
    return TableSchema.from_dict(entry["table"]) if isinstance(entry, dict) and entry.get("table") else None
