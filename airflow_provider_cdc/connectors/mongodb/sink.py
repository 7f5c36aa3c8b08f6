"""MongoDB sink: apply a :class:`~airflow_provider_cdc.events.ChangeBatch` exactly once, as documents.

A sink table ``schema.table`` is the collection ``table`` in the database ``target_schema``; a row is a document
whose ``_id`` is its key (:mod:`.sink_values`: typed values, NULL as an absent field) plus the bookkeeping fields
``_cdc_op``, ``_cdc_position`` (int64, the ``seq`` of its last event), ``_cdc_ts`` and, with ``delete_mode="soft"``,
``_cdc_deleted_at``. The ledger, the schema registry and the held changes are collections of the database
``ledger_schema`` (default: ``target_schema``), :mod:`.sink_storage`.

**One batch is ONE multi-document transaction** (read concern ``snapshot``, write concern ``majority``): the
source's lock document, the ledger check, the schema gate's decision, every document write, the batch's quarantined
changes (``_cdc_quarantine``, :mod:`airflow_provider_cdc.quarantine`) and the ledger row commit together or not at
all. A transient failure (``TransientTransactionError``: a write conflict with another applier,
a failover; ``UnknownTransactionCommitResult``) retries the whole transaction, which is idempotent, through
pymongo's ``with_transaction`` (for up to 120 s). Collections are created before it (DDL in transactions is
limited). The three guards of every sink hold here too: the **ledger** (a batch id already there: ``applied=False``,
nothing written), the **high water** (events at or below the highest ``seq_to`` committed for the source are
replays, dropped) and the **row guard** (:mod:`.sink_merge`: a document changes only for an event at least as new as
its ``_cdc_position``). mongod ends transactions older than ``transactionLifetimeLimitSeconds`` (60 s by default):
a batch must load within that, which a ``batch_size`` of tens of thousands of changes does on ordinary hardware.

**Schema changes** pass the schema gate (:func:`~airflow_provider_cdc.schema.gate.decide`) in the transaction, as in
every sink: versions registered, ``stop`` holds the table (its changes kept in ``_cdc_held_changes``) while the
others flow, ``schema accept`` (:meth:`MongoSink.accept_table`) replays them exactly once, ``resnapshot --table``
(:meth:`MongoSink.release_table`) discards them. A collection has no schema to migrate: :mod:`.sink_schema` says what
it still follows (renames, defaults of added columns, dropped columns) and when it holds a table itself.

EDGE_CASES rows that do not apply to this sink, and why: column types and their widening (a collection has no column
types; every value carries its own BSON type), identifier quoting (names never reach the server as code: fields
travel as document keys or inside ``$literal``), a sink role limited to its own schema (the sink writes only the
databases ``target_schema`` and ``ledger_schema``), asynchronous commit (every write is ``majority`` acknowledged).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

import pyarrow as pa
from pymongo import ReadPreference
from pymongo.client_session import ClientSession
from pymongo.errors import ConfigurationError, ConnectionFailure, OperationFailure, PyMongoError, WTimeoutError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from airflow_provider_cdc.connectors.audit import AuditEntry, batch_audit_entries
from airflow_provider_cdc.connectors.base import AcceptResult, ApplyResult, SinkCapabilities
from airflow_provider_cdc.connectors.ledger import LedgerRow, ledger_row
from airflow_provider_cdc.connectors.mongodb.connection import MONGODB_DIALECT, BadMongoUrl, connect
from airflow_provider_cdc.connectors.mongodb.sink_merge import DocumentMerge
from airflow_provider_cdc.connectors.mongodb.sink_schema import (
    CollectionMigration,
    check_source_table,
    collection_name_problem,
    database_name_problem,
    drop_fields,
)
from airflow_provider_cdc.connectors.mongodb.sink_storage import (
    HELD_CHANGES_TABLE,
    Bookkeeping,
    DuplicateBatch,
    ensure_collections,
)
from airflow_provider_cdc.connectors.recapture import is_stale, stale_reason
from airflow_provider_cdc.errors import SinkError, TableHeld
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.quarantine import log_replay, refuse_held, sink_records
from airflow_provider_cdc.schema.gate import AcceptPlan, GateDecision, HeldChunk, decide, log_held, plan_accept
from airflow_provider_cdc.schema.policy import DEFAULT_POLICY, SchemaPolicy
from airflow_provider_cdc.schema.registry import SchemaVersion, subject_of
from airflow_provider_cdc.tables import Column, SchemaChange, TableSchema
from airflow_provider_cdc.values import LOGICAL_TYPES

__all__ = ["CAPABILITIES", "MongoSink"]

log = logging.getLogger("airflow_provider_cdc.sink.mongodb")

DeleteMode = Literal["hard", "soft"]
T = TypeVar("T")

CAPABILITIES = SinkCapabilities(
    # Every logical type has a BSON type but two: ``time`` (no time-of-day type; stored as its portable text) and
    # ``other`` (a source's own text, kept as text).
    native_types=frozenset(LOGICAL_TYPES) - {"time", "other"},
    dialect=MONGODB_DIALECT, transactional=True, merge_by_key=True, soft_delete=True, stores_other_exactly=False,
    quarantine=True,
)

# Server errors that a retry can get past (besides connection errors and the transaction labels): lock and
# conflict waits, time limits, a primary stepping down or shutting down, a write concern that timed out.
_TRANSIENT_CODES = frozenset({6, 7, 24, 50, 64, 89, 91, 112, 189, 251, 262, 9001, 10107, 11600, 11602, 13435,
                              13436})


def is_transient(exc: PyMongoError) -> bool:
    """Whether retrying can get past ``exc`` (connections, failovers, conflicts, timeouts)."""
    if isinstance(exc, (ConnectionFailure, WTimeoutError)):
        return True
    if exc.has_error_label("TransientTransactionError") or exc.has_error_label("UnknownTransactionCommitResult"):
        return True
    return isinstance(exc, OperationFailure) and exc.code in _TRANSIENT_CODES


def describe(exc: PyMongoError) -> str:
    """The server's message, without pymongo's dump of the whole reply."""
    if isinstance(exc, OperationFailure) and exc.details:
        message = exc.details.get("errmsg") or str(exc)
        return f"{message} (code {exc.code})" if exc.code is not None else message
    return str(exc).split(", full error:")[0]


class MongoSink(DocumentMerge):
    """Applies change batches to collections of the database ``target_schema`` (see the module docstring).

    ``url`` is ``mongodb://user:password@host:port/?replicaSet=...``: a replica set (or sharded cluster), since
    transactions need one. The URL's database is only where the client authenticates."""

    capabilities = CAPABILITIES

    def __init__(
        self,
        url: str,
        *,
        sink_id: str,
        target_schema: str = "public",
        delete_mode: DeleteMode = "hard",
        ledger_schema: str | None = None,
    ) -> None:
        if delete_mode not in ("hard", "soft"):
            raise ValueError(f"sink {sink_id!r}: delete_mode must be 'hard' or 'soft', not {delete_mode!r}")
        for what, name in (("target_schema", target_schema), ("ledger_schema", ledger_schema or target_schema)):
            problem = database_name_problem(name)
            if problem:
                raise ValueError(f"sink {sink_id!r}: {what} {name!r} cannot be a MongoDB database name: {problem}")
        self.sink_id = sink_id
        self.target_schema = target_schema
        self.delete_mode: DeleteMode = delete_mode
        self.ledger_schema = ledger_schema or target_schema
        try:
            self._client = connect(url)
        except (BadMongoUrl, ConfigurationError) as exc:
            raise SinkError(sink_id, f"cannot connect to the sink database: {exc}", terminal=True) from exc
        # Outside transactions too, reads see only what a failover keeps, and writes wait until it would.
        self._target = self._client.get_database(target_schema, write_concern=WriteConcern("majority"),
                                                 read_concern=ReadConcern("majority"))
        self._store = Bookkeeping(self._client.get_database(self.ledger_schema, write_concern=WriteConcern("majority"),
                                                            read_concern=ReadConcern("majority")))

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> MongoSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _label(self, schema: TableSchema) -> str:
        return f"{self.target_schema}.{schema.name}"

    def _transaction(self, work: Callable[[ClientSession], T]) -> T:
        """Run ``work`` in one transaction, retried whole on transient errors (``with_transaction``)."""
        with self._client.start_session() as session:
            return session.with_transaction(work, read_concern=ReadConcern("snapshot"),
                                            write_concern=WriteConcern("majority"),
                                            read_preference=ReadPreference.PRIMARY)

    def _read(self, what: str, read: Callable[[], T], *, table: str | None = None) -> T:
        try:
            return read()
        except PyMongoError as exc:
            raise SinkError(self.sink_id, f"cannot read {what}: {describe(exc)}", table=table,
                            terminal=not is_transient(exc)) from exc

    def _check(self, schema: TableSchema, batch_id: str | None = None) -> None:
        check_source_table(schema, sink_id=self.sink_id, label=self._label(schema), batch_id=batch_id,
                           ledger_here=self.ledger_schema == self.target_schema)

    def _prepare(self, names: Iterable[str]) -> None:
        """The bookkeeping collections and the collections of ``names`` (those that can be one), before the
        transaction."""
        self._store.ensure()
        ensure_collections(self._target, [name for name in names if collection_name_problem(name) is None])

    # --- Sink protocol -----------------------------------------------------------------------------------------

    def ensure_tables(self, schemas: Iterable[TableSchema]) -> None:
        """Create the bookkeeping collections and a collection per table (checked first: a key, no reserved
        names)."""
        schemas = list(schemas)
        for schema in schemas:
            self._check(schema)
        try:
            self._prepare(schema.name for schema in schemas)
        except PyMongoError as exc:
            raise SinkError(self.sink_id, f"cannot create the collections: {describe(exc)}",
                            terminal=not is_transient(exc)) from exc

    def has_batch(self, batch_id: str) -> bool:
        return self._read("the ledger", lambda: self._store.ledger_has(None, batch_id))

    def high_water(self, source_id: str) -> int:
        """The highest ``seq_to`` committed for ``source_id`` (0 when none)."""
        return self._read(f"the ledger for source {source_id!r}", lambda: self._store.high_water(None, source_id))

    def last_committed(self, source_id: str) -> dict[str, Any] | None:
        """``position_to`` of the ledger row with the highest ``seq_to`` for ``source_id`` (None when none)."""
        row = self._read(f"the ledger for source {source_id!r}", lambda: self._store.last_committed(None, source_id))
        return None if row is None else row.position_to

    def ledger_rows(self, source_id: str, limit: int = 100) -> list[LedgerRow]:
        """The ``limit`` latest ledger rows of ``source_id``, newest first (empty without a ledger)."""
        return self._read(f"the ledger for source {source_id!r}",
                          lambda: self._store.recent_rows(None, source_id, limit))

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
        schema gate's, decided in the same transaction (versions, held tables and held changes commit with the
        data, or not at all)."""
        started = time.monotonic()
        where: dict[str, str | None] = {"table": None}

        def work(session: ClientSession) -> tuple[ApplyResult, GateDecision | None, dict[tuple[str, str], int]]:
            return self._apply_in(session, batch, run_id, versions, policy, where)

        try:
            held = self._store.held_tables(None, batch.source_id)
            self._prepare(self._table_names(batch, held))
            result, decision, truncated = self._transaction(work)
        except DuplicateBatch:
            result, decision, truncated = ApplyResult(batch_id=batch.batch_id, applied=False), None, {}
        except PyMongoError as exc:
            if exc.has_error_label("UnknownTransactionCommitResult"):
                message = (f"the commit did not complete ({describe(exc)}); its outcome is unknown: apply the batch "
                           f"again, the ledger recognises it if it did commit")
            else:
                message = f"apply failed, nothing of this batch was written: {describe(exc)}"
            raise SinkError(self.sink_id, message, table=where["table"], batch_id=batch.batch_id,
                            terminal=not is_transient(exc)) from exc
        except pa.ArrowException as exc:
            raise SinkError(self.sink_id, f"apply failed, nothing was written: cannot fold the changes: {exc}",
                            table=where["table"], batch_id=batch.batch_id, terminal=True) from exc
        result.seconds = time.monotonic() - started
        if not result.applied:
            if result.stale is None:
                log.info("sink %s: batch %s is already in the ledger; nothing to do", self.sink_id, batch.batch_id)
            return result
        log.info("sink %s: batch %s applied: %d upserted, %d deleted, %d tables truncated, %d replayed events "
                 "skipped, %d schema changes, %d changes quarantined, in %.3f s", self.sink_id, batch.batch_id,
                 result.upserted, result.deleted, result.truncated_tables, result.skipped_replayed,
                 result.schema_changes, result.quarantined, result.seconds)
        self._warn_truncated(truncated, batch.batch_id)
        if decision is not None:
            log_held(decision, self.sink_id, f"{self.ledger_schema}.{HELD_CHANGES_TABLE}", log)
        return result

    @staticmethod
    def _table_names(batch: ChangeBatch, held: dict[str, str]) -> list[str]:
        """The sink collections of the batch's tables that are not held."""
        schemas = {change.table: change.after for change in batch.schema_changes}
        schemas.update(batch.schemas)
        return [schema.name for qualified, schema in schemas.items() if qualified not in held]

    def _apply_in(
        self, session: ClientSession, batch: ChangeBatch, run_id: str | None,
        versions: dict[str, dict[str, Any] | None] | None, policy: SchemaPolicy | None, where: dict[str, str | None],
    ) -> tuple[ApplyResult, GateDecision | None, dict[tuple[str, str], int]]:
        """The transaction of :meth:`apply` (run again from the start when it is retried)."""
        result = ApplyResult(batch_id=batch.batch_id, applied=False)
        where["table"] = None
        self._store.lock(session, batch.source_id)
        if self._store.ledger_has(session, batch.batch_id):
            return result, None, {}
        high_water = self._store.high_water(session, batch.source_id)
        if is_stale(batch, high_water):  # checked again under the lock: another load may just have committed
            result.stale = stale_reason(batch, high_water)
            log.warning("sink %s: %s", self.sink_id, result.stale)
            return result, None, {}
        decision = decide(batch, self._store.read_versions(session, batch.source_id),
                          self._store.held_tables(session, batch.source_id), policy, high_water)
        # A table whose documents cannot follow a change is held through the decision.
        self._migrate_tables(session, decision.batch, high_water, where, decision.all_held, decision.hold)
        result.schema_changes = sum(1 for change in batch.schema_changes if change.seq > high_water)
        truncated = self._merge_tables(session, decision.batch, high_water, result, where)
        self._drop_after_merge(session, decision, where)
        self._store.store_versions(session, batch.source_id, decision.registrations)
        if decision.held:
            self._store.store_held(session, batch.source_id, decision.held, batch.batch_id)
        self._store.store_chunks(session, decision.chunks)
        self._store.insert_quarantine(session, sink_records(batch.quarantine, source_id=batch.source_id,
                                                            batch_id=batch.batch_id, high_water=high_water))
        result.quarantined = batch.quarantined_count
        result.held_tables = decision.all_held
        result.newly_held = dict(decision.held)
        result.schema_versions = decision.registry.in_effect()
        previous = self._store.last_committed(session, batch.source_id)
        row = ledger_row(batch, result, high_water=high_water, run_id=run_id,
                         versions={**(versions or {}), "schema_versions": decision.ledger_versions()})
        self._store.insert_ledger(session, row)
        # After the ledger row, which tells a commit of the same batch apart: they commit together.
        self._store.insert_audit(session, batch_audit_entries(row, decision, versions=versions, previous=previous,
                                                              quarantined=batch.quarantined_count))
        result.applied = True
        return result, decision, truncated

    def _migrate_tables(
        self, session: ClientSession, batch: ChangeBatch, high_water: int, where: dict[str, str | None],
        held: dict[str, str], hold: Callable[[str, str], None],
    ) -> None:
        """Check every table of the batch and bring its documents through its live schema changes (those above the
        high water: older ones were followed by an earlier batch); a table whose documents cannot follow is passed
        to ``hold`` with the reason, before anything of it is written."""
        changes: dict[str, list[SchemaChange]] = {}
        for change in sorted(batch.schema_changes, key=lambda change: change.seq):
            changes.setdefault(change.table, []).append(change)
        sources: dict[str, str] = {}
        for qualified in [name for name in dict.fromkeys([*changes, *batch.schemas]) if name not in held]:
            final = batch.schemas.get(qualified) or changes[qualified][-1].after
            where["table"] = label = self._label(final)
            first = sources.setdefault(final.name, final.qualified_name)
            if first != final.qualified_name:
                raise SinkError(self.sink_id, f"source tables {first} and {final.qualified_name} would both load "
                                              f"into {label}; give them separate sinks (target_schema) or rename one "
                                              f"at the source", table=label, batch_id=batch.batch_id, terminal=True)
            live = [change for change in changes.get(qualified, []) if change.seq > high_water]
            for schema in (final, *(change.after for change in live)):
                self._check(schema, batch.batch_id)
            migration = CollectionMigration(self._target[final.name], session, sink_id=self.sink_id, label=label,
                                            source_id=batch.source_id, batch_id=batch.batch_id)
            try:
                migration.follow(live)
            except TableHeld as exc:
                hold(qualified, str(exc))  # the gate logs the hold; the sink stores the mark with the batch
        where["table"] = None

    def _merge_tables(self, session: ClientSession, batch: ChangeBatch, high_water: int, result: ApplyResult,
                      where: dict[str, str | None]) -> dict[tuple[str, str], int]:
        """Merge every table of ``batch`` (held tables are no longer in it) and count what happened."""
        truncated: dict[tuple[str, str], int] = {}
        for name, changes in batch.tables.items():
            schema = batch.schemas.get(name)
            if schema is None:
                raise SinkError(self.sink_id, f"the batch has changes for {name} but no schema for it", table=name,
                                batch_id=batch.batch_id, terminal=True)
            where["table"] = label = self._label(schema)
            stats, lost = self._apply_table(self._target[schema.name], session, schema, changes, high_water, batch,
                                            label=label, known=_declared_columns(batch, name))
            truncated.update({(label, column): count for column, count in lost.items()})
            result.tables[name] = stats
            result.upserted += stats["upserted"]
            result.deleted += stats["deleted"]
            result.skipped_replayed += stats["skipped_replayed"]
            result.truncated_tables += 1 if stats["truncates"] else 0
            log.info(
                "sink %s, batch %s, table %s: %d events, %d replayed (skipped), %d staged after folding, "
                "%d upserted, %d deleted, %d truncates (%d documents)",
                self.sink_id, batch.batch_id, label, stats["events"], stats["skipped_replayed"], stats["staged"],
                stats["upserted"], stats["deleted"], stats["truncates"], stats["truncated_rows"],
            )
        where["table"] = None
        return truncated

    def _drop_after_merge(self, session: ClientSession, decision: GateDecision, where: dict[str, str | None]) -> None:
        """Remove the fields of columns the source dropped (``evolve``), after the merge: documents of the batch
        written before the drop still carried them."""
        batch = decision.batch
        for table, columns in decision.drops.items():
            schema = batch.schemas.get(table) or next(
                (change.after for change in reversed(batch.schema_changes) if change.table == table), None)
            if schema is not None and table not in decision.all_held:
                where["table"] = label = self._label(schema)
                drop_fields(self._target[schema.name], session, schema, columns, sink_id=self.sink_id, label=label)
        where["table"] = None

    def _warn_truncated(self, truncated: dict[tuple[str, str], int], batch_id: str) -> None:
        for (label, column), count in sorted(truncated.items()):
            log.warning("sink %s, batch %s, collection %s: %d values of column %s had microseconds, which a BSON date "
                        "cannot hold; stored truncated to the millisecond", self.sink_id, batch_id, label, count,
                        column)

    # --- schema registry and held changes ------------------------------------------------------------------------

    def schema_versions(self, source_id: str) -> list[SchemaVersion]:
        """Every registered schema version of ``source_id``'s subjects, in subject and version order."""
        return self._read(f"the schema versions of source {source_id!r}",
                          lambda: self._store.read_versions(None, source_id))

    def held_changes(self, source_id: str, table: str) -> list[HeldChunk]:
        """The changes held for ``table`` (``schema.table``), oldest first."""
        return self._read(f"the held changes of {table}", lambda: self._store.read_chunks(None, source_id, table),
                          table=table)

    def held_tables(self, source_id: str) -> dict[str, str]:
        """Source tables of ``source_id`` whose changes the sink holds back, with the reason."""
        return self._read(f"the held tables of source {source_id!r}",
                          lambda: self._store.held_tables(None, source_id))

    def accept_table(
        self, source_id: str, table: str, *, policy: SchemaPolicy | None = None, run_id: str | None = None
    ) -> AcceptResult:
        """Accept the held schema versions of ``table`` (``schema.table``) and replay its held changes, exactly
        once, in one transaction (:func:`~airflow_provider_cdc.schema.gate.plan_accept`).

        The documents follow the accepted schema first (renames, defaults of added columns: :mod:`.sink_schema`;
        a type change needs nothing, the replayed values carry the new type), then the held changes go through the
        ordinary merge without the high-water filter (they are below it), still guarded per document by
        ``_cdc_position``. The replay is a ledger row of its own, ``<source_id>:accept:<table>:<seq range>``: found
        there, it is not replayed again."""
        started = time.monotonic()
        subject = subject_of(source_id, table)
        where: dict[str, str | None] = {"table": None}
        truncated: dict[tuple[str, str], int] = {}

        def work(session: ClientSession) -> AcceptResult:
            truncated.clear()
            return self._accept_in(session, source_id, table, policy, run_id, where, truncated)

        try:
            self._prepare([table.partition(".")[2] or table])
            result = self._transaction(work)
        except PyMongoError as exc:
            raise SinkError(self.sink_id, f"accept of {subject} failed, nothing was changed: {describe(exc)}"
                                          f"{_resnapshot_hint(source_id, table)}",
                            table=where["table"], terminal=not is_transient(exc)) from exc
        except (pa.ArrowException, ValueError) as exc:
            # ValueError: plan_accept found neither a version nor held changes (a hold older than the registry).
            raise SinkError(self.sink_id, f"accept of {subject} failed, nothing was changed: cannot replay the held "
                                          f"changes: {exc}{_resnapshot_hint(source_id, table)}",
                            table=where["table"], terminal=True) from exc
        result.seconds = time.monotonic() - started
        self._warn_truncated(truncated, result.batch_id or subject)
        log.info("sink %s: accepted %s versions %s: %s, %d held events replayed (%d upserted, %d deleted) as batch "
                 "%s, in %.3f s; the table flows again", self.sink_id, subject, result.accepted_versions,
                 "replayed" if result.applied else "already in the ledger, not replayed", result.replayed_events,
                 result.upserted, result.deleted, result.batch_id, result.seconds)
        return result

    def _accept_in(self, session: ClientSession, source_id: str, table: str, policy: SchemaPolicy | None,
                   run_id: str | None, where: dict[str, str | None],
                   truncated: dict[tuple[str, str], int]) -> AcceptResult:
        """The transaction of :meth:`accept_table`."""
        self._store.lock(session, source_id)
        held = self._store.held_tables(session, source_id)
        if table not in held:
            others = f"held tables: {', '.join(sorted(held))}" if held else "no table of it is held"
            raise SinkError(self.sink_id, f"cannot accept {subject_of(source_id, table)}: table {table} of source "
                                          f"{source_id!r} is not held, so there is nothing to accept ({others})",
                            table=table, terminal=True)
        versions = self._store.read_versions(session, source_id)
        plan = plan_accept(source_id, table, versions, self._store.read_chunks(session, source_id, table), policy)
        where["table"] = self._label(plan.target)
        still_held = {key: reason for key, reason in held.items() if key != table}
        return self._carry_out(session, plan, source_id, run_id, still_held, versions, policy or DEFAULT_POLICY,
                               truncated)

    def _carry_out(
        self, session: ClientSession, plan: AcceptPlan, source_id: str, run_id: str | None,
        still_held: dict[str, str], versions: list[SchemaVersion], policy: SchemaPolicy,
        truncated: dict[tuple[str, str], int],
    ) -> AcceptResult:
        """The writes of :meth:`accept_table`, in its transaction."""
        batch = plan.batch
        result = AcceptResult(plan.subject, plan.table, [version.version for version in plan.registrations],
                              batch.batch_id if batch is not None else None)
        # The replay already in the ledger (an accept that committed before): only the hold is left to clear.
        result.applied = batch is None or not self._store.ledger_has(session, batch.batch_id)
        if result.applied:
            label = self._label(plan.target)
            self._check(plan.target, result.batch_id)
            collection = self._target[plan.target.name]
            seq = batch.seq_from if batch is not None else max((v.seq for v in plan.registrations), default=0)
            CollectionMigration(collection, session, sink_id=self.sink_id, label=label, source_id=source_id,
                                batch_id=result.batch_id).force(plan.target, plan.previous, seq)
            events = batch.tables.get(plan.table) if batch is not None else None
            if batch is not None and events is not None:
                # No high-water filter (0): the held changes are below it, the position passed them while they waited.
                stats, lost = self._apply_table(collection, session, plan.target, events, 0, batch, label=label,
                                                known=_declared_columns(batch, plan.table))
                truncated.update({(label, column): count for column, count in lost.items()})
                result.replayed_events = stats["events"]
                result.upserted, result.deleted = stats["upserted"], stats["deleted"]
            drop_fields(collection, session, plan.target, plan.drops, sink_id=self.sink_id, label=label)
        self._store.store_versions(session, source_id, plan.registrations)
        self._store.delete_chunks(session, source_id, plan.table)
        self._store.delete_held(session, source_id, plan.table)
        if batch is not None and result.applied:
            applied = ApplyResult(batch_id=batch.batch_id, applied=True, upserted=result.upserted,
                                  deleted=result.deleted)
            self._store.insert_ledger(session, ledger_row(batch, applied, high_water=0, run_id=run_id, versions={
                "schema_versions": plan.ledger_versions(versions, policy, still_held)}))
        return result

    # --- quarantine ----------------------------------------------------------------------------------------------

    def quarantined(self, source_id: str, *, waiting_only: bool = True) -> list[dict[str, Any]]:
        """The documents of ``_cdc_quarantine`` of ``source_id`` by ``seq`` (``waiting_only``: not replayed yet)."""
        return self._read(f"the quarantine of source {source_id!r}",
                          lambda: self._store.read_quarantine(None, source_id, waiting_only))

    def replay_quarantined(
        self, batch: ChangeBatch, quarantine_ids: list[str], *, run_id: str | None = None,
        versions: dict[str, dict[str, Any] | None] | None = None,
    ) -> ApplyResult:
        """Load quarantined changes run again through the current rules, exactly once, in one multi-document
        transaction: the documents are merged without the high-water filter (they lie below it) but guarded by
        ``_cdc_position``, ``replayed_batch_id`` is set on ``quarantine_ids`` and the replay's ledger row is
        inserted. Found in the ledger, the batch is not loaded again."""
        started = time.monotonic()
        where: dict[str, str | None] = {"table": None}
        truncated: dict[tuple[str, str], int] = {}

        def work(session: ClientSession) -> ApplyResult:
            truncated.clear()
            result = ApplyResult(batch_id=batch.batch_id, applied=False)
            self._store.lock(session, batch.source_id)
            if self._store.ledger_has(session, batch.batch_id):
                return result
            refuse_held(self.sink_id, batch, self._store.held_tables(session, batch.source_id))
            for name, changes in batch.tables.items():
                schema = batch.schemas[name]
                self._check(schema, batch.batch_id)
                where["table"] = label = self._label(schema)
                stats, lost = self._apply_table(self._target[schema.name], session, schema, changes, 0, batch,
                                                label=label)
                truncated.update({(label, column): count for column, count in lost.items()})
                result.tables[name] = stats
                result.upserted += stats["upserted"]
                result.deleted += stats["deleted"]
            where["table"] = None
            self._store.mark_replayed(session, batch.source_id, quarantine_ids, batch.batch_id)
            self._store.insert_ledger(session, ledger_row(batch, result, high_water=0, run_id=run_id,
                                                          versions=versions))
            result.applied = True
            return result

        try:
            self._prepare(schema.name for name, schema in batch.schemas.items() if name in batch.tables)
            result = self._transaction(work)
        except DuplicateBatch:
            result = ApplyResult(batch_id=batch.batch_id, applied=False)
        except PyMongoError as exc:
            raise SinkError(self.sink_id, f"replay of quarantined changes failed, nothing was written: "
                                          f"{describe(exc)}", table=where["table"], batch_id=batch.batch_id,
                            terminal=not is_transient(exc)) from exc
        except pa.ArrowException as exc:
            raise SinkError(self.sink_id, f"replay of quarantined changes failed, nothing was written: {exc}",
                            table=where["table"], batch_id=batch.batch_id, terminal=True) from exc
        result.seconds = time.monotonic() - started
        self._warn_truncated(truncated, batch.batch_id)
        log_replay(log, self.sink_id, result)
        return result

    # --- re-snapshot ---------------------------------------------------------------------------------------------

    # --- audit trail -------------------------------------------------------------------------------------------

    def record_audit(self, entries: list[AuditEntry]) -> int:
        """Store ``entries`` in ``_cdc_audit`` (made when absent), each once by ``audit_id``."""
        if not entries:
            return 0
        try:
            self._store.ensure()
            return self._store.insert_audit(None, list(entries))
        except PyMongoError as exc:
            raise SinkError(self.sink_id, f"cannot write the audit trail: {describe(exc)}",
                            terminal=not is_transient(exc)) from exc

    def audit_entries(
        self, source_id: str | None = None, *, batch_id: str | None = None, action: str | None = None,
        since: dt.datetime | None = None, limit: int = 100,
    ) -> list[AuditEntry]:
        """Entries of ``_cdc_audit``, newest first (none when it was never made)."""
        return self._read("the audit trail", lambda: self._store.read_audit(source_id, batch_id, action, since, limit))

    def forget_source(self, source_id: str) -> int:
        """Delete the ledger rows of ``source_id`` (its high water drops to 0): a re-snapshot starts it anew."""
        deleted = self._read(f"the ledger rows of source {source_id!r} (to delete them)",
                             lambda: self._transaction(lambda session: self._store.forget(session, source_id)))
        log.info("sink %s: forgot source %s (%d ledger rows deleted)", self.sink_id, source_id, deleted)
        return deleted

    def reset_table(self, table: TableSchema | str) -> bool:
        """Empty the collection of ``table`` (a source schema or the collection's name) before a re-snapshot;
        returns whether it existed. Its documents are deleted, its indexes and options stay. A ``schema.table``
        name with no collection of that exact name is taken as a source name (collections drop the schema)."""
        name = table.name if isinstance(table, TableSchema) else table

        def exists(candidate: str) -> bool:
            return bool(self._target.list_collection_names(filter={"name": candidate}))

        label = f"{self.target_schema}.{name}"
        try:
            if not isinstance(table, TableSchema) and "." in name and not exists(name):
                name = name.partition(".")[2]
                label = f"{self.target_schema}.{name}"
            if not exists(name):
                log.info("sink %s: collection %s does not exist; nothing to reset", self.sink_id, label)
                return False
            deleted = self._target[name].delete_many({}).deleted_count
        except PyMongoError as exc:
            raise SinkError(self.sink_id, f"cannot empty the collection: {describe(exc)}", table=label,
                            terminal=not is_transient(exc)) from exc
        log.info("sink %s: emptied collection %s for a re-snapshot (%d documents)", self.sink_id, label, deleted)
        return True

    def hold_table(self, source_id: str, table: str, reason: str) -> bool:
        """Hold ``table`` (``schema.table`` of the source) from the next batch on, as the schema gate holds one, with
        ``reason``: its changes wait among the held changes, the other tables flow, and :meth:`accept_table` replays
        them. Written outside a batch, under the source's lock. True when it was not held already (a table held
        already keeps its first mark)."""

        def work(session: ClientSession) -> bool:
            self._store.lock(session, source_id)
            if table in self._store.held_tables(session, source_id):
                return False
            self._store.store_held(session, source_id, {table: reason}, None)
            return True

        try:
            self._store.ensure()
            held = self._transaction(work)
        except PyMongoError as exc:
            raise SinkError(self.sink_id, f"cannot hold table {table}: {describe(exc)}",
                            terminal=not is_transient(exc)) from exc
        if held:
            log.info("sink %s: holding table %s of source %s: %s", self.sink_id, table, source_id, reason)
        return held

    def release_table(self, source_id: str, table: str) -> bool:
        """Stop holding ``table`` (``schema.table`` of the source) back before its re-snapshot: its collection is
        dropped (the snapshot loads it anew), then, in one transaction, its held changes are discarded and its held
        versions count as accepted. True when it was held. The drop comes first (a collection cannot be dropped in
        a transaction): a crash after it leaves the table held and its collection gone, and releasing again
        finishes."""
        if table not in self.held_tables(source_id):
            return False

        def work(session: ClientSession) -> tuple[int, int] | None:
            self._store.lock(session, source_id)
            if table not in self._store.held_tables(session, source_id):
                return None
            self._store.delete_held(session, source_id, table)
            return (self._store.delete_chunks(session, source_id, table),
                    self._store.accept_held_versions(session, source_id, table))

        try:
            self._target.drop_collection(table.partition(".")[2] or table)
            done = self._transaction(work)
        except PyMongoError as exc:
            raise SinkError(self.sink_id, f"cannot release table {table}: {describe(exc)}",
                            terminal=not is_transient(exc)) from exc
        if done is None:
            return False
        log.info("sink %s: released table %s of source %s: %d chunks of held changes discarded, %d held versions "
                 "marked accepted (its collection is loaded anew by the re-snapshot)", self.sink_id, table,
                 source_id, *done)
        return True


def _declared_columns(batch: ChangeBatch, table: str) -> dict[str, Column]:
    """Every column ``table`` had in the batch's schema changes (a column dropped within the batch still has
    values in its events, converted by the type it had)."""
    columns: dict[str, Column] = {}
    for change in batch.schema_changes:
        if change.table == table:
            for schema in (change.before, change.after):
                if schema is not None:
                    columns.update({col.name: col for col in schema.columns})
    return columns


def _resnapshot_hint(source_id: str, table: str) -> str:
    return (f". The table stays held; re-snapshot it instead: python -m airflow_provider_cdc resnapshot {source_id} "
            f"--table {table}")
