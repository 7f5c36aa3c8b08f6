"""PostgreSQL sink: apply a :class:`~airflow_provider_cdc.events.ChangeBatch` exactly once.

One batch is one transaction (DESIGN section 3, exactly-once protocol): the tables are created or widened, the
rows merged and the ``_cdc_ledger`` row inserted, then everything commits together. A crash anywhere before the
commit leaves nothing behind; a replay after it finds the batch in the ledger and does nothing.

Three guards make replays harmless at every granularity:

* the **ledger**: the same ``batch_id`` is applied once;
* the **high water**: events whose ``seq`` is at or below the highest ``seq_to`` committed for the source were
  loaded by an earlier batch that overlapped this one, so they are dropped;
* the **row guard**: a row is changed only by an event at least as new as its ``_cdc_position``, so an older
  change never overwrites a newer one and re-applying the same change is a no-op.

Every schema change passes the schema gate (:mod:`airflow_provider_cdc.schema.gate`) inside that transaction: it
is registered as a version, followed when the source's policy allows it, or holds its table, whose changes are then
kept in the sink (held changes) while the other tables keep flowing. ``schema accept`` (:meth:`PgSink.accept_table`)
migrates a held table and replays its held changes exactly once; ``resnapshot --table``
(:meth:`PgSink.release_table`) discards them instead.

This module orchestrates; rows are merged in :mod:`.merge`, tables created and migrated in :mod:`.ddl`, the
ledger and held tables kept in :mod:`.ledger` (the row itself is the shared
:func:`~airflow_provider_cdc.connectors.ledger.ledger_row`), and schema versions and held changes in :mod:`.registry`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from typing import Any, Literal

import psycopg
import pyarrow as pa
from psycopg import sql

from airflow_provider_cdc.connectors.audit import AuditEntry, batch_audit_entries
from airflow_provider_cdc.connectors.base import AcceptResult, ApplyResult, SinkCapabilities
from airflow_provider_cdc.connectors.ledger import LEDGER_TABLE, LedgerRow, ledger_row
from airflow_provider_cdc.connectors.postgres.ddl import TableDdl, TableHeld, ensure_schema
from airflow_provider_cdc.connectors.postgres.ledger import HELD_TABLE, DuplicateBatch, LedgerStorage
from airflow_provider_cdc.connectors.postgres.merge import RowMerge
from airflow_provider_cdc.connectors.postgres.registry import HELD_CHANGES_TABLE, RegistryStorage
from airflow_provider_cdc.connectors.postgres.types import POSTGRES_DIALECT
from airflow_provider_cdc.connectors.recapture import is_stale, stale_reason
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.quarantine import log_replay, refuse_held, sink_records
from airflow_provider_cdc.schema.gate import (
    AcceptPlan,
    GateDecision,
    HeldChunk,
    decide,
    log_held,
    plan_accept,
)
from airflow_provider_cdc.schema.policy import DEFAULT_POLICY, SchemaPolicy
from airflow_provider_cdc.schema.registry import SchemaVersion, subject_of
from airflow_provider_cdc.tables import TableSchema
from airflow_provider_cdc.values import LOGICAL_TYPES

__all__ = ["CAPABILITIES", "PgSink", "TableHeld"]

log = logging.getLogger("airflow_provider_cdc.sink.postgres")

DeleteMode = Literal["hard", "soft"]

CAPABILITIES = SinkCapabilities(
    native_types=frozenset(LOGICAL_TYPES), dialect=POSTGRES_DIALECT, transactional=True, merge_by_key=True,
    soft_delete=True, stores_other_exactly=True, quarantine=True,
)


class PgSink(LedgerStorage, RegistryStorage, TableDdl, RowMerge):
    """Applies change batches to tables in one PostgreSQL schema, with the ledger in ``ledger_schema``.

    The ledger goes in ``target_schema`` unless told otherwise, so that a sink role needs rights on its own schema
    only (PostgreSQL 15 and later no longer let every role create tables in ``public``).

    Sink tables keep the source table's name (``<target_schema>.<table>``), the source's columns (types from
    :mod:`.types`), its primary key, and the bookkeeping columns ``_cdc_op``, ``_cdc_position`` (the ``seq`` of the
    row's last event) and ``_cdc_ts``; with ``delete_mode="soft"`` also ``_cdc_deleted_at``: deleted rows stay,
    marked, and come back to life if the key is inserted again.
    """

    capabilities = CAPABILITIES

    def __init__(
        self,
        dsn: str,
        *,
        sink_id: str,
        target_schema: str = "public",
        delete_mode: DeleteMode = "hard",
        ledger_schema: str | None = None,
    ) -> None:
        if delete_mode not in ("hard", "soft"):
            raise ValueError(f"sink {sink_id!r}: delete_mode must be 'hard' or 'soft', not {delete_mode!r}")
        self.sink_id = sink_id
        self.target_schema = target_schema
        self.delete_mode: DeleteMode = delete_mode
        self.ledger_schema = ledger_schema or target_schema
        self._ledger = sql.Identifier(self.ledger_schema, LEDGER_TABLE)
        self._held = sql.Identifier(self.ledger_schema, HELD_TABLE)
        self._type_exists: dict[str, bool] = {}
        self._reported_dropped: set[tuple[str, tuple[str, ...]]] = set()
        self._ledger_current = False
        try:
            # COPY sends Arrow's UTF-8 CSV as it is, so the session must expect UTF-8 whatever the server default.
            self._conn = psycopg.connect(dsn, autocommit=False, client_encoding="utf8")
        except psycopg.Error as exc:
            raise SinkError(sink_id, f"cannot connect to the sink database: {exc}") from exc

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PgSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- Sink protocol -----------------------------------------------------------------------------------------

    def ensure_tables(self, schemas: Iterable[TableSchema]) -> None:
        """Create missing sink tables and the ledger, and add columns the source gained, in one transaction."""
        schemas = list(schemas)
        where: dict[str, str | None] = {"table": None}
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                self._ensure_ledger(cur)
                if schemas:
                    ensure_schema(cur, self.target_schema)
                for schema in schemas:
                    where["table"] = self._table_label(schema)
                    self._ensure_table(cur, schema)
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot create or alter the table: {exc}", table=where["table"]) from exc

    def has_batch(self, batch_id: str) -> bool:
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                return self._ledger_exists(cur) and self._ledger_has(cur, batch_id)
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot read the ledger: {exc}", batch_id=batch_id) from exc

    def high_water(self, source_id: str) -> int:
        """The highest ``seq_to`` committed for ``source_id`` (0 when none)."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                return self._high_water(cur, source_id) if self._ledger_exists(cur) else 0
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot read the ledger for source {source_id!r}: {exc}") from exc

    def last_committed(self, source_id: str) -> dict[str, Any] | None:
        """``position_to`` of the ledger row with the highest ``seq_to`` for ``source_id`` (None when none).

        What the commit step stores when the position Variable is missing or behind: the sink is the truth."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                if not self._ledger_exists(cur):
                    return None
                row = self._last_committed(cur, source_id)
                return None if row is None else row.position_to
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot read the ledger for source {source_id!r}: {exc}") from exc

    def ledger_rows(self, source_id: str, limit: int = 100) -> list[LedgerRow]:
        """The ``limit`` latest ledger rows of ``source_id``, newest first (empty without a ledger)."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                return self._recent_rows(cur, source_id, limit) if self._ledger_exists(cur) else []
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot read the ledger for source {source_id!r}: {exc}") from exc

    def apply(
        self,
        batch: ChangeBatch,
        *,
        run_id: str | None = None,
        versions: dict[str, dict[str, Any] | None] | None = None,
        policy: SchemaPolicy | None = None,
    ) -> ApplyResult:
        """Apply ``batch`` and record it in the ledger, in one transaction; a batch already there is a no-op.

        ``versions`` (``rule_versions``, ``stage_versions``) go into the ledger row; its ``schema_versions`` are the
        schema gate's (:func:`~airflow_provider_cdc.schema.gate.decide` under ``policy``, default ``evolve``), which
        runs in the same transaction: the versions it registers, the tables it holds and their held changes commit
        with the data, or not at all."""
        started = time.monotonic()
        result = ApplyResult(batch_id=batch.batch_id, applied=False)
        where: dict[str, str | None] = {"table": None, "step": "apply"}
        decision: GateDecision | None = None
        try:
            with self._conn.transaction() as tx, self._conn.cursor() as cur:
                self._lock_source(cur, batch.source_id)
                self._ensure_ledger(cur)
                if self._ledger_has(cur, batch.batch_id):
                    raise psycopg.Rollback(tx)
                # The ledger row is what makes a replay a no-op: it must be as durable as the data it vouches for,
                # whatever the role or database sets (synchronous_commit = off would lose it on a server crash).
                self._force_durable_commit(cur)
                high_water = self._high_water(cur, batch.source_id)
                if is_stale(batch, high_water):  # checked again under the lock: another load may just have committed
                    result.stale = stale_reason(batch, high_water)
                    log.warning("sink %s: %s", self.sink_id, result.stale)
                    raise psycopg.Rollback(tx)
                decision = decide(batch, self._read_versions(cur, batch.source_id),
                                  self._held_tables(cur, batch.source_id), policy, high_water)
                # A table the sink cannot follow is held through the decision (its changes become held changes).
                self._migrate_tables(cur, decision.batch, high_water, where, decision.all_held, decision.hold,
                                     decision.drops)
                result.schema_changes = sum(1 for change in batch.schema_changes if change.seq > high_water)
                self._merge_tables(cur, decision.batch, high_water, result, where)
                self._drop_after_merge(cur, decision, where)
                self._store_decision(cur, decision)
                self._insert_quarantine(cur, sink_records(batch.quarantine, source_id=batch.source_id,
                                                          batch_id=batch.batch_id, high_water=high_water))
                result.quarantined = batch.quarantined_count
                result.held_tables = decision.all_held
                result.newly_held = dict(decision.held)
                result.schema_versions = decision.registry.in_effect()
                previous = self._last_committed(cur, batch.source_id)
                row = ledger_row(batch, result, high_water=high_water, run_id=run_id,
                                 versions={**(versions or {}), "schema_versions": decision.ledger_versions()})
                self._insert_ledger(cur, row)
                # After the ledger row, which tells a concurrent commit of the batch apart: the audit rows commit
                # with the batch or not at all.
                self._insert_audit(cur, batch_audit_entries(row, decision, versions=versions, previous=previous,
                                                            quarantined=batch.quarantined_count))
                result.applied = True
                where["step"] = "commit"
        except DuplicateBatch:
            result.applied = False
        except psycopg.Error as exc:
            if where["step"] == "commit":
                message = (f"the commit did not complete ({_describe(exc)}); if the connection was lost its outcome "
                           f"is unknown: apply the batch again, the ledger recognises it if it did commit")
            else:
                message = f"apply failed, nothing was written: {_describe(exc)}"
            raise SinkError(self.sink_id, message, table=where["table"], batch_id=batch.batch_id,
                            terminal=_is_terminal(exc)) from exc
        except pa.ArrowException as exc:
            raise SinkError(self.sink_id, f"apply failed, nothing was written: cannot fold the changes: {exc}",
                            table=where["table"], batch_id=batch.batch_id, terminal=True) from exc
        result.seconds = time.monotonic() - started
        if result.applied:
            log.info(
                "sink %s: batch %s applied: %d upserted, %d deleted, %d tables truncated, %d replayed events "
                "skipped, %d schema changes, %d changes quarantined, in %.3f s",
                self.sink_id, batch.batch_id, result.upserted, result.deleted, result.truncated_tables,
                result.skipped_replayed, result.schema_changes, result.quarantined, result.seconds,
            )
            if decision is not None:
                log_held(decision, self.sink_id, f"{self.ledger_schema}.{HELD_CHANGES_TABLE}", log)
        elif result.stale is None:
            log.info("sink %s: batch %s is already in the ledger; nothing to do", self.sink_id, batch.batch_id)
        return result

    def _lock_source(self, cur: psycopg.Cursor, source_id: str) -> None:
        """Appliers (and accepts) of one source queue here, so that the ledger check, the high water, the
        registry and the held tables read after it stay true until the transaction commits."""
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    (f"{self.ledger_schema}.{LEDGER_TABLE}/{source_id}",))

    def _merge_tables(
        self, cur: psycopg.Cursor, batch: ChangeBatch, high_water: int, result: ApplyResult,
        where: dict[str, str | None],
    ) -> None:
        """Merge every table of ``batch`` (held tables are no longer in it) and count what happened."""
        for name, changes in batch.tables.items():
            schema = batch.schemas.get(name)
            if schema is None:
                raise SinkError(self.sink_id, f"the batch has changes for {name} but no schema for it",
                                table=name, batch_id=batch.batch_id)
            where["table"] = self._table_label(schema)
            stats = self._apply_table(cur, schema, changes, high_water, batch)
            result.tables[name] = stats
            result.upserted += stats["upserted"]
            result.deleted += stats["deleted"]
            result.skipped_replayed += stats["skipped_replayed"]
            result.truncated_tables += 1 if stats["truncates"] else 0
            log.info(
                "sink %s, batch %s, table %s: %d events, %d replayed (skipped), %d staged after folding, "
                "%d upserted, %d deleted, %d truncates (%d rows)",
                self.sink_id, batch.batch_id, where["table"], stats["events"], stats["skipped_replayed"],
                stats["staged"], stats["upserted"], stats["deleted"], stats["truncates"],
                stats["truncated_rows"],
            )
        where["table"] = None

    def _drop_after_merge(self, cur: psycopg.Cursor, decision: GateDecision, where: dict[str, str | None]) -> None:
        """Drop the columns the source dropped (``evolve``), after the merge: rows of the batch written before the
        drop still carried them."""
        batch = decision.batch
        for table, columns in decision.drops.items():
            schema = batch.schemas.get(table) or next(
                (change.after for change in reversed(batch.schema_changes) if change.table == table), None)
            if schema is not None and table not in decision.all_held:
                where["table"] = self._table_label(schema)
                self._drop_columns(cur, schema, columns)
        where["table"] = None

    def _store_decision(self, cur: psycopg.Cursor, decision: GateDecision) -> None:
        """What the gate decided, stored with the batch: versions (a status may change), held marks, held changes
        (a chunk already stored for this batch and table stays as it is)."""
        self._store_versions(cur, decision.registrations)
        if decision.held:
            self._ensure_held(cur)
            source_id = decision.batch.source_id
            cur.executemany(
                sql.SQL("INSERT INTO {} (source_id, source_table, reason, batch_id) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT DO NOTHING").format(self._held),
                [(source_id, table, reason, decision.batch.batch_id) for table, reason in decision.held.items()])
        self._store_chunks(cur, decision.chunks)

    # --- schema registry and held changes ------------------------------------------------------------------------

    def schema_versions(self, source_id: str) -> list[SchemaVersion]:
        """Every registered schema version of ``source_id``'s subjects, in subject and version order."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                return self._read_versions(cur, source_id)
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot read the schema versions of source {source_id!r}: "
                                          f"{_describe(exc)}") from exc

    def held_changes(self, source_id: str, table: str) -> list[HeldChunk]:
        """The changes held for ``table`` (``schema.table``), oldest first."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                return self._read_chunks(cur, source_id, table)
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot read the held changes of {table}: {_describe(exc)}",
                            table=table) from exc

    def accept_table(
        self, source_id: str, table: str, *, policy: SchemaPolicy | None = None, run_id: str | None = None
    ) -> AcceptResult:
        """Accept the held schema versions of ``table`` (``schema.table``) and replay its held changes, exactly
        once, in one transaction (:func:`~airflow_provider_cdc.schema.gate.plan_accept`).

        The sink table is migrated to the accepted schema first, converting a column in place when its type change
        is not a safe widening (a value that does not convert fails the accept, nothing changed); then the held
        changes go through the ordinary merge without the high-water filter (they are below it: the position passed
        them while they were held), still guarded per row by ``_cdc_position``. The replay is a ledger row of its
        own, ``<source_id>:accept:<table>:<seq range>``: found there, it is not replayed again."""
        started = time.monotonic()
        subject = subject_of(source_id, table)
        label: str | None = None
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                self._lock_source(cur, source_id)
                self._ensure_ledger(cur)
                held = self._held_tables(cur, source_id)
                if table not in held:
                    others = f"held tables: {', '.join(sorted(held))}" if held else "no table of it is held"
                    raise SinkError(self.sink_id, f"cannot accept {subject}: table {table} of source {source_id!r} "
                                                  f"is not held, so there is nothing to accept ({others})",
                                    table=table, terminal=True)
                self._force_durable_commit(cur)
                versions = self._read_versions(cur, source_id)
                plan = plan_accept(source_id, table, versions, self._read_chunks(cur, source_id, table), policy)
                label = self._table_label(plan.target)
                result = self._carry_out(cur, plan, source_id, run_id,
                                         {key: reason for key, reason in held.items() if key != table},
                                         versions, policy or DEFAULT_POLICY)
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"accept of {subject} failed, nothing was changed: {_describe(exc)}"
                                          f"{_resnapshot_hint(source_id, table)}",
                            table=label, terminal=_is_terminal(exc)) from exc
        except (pa.ArrowException, ValueError) as exc:
            # ValueError: plan_accept found neither a version nor held changes (a hold older than the registry).
            raise SinkError(self.sink_id, f"accept of {subject} failed, nothing was changed: cannot replay the held "
                                          f"changes: {exc}{_resnapshot_hint(source_id, table)}",
                            table=label, terminal=True) from exc
        result.seconds = time.monotonic() - started
        log.info("sink %s: accepted %s versions %s: %s, %d held events replayed (%d upserted, %d deleted) as batch "
                 "%s, in %.3f s; the table flows again", self.sink_id, subject, result.accepted_versions,
                 "replayed" if result.applied else "already in the ledger, not replayed", result.replayed_events,
                 result.upserted, result.deleted, result.batch_id, result.seconds)
        return result

    def _carry_out(
        self, cur: psycopg.Cursor, plan: AcceptPlan, source_id: str, run_id: str | None, still_held: dict[str, str],
        versions: list[SchemaVersion], policy: SchemaPolicy,
    ) -> AcceptResult:
        """The writes of :meth:`accept_table`, in its transaction."""
        batch = plan.batch
        result = AcceptResult(plan.subject, plan.table, [version.version for version in plan.registrations],
                              batch.batch_id if batch is not None else None)
        # The replay already in the ledger (an accept that committed before): only the hold is left to clear.
        result.applied = batch is None or not self._ledger_has(cur, batch.batch_id)
        if result.applied:
            self._force_table(cur, plan.target, plan.previous, source_id=source_id,
                              seq=batch.seq_from if batch is not None else 0,
                              batch_id=batch.batch_id if batch is not None else None)
            events = batch.tables.get(plan.table) if batch is not None else None
            # No high-water filter (0): the held changes are below it, the position passed them while they waited.
            stats = self._apply_table(cur, plan.target, events, 0, batch) if (
                batch is not None and events is not None) else {}
            result.replayed_events = stats.get("events", 0)
            result.upserted, result.deleted = stats.get("upserted", 0), stats.get("deleted", 0)
            self._drop_columns(cur, plan.target, plan.drops)
        self._store_versions(cur, plan.registrations)
        self._delete_chunks(cur, source_id, plan.table)
        cur.execute(sql.SQL("DELETE FROM {} WHERE source_id = %s AND source_table = %s").format(self._held),
                    (source_id, plan.table))
        if batch is not None and result.applied:
            schema_versions = plan.ledger_versions(versions, policy, still_held)
            applied = ApplyResult(batch_id=batch.batch_id, applied=True, upserted=result.upserted,
                                  deleted=result.deleted)
            self._insert_ledger(cur, ledger_row(batch, applied, high_water=0, run_id=run_id,
                                                versions={"schema_versions": schema_versions}))
        return result

    # --- quarantine ----------------------------------------------------------------------------------------------

    def quarantined(self, source_id: str, *, waiting_only: bool = True) -> list[dict[str, Any]]:
        """The rows of ``_cdc_quarantine`` of ``source_id`` by ``seq`` (``waiting_only``: not replayed yet)."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                return self._read_quarantine(cur, source_id, waiting_only)
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot read the quarantine of source {source_id!r}: "
                                          f"{_describe(exc)}") from exc

    def replay_quarantined(
        self, batch: ChangeBatch, quarantine_ids: list[str], *, run_id: str | None = None,
        versions: dict[str, dict[str, Any] | None] | None = None,
    ) -> ApplyResult:
        """Load quarantined changes run again through the current rules, exactly once, in one transaction: the
        tables gain the columns they need, the changes are merged without the high-water filter (they lie below
        it) but guarded per row by ``_cdc_position``, ``replayed_batch_id`` is set on ``quarantine_ids`` and the
        replay's ledger row is inserted. Found in the ledger, the batch is not loaded again."""
        started = time.monotonic()
        result = ApplyResult(batch_id=batch.batch_id, applied=False)
        where: dict[str, str | None] = {"table": None}
        try:
            with self._conn.transaction() as tx, self._conn.cursor() as cur:
                self._lock_source(cur, batch.source_id)
                self._ensure_ledger(cur)
                if self._ledger_has(cur, batch.batch_id):
                    raise psycopg.Rollback(tx)
                self._force_durable_commit(cur)
                refuse_held(self.sink_id, batch, self._held_tables(cur, batch.source_id))
                if batch.tables:
                    ensure_schema(cur, self.target_schema)
                for name, changes in batch.tables.items():
                    schema = batch.schemas[name]
                    where["table"] = self._table_label(schema)
                    self._ensure_table(cur, schema, source_id=batch.source_id, batch_id=batch.batch_id)
                    stats = self._apply_table(cur, schema, changes, 0, batch)
                    result.tables[name] = stats
                    result.upserted += stats["upserted"]
                    result.deleted += stats["deleted"]
                where["table"] = None
                self._mark_replayed(cur, batch.source_id, quarantine_ids, batch.batch_id)
                self._insert_ledger(cur, ledger_row(batch, result, high_water=0, run_id=run_id, versions=versions))
                result.applied = True
        except DuplicateBatch:
            result.applied = False
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"replay of quarantined changes failed, nothing was written: "
                                          f"{_describe(exc)}", table=where["table"], batch_id=batch.batch_id,
                            terminal=_is_terminal(exc)) from exc
        except pa.ArrowException as exc:
            raise SinkError(self.sink_id, f"replay of quarantined changes failed, nothing was written: {exc}",
                            table=where["table"], batch_id=batch.batch_id, terminal=True) from exc
        result.seconds = time.monotonic() - started
        log_replay(log, self.sink_id, result)
        return result

    # --- audit trail ---------------------------------------------------------------------------------------------

    def record_audit(self, entries: list[AuditEntry]) -> int:
        """Store ``entries`` in ``_cdc_audit`` (made when absent), each once by ``audit_id``, in one transaction."""
        if not entries:
            return 0
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                self._ensure_ledger(cur)
                self._force_durable_commit(cur)
                return self._insert_audit(cur, list(entries))
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot write the audit trail: {_describe(exc)}") from exc

    def audit_entries(
        self, source_id: str | None = None, *, batch_id: str | None = None, action: str | None = None,
        since: dt.datetime | None = None, limit: int = 100,
    ) -> list[AuditEntry]:
        """Entries of ``_cdc_audit``, newest first (none when it was never made)."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                return self._read_audit(cur, source_id, batch_id, action, since, limit)
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot read the audit trail: {_describe(exc)}") from exc

    # --- re-snapshot ---------------------------------------------------------------------------------------------

    def forget_source(self, source_id: str) -> int:
        """Delete the ledger rows of ``source_id`` (its high water drops to 0): a re-snapshot starts it anew.

        Returns how many rows went. Its own transaction; a sink without a ledger has nothing to forget."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                if not self._ledger_exists(cur):
                    return 0
                self._force_durable_commit(cur)
                cur.execute(sql.SQL("DELETE FROM {} WHERE source_id = %s").format(self._ledger), (source_id,))
                deleted = max(cur.rowcount, 0)
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot delete the ledger rows of source {source_id!r}: "
                                          f"{_describe(exc)}") from exc
        log.info("sink %s: forgot source %s (%d ledger rows deleted)", self.sink_id, source_id, deleted)
        return deleted

    def reset_table(self, table: TableSchema | str) -> bool:
        """Empty the sink table of ``table`` (a source schema or the sink table's name) before a re-snapshot.

        ``TRUNCATE``, in its own transaction; returns whether the table existed. A ``schema.table`` name whose
        sink table does not exist under that exact name is taken as a source name (sink tables drop the schema).
        """
        label = None
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                name = table.name if isinstance(table, TableSchema) else table
                if not isinstance(table, TableSchema) and "." in name and self._existing_columns(cur, name) is None:
                    name = name.partition(".")[2]
                label = f"{self.target_schema}.{name}"
                if self._existing_columns(cur, name) is None:
                    log.info("sink %s: table %s does not exist; nothing to reset", self.sink_id, label)
                    return False
                self._force_durable_commit(cur)
                cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(self.target_schema, name)))
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot empty the table: {_describe(exc)}", table=label) from exc
        log.info("sink %s: emptied table %s for a re-snapshot", self.sink_id, label)
        return True

    def held_tables(self, source_id: str) -> dict[str, str]:
        """Source tables of ``source_id`` whose changes the sink holds back (a schema change it cannot follow),
        with the reason. The other tables keep flowing; ``resnapshot --table`` releases one."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                return self._held_tables(cur, source_id)
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot read the held tables of source {source_id!r}: {exc}") from exc

    def hold_table(self, source_id: str, table: str, reason: str) -> bool:
        """Hold ``table`` (``schema.table`` of the source) from the next batch on, as the schema gate holds one, with
        ``reason``: its changes wait among the held changes, the other tables flow, and :meth:`accept_table` replays
        them. Written outside a batch, under the source's lock. True when it was not held already (a table held
        already keeps its first mark)."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                self._lock_source(cur, source_id)
                self._ensure_held(cur)
                cur.execute(sql.SQL("INSERT INTO {} (source_id, source_table, reason) VALUES (%s, %s, %s) "
                                    "ON CONFLICT DO NOTHING").format(self._held), (source_id, table, reason))
                held = bool(cur.rowcount)
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot hold table {table}: {_describe(exc)}") from exc
        if held:
            log.info("sink %s: holding table %s of source %s: %s", self.sink_id, table, source_id, reason)
        return held

    def release_table(self, source_id: str, table: str) -> bool:
        """Stop holding ``table`` (``schema.table`` of the source) back before its re-snapshot: its held changes
        are discarded (the snapshot reads the table anew), its held versions count as accepted, and its sink table
        is dropped so that the snapshot creates it again with the source's current columns. True when it was held.
        """
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                self._lock_source(cur, source_id)
                if table not in self._held_tables(cur, source_id):
                    return False
                self._force_durable_commit(cur)
                cur.execute(sql.SQL("DELETE FROM {} WHERE source_id = %s AND source_table = %s").format(self._held),
                            (source_id, table))
                discarded = self._delete_chunks(cur, source_id, table)
                accepted = self._accept_held_versions(cur, source_id, table)
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
                    sql.Identifier(self.target_schema, table.partition(".")[2])))
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot release table {table}: {_describe(exc)}") from exc
        log.info("sink %s: released table %s of source %s: %d chunks of held changes discarded, %d held versions "
                 "marked accepted (its sink table is created anew by the re-snapshot)", self.sink_id, table,
                 source_id, discarded, accepted)
        return True


def _resnapshot_hint(source_id: str, table: str) -> str:
    return (f". The table stays held; re-snapshot it instead: python -m airflow_provider_cdc resnapshot {source_id} "
            f"--table {table}")


def _is_terminal(exc: psycopg.Error) -> bool:
    """A value the sink's type refuses, or a constraint it breaks, fails the same way on every retry; connection
    loss, locks and serialization failures are transient."""
    return isinstance(exc, (psycopg.DataError, psycopg.IntegrityError))


def _describe(exc: psycopg.Error) -> str:
    """The server's message plus where it happened (COPY line and column, for a value that does not fit)."""
    diag = exc.diag
    text = diag.message_primary or str(exc)
    if diag.message_detail:
        text += f" ({diag.message_detail})"
    if diag.context:
        text += f" [{diag.context.strip()}]"
    return text
