"""The ledger row: one record per applied batch, the same in every sink.

Each sink writes it **in the same transaction as the batch's data** (or, for a sink without multi-table
transactions, after the data with the data's own idempotence key): it is the exactly-once guard, and what the REST API
and lineage read of a batch. The audit trail beside it (``_cdc_audit``, :mod:`.audit`) is built from these rows and
written with them. Sinks store it in their own way (a ``_cdc_ledger`` table, a Delta table) but
build and read it only through :func:`ledger_row` and :meth:`LedgerRow.from_record`, so the columns and their
meaning cannot drift apart between sinks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_cdc.connectors.base import ApplyResult
    from airflow_provider_cdc.events import ChangeBatch

LEDGER_TABLE = "_cdc_ledger"

# (name, logical type of the value contract) in storage order. JSON columns hold documents.
LEDGER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("batch_id", "text"),
    ("source_id", "text"),
    ("position_from", "json"),
    ("position_to", "json"),
    ("seq_from", "integer"),
    ("seq_to", "integer"),
    ("counts", "json"),
    ("rule_versions", "json"),
    ("schema_versions", "json"),
    ("stage_versions", "json"),
    ("run_id", "text"),
    ("rows_upserted", "integer"),
    ("rows_deleted", "integer"),
    ("committed_at", "timestamptz"),
)
LEDGER_COLUMN_NAMES = tuple(name for name, _ in LEDGER_COLUMNS)
JSON_COLUMNS = frozenset(name for name, kind in LEDGER_COLUMNS if kind == "json")


@dataclasses.dataclass(frozen=True)
class LedgerRow:
    """What one applied batch leaves in a sink. ``seq_from`` is where this row's guarantee starts: after the
    sink's high water when the batch overlapped one applied before."""

    batch_id: str
    source_id: str
    position_from: dict[str, Any]
    position_to: dict[str, Any]
    seq_from: int
    seq_to: int
    counts: dict[str, dict[str, int]]
    rule_versions: dict[str, Any] | None = None
    schema_versions: dict[str, Any] | None = None
    stage_versions: dict[str, Any] | None = None
    run_id: str | None = None
    rows_upserted: int = 0
    rows_deleted: int = 0
    committed_at: dt.datetime | None = None

    def to_record(self, *, json_as_text: bool = False) -> dict[str, Any]:
        """The row as column → value; JSON columns as documents, or as JSON text for sinks without JSON."""
        record = dataclasses.asdict(self)
        if json_as_text:
            for name in JSON_COLUMNS:
                if record[name] is not None:
                    record[name] = json.dumps(record[name], sort_keys=True)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LedgerRow:
        """Read a stored row back (JSON given as text or as documents; unknown columns ignored)."""
        values: dict[str, Any] = {}
        for name in LEDGER_COLUMN_NAMES:
            value = record.get(name)
            if name in JSON_COLUMNS and isinstance(value, str):
                value = json.loads(value)
            values[name] = value
        return cls(**values)


def ledger_row(
    batch: ChangeBatch,
    result: ApplyResult,
    *,
    high_water: int = 0,
    run_id: str | None = None,
    versions: Mapping[str, Mapping[str, Any] | None] | None = None,
    committed_at: dt.datetime | None = None,
) -> LedgerRow:
    """The ledger row of ``batch`` as a sink applied it.

    ``versions`` carries ``rule_versions``, ``schema_versions`` and ``stage_versions`` (what the batch was made
    with; the stage list supplies them). The row vouches for the range after ``high_water``: a batch that overlaps
    an earlier one (an overlapping run captured a longer range from the same position) applied only the rest.
    """
    versions = versions or {}
    return LedgerRow(
        batch_id=batch.batch_id,
        source_id=batch.source_id,
        position_from=batch.position_from,
        position_to=batch.position_to,
        seq_from=max(batch.seq_from, high_water + 1),
        seq_to=batch.seq_to,
        counts=batch.counts(),
        rule_versions=_or_none(versions.get("rule_versions")),
        schema_versions=_or_none(versions.get("schema_versions")),
        stage_versions=_or_none(versions.get("stage_versions")),
        run_id=run_id,
        rows_upserted=result.upserted,
        rows_deleted=result.deleted,
        committed_at=committed_at or dt.datetime.now(dt.timezone.utc),
    )


def _or_none(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)


def latest(rows: list[LedgerRow]) -> LedgerRow | None:
    """The row with the highest ``seq_to``, the later commit on a tie (what a source resumes from when its position
    Variable is behind; the PostgreSQL sink asks the same in SQL: ``ORDER BY seq_to DESC, committed_at DESC``)."""
    oldest = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    return max(rows, key=lambda row: (row.seq_to, row.committed_at or oldest), default=None)
