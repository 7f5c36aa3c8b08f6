"""The contracts every connector implements: a :class:`Source` captures, a :class:`Sink` applies, a
:class:`ChangeProbe` waits for changes in the triggerer, and a sink declares its :class:`SinkCapabilities`.

None of them knows Airflow. Operators get them from :mod:`airflow_provider_cdc.connectors.registry` and call these
methods; a new database is a module and a registry entry, not a branch in an operator.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.tables import TableSchema

if TYPE_CHECKING:
    import datetime as dt

    from airflow_provider_cdc.connectors.audit import AuditEntry
    from airflow_provider_cdc.connectors.ledger import LedgerRow
    from airflow_provider_cdc.schema import HeldChunk, SchemaPolicy, SchemaVersion

Position = dict[str, Any]
"""A source-native position document (PostgreSQL ``{"lsn": ...}``, MySQL ``{"gtid": ...}``...) plus ``seq``: JSON-safe,
stored as it is in ``cdc.position.<source_id>``. Only the source that made it reads inside it."""


@runtime_checkable
class PositionStore(Protocol):
    """Where the committed position of each source lives (Airflow Variables in a DAG; anything in tests)."""

    def get(self, source_id: str) -> Position | None: ...

    def set(self, source_id: str, position: Position, *, batch_id: str | None) -> None: ...

    def delete(self, source_id: str) -> None: ...


@dataclasses.dataclass(frozen=True)
class SinkCapabilities:
    """What a sink can do, declared once per connector (dlt's destination capabilities are the model).

    The pipeline and ``config check`` read these instead of assuming one database: a soft-delete source into a sink
    that cannot keep deleted rows is a config error, a typed sink is given typed Arrow columns, and so on.
    """

    # Logical types of the value contract the sink stores in a native column type (the rest as text).
    native_types: frozenset[str]
    # The source dialect whose declared column types the sink reuses verbatim ("": none, map from logical types).
    dialect: str = ""
    # Data of every table and the ledger row commit in one transaction (else per table, idempotent by design).
    transactional: bool = True
    # Rows are merged by key (upsert and delete); False for an append-only change log.
    merge_by_key: bool = True
    soft_delete: bool = True
    # Values of logical type ``other`` (a source's own text) are reproduced exactly only by a sink of that dialect.
    stores_other_exactly: bool = False
    # Keeps a batch's quarantined changes in ``_cdc_quarantine`` with its data (airflow_provider_cdc.quarantine).
    quarantine: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["native_types"] = sorted(self.native_types)
        return data


@runtime_checkable
class ChangeProbe(Protocol):
    """The triggerer's view of a source: async, cheap, and checking the position the same way capture does.

    ``has_changes_after`` raises :class:`~airflow_provider_cdc.errors.PositionLostError` when the position is gone,
    exactly like the synchronous :meth:`Source.has_changes` (both share one check per connector)."""

    async def has_changes_after(self, position: Position | None) -> bool: ...

    async def heartbeat(self) -> None:
        """Produce a tiny change so that an idle source still advances its position."""

    async def aclose(self) -> None: ...


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

    # --- recovery after a lost position (``python -m airflow_provider_cdc resnapshot``) ---

    def holds_position(self) -> bool:
        """Whether what keeps this source's changes at the source exists (PostgreSQL: the replication slot)."""

    def discard_position_holder(self) -> str | None:
        """Drop what holds the old position at the source; says what was dropped (None: nothing was there)."""

    def initial_position(self, *, snapshot: bool) -> Position:
        """A fresh position from now on, with an initial snapshot pending when ``snapshot``."""

    def resnapshot_position(self, position: Position, tables: list[str]) -> Position:
        """``position`` with ``tables`` (``schema.table``) queued for a new snapshot; the rest keep streaming."""

    def close(self) -> None: ...


@dataclasses.dataclass
class ApplyResult:
    """What a sink did with one batch. ``applied`` is False when the ledger already had the batch, or when the batch
    was refused as stale (``stale`` then says why: :mod:`airflow_provider_cdc.connectors.recapture`)."""

    batch_id: str
    applied: bool
    upserted: int = 0
    deleted: int = 0
    truncated_tables: int = 0
    skipped_replayed: int = 0
    schema_changes: int = 0
    quarantined: int = 0
    tables: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    held_tables: dict[str, str] = dataclasses.field(default_factory=dict)
    # Tables held from this batch on (a subset of held_tables), and the schema versions in effect after it.
    newly_held: dict[str, str] = dataclasses.field(default_factory=dict)
    schema_versions: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    stale: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class AcceptResult:
    """What ``schema accept`` did to one held table: versions accepted, held changes replayed (exactly once: the
    replay is a batch ``<source_id>:accept:<table>:<seq range>`` in the ledger)."""

    subject: str
    table: str
    accepted_versions: list[int]
    batch_id: str | None
    replayed_events: int = 0
    upserted: int = 0
    deleted: int = 0
    applied: bool = True
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@runtime_checkable
class ReadsAhead(Protocol):
    """A source that can read several batches at once when captures follow one another (a fused loop)."""

    def read_ahead(self, rows: int) -> None:
        """Read up to ``rows`` ahead in one go and serve the next captures from it (0: off)."""


@runtime_checkable
class Sink(Protocol):
    """Applies batches idempotently: data and the ``_cdc_ledger`` row in one transaction."""

    sink_id: str
    capabilities: SinkCapabilities

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
        versions: dict[str, dict[str, Any] | None] | None = None,
        policy: SchemaPolicy | None = None,
    ) -> ApplyResult:
        """Apply ``batch`` and write its ledger row (:func:`~airflow_provider_cdc.connectors.ledger.ledger_row`,
        with the ``rule_versions`` and ``stage_versions`` it was made with, and ``schema_versions`` from the gate) in
        one transaction; ``applied=False`` when the ledger already has the batch id.

        The batch's audit entries (:func:`~airflow_provider_cdc.connectors.audit.batch_audit_entries`, from the
        ledger row, the gate's registrations and ``versions["audit"]``, what the pipeline noted at capture and after
        each stage) go into ``_cdc_audit`` with the ledger row: in its transaction, or exactly once beside it.

        The schema gate (:func:`airflow_provider_cdc.schema.gate.decide`, under ``policy``) runs inside that
        transaction: new schema versions, held tables and their held changes are stored with the batch."""

    def schema_versions(self, source_id: str) -> list[SchemaVersion]:
        """Every registered schema version of ``source_id``'s subjects (the registry lives beside the ledger)."""

    def held_changes(self, source_id: str, table: str) -> list[HeldChunk]:
        """The changes held for ``table`` (``schema.table``), oldest first."""

    def accept_table(
        self, source_id: str, table: str, *, policy: SchemaPolicy | None = None, run_id: str | None = None
    ) -> AcceptResult:
        """Accept the held schema versions of ``table``: migrate its sink table to the newest one (a type change
        converts the values already there, or fails naming them), replay its held changes, and stop holding it, in
        one transaction (:func:`airflow_provider_cdc.schema.gate.plan_accept`). Raises when the table is not held."""

    def last_committed(self, source_id: str) -> dict[str, Any] | None:
        """``position_to`` of the ledger row with the highest ``seq_to`` for ``source_id`` (None when none)."""

    def ledger_rows(self, source_id: str, limit: int = 100) -> list[LedgerRow]:
        """The ``limit`` latest ledger rows of ``source_id``, newest first: highest ``seq_to``, the later commit on
        a tie (:func:`~airflow_provider_cdc.connectors.ledger.latest`'s order). Empty when the sink has no ledger
        yet. What the REST API shows as recent batches and reads the status from."""

    # --- quarantine (``python -m airflow_provider_cdc quarantine list|replay``) ---

    def quarantined(self, source_id: str, *, waiting_only: bool = True) -> list[dict[str, Any]]:
        """The rows of ``_cdc_quarantine`` of ``source_id`` (:func:`airflow_provider_cdc.quarantine.stored_row`:
        every column, ``row`` a dict), by ``seq``; ``waiting_only``: those not replayed yet. Empty when the sink has
        no quarantine table yet."""

    def replay_quarantined(
        self, batch: ChangeBatch, quarantine_ids: list[str], *, run_id: str | None = None,
        versions: dict[str, dict[str, Any] | None] | None = None,
    ) -> ApplyResult:
        """Load ``batch`` (quarantined changes run again through the current rules) exactly once: past the high
        water (its changes lie below it), still guarded per row by ``_cdc_position`` (a newer change to the same key
        wins), its ledger row (``batch.batch_id``,
        :func:`~airflow_provider_cdc.quarantine.replay_batch_id`), and ``replayed_batch_id`` set on
        ``quarantine_ids``, in one transaction (a sink without one: in an idempotent order it documents).
        ``applied=False`` when the ledger already has the batch."""

    def held_tables(self, source_id: str) -> dict[str, str]:
        """Source tables whose changes the sink holds back (a schema change it cannot follow), with the reason."""

    def hold_table(self, source_id: str, table: str, reason: str) -> bool:
        """Hold ``table`` (``schema.table``) back from the next batch on, with ``reason`` (e.g. stopped through the
        REST API): the same mark the schema gate writes, outside a batch, so :meth:`held_tables` lists it, its
        changes wait among :meth:`held_changes`, and :meth:`accept_table` replays them exactly once (or
        :meth:`release_table` discards them before a re-snapshot). True when it was not held already; a table held
        already keeps its first reason. A sink that cannot hold a table raises a terminal ``SinkError``."""

    def release_table(self, source_id: str, table: str) -> bool:
        """Stop holding ``table`` back before its re-snapshot (its held changes are discarded: the snapshot reads
        the table anew, and its held versions count as accepted); True when it was held."""

    def forget_source(self, source_id: str) -> int:
        """Delete the source's ledger rows (a whole re-snapshot starts its ``seq`` again); returns how many."""

    def reset_table(self, table: TableSchema | str) -> bool:
        """Empty one sink table before its re-snapshot; True when it existed."""

    # --- audit trail (:mod:`airflow_provider_cdc.connectors.audit`) ---

    def record_audit(self, entries: list[AuditEntry]) -> int:
        """Store ``entries`` in ``_cdc_audit`` (made when absent), each once: an entry whose ``audit_id`` is there
        already is left as it is (a retried commit, a command run again). Returns how many were new."""

    def audit_entries(
        self, source_id: str | None = None, *, batch_id: str | None = None, action: str | None = None,
        since: dt.datetime | None = None, limit: int = 100,
    ) -> list[AuditEntry]:
        """Entries of ``_cdc_audit``, newest first (:func:`~airflow_provider_cdc.connectors.audit.newest_first`),
        at most ``limit``, of ``source_id``, ``batch_id`` and ``action`` and from ``since`` on when given. Empty
        when the sink has no audit table yet. Survives ``forget_source``: the trail is history."""

    def close(self) -> None: ...
