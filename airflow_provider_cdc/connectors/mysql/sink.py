"""MySQL and MariaDB sink: apply a :class:`~airflow_provider_cdc.events.ChangeBatch` exactly once.

The contract is the PostgreSQL sink's (:mod:`airflow_provider_cdc.connectors.postgres.sink`), with the same three
guards: the **ledger** (a ``batch_id`` is applied once), the **high water** (events at or below the highest
``seq_to`` committed for the source were loaded by an overlapping batch and are dropped) and the **row guard** (a
row changes only for an event at least as new as its ``_cdc_position``). Every schema change passes the schema gate
(:func:`airflow_provider_cdc.schema.gate.decide`), with the same outcomes: followed, or its table held (its changes
kept in ``_cdc_held_changes``) while the others flow; ``schema accept`` replays held changes exactly once,
``resnapshot --table`` discards them.

**Why one batch is two phases here.** MySQL commits implicitly on every DDL statement (``CREATE``, ``ALTER``,
``DROP``, ``TRUNCATE``), so a table migration cannot share the data's transaction as it does in PostgreSQL. An
apply therefore runs, holding the source's named lock from start to end (:mod:`.sink_storage`):

1. the ledger check (a batch already there is a no-op), the high water, the registry and the held tables are read,
   and the gate decides, in memory;
2. **DDL**: the tables the batch needs are created, migrated, or have their dropped columns dropped
   (:mod:`.sink_ddl`), each migration planned in full before its first statement, each statement committing on
   its own;
3. **data**: one InnoDB transaction merges the rows (:mod:`.sink_merge`), stores the gate's versions, held marks
   and held changes, the batch's quarantined changes (``_cdc_quarantine``, :mod:`airflow_provider_cdc.quarantine`;
   the table itself is made in phase 2), inserts the ledger row (the shared
   :func:`~airflow_provider_cdc.connectors.ledger.ledger_row`), and commits.

A crash (or an error) between 2 and 3, or inside 3, leaves no ledger row, no version, no held change, no quarantined
change and no row of the batch: only tables already shaped for it. Its replay reads the same registry, so the gate
decides the same; the migration is planned again from the tables as they are, finds the steps already done done
(every step compares equal once made; see :mod:`.sink_ddl`), and the data transaction runs as if nothing had
happened. A failed apply may thus leave a new table empty (``_cdc_quarantine`` too), or a new column in place, never
data. ``schema accept`` and ``release_table`` are two-phased the same way (their DDL first, each step idempotent).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

import pyarrow as pa
import pymysql
from pymysql.cursors import Cursor

from airflow_provider_cdc.connectors.audit import AuditEntry, batch_audit_entries
from airflow_provider_cdc.connectors.base import AcceptResult, ApplyResult, SinkCapabilities
from airflow_provider_cdc.connectors.ledger import LedgerRow, ledger_row
from airflow_provider_cdc.connectors.mysql.connection import MYSQL_DIALECT, connect, is_mariadb
from airflow_provider_cdc.connectors.mysql.sink_ddl import TableDdl, TableHeld
from airflow_provider_cdc.connectors.mysql.sink_merge import RowMerge
from airflow_provider_cdc.connectors.mysql.sink_storage import (
    DEFAULT_LOCK_TIMEOUT,
    HELD_CHANGES_TABLE,
    MAX_BATCH_ID_LENGTH,
    DuplicateBatch,
    SinkStorage,
    describe,
    fetch_one,
    is_transient,
    run,
    sql_table,
)
from airflow_provider_cdc.connectors.mysql.sink_types import (
    MARIADB_JSON_MAX_DEPTH,
    NOPAD_BINARY_COLLATIONS,
    identifier_problem,
)
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

__all__ = ["CAPABILITIES", "MySqlSink", "TableHeld"]

log = logging.getLogger("airflow_provider_cdc.sink.mysql")

DeleteMode = Literal["hard", "soft"]
T = TypeVar("T")
_WARNED_NOT_DURABLE: set[tuple[str, int]] = set()

CAPABILITIES = SinkCapabilities(
    # uuid is kept as char(36) text and ``other`` as the source's text (exact for a MySQL source's own types).
    native_types=frozenset({"integer", "decimal", "float", "boolean", "text", "timestamptz", "timestamp", "date",
                            "time", "json", "binary"}),
    dialect=MYSQL_DIALECT, transactional=True, merge_by_key=True, soft_delete=True, stores_other_exactly=True,
    quarantine=True,
)


class MySqlSink(SinkStorage, TableDdl, RowMerge):
    """Applies change batches to tables in one MySQL or MariaDB database, with the ledger in ``ledger_schema``.

    ``url`` is ``mysql://user:password@host:port/database``; ``target_schema`` is the sink database (created when
    absent); the ledger goes there too unless ``ledger_schema`` says otherwise. Sink tables keep the source table's
    name, its columns (types from :mod:`.sink_types`), its primary key, and the bookkeeping columns ``_cdc_op``,
    ``_cdc_position`` (the ``seq`` of the row's last event) and ``_cdc_ts``; with ``delete_mode="soft"`` also
    ``_cdc_deleted_at``: deleted rows stay, marked, and come back to life if the key is inserted again.
    """

    capabilities = CAPABILITIES

    def __init__(
        self,
        url: str,
        *,
        sink_id: str,
        target_schema: str,
        delete_mode: DeleteMode | str = "hard",
        ledger_schema: str | None = None,
    ) -> None:
        if delete_mode not in ("hard", "soft"):
            raise ValueError(f"sink {sink_id!r}: delete_mode must be 'hard' or 'soft', not {delete_mode!r}")
        for what, name in (("target_schema", target_schema), ("ledger_schema", ledger_schema or target_schema)):
            problem = identifier_problem(name)
            if problem:
                raise ValueError(f"sink {sink_id!r}: {what} {name!r} cannot be a MySQL database name: {problem}")
        self.sink_id = sink_id
        self.target_schema = target_schema
        self.delete_mode = delete_mode
        self.ledger_schema = ledger_schema or target_schema
        self.lock_timeout = DEFAULT_LOCK_TIMEOUT
        self.stage_method = "load_data"
        self._known_tables: set[str] = set()
        self._reported_dropped: set[tuple[str, tuple[str, ...]]] = set()
        self._type_exists_cache: dict[str, bool] = {}
        try:
            self._conn = connect(url, autocommit=False)
        except pymysql.err.MySQLError as exc:
            raise SinkError(sink_id, f"cannot connect to the sink database: {describe(exc)}",
                            terminal=not is_transient(exc)) from exc
        try:
            self._prepare_session()
        except pymysql.err.MySQLError as exc:
            self.close()
            raise SinkError(sink_id, f"cannot prepare the sink session: {describe(exc)}",
                            terminal=not is_transient(exc)) from exc

    def _prepare_session(self) -> None:
        with self._conn.cursor() as cur:
            # Waits for a table's metadata lock end (and are retried) instead of hanging for a day.
            run(cur, "SET SESSION lock_wait_timeout = 600")
            try:
                # A TIMESTAMP column must never set itself (with OFF, a NOT NULL one becomes ON UPDATE
                # CURRENT_TIMESTAMP; the sink's other columns are declared NULL, which prevents it anyway).
                run(cur, "SET SESSION explicit_defaults_for_timestamp = 1")
            except pymysql.err.OperationalError as exc:  # MySQL 8 restricts it to SESSION_VARIABLES_ADMIN
                log.debug("sink %s: explicit_defaults_for_timestamp stays as it is: %s", self.sink_id, describe(exc))
            lower, durable = fetch_one(cur, "SELECT @@lower_case_table_names, @@innodb_flush_log_at_trx_commit")
            self._lower_case_table_names = int(lower)
            run(cur, "SELECT COLLATION_NAME FROM information_schema.COLLATIONS WHERE COLLATION_NAME IN (%s, %s, %s)",
                NOPAD_BINARY_COLLATIONS)
            found = {name for (name,) in cur.fetchall()}
        self._conn.rollback()
        self._binary_collation = next((name for name in NOPAD_BINARY_COLLATIONS if name in found), "utf8mb4_bin")
        # MariaDB's JSON validates its documents, up to a depth; MySQL's native JSON reports its own limit by name.
        self.json_max_depth = MARIADB_JSON_MAX_DEPTH if is_mariadb(self._conn) else None
        server = (self._conn.host, self._conn.port)
        if int(durable) != 1 and server not in _WARNED_NOT_DURABLE:
            _WARNED_NOT_DURABLE.add(server)  # once per server and process, not per task
            log.warning("sink %s: the server runs with innodb_flush_log_at_trx_commit=%s: a server crash can lose the "
                        "last committed batches, ledger rows included, after the position moved past them. Set it to "
                        "1 on a sink whose batches must survive a crash", self.sink_id, durable)

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        try:
            self._conn.close()
        except pymysql.err.Error:
            pass  # already closed

    def __enter__(self) -> MySqlSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _rollback_quietly(self) -> None:
        try:
            self._conn.rollback()
        except pymysql.err.Error:
            log.debug("sink %s: rollback failed (the connection is gone)", self.sink_id, exc_info=True)

    def _read(self, what: str, read: Callable[[Cursor], T], *, table: str | None = None,
              batch_id: str | None = None) -> T:
        """Run ``read`` in a short transaction (ended at once: an open one would hold metadata locks)."""
        try:
            with self._conn.cursor() as cur:
                return read(cur)
        except pymysql.err.MySQLError as exc:
            raise SinkError(self.sink_id, f"cannot read {what}: {describe(exc)}", table=table, batch_id=batch_id,
                            terminal=not is_transient(exc)) from exc
        finally:
            self._rollback_quietly()

    # --- Sink protocol -----------------------------------------------------------------------------------------

    def ensure_tables(self, schemas: Iterable[TableSchema]) -> None:
        """Create missing sink tables and the ledger, and add columns the source gained (each statement commits on
        its own, see the module docstring)."""
        schemas = list(schemas)
        where: dict[str, str | None] = {"table": None}
        try:
            with self._conn.cursor() as cur:
                self._ensure_bookkeeping(cur)
                if schemas:
                    self._ensure_database(cur, self.target_schema)
                for schema in schemas:
                    where["table"] = self._table_label(schema)
                    self._ensure_table(cur, schema)
        except pymysql.err.MySQLError as exc:
            raise SinkError(self.sink_id, f"cannot create or alter the table: {describe(exc)}", table=where["table"],
                            terminal=not is_transient(exc)) from exc
        finally:
            self._rollback_quietly()

    def has_batch(self, batch_id: str) -> bool:
        return self._read("the ledger", lambda cur: self._ledger_exists(cur) and self._ledger_has(cur, batch_id),
                          batch_id=batch_id)

    def high_water(self, source_id: str) -> int:
        """The highest ``seq_to`` committed for ``source_id`` (0 when none)."""
        return self._read(f"the ledger for source {source_id!r}",
                          lambda cur: self._high_water(cur, source_id) if self._ledger_exists(cur) else 0)

    def last_committed(self, source_id: str) -> dict[str, Any] | None:
        """``position_to`` of the ledger row with the highest ``seq_to`` for ``source_id`` (None when none).

        What the commit step stores when the position Variable is missing or behind: the sink is the truth."""
        def read(cur: Cursor) -> dict[str, Any] | None:
            row = self._last_committed(cur, source_id) if self._ledger_exists(cur) else None
            return None if row is None else row.position_to

        return self._read(f"the ledger for source {source_id!r}", read)

    def ledger_rows(self, source_id: str, limit: int = 100) -> list[LedgerRow]:
        """The ``limit`` latest ledger rows of ``source_id``, newest first (empty without a ledger)."""
        return self._read(f"the ledger for source {source_id!r}",
                          lambda cur: self._recent_rows(cur, source_id, limit) if self._ledger_exists(cur) else [])

    def apply(
        self,
        batch: ChangeBatch,
        *,
        run_id: str | None = None,
        versions: dict[str, dict[str, Any] | None] | None = None,
        policy: SchemaPolicy | None = None,
    ) -> ApplyResult:
        """Apply ``batch`` and record it in the ledger (module docstring: DDL first, then one transaction for the
        data, the gate's versions, held changes and the ledger row); a batch already there is a no-op.

        ``versions`` (``rule_versions``, ``stage_versions``) go into the ledger row; its ``schema_versions`` are the
        schema gate's (:func:`~airflow_provider_cdc.schema.gate.decide` under ``policy``, default ``evolve``)."""
        started = time.monotonic()
        result = ApplyResult(batch_id=batch.batch_id, applied=False)
        where: dict[str, str | None] = {"table": None, "step": "apply"}
        decision: GateDecision | None = None
        if len(batch.batch_id) > MAX_BATCH_ID_LENGTH:
            raise SinkError(self.sink_id, f"the batch id has {len(batch.batch_id)} characters, more than the "
                                          f"{MAX_BATCH_ID_LENGTH} the ledger's key holds; shorten the source id",
                            batch_id=batch.batch_id[:80], terminal=True)
        try:
            with self._source_lock(batch.source_id), self._conn.cursor() as cur:
                try:
                    decision = self._apply_locked(cur, batch, run_id, versions, policy, result, where)
                except BaseException:
                    self._rollback_quietly()
                    raise
        except DuplicateBatch:
            result.applied = False
        except pymysql.err.MySQLError as exc:
            if where["step"] == "commit":
                message = (f"the commit did not complete ({describe(exc)}); if the connection was lost its outcome "
                           f"is unknown: apply the batch again, the ledger recognises it if it did commit")
            elif where["step"] == "migrate":
                message = (f"the table migration this batch needs failed, nothing of its data was written: "
                           f"{describe(exc)}. Steps that completed stay (each DDL statement commits); applying the "
                           f"batch again continues from there")
            else:
                message = (f"apply failed, nothing of this batch was written (the tables it needs may already be "
                           f"created or migrated; applying it again continues from there): {describe(exc)}")
            raise SinkError(self.sink_id, message, table=where["table"], batch_id=batch.batch_id,
                            terminal=not is_transient(exc)) from exc
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

    def _apply_locked(
        self, cur: Cursor, batch: ChangeBatch, run_id: str | None, versions: dict[str, dict[str, Any] | None] | None,
        policy: SchemaPolicy | None, result: ApplyResult, where: dict[str, str | None],
    ) -> GateDecision | None:
        """The phases of :meth:`apply`, under the source's lock."""
        self._ensure_bookkeeping(cur)
        self._conn.begin()
        if self._ledger_has(cur, batch.batch_id):
            self._conn.rollback()
            return None
        high_water = self._high_water(cur, batch.source_id)
        if is_stale(batch, high_water):  # checked again under the lock: another load may just have committed
            result.stale = stale_reason(batch, high_water)
            log.warning("sink %s: %s", self.sink_id, result.stale)
            self._conn.rollback()
            return None
        decision = decide(batch, self._read_versions(cur, batch.source_id), self._held_tables(cur, batch.source_id),
                          policy, high_water)
        self._conn.rollback()  # the reads are done; the DDL below would end the transaction anyway
        where["step"] = "migrate"
        if batch.quarantined_count:
            self._ensure_quarantine(cur)
        # A table the sink cannot follow is held through the decision (its changes become held changes).
        self._migrate_tables(cur, decision.batch, high_water, where, decision.all_held, decision.hold,
                             decision.drops)
        where["step"] = "apply"
        self._conn.begin()
        result.schema_changes = sum(1 for change in batch.schema_changes if change.seq > high_water)
        self._merge_tables(cur, decision.batch, high_water, result, where)
        self._store_decision(cur, decision)
        self._insert_quarantine(cur, sink_records(batch.quarantine, source_id=batch.source_id, batch_id=batch.batch_id,
                                                  high_water=high_water))
        result.quarantined = batch.quarantined_count
        result.held_tables = decision.all_held
        result.newly_held = dict(decision.held)
        result.schema_versions = decision.registry.in_effect()
        previous = self._last_committed(cur, batch.source_id)
        row = ledger_row(batch, result, high_water=high_water, run_id=run_id,
                         versions={**(versions or {}), "schema_versions": decision.ledger_versions()})
        self._insert_ledger(cur, row)
        # After the ledger row, which tells a concurrent commit of the batch apart: they commit together.
        self._insert_audit(cur, batch_audit_entries(row, decision, versions=versions, previous=previous,
                                                    quarantined=batch.quarantined_count))
        where["step"] = "commit"
        self._conn.commit()
        result.applied = True
        return decision

    def _merge_tables(self, cur: Cursor, batch: ChangeBatch, high_water: int, result: ApplyResult,
                      where: dict[str, str | None]) -> None:
        """Merge every table of ``batch`` (held tables are no longer in it) and count what happened."""
        for name, changes in batch.tables.items():
            schema = batch.schemas.get(name)
            if schema is None:
                raise SinkError(self.sink_id, f"the batch has changes for {name} but no schema for it",
                                table=name, batch_id=batch.batch_id, terminal=True)
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
                stats["staged"], stats["upserted"], stats["deleted"], stats["truncates"], stats["truncated_rows"],
            )
        where["table"] = None

    def _store_decision(self, cur: Cursor, decision: GateDecision) -> None:
        """What the gate decided, stored with the batch: versions (a status may change), held marks, held changes
        (a chunk already stored for this batch and table stays as it is)."""
        self._store_versions(cur, decision.registrations)
        if decision.held:
            self._store_held(cur, decision.batch.source_id, decision.held, decision.batch.batch_id)
        self._store_chunks(cur, decision.chunks)

    # --- schema registry and held changes ------------------------------------------------------------------------

    def schema_versions(self, source_id: str) -> list[SchemaVersion]:
        """Every registered schema version of ``source_id``'s subjects, in subject and version order."""
        return self._read(f"the schema versions of source {source_id!r}",
                          lambda cur: self._read_versions(cur, source_id))

    def held_changes(self, source_id: str, table: str) -> list[HeldChunk]:
        """The changes held for ``table`` (``schema.table``), oldest first."""
        return self._read(f"the held changes of {table}", lambda cur: self._read_chunks(cur, source_id, table),
                          table=table)

    def held_tables(self, source_id: str) -> dict[str, str]:
        """Source tables of ``source_id`` whose changes the sink holds back (a schema change it cannot follow),
        with the reason. The other tables keep flowing; ``resnapshot --table`` releases one."""
        return self._read(f"the held tables of source {source_id!r}", lambda cur: self._held_tables(cur, source_id))

    def accept_table(
        self, source_id: str, table: str, *, policy: SchemaPolicy | None = None, run_id: str | None = None
    ) -> AcceptResult:
        """Accept the held schema versions of ``table`` (``schema.table``) and replay its held changes, exactly
        once (:func:`~airflow_provider_cdc.schema.gate.plan_accept`).

        The sink table is migrated to the accepted schema first (DDL: a column whose type change is not a safe
        widening is converted in place, and a value that does not convert fails the accept, the table still
        held); then one transaction replays the held changes through the ordinary merge without the high-water
        filter (they are below it), still guarded per row by ``_cdc_position``, stores the versions as accepted,
        drops the held changes and the hold, and writes the replay's ledger row,
        ``<source_id>:accept:<table>:<seq range>``: found there, it is not replayed again."""
        started = time.monotonic()
        subject = subject_of(source_id, table)
        label: str | None = None
        try:
            with self._source_lock(source_id), self._conn.cursor() as cur:
                try:
                    self._ensure_bookkeeping(cur)
                    self._conn.begin()
                    held = self._held_tables(cur, source_id)
                    if table not in held:
                        others = f"held tables: {', '.join(sorted(held))}" if held else "no table of it is held"
                        raise SinkError(self.sink_id, f"cannot accept {subject}: table {table} of source "
                                                      f"{source_id!r} is not held, so there is nothing to accept "
                                                      f"({others})", table=table, terminal=True)
                    versions = self._read_versions(cur, source_id)
                    plan = plan_accept(source_id, table, versions, self._read_chunks(cur, source_id, table), policy)
                    label = self._table_label(plan.target)
                    applied = plan.batch is None or not self._ledger_has(cur, plan.batch.batch_id)
                    self._conn.rollback()
                    if applied:  # DDL first (each step idempotent), then the replay in one transaction
                        batch = plan.batch
                        self._force_table(cur, plan.target, plan.previous, source_id=source_id,
                                          seq=batch.seq_from if batch is not None else 0,
                                          batch_id=batch.batch_id if batch is not None else None)
                        self._drop_columns(cur, plan.target, plan.drops)
                    self._conn.begin()
                    result = self._carry_out(cur, plan, source_id, run_id, applied,
                                             {key: reason for key, reason in held.items() if key != table},
                                             versions, policy or DEFAULT_POLICY)
                    self._conn.commit()
                except BaseException:
                    self._rollback_quietly()
                    raise
        except pymysql.err.MySQLError as exc:
            raise SinkError(self.sink_id, f"accept of {subject} failed, nothing of its held changes was applied: "
                                          f"{describe(exc)}{_resnapshot_hint(source_id, table)}",
                            table=label, terminal=not is_transient(exc)) from exc
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
        self, cur: Cursor, plan: AcceptPlan, source_id: str, run_id: str | None, applied: bool,
        still_held: dict[str, str], versions: list[SchemaVersion], policy: SchemaPolicy,
    ) -> AcceptResult:
        """The data writes of :meth:`accept_table`, in its transaction."""
        batch = plan.batch
        result = AcceptResult(plan.subject, plan.table, [version.version for version in plan.registrations],
                              batch.batch_id if batch is not None else None)
        # The replay already in the ledger (an accept that committed before): only the hold is left to clear.
        result.applied = applied
        if applied and batch is not None and plan.table in batch.tables:
            # No high-water filter (0): the held changes are below it, the position passed them while they waited.
            stats = self._apply_table(cur, plan.target, batch.tables[plan.table], 0, batch)
            result.replayed_events = stats["events"]
            result.upserted, result.deleted = stats["upserted"], stats["deleted"]
        self._store_versions(cur, plan.registrations)
        self._delete_chunks(cur, source_id, plan.table)
        self._delete_held(cur, source_id, plan.table)
        if batch is not None and applied:
            schema_versions = plan.ledger_versions(versions, policy, still_held)
            done = ApplyResult(batch_id=batch.batch_id, applied=True, upserted=result.upserted,
                               deleted=result.deleted)
            self._insert_ledger(cur, ledger_row(batch, done, high_water=0, run_id=run_id,
                                                versions={"schema_versions": schema_versions}))
        return result

    # --- quarantine ----------------------------------------------------------------------------------------------

    def quarantined(self, source_id: str, *, waiting_only: bool = True) -> list[dict[str, Any]]:
        """The rows of ``_cdc_quarantine`` of ``source_id`` by ``seq`` (``waiting_only``: not replayed yet)."""
        return self._read(f"the quarantine of source {source_id!r}",
                          lambda cur: self._read_quarantine(cur, source_id, waiting_only))

    def replay_quarantined(
        self, batch: ChangeBatch, quarantine_ids: list[str], *, run_id: str | None = None,
        versions: dict[str, dict[str, Any] | None] | None = None,
    ) -> ApplyResult:
        """Load quarantined changes run again through the current rules, exactly once, under the source's lock: the
        tables gain the columns they need first (DDL, each statement idempotent), then one InnoDB transaction merges
        the changes without the high-water filter (they lie below it) but guarded per row by ``_cdc_position``, sets
        ``replayed_batch_id`` on ``quarantine_ids`` and inserts the replay's ledger row. Found in the ledger, the
        batch is not loaded again."""
        started = time.monotonic()
        result = ApplyResult(batch_id=batch.batch_id, applied=False)
        where: dict[str, str | None] = {"table": None}
        try:
            with self._source_lock(batch.source_id), self._conn.cursor() as cur:
                try:
                    self._ensure_bookkeeping(cur)
                    self._conn.begin()
                    done = self._ledger_has(cur, batch.batch_id)
                    held = self._held_tables(cur, batch.source_id)
                    self._conn.rollback()
                    if not done:
                        refuse_held(self.sink_id, batch, held)
                        if batch.tables:
                            self._ensure_database(cur, self.target_schema)
                        for name in batch.tables:
                            where["table"] = self._table_label(batch.schemas[name])
                            self._ensure_table(cur, batch.schemas[name], source_id=batch.source_id,
                                               batch_id=batch.batch_id)
                        self._conn.begin()
                        for name, changes in batch.tables.items():
                            schema = batch.schemas[name]
                            where["table"] = self._table_label(schema)
                            stats = self._apply_table(cur, schema, changes, 0, batch)
                            result.tables[name] = stats
                            result.upserted += stats["upserted"]
                            result.deleted += stats["deleted"]
                        where["table"] = None
                        self._mark_replayed(cur, batch.source_id, quarantine_ids, batch.batch_id)
                        self._insert_ledger(cur, ledger_row(batch, result, high_water=0, run_id=run_id,
                                                            versions=versions))
                        self._conn.commit()
                        result.applied = True
                except BaseException:
                    self._rollback_quietly()
                    raise
        except DuplicateBatch:
            result.applied = False
        except pymysql.err.MySQLError as exc:
            raise SinkError(self.sink_id, f"replay of quarantined changes failed, none of them was loaded (a column "
                                          f"it needed may already be added): {describe(exc)}", table=where["table"],
                            batch_id=batch.batch_id, terminal=not is_transient(exc)) from exc
        except pa.ArrowException as exc:
            raise SinkError(self.sink_id, f"replay of quarantined changes failed, nothing was written: {exc}",
                            table=where["table"], batch_id=batch.batch_id, terminal=True) from exc
        result.seconds = time.monotonic() - started
        log_replay(log, self.sink_id, result)
        return result

    # --- re-snapshot ---------------------------------------------------------------------------------------------

    # --- audit trail -------------------------------------------------------------------------------------------

    def record_audit(self, entries: list[AuditEntry]) -> int:
        """Store ``entries`` in ``_cdc_audit`` (made when absent), each once by ``audit_id``, in one transaction."""
        if not entries:
            return 0
        try:
            with self._conn.cursor() as cur:
                self._ensure_bookkeeping(cur)
                self._conn.begin()
                inserted = self._insert_audit(cur, list(entries))
                self._conn.commit()
                return inserted
        except pymysql.err.MySQLError as exc:
            self._rollback_quietly()
            raise SinkError(self.sink_id, f"cannot write the audit trail: {describe(exc)}",
                            terminal=not is_transient(exc)) from exc

    def audit_entries(
        self, source_id: str | None = None, *, batch_id: str | None = None, action: str | None = None,
        since: dt.datetime | None = None, limit: int = 100,
    ) -> list[AuditEntry]:
        """Entries of ``_cdc_audit``, newest first (none when it was never made)."""
        return self._read("the audit trail",
                          lambda cur: self._read_audit(cur, source_id, batch_id, action, since, limit))

    def forget_source(self, source_id: str) -> int:
        """Delete the ledger rows of ``source_id`` (its high water drops to 0): a re-snapshot starts it anew.

        Returns how many rows went. Its own transaction; a sink without a ledger has nothing to forget."""
        def forget(cur: Cursor) -> int:
            if not self._ledger_exists(cur):
                return 0
            self._conn.begin()
            deleted = run(cur, f"DELETE FROM {self._ledger} WHERE source_id = %s", (source_id,))
            self._conn.commit()
            return deleted

        deleted = self._read(f"the ledger rows of source {source_id!r} (to delete them)", forget)
        log.info("sink %s: forgot source %s (%d ledger rows deleted)", self.sink_id, source_id, deleted)
        return deleted

    def reset_table(self, table: TableSchema | str) -> bool:
        """Empty the sink table of ``table`` (a source schema or the sink table's name) before a re-snapshot.

        ``TRUNCATE TABLE`` (which commits on its own); returns whether the table existed. A ``schema.table`` name
        whose sink table does not exist under that exact name is taken as a source name (sink tables drop the
        schema)."""
        label = None
        try:
            with self._conn.cursor() as cur:
                name = table.name if isinstance(table, TableSchema) else table
                if not isinstance(table, TableSchema) and "." in name and self._existing_columns(cur, name) is None:
                    name = name.partition(".")[2]
                label = f"{self.target_schema}.{name}"
                if self._existing_columns(cur, name) is None:
                    log.info("sink %s: table %s does not exist; nothing to reset", self.sink_id, label)
                    return False
                run(cur, f"TRUNCATE TABLE {sql_table(self.target_schema, name)}")
        except pymysql.err.MySQLError as exc:
            raise SinkError(self.sink_id, f"cannot empty the table: {describe(exc)}", table=label,
                            terminal=not is_transient(exc)) from exc
        finally:
            self._rollback_quietly()
        log.info("sink %s: emptied table %s for a re-snapshot", self.sink_id, label)
        return True

    def hold_table(self, source_id: str, table: str, reason: str) -> bool:
        """Hold ``table`` (``schema.table`` of the source) from the next batch on, as the schema gate holds one, with
        ``reason``: its changes wait among the held changes, the other tables flow, and :meth:`accept_table` replays
        them. Written outside a batch, under the source's lock. True when it was not held already (a table held
        already keeps its first mark)."""
        try:
            with self._source_lock(source_id), self._conn.cursor() as cur:
                try:
                    self._ensure_bookkeeping(cur)  # DDL commits on its own: before the transaction
                    self._conn.begin()
                    held = table not in self._held_tables(cur, source_id)
                    if held:
                        self._store_held(cur, source_id, {table: reason}, None)
                    self._conn.commit()
                finally:
                    self._rollback_quietly()
        except pymysql.err.MySQLError as exc:
            raise SinkError(self.sink_id, f"cannot hold table {table}: {describe(exc)}",
                            terminal=not is_transient(exc)) from exc
        if held:
            log.info("sink %s: holding table %s of source %s: %s", self.sink_id, table, source_id, reason)
        return held

    def release_table(self, source_id: str, table: str) -> bool:
        """Stop holding ``table`` (``schema.table`` of the source) back before its re-snapshot: its sink table is
        dropped (so that the snapshot creates it again with the source's current columns), then, in one
        transaction, its held changes are discarded and its held versions count as accepted. True when it was held.

        The drop comes first: a crash after it leaves the table held and gone, and releasing again finishes."""
        try:
            with self._source_lock(source_id), self._conn.cursor() as cur:
                try:
                    if table not in self._held_tables(cur, source_id):
                        return False
                    self._conn.rollback()
                    run(cur, f"DROP TABLE IF EXISTS {sql_table(self.target_schema, table.partition('.')[2])}")
                    self._conn.begin()
                    self._delete_held(cur, source_id, table)
                    discarded = self._delete_chunks(cur, source_id, table)
                    accepted = self._accept_held_versions(cur, source_id, table)
                    self._conn.commit()
                finally:
                    self._rollback_quietly()
        except pymysql.err.MySQLError as exc:
            raise SinkError(self.sink_id, f"cannot release table {table}: {describe(exc)}",
                            terminal=not is_transient(exc)) from exc
        log.info("sink %s: released table %s of source %s: %d chunks of held changes discarded, %d held versions "
                 "marked accepted (its sink table is created anew by the re-snapshot)", self.sink_id, table,
                 source_id, discarded, accepted)
        return True


def _resnapshot_hint(source_id: str, table: str) -> str:
    return (f". The table stays held; re-snapshot it instead: python -m airflow_provider_cdc resnapshot {source_id} "
            f"--table {table}")
