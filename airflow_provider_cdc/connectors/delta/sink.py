"""The file sink: one Delta Lake table per source table, each batch applied exactly once through Delta's own log.

Tables live at ``<root>/<target_schema>/<table>`` (a ``file://``, ``s3://`` or ``gs://`` root, or a local path).
Every table has the source's columns in the types of :mod:`.types` (the value contract, strictly: a value with no
typed form stops the batch; ``time``, ``uuid``, ``other`` and unconstrained decimals, which Delta has no type for,
keep their portable text, as the table there shows) and the bookkeeping columns ``_cdc_op``, ``_cdc_position``
(the ``seq`` of the row's last event), ``_cdc_ts`` (its commit time at the source) and, with soft deletes,
``_cdc_deleted_at``.

Exactly once, without a transaction across tables (DESIGN section 3):

1. a batch already in the ledger (``<root>/_cdc_ledger``) is a no-op; a stale one (it reads a snapshot, and the
   ledger went past its start with another capture of its range: :mod:`airflow_provider_cdc.connectors.recapture`)
   is refused whole, nothing written;
2. each table's part of the batch is ONE Delta ``MERGE`` commit that also records the batch as an application
   transaction (``app_id`` ``<source_id>:<schema.table>``, version ``seq_to``); a table whose transaction version
   is already ``seq_to`` or more took this batch before a crash, and is skipped. A transaction version past the
   ledger's high water that is *another* batch's (one that crashed before its ledger row; this batch was captured
   again from the same position and may number its changes differently) is rolled back first: the table is
   restored to the version the ledger vouches for, and this batch applies to it in full (``_roll_back_crashed``);
3. events at or below what the source (ledger high water) or the table (its transaction version) committed are
   dropped, and the merge guard (``_cdc_position``) keeps an older change from overwriting a newer one;
4. the ledger row is appended last, with its own application transaction. A crash before it replays the batch:
   step 2 skips the tables that committed, the rest commit, and the ledger row follows.

Everything that can refuse the batch (values, keys, unchanged values nobody has, schema changes) is checked for
every table before the first commit, so a refused batch leaves nothing behind (but for the roll-back of step 2,
which only brings a table back to what the ledger vouches for). No marker files: Delta's log is the record.

**The schema gate** (:func:`airflow_provider_cdc.schema.gate.decide`) runs before any write, with the versions in
``<root>/_cdc_schemas`` and the held tables in ``<root>/_cdc_held``. A table whose change it refuses, or that this
sink cannot follow (:class:`~.schema.TableHeld`: :meth:`GateDecision.hold`), is held: its changes go into
``<root>/_cdc_held_changes``, the others flow. An apply then writes, in this order, each step idempotent:

a. the held chunks (inserted if absent) and the held marks;
b. the table commits (steps 2 and 3 above);
c. the columns the gate drops (``evolve`` follows a ``DROP COLUMN``), each table rewritten without them;
d. the schema versions (one ``MERGE``: new versions, status changes);
e. the batch's quarantined changes (:mod:`airflow_provider_cdc.quarantine`) in ``<root>/_cdc_quarantine``, inserted
   if absent by ``quarantine_id`` (one ``MERGE``, :mod:`.quarantine_table`);
f. the batch's audit rows (:func:`~airflow_provider_cdc.connectors.audit.batch_audit_entries`) in
   ``<root>/_cdc_audit``, with the application transaction ``<source_id>:_cdc_audit`` at ``seq_to``: a replay after
   a crash between (f) and (g) finds that version and appends none again;
g. the ledger row, last, with ``schema_versions`` from the gate.

The quarantine (e) comes before the ledger row for the same reason as the data: the position moves past the
quarantined changes only once they are kept. A crash before (e) commits replays the batch, which stores them; a
crash between (e) and (g) replays it too, and its ``MERGE`` finds every key there and adds nothing (the rows keep
their first ``quarantined_at``). So a quarantined change is neither lost nor stored twice.

Why this order keeps the registry neither ahead of nor behind the sink after recovery: a version is stored only
after every table it describes followed it (b, c), and a ``held`` version only after its table's mark and changes
are stored (a); so the registry never claims what the sink has not done. It can get ahead of the *ledger* (a crash
between d and g), and a held mark or a chunk can be stored with nothing else (a crash after a); the replay of that
batch, which must come since the position moves only after the ledger row, then leaves out the versions and marks
that the batch itself stored (their ``batch_id`` is the batch's), decides exactly as the crashed attempt did, and
writes the same rows again: versions under the same numbers (keeping their first ``registered_at``), chunks and
marks already there. The ledger row follows, and the end state is the one an uninterrupted apply leaves. Nor can the
registry fall behind: the ledger row, which lets the position move on, is written only after the versions.

``schema accept`` (:meth:`DeltaSink.accept_table`, :mod:`.accept`) and ``resnapshot --table``
(:meth:`DeltaSink.release_table`) are the ways out of a hold.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import time
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

# Imported at module level: without the ``delta`` extra, importing this module fails and the registry names the extra.
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import DeltaError

from airflow_provider_cdc.connectors.audit import AuditEntry, batch_audit_entries
from airflow_provider_cdc.connectors.base import AcceptResult, ApplyResult, SinkCapabilities
from airflow_provider_cdc.connectors.delta.ledger_table import DeltaAudit, DeltaLedger, HeldTables, audit_app_id
from airflow_provider_cdc.connectors.delta.merge import (
    BATCH_KEY,
    PreparedTable,
    merge_table,
    new_stats,
    prepare_table,
    stats_of_commit,
)
from airflow_provider_cdc.connectors.delta.options import DeltaSinkOptions
from airflow_provider_cdc.connectors.delta.quarantine_table import QuarantineTable
from airflow_provider_cdc.connectors.delta.registry import HeldChangeTable, SchemaVersionTable, decide_replayable
from airflow_provider_cdc.connectors.delta.schema import (
    Migration,
    MigrationContext,
    TableHeld,
    bookkeeping_only,
    drop_columns,
    execute_migration,
    plan_migration,
)
from airflow_provider_cdc.connectors.delta.storage import (
    arrow_schema,
    commit_properties,
    has_rows,
    join,
    normalise_root,
    open_table,
    reset_app_transactions,
)
from airflow_provider_cdc.connectors.delta.types import app_ids_of
from airflow_provider_cdc.connectors.ledger import LedgerRow, ledger_row
from airflow_provider_cdc.connectors.recapture import is_stale, stale_reason
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.quarantine import refuse_held, sink_records
from airflow_provider_cdc.schema import GateDecision, HeldChunk, SchemaPolicy, SchemaVersion, subject_of
from airflow_provider_cdc.tables import RESERVED_PREFIX, SchemaChange, TableSchema

log = logging.getLogger("airflow_provider_cdc.sink.delta")

DeleteMode = Literal["hard", "soft"]
# Custom metadata of a restore that rolled back a crashed batch's commits (which batch ids it undid).
ROLLED_BACK_KEY = "cdc.rolled_back"

DELTA_CAPABILITIES = SinkCapabilities(
    native_types=frozenset({"integer", "decimal", "float", "boolean", "text", "timestamptz", "timestamp", "date",
                            "json", "binary"}),
    dialect="",
    transactional=False,
    merge_by_key=True,
    soft_delete=True,
    stores_other_exactly=False,
    quarantine=True,
)


@dataclasses.dataclass
class _TablePlan:
    """One table of a batch after the checks: what to migrate and merge, or why it is held or skipped."""

    name: str
    label: str
    uri: str
    app_id: str
    target: DeltaTable | None
    migration: Migration | None = None
    prepared: PreparedTable | None = None
    held: str | None = None
    stats: dict[str, int] = dataclasses.field(default_factory=lambda: new_stats(0))


class DeltaSink:
    """Applies change batches to Delta tables under ``root`` (see the module docstring).

    ``options.storage_options`` go to delta-rs as they are (credentials and endpoints for ``s3://`` and ``gs://``).
    """

    capabilities = DELTA_CAPABILITIES

    def __init__(
        self,
        root: str,
        *,
        sink_id: str,
        target_schema: str = "public",
        delete_mode: DeleteMode = "hard",
        options: DeltaSinkOptions | None = None,
    ) -> None:
        if delete_mode not in ("hard", "soft"):
            raise ValueError(f"sink {sink_id!r}: delete_mode must be 'hard' or 'soft', not {delete_mode!r}")
        if target_schema.startswith(RESERVED_PREFIX):
            raise SinkError(sink_id, f"target_schema {target_schema!r} is in the reserved namespace "
                                     f"{RESERVED_PREFIX}* (the sink's own tables live there)", terminal=True)
        options = options or DeltaSinkOptions()
        if options.format != "delta":
            raise ValueError(f"sink {sink_id!r}: DeltaSink writes format 'delta', not {options.format!r}")
        self.sink_id = sink_id
        self.target_schema = target_schema
        self.delete_mode: DeleteMode = delete_mode
        self.root = normalise_root(root)
        self.storage_options = dict(options.storage_options)
        self.configuration = ({"delta.targetFileSize": str(options.target_file_size)}
                              if options.target_file_size else None)
        self._ledger = DeltaLedger(self.root, self.storage_options)
        self._audit = DeltaAudit(self.root, self.storage_options)
        self._held = HeldTables(self.root, self.storage_options)
        self._versions = SchemaVersionTable(self.root, self.storage_options)
        self._held_changes = HeldChangeTable(self.root, self.storage_options)
        self._quarantine = QuarantineTable(self.root, self.storage_options)

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Nothing to release: every operation opens what it needs."""

    def __enter__(self) -> DeltaSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- paths -------------------------------------------------------------------------------------------------

    def table_uri(self, table: str) -> str:
        """Where the Delta table of sink table ``table`` lives."""
        try:
            return join(self.root, self.target_schema, table)
        except ValueError as exc:
            raise SinkError(self.sink_id, f"table {table!r} cannot be stored as a Delta table folder: {exc}",
                            table=f"{self.target_schema}.{table}", terminal=True) from exc

    def _label(self, schema: TableSchema) -> str:
        return f"{self.target_schema}.{schema.name}"

    @staticmethod
    def app_id(source_id: str, qualified: str) -> str:
        return f"{source_id}:{qualified}"

    # --- Sink protocol: the ledger -------------------------------------------------------------------------------

    def has_batch(self, batch_id: str) -> bool:
        with self._errors("cannot read the ledger", batch_id=batch_id):
            return self._ledger.has_batch(batch_id)

    def high_water(self, source_id: str) -> int:
        with self._errors(f"cannot read the ledger for source {source_id!r}"):
            return self._ledger.high_water(source_id)

    def last_committed(self, source_id: str) -> dict[str, Any] | None:
        with self._errors(f"cannot read the ledger for source {source_id!r}"):
            return self._ledger.last_committed(source_id)

    def ledger_rows(self, source_id: str, limit: int = 100) -> list[LedgerRow]:
        """The ``limit`` latest ledger rows of ``source_id``, newest first (empty without a ledger)."""
        with self._errors(f"cannot read the ledger for source {source_id!r}"):
            return self._ledger.recent_rows(source_id, limit)

    def held_tables(self, source_id: str) -> dict[str, str]:
        with self._errors(f"cannot read the held tables of source {source_id!r}"):
            return self._held.held(source_id)

    # --- Sink protocol: the schema registry ------------------------------------------------------------------------

    def schema_versions(self, source_id: str) -> list[SchemaVersion]:
        with self._errors(f"cannot read the schema versions of source {source_id!r}"):
            return self._versions.versions(source_id)

    def held_changes(self, source_id: str, table: str) -> list[HeldChunk]:
        with self._errors(f"cannot read the held changes of source {source_id!r}", table=table):
            return self._held_changes.chunks(source_id, table)

    def accept_table(self, source_id: str, table: str, *, policy: SchemaPolicy | None = None,
                     run_id: str | None = None) -> AcceptResult:
        """Accept the held versions of ``table``, migrate its Delta table, replay its held changes once, and stop
        holding it (:mod:`.accept` says how, and in which order)."""
        from airflow_provider_cdc.connectors.delta.accept import accept_held_table

        with self._errors(f"cannot accept table {table} of source {source_id!r}; run the accept again: every step "
                          f"is idempotent", table=table):
            return accept_held_table(self, source_id, table, policy=policy, run_id=run_id)

    # --- Sink protocol: tables -------------------------------------------------------------------------------------

    def ensure_tables(self, schemas: list[TableSchema]) -> None:
        """Create missing Delta tables and add the columns the source gained (a change it cannot follow raises)."""
        for schema in schemas:
            label = self._label(schema)
            with self._errors("cannot create or alter the table", table=label):
                uri = self.table_uri(schema.name)
                target = open_table(uri, self.storage_options)
                existing = arrow_schema(target) if target is not None else None
                context = MigrationContext(self.sink_id, label, None, None, functools.partial(has_rows, target))
                migration = plan_migration(existing, schema, delete_mode=self.delete_mode, app_id=None,
                                           context=context)
                if not migration.empty:
                    execute_migration(uri, target, migration, storage_options=self.storage_options,
                                      name=schema.qualified_name, configuration=self.configuration,
                                      sink_id=self.sink_id, batch_id=None)

    def apply(
        self,
        batch: ChangeBatch,
        *,
        run_id: str | None = None,
        versions: dict[str, dict[str, Any] | None] | None = None,
        policy: SchemaPolicy | None = None,
    ) -> ApplyResult:
        """Apply ``batch`` through the schema gate, table by table, then append its ledger row (the order of the
        writes is in the module docstring); a batch already in the ledger is a no-op."""
        started = time.monotonic()
        result = ApplyResult(batch_id=batch.batch_id, applied=False)
        with self._errors("apply failed; apply the batch again: tables that committed are skipped by their Delta "
                          "transaction version, the others and the ledger row follow", batch_id=batch.batch_id):
            applied, high_water = self._ledger.applied(batch.source_id, batch.batch_id)
            if applied:
                log.info("sink %s: batch %s is already in the ledger; nothing to do", self.sink_id, batch.batch_id)
                result.seconds = time.monotonic() - started
                return result
            if is_stale(batch, high_water):
                result.stale = stale_reason(batch, high_water)
                log.warning("sink %s: %s", self.sink_id, result.stale)
                result.seconds = time.monotonic() - started
                return result
            opened = self._roll_back_crashed(batch, high_water)
            decision, stored = decide_replayable(batch, high_water, policy, versions=self._versions,
                                                 held=self._held, sink_id=self.sink_id)
            result.schema_changes = sum(1 for change in batch.schema_changes if change.seq > high_water)
            plans = self._plan(decision, high_water, opened)  # every check, no write
            self._store_held(decision)
            for plan in plans:
                self._commit_table(decision.batch, plan, result)
            self._drop_columns(decision)
            self._versions.store(batch.source_id, decision.registrations, replacing=stored)
            self._quarantine.insert(sink_records(batch.quarantine, source_id=batch.source_id,
                                                 batch_id=batch.batch_id, high_water=high_water))
            result.quarantined = batch.quarantined_count
            schema_versions = decision.ledger_versions()
            row = ledger_row(decision.batch, result, high_water=high_water, run_id=run_id,
                             versions={**(versions or {}), "schema_versions": schema_versions})
            self._append_audit(batch.source_id, row.seq_to, high_water, batch_audit_entries(
                row, decision, versions=versions, previous=self._ledger.latest_row(batch.source_id),
                quarantined=batch.quarantined_count))
            self._ledger.append_row(row)
            result.applied = True
            result.held_tables = decision.all_held
            result.newly_held = dict(decision.held)
            result.schema_versions = decision.registry.in_effect()
        result.seconds = time.monotonic() - started
        log.info(
            "sink %s: batch %s applied: %d upserted, %d deleted, %d tables truncated, %d replayed events skipped, "
            "%d schema changes, %d tables held, %d changes quarantined, in %.3f s",
            self.sink_id, batch.batch_id, result.upserted, result.deleted, result.truncated_tables,
            result.skipped_replayed, result.schema_changes, len(result.held_tables), result.quarantined,
            result.seconds,
        )
        return result

    # --- what a crashed batch left behind ----------------------------------------------------------------------------

    def _roll_back_crashed(self, batch: ChangeBatch, high_water: int) -> dict[str, DeltaTable | None]:
        """Write (0): roll back the commits of a batch that crashed before its ledger row, in every table of the
        source, unless they are this very batch's.

        A table whose transaction version is past the ledger's high water took a batch the ledger does not have. When
        that batch is this one (a replay), step 2 skips the table as before. When it is another one, this batch was
        captured again from the same position and numbers its changes differently (a snapshot pending: its rows and
        its ``seq`` numbers depend on when it was read, :mod:`airflow_provider_cdc.connectors.recapture`), so neither
        skipping the table nor dropping the events up to that version is right: the table goes back to the version
        the ledger vouches for, and this batch applies to it in full. Tables the batch does not touch are rolled back
        too (those of its positions' ``tables``): they would otherwise keep rows no stored position accounts for.

        Returns the tables it opened and left as they were, by URI, for the plan to use (one read of each table's
        log per batch: on object storage that is a round of requests per table)."""
        opened: dict[str, DeltaTable | None] = {}
        touched = {*batch.tables, *batch.schemas, *(change.table for change in batch.schema_changes)}
        others = {name for position in (batch.position_from, batch.position_to)
                  for name in position.get("tables", []) if isinstance(name, str) and "." in name} - touched
        for name in sorted(touched | others):
            sink_name = name.partition(".")[2]
            label = f"{self.target_schema}.{sink_name}"
            try:
                uri = self.table_uri(sink_name)
            except SinkError:
                if name in touched:
                    raise
                continue  # a table this batch does not write, and that could never be written here either
            with self._errors("cannot roll back what a crashed batch left in the table", table=label,
                              batch_id=batch.batch_id):
                target = open_table(uri, self.storage_options)
                app_id = self.app_id(batch.source_id, name)
                if target is not None and (target.transaction_version(app_id) or 0) > high_water:
                    self._roll_back_table(batch, target, uri, app_id, high_water, label)
                else:
                    opened[uri] = target
        return opened

    def _roll_back_table(self, batch: ChangeBatch, target: DeltaTable, uri: str, app_id: str, high_water: int,
                         label: str) -> None:
        """Restore ``target`` to its newest version whose ``app_id`` transaction is at most ``high_water``, with that
        version recorded again (a restore does not bring application transactions back). Refuses, naming the
        commits, when one of those to undo belongs to a batch the ledger has."""
        current = target.version()
        kept = current
        vouched = 0
        while kept > 0:
            kept -= 1
            older = DeltaTable(uri, version=kept, storage_options=self.storage_options or None)
            vouched = older.transaction_version(app_id) or 0
            if vouched <= high_water:
                break
        undone = sorted({str(commit[BATCH_KEY]) for commit in target.history(current - kept) if commit.get(BATCH_KEY)})
        if batch.batch_id in undone:
            return  # this very batch committed here before a crash: step 2 skips the table
        committed = [batch_id for batch_id in undone if self._ledger.has_batch(batch_id)]
        if committed:
            raise SinkError(self.sink_id, f"table {label} has commits of a batch the ledger does not have "
                            f"(transaction {app_id} past the high water {high_water}), mixed with commits of batches "
                            f"it has ({', '.join(committed)}), so they cannot be rolled back alone; re-snapshot the "
                            f"table: python -m airflow_provider_cdc resnapshot {batch.source_id} --table "
                            f"{app_id.partition(':')[2]}", table=label, batch_id=batch.batch_id, terminal=True)
        target.restore(kept, commit_properties=commit_properties({app_id: vouched},
                                                                 **{ROLLED_BACK_KEY: ",".join(undone)}))
        log.warning("sink %s, batch %s: table %s held commits %d-%d of batches %s, which crashed before their ledger "
                    "row and differ from this one (captured again from the same position); restored version %d, "
                    "which the ledger vouches for, before applying this batch", self.sink_id, batch.batch_id, label,
                    kept + 1, current, undone or "(unnamed)", kept)

    def _append_audit(self, source_id: str, seq_to: int, high_water: int, entries: list[AuditEntry]) -> None:
        """Write (f), once. An audit transaction past the high water is a crashed batch's, which may number its
        range like this one: then each entry goes in unless its ``audit_id`` is there (a replay finds its own)."""
        audit = self._audit.table()
        if audit is not None and (audit.transaction_version(audit_app_id(source_id)) or 0) > high_water:
            self._audit.record(entries)
        else:
            self._audit.append_batch(source_id, seq_to, entries)

    # --- the schema gate -------------------------------------------------------------------------------------------

    def _store_held(self, decision: GateDecision) -> None:
        """Write (a): the held changes, then the marks of the tables held from this batch on."""
        batch = decision.batch
        if decision.chunks:
            self._held_changes.insert(decision.chunks)
        for chunk in decision.chunks:
            log.warning("sink %s, batch %s: %d changes of held table %s are held in %s (seq %d-%d)", self.sink_id,
                        batch.batch_id, chunk.rows, chunk.table, self._held_changes.uri, chunk.seq_from,
                        chunk.seq_to)
        if decision.held:
            self._held.hold_many(batch.source_id, decision.held, batch.batch_id)
        for table in sorted(decision.held):
            log.info("sink %s: table %s marked held from batch %s on", self.sink_id, table, batch.batch_id)

    def _drop_columns(self, decision: GateDecision) -> None:
        """Write (c): the columns the gate drops, after the merge (the batch's rows before the drop still had them).
        A column the table's final schema has again (dropped, then added back in the same batch) stays."""
        for name, columns in sorted(decision.drops.items()):
            final = decision.batch.schemas.get(name)
            keep = set(final.column_names) if final is not None else set()
            sink_name = final.name if final is not None else name.partition(".")[2]
            drop_columns(self.table_uri(sink_name), [column for column in columns if column not in keep],
                         storage_options=self.storage_options, sink_id=self.sink_id,
                         label=f"{self.target_schema}.{sink_name}")

    # --- re-snapshot ---------------------------------------------------------------------------------------------

    def forget_source(self, source_id: str) -> int:
        """Delete the ledger rows of ``source_id``, and set its tables' transaction versions back to 0: a whole
        re-snapshot starts its ``seq`` again, and old versions would otherwise skip the new batches."""
        with self._errors(f"cannot forget source {source_id!r}"):
            names = {name for row in self._ledger.rows(source_id) for name in row.counts}
            for qualified in sorted(names):
                table = open_table(self.table_uri(qualified.partition(".")[2]), self.storage_options)
                if table is not None:
                    reset_app_transactions(table, [self.app_id(source_id, qualified)])
            deleted = self._ledger.forget(source_id)
            self._audit.forget(source_id)
        log.info("sink %s: forgot source %s (%d ledger rows deleted)", self.sink_id, source_id, deleted)
        return deleted

    # --- audit trail -------------------------------------------------------------------------------------------

    def record_audit(self, entries: list[AuditEntry]) -> int:
        """Append ``entries`` to ``<root>/_cdc_audit`` (made when absent), each once by ``audit_id``."""
        if not entries:
            return 0
        with self._errors("cannot write the audit trail"):
            return self._audit.record(list(entries))

    def audit_entries(
        self, source_id: str | None = None, *, batch_id: str | None = None, action: str | None = None,
        since: dt.datetime | None = None, limit: int = 100,
    ) -> list[AuditEntry]:
        """Entries of ``<root>/_cdc_audit``, newest first (none when it was never made)."""
        with self._errors("cannot read the audit trail"):
            return self._audit.entries(source_id, batch_id, action, since, limit)

    def reset_table(self, table: TableSchema | str) -> bool:
        """Empty one Delta table before its re-snapshot (one commit; its transaction versions go back to 0)."""
        name = table.name if isinstance(table, TableSchema) else table
        label = f"{self.target_schema}.{name}"
        with self._errors("cannot empty the table", table=label):
            target = open_table(self.table_uri(name), self.storage_options)
            if target is None:
                return False
            schema = arrow_schema(target)
            write_deltalake(target, schema.empty_table(), mode="overwrite",
                            commit_properties=commit_properties({app_id: 0 for app_id in app_ids_of(schema)}))
        log.info("sink %s: emptied table %s for a re-snapshot", self.sink_id, label)
        return True

    def hold_table(self, source_id: str, table: str, reason: str) -> bool:
        """Hold ``table`` (``schema.table`` of the source) from the next batch on, as the schema gate holds one, with
        ``reason``: its changes wait among the held changes, the other tables flow, and :meth:`accept_table` replays
        them. One commit of ``_cdc_held``, outside a batch. True when it was not held already (a table held
        already keeps its first mark)."""
        with self._errors(f"cannot hold table {table}"):
            if table in self._held.held(source_id):
                return False
            self._held.hold(source_id, table, reason, None)
        log.info("sink %s: holding table %s of source %s: %s", self.sink_id, table, source_id, reason)
        return True

    def release_table(self, source_id: str, table: str) -> bool:
        """Stop holding ``table`` (``schema.table`` of the source) before its re-snapshot: its held versions become
        ``accepted``, its held changes are discarded, and its Delta table is emptied down to the bookkeeping
        columns, so that the re-snapshot gives it the source's current columns. True when it was held.

        The mark goes last: a crash part-way leaves the table held, and running the release again finishes it."""
        subject = subject_of(source_id, table)
        with self._errors(f"cannot release table {table}"):
            if table not in self._held.held(source_id):
                return False
            accepted = [dataclasses.replace(version, status="accepted")
                        for version in self._versions.versions(source_id)
                        if version.subject == subject and version.status == "held"]
            if accepted:
                self._versions.store(source_id, accepted)
            discarded = self._held_changes.delete(source_id, table)
            target = open_table(self.table_uri(table.partition(".")[2]), self.storage_options)
            if target is not None:
                schema = arrow_schema(target)
                write_deltalake(target, bookkeeping_only(schema).empty_table(), mode="overwrite",
                                schema_mode="overwrite",
                                commit_properties=commit_properties({app_id: 0 for app_id in app_ids_of(schema)}))
            self._held.release(source_id, table)
        log.info("sink %s: released table %s of source %s (versions %s accepted, %d held chunks discarded, its Delta "
                 "table emptied for the re-snapshot)", self.sink_id, table, source_id,
                 [version.version for version in accepted], discarded)
        return True

    # --- quarantine ------------------------------------------------------------------------------------------------

    def quarantined(self, source_id: str, *, waiting_only: bool = True) -> list[dict[str, Any]]:
        """The rows of ``<root>/_cdc_quarantine`` of ``source_id`` by ``seq`` (``waiting_only``: not replayed)."""
        with self._errors(f"cannot read the quarantine of source {source_id!r}"):
            return self._quarantine.stored(source_id, waiting_only=waiting_only)

    def replay_quarantined(
        self, batch: ChangeBatch, quarantine_ids: list[str], *, run_id: str | None = None,
        versions: dict[str, dict[str, Any] | None] | None = None,
    ) -> ApplyResult:
        """Load quarantined changes run again through the current rules, exactly once, without a transaction
        across tables: in this order, each step idempotent, so that running the replay again after a crash anywhere
        finishes it:

        1. the replay's ledger row there: only step 4 is left (a crash between 3 and 4), done again, no load;
        2. each table gains the columns it needs, then ONE ``MERGE`` of its changes, without the high-water floor
           (they lie below it) but guarded by ``_cdc_position``, carrying the application transaction
           ``<batch_id>:<schema.table>`` at ``seq_to``: a table that has it took this replay before a crash and is
           skipped (a replay's own id, not the table's ``<source_id>:<table>``, whose version is past these changes);
        3. the ledger row (no application transaction of the ledger: its range lies below the high water);
        4. ``replayed_batch_id`` set on ``quarantine_ids`` (one ``UPDATE``), last: until then they are listed as
           waiting, and the command, run again, rebuilds the same batch id, finds step 3 and finishes here."""
        started = time.monotonic()
        result = ApplyResult(batch_id=batch.batch_id, applied=False)
        with self._errors("replay of quarantined changes failed; run it again: tables that took it are skipped by "
                          "their Delta transaction, the rest and the ledger row follow", batch_id=batch.batch_id):
            if self._ledger.has_batch(batch.batch_id):
                self._quarantine.mark_replayed(batch.source_id, quarantine_ids, batch.batch_id)
                log.info("sink %s: quarantine replay %s is in the ledger already; nothing loaded", self.sink_id,
                         batch.batch_id)
                result.seconds = time.monotonic() - started
                return result
            refuse_held(self.sink_id, batch, self._held.held(batch.source_id))
            for name in sorted(batch.tables):
                self._replay_table(batch, name, result)
            self._ledger.append_row(ledger_row(batch, result, high_water=0, run_id=run_id, versions=versions),
                                    app_transaction=False)
            self._quarantine.mark_replayed(batch.source_id, quarantine_ids, batch.batch_id)
            result.applied = True
        result.seconds = time.monotonic() - started
        log.info("sink %s: quarantine replay %s loaded (%d upserted, %d deleted) in %.3f s", self.sink_id,
                 batch.batch_id, result.upserted, result.deleted, result.seconds)
        return result

    def _replay_table(self, batch: ChangeBatch, name: str, result: ApplyResult) -> None:
        """Step 2 of :meth:`replay_quarantined` for one table."""
        schema = batch.schemas[name]
        label = self._label(schema)
        self.ensure_tables([schema])
        target = open_table(self.table_uri(schema.name), self.storage_options)
        assert target is not None  # ensure_tables made it
        app_id = f"{batch.batch_id}:{name}"
        events = batch.tables[name]
        stats = new_stats(events.num_rows)
        committed = target.transaction_version(app_id)
        if committed is not None and committed >= batch.seq_to:
            stats["skipped_replayed"] = stats["events"]
            stats_of_commit(target, batch.batch_id, stats)
        elif events.num_rows:
            prepared = prepare_table(name, events, schema, target=target, delete_mode=self.delete_mode,
                                     sink_id=self.sink_id, label=label, batch=batch, stats=stats)
            stats = merge_table(target, prepared, delete_mode=self.delete_mode, app_id=app_id, seq_to=batch.seq_to,
                                batch_id=batch.batch_id)
        result.tables[name] = stats
        result.upserted += stats["upserted"]
        result.deleted += stats["deleted"]

    # --- planning: every check before any commit ------------------------------------------------------------------

    def _plan(self, decision: GateDecision, high_water: int,
              opened: dict[str, DeltaTable | None] | None = None) -> list[_TablePlan]:
        """Plan every table the gate let through; one this sink cannot follow is held (``decision.hold``).
        ``opened``: tables read already in this apply, by URI (read again when absent)."""
        batch = decision.batch
        changes: dict[str, list[SchemaChange]] = {}
        for change in sorted(batch.schema_changes, key=lambda change: change.seq):
            changes.setdefault(change.table, []).append(change)
        names = sorted({*changes, *batch.schemas, *batch.tables})
        sink_names: dict[str, str] = {}
        plans = []
        for name in names:
            final = batch.schemas.get(name) or (changes[name][-1].after if name in changes else None)
            if final is None:
                raise SinkError(self.sink_id, f"the batch has changes for {name} but no schema for it",
                                table=name, batch_id=batch.batch_id, terminal=True)
            label = self._label(final)
            first = sink_names.setdefault(final.name, final.qualified_name)
            if first != final.qualified_name:
                raise SinkError(self.sink_id, f"source tables {first} and {final.qualified_name} would both load into "
                                              f"{label}; give them separate sinks (target_schema)",
                                table=label, batch_id=batch.batch_id, terminal=True)
            plan = self._plan_table(batch, name, final, changes.get(name, []), high_water, label, opened or {})
            if plan.held is not None:
                decision.hold(name, plan.held)  # its events leave decision.batch for a held chunk
                continue
            plans.append(plan)
        return plans

    def _plan_table(self, batch: ChangeBatch, name: str, final: TableSchema, changes: list[SchemaChange],
                    high_water: int, label: str, opened: dict[str, DeltaTable | None]) -> _TablePlan:
        uri = self.table_uri(final.name)
        target = opened[uri] if uri in opened else open_table(uri, self.storage_options)
        plan = _TablePlan(name, label, uri, self.app_id(batch.source_id, name), target)
        events = batch.tables.get(name)
        plan.stats = new_stats(events.num_rows if events is not None else 0)
        committed = target.transaction_version(plan.app_id) if target is not None else None
        if committed is not None and committed >= batch.seq_to:
            plan.stats["skipped_replayed"] = plan.stats["events"]
            if target is not None and committed == batch.seq_to:
                stats_of_commit(target, batch.batch_id, plan.stats)
            log.info("sink %s, batch %s: table %s already has this batch (Delta transaction %s at version %d); "
                     "skipped", self.sink_id, batch.batch_id, label, plan.app_id, committed)
            return plan
        floor = max(high_water, committed or 0)
        live = [change for change in changes if change.seq > floor]
        if events is not None and floor:
            events = events.filter(pc.greater(events["_cdc_seq"], floor))
            plan.stats["skipped_replayed"] = plan.stats["events"] - events.num_rows
        with_rows = events is not None and events.num_rows > 0
        if target is not None and not live and not with_rows:
            return plan
        earlier = [schema for change in changes for schema in (change.before, change.after) if schema is not None]
        context = MigrationContext(self.sink_id, label, batch.source_id, batch.batch_id,
                                   functools.partial(has_rows, target))
        try:
            plan.migration = plan_migration(arrow_schema(target) if target is not None else None, final, live,
                                            earlier=earlier, delete_mode=self.delete_mode, app_id=plan.app_id,
                                            context=context)
        except TableHeld as exc:
            plan.held = str(exc)
            return plan
        if with_rows:
            assert events is not None
            plan.prepared = prepare_table(name, events, _with_earlier_columns(final, earlier), target=target,
                                          delete_mode=self.delete_mode, sink_id=self.sink_id, label=label,
                                          batch=batch, stats=plan.stats)
        return plan

    # --- committing ----------------------------------------------------------------------------------------------

    def _commit_table(self, batch: ChangeBatch, plan: _TablePlan, result: ApplyResult) -> None:
        table = plan.target
        if plan.migration is not None and not plan.migration.empty:
            table = execute_migration(plan.uri, table, plan.migration, storage_options=self.storage_options,
                                      name=plan.name, configuration=self.configuration, sink_id=self.sink_id,
                                      batch_id=batch.batch_id)
        stats = plan.stats
        if plan.prepared is not None:
            assert table is not None
            stats = merge_table(table, plan.prepared, delete_mode=self.delete_mode, app_id=plan.app_id,
                                seq_to=batch.seq_to, batch_id=batch.batch_id)
            log.info(
                "sink %s, batch %s, table %s: %d events, %d replayed (skipped), %d merged after folding, "
                "%d upserted, %d deleted, %d truncates (%d rows)",
                self.sink_id, batch.batch_id, plan.label, stats["events"], stats["skipped_replayed"],
                stats["staged"], stats["upserted"], stats["deleted"], stats["truncates"], stats["truncated_rows"],
            )
        if stats["events"]:
            result.tables[plan.name] = stats
        result.upserted += stats["upserted"]
        result.deleted += stats["deleted"]
        result.skipped_replayed += stats["skipped_replayed"]
        result.truncated_tables += 1 if stats["truncates"] else 0

    # --- errors --------------------------------------------------------------------------------------------------

    def _errors(self, message: str, *, table: str | None = None, batch_id: str | None = None) -> _Errors:
        return _Errors(self.sink_id, message, table, batch_id)


class _Errors:
    """Storage and Delta errors as transient :class:`SinkError` (a retry usually helps); SinkErrors pass."""

    def __init__(self, sink_id: str, message: str, table: str | None, batch_id: str | None) -> None:
        self.sink_id, self.message, self.table, self.batch_id = sink_id, message, table, batch_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, (DeltaError, OSError, pa.ArrowException)) and not isinstance(exc, SinkError):
            raise SinkError(self.sink_id, f"{self.message}: {type(exc).__name__}: {exc}", table=self.table,
                            batch_id=self.batch_id) from exc


def _with_earlier_columns(final: TableSchema, earlier: list[TableSchema]) -> TableSchema:
    """``final`` plus columns dropped within the batch, whose values the batch's rows may still carry."""
    names = set(final.column_names)
    extra = []
    for schema in earlier:
        for col in schema.columns:
            if col.name not in names:
                names.add(col.name)
                extra.append(dataclasses.replace(col, primary_key=False))
    return dataclasses.replace(final, columns=(*final.columns, *extra)) if extra else final
