"""The two contracts every connector implements: a :class:`Source` captures, a :class:`Sink` applies.

Neither knows Airflow. Operators get a Source or a Sink from :mod:`airflow_provider_cdc.connectors.registry` and
call these methods; a new database is a module and a registry entry, not a branch in an operator.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

from airflow_provider_cdc.events import ChangeBatch, TableSchema


@runtime_checkable
class Source(Protocol):
    """Reads changes after a position. It never acknowledges on its own: :meth:`acknowledge` is called by the
    commit step only after the sink committed the batch (DESIGN section 3, exactly-once protocol)."""

    source_id: str

    def prepare(self, position: dict[str, Any] | None = None) -> None:
        """Create what capture needs at the source (publication, slot) when absent; check server settings.

        With a ``position`` the source ran before: what a position depends on (a slot) is never recreated."""

    def capture(self, position: dict[str, Any] | None, max_changes: int) -> ChangeBatch:
        """Return the next batch after ``position`` (None: start, snapshot first when configured).

        Deterministic: the same position yields the same first events with the same ``seq`` numbers."""

    def has_changes(self, position: dict[str, Any] | None) -> bool:
        """Cheap check whether :meth:`capture` would return something (a pending snapshot counts)."""

    def acknowledge(self, position: dict[str, Any]) -> None:
        """Tell the source that everything up to ``position`` is durably loaded (e.g. advance the slot)."""

    def position_order(self, position: dict[str, Any]) -> tuple:
        """A sort key: of two positions of this source, the later one has the larger key."""

    def heartbeat(self) -> None:
        """Produce a tiny change so that an idle source still advances its position."""

    def close(self) -> None: ...


@dataclasses.dataclass
class ApplyResult:
    """What a sink did with one batch. ``applied`` is False when the ledger already had the batch."""

    batch_id: str
    applied: bool
    upserted: int = 0
    deleted: int = 0
    truncated_tables: int = 0
    skipped_replayed: int = 0
    schema_changes: int = 0
    tables: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    held_tables: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@runtime_checkable
class Sink(Protocol):
    """Applies batches idempotently: data and the ``_cdc_ledger`` row in one transaction."""

    sink_id: str

    def ensure_tables(self, schemas: list[TableSchema]) -> None:
        """Create missing target tables (with ``_cdc_*`` bookkeeping columns) and add missing columns."""

    def has_batch(self, batch_id: str) -> bool: ...

    def high_water(self, source_id: str) -> int:
        """The highest ``seq`` committed for ``source_id`` (0 when none): older events are replays."""

    def apply(
        self,
        batch: ChangeBatch,
        *,
        run_id: str | None = None,
        rule_versions: dict[str, Any] | None = None,
        schema_versions: dict[str, Any] | None = None,
    ) -> ApplyResult:
        """Apply ``batch`` and write its ledger row (with the rule and schema versions it was made with) in one
        transaction; ``applied=False`` when the ledger already has the batch id."""

    def last_committed(self, source_id: str) -> dict[str, Any] | None:
        """``position_to`` of the ledger row with the highest ``seq_to`` for ``source_id`` (None when none)."""

    def held_tables(self, source_id: str) -> dict[str, str]:
        """Source tables whose changes the sink holds back (a schema change it cannot follow), with the reason."""

    def release_table(self, source_id: str, table: str) -> bool:
        """Stop holding ``table`` back before its re-snapshot; True when it was held."""

    def close(self) -> None: ...
