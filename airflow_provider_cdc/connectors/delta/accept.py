"""``schema accept`` on the file sink: a held table follows its held versions, and its held changes are replayed once.

:func:`~airflow_provider_cdc.schema.gate.plan_accept` says what the table becomes (``plan.target``) and gives the held
changes as one batch, ``<source_id>:accept:<table>:<seq_from>-<seq_to>``, read with that schema. Without a transaction
across Delta tables, the accept writes in an order where every step is idempotent, so that running it again after a
crash anywhere finishes it:

1. check everything before the first write: the table is held; every held chunk came with a batch the ledger has
   committed (else the replay of that batch is still to come); the forced migration is planned (a type change that
   is not a safe widening becomes a conversion) and **every value it converts is cast, checked, first**: one that
   does not convert refuses the accept with a terminal error naming the column, and nothing has changed;
2. migrate the Delta table (renames, widenings, conversions in one rewrite; added columns; a replay finds them done);
3. merge the replay batch with no high-water floor (its changes lie below the source's high water): the merge
   commits with the table's application transaction at ``plan.batch.seq_to``, and events at or below the table's
   committed transaction version are left out, as :meth:`DeltaSink.apply` does. A retry after the merge finds the
   version there and skips it. When the table's version is already ``seq_to`` or more (the held changes came with a
   batch that overlapped one the table had taken before a crash), every held event is at or below it, so the table
   has them: nothing is merged, and the accept's own ledger row is what makes it happen once;
4. drop the columns the accepted version dropped;
5. store the registrations (``held`` → ``accepted``);
6. append the ledger row of the replay batch (the audit trail; a retry that finds it skips 2 to 5);
7. delete the held chunks, and last remove the held mark: until then the table is held, so ``schema accept`` can be
   run again, and a retry that finds the ledger row only finishes these two steps.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING

import pyarrow.compute as pc

from airflow_provider_cdc.connectors.base import AcceptResult, ApplyResult
from airflow_provider_cdc.connectors.delta.merge import merge_table, new_stats, prepare_table, stats_of_commit
from airflow_provider_cdc.connectors.delta.schema import (
    MigrationContext,
    TableHeld,
    check_conversions,
    drop_columns,
    execute_migration,
    plan_migration,
)
from airflow_provider_cdc.connectors.delta.storage import arrow_schema, has_rows, open_table
from airflow_provider_cdc.connectors.ledger import ledger_row
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.schema import (
    AcceptPlan,
    SchemaPolicy,
    SchemaVersion,
    plan_accept,
    subject_of,
)
from airflow_provider_cdc.tables import SchemaChange

if TYPE_CHECKING:
    from airflow_provider_cdc.connectors.delta.sink import DeltaSink

log = logging.getLogger("airflow_provider_cdc.sink.delta")


def accept_held_table(sink: DeltaSink, source_id: str, table: str, *, policy: SchemaPolicy | None,
                      run_id: str | None) -> AcceptResult:
    """Accept the held versions of ``table`` in ``sink`` (module docstring)."""
    started = time.monotonic()
    subject = subject_of(source_id, table)
    held = sink._held.held(source_id)
    if table not in held:
        raise SinkError(sink.sink_id, f"table {table} of source {source_id!r} is not held, so there is nothing to "
                                      f"accept; held tables: {', '.join(sorted(held)) or 'none'}",
                        table=table, terminal=True)
    high_water = sink._ledger.high_water(source_id)
    chunks = sink._held_changes.chunks(source_id, table)
    pending = sorted({chunk.batch_id for chunk in chunks if chunk.seq_to > high_water})
    if pending:
        raise SinkError(sink.sink_id, f"changes of {table} are held from batches the sink has not committed yet "
                                      f"({', '.join(pending)}): a load stopped part-way. Run the pipeline of "
                                      f"{source_id!r} until those batches are loaded, then accept again",
                        table=table, terminal=True)
    versions = sink._versions.versions(source_id)
    try:
        plan = plan_accept(source_id, table, versions, chunks, policy)
    except ValueError as exc:  # held, yet no version and no change: nothing to accept it to
        raise SinkError(sink.sink_id, f"cannot accept {table}: {exc}; re-snapshot it instead: python -m "
                                      f"airflow_provider_cdc resnapshot {source_id} --table {table}",
                        table=table, terminal=True) from exc
    batch = plan.batch
    result = AcceptResult(subject, table, [version.version for version in plan.registrations],
                          batch.batch_id if batch is not None else None,
                          replayed_events=sum(events.num_rows for events in batch.tables.values()) if batch else 0)
    if batch is not None and sink._ledger.has_batch(batch.batch_id):
        result.applied = False
        log.info("sink %s: the replay %s of %s is in the ledger already; clearing the hold", sink.sink_id,
                 batch.batch_id, table)
    else:
        result.applied = _replay(sink, plan, result, run_id=run_id, policy=policy, versions=versions,
                                 held={name: reason for name, reason in held.items() if name != table})
    sink._held_changes.delete(source_id, table)
    sink._held.release(source_id, table)
    result.seconds = time.monotonic() - started
    log.info("sink %s: accepted %s versions %s: %d held changes replayed (%d upserted, %d deleted) in %.3f s",
             sink.sink_id, subject, result.accepted_versions, result.replayed_events, result.upserted, result.deleted,
             result.seconds)
    return result


def _replay(sink: DeltaSink, plan: AcceptPlan, result: AcceptResult, *, run_id: str | None,
            policy: SchemaPolicy | None, versions: list[SchemaVersion], held: dict[str, str]) -> bool:
    """Steps 1 (the checks) to 6 of the module docstring; whether anything was written (a retry that finds the held
    changes gone, replayed before a crash, has only the hold left to clear)."""
    source_id = plan.subject.partition(".")[0]
    batch = plan.batch
    name = plan.target.name
    label = f"{sink.target_schema}.{name}"
    uri = sink.table_uri(name)
    app_id = sink.app_id(source_id, plan.table)
    target = open_table(uri, sink.storage_options)
    context = MigrationContext(sink.sink_id, label, source_id, batch.batch_id if batch else None,
                               functools.partial(has_rows, target))
    changes = batch.schema_changes if batch is not None else [SchemaChange(plan.table, 0, plan.target,
                                                                           before=plan.previous)]
    try:
        migration = plan_migration(arrow_schema(target) if target is not None else None, plan.target, changes,
                                   delete_mode=sink.delete_mode, app_id=app_id, context=context, force=True)
    except TableHeld as exc:
        raise SinkError(sink.sink_id, f"cannot accept {plan.subject}: {exc}", table=label, terminal=True) from exc
    if target is not None:
        check_conversions(target, migration, context=context, source_table=plan.table)
    committed = (target.transaction_version(app_id) or 0) if target is not None else 0
    events = batch.tables.get(plan.table) if batch is not None else None
    stats = new_stats(events.num_rows if events is not None else 0)
    prepared = None
    if batch is not None and events is not None:
        live = events.filter(pc.greater(events["_cdc_seq"], committed)) if committed else events
        stats["skipped_replayed"] = events.num_rows - live.num_rows
        if live.num_rows:
            prepared = prepare_table(plan.table, live, plan.target, target=target, delete_mode=sink.delete_mode,
                                     sink_id=sink.sink_id, label=label, batch=batch, stats=stats)
    # Every check is done: from here on, writes.
    if not migration.empty:
        target = execute_migration(uri, target, migration, storage_options=sink.storage_options, name=plan.table,
                                   configuration=sink.configuration, sink_id=sink.sink_id,
                                   batch_id=batch.batch_id if batch else None)
    if prepared is not None and batch is not None and target is not None:
        # Events above ``committed`` are left, so ``batch.seq_to`` (their last seq or more) is above it too.
        stats = merge_table(target, prepared, delete_mode=sink.delete_mode, app_id=app_id, seq_to=batch.seq_to,
                            batch_id=batch.batch_id)
    elif batch is not None and target is not None and committed == batch.seq_to:
        stats_of_commit(target, batch.batch_id, stats)  # a retry: the merge committed before a crash
    dropped = drop_columns(uri, [column for column in plan.drops if column not in plan.target.column_names],
                           storage_options=sink.storage_options, sink_id=sink.sink_id, label=label)
    if plan.registrations:
        sink._versions.store(source_id, plan.registrations)
    result.upserted, result.deleted = stats["upserted"], stats["deleted"]
    if batch is None:
        return bool(not migration.empty or dropped or plan.registrations)
    outcome = ApplyResult(batch_id=batch.batch_id, applied=True, upserted=stats["upserted"],
                          deleted=stats["deleted"])
    schema_versions = plan.ledger_versions(versions, policy, held)
    row = ledger_row(batch, outcome, high_water=0, run_id=run_id, versions={"schema_versions": schema_versions})
    sink._ledger.append_row(row, app_transaction=False)
    return True
