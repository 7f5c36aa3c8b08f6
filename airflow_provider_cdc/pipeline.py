"""The steps of a CDC run as plain functions: capture → the stage list (:mod:`airflow_provider_cdc.stages`) → load
→ commit.

Operators are thin wrappers over these. In staged mode each step is a task that reads what the previous one
committed (a staged batch behind a manifest) and returns a small JSON-safe summary for XCom; :func:`run_fused` runs
the same steps, with the same stage list, in one process. Only the connector contracts of
:mod:`airflow_provider_cdc.connectors.base` are used here: nothing in this module knows a particular database.

Exactly-once (DESIGN section 3): capture never acknowledges; load writes data and the ledger row in one sink
transaction; commit stores the position only once the ledger has the batch, then acknowledges the source. A crash
between any two steps leaves a state that the next run recognises: a re-captured range has the same batch id and
``seq`` numbers, so the ledger and the per-row ``_cdc_position`` guard absorb it. A batch that reads a snapshot
page is the exception (its rows and numbers depend on when it was read): once another capture of its range has
committed, it is stale, and load and commit leave it out (:mod:`airflow_provider_cdc.connectors.recapture`).

Audit trail (:mod:`airflow_provider_cdc.connectors.audit`): capture and each stage note when they ran and what they
made (:func:`~airflow_provider_cdc.connectors.audit.stage_facts`, in the manifest under ``audit`` when staged); load
hands these facts to the sink, which writes the batch's audit rows with its ledger row; commit records
``batch_committed`` once the position is stored (once per batch, however often the commit is retried).

Schema changes: load hands the source's :class:`~airflow_provider_cdc.schema.SchemaPolicy` to the sink, whose schema
gate may hold a table (its changes wait in the sink). Commit then reports it, after the position is stored and the
source acknowledged: the run in which a table *becomes* held fails once (:class:`TablesHeldError`, naming how to
resume), and later runs, in which it is only still held, succeed with a warning per table
(:class:`SchemaChangeHeldWarning`), so that the other tables keep flowing without a loop of failing runs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.connectors.audit import CAPTURE, FACTS_KEY, committed_entry, stage_facts
from airflow_provider_cdc.connectors.base import Position, PositionStore, ReadsAhead, Sink, Source
from airflow_provider_cdc.connectors.recapture import is_stale, reads_snapshot, stale_reason
from airflow_provider_cdc.errors import CdcError, PositionLostError, SinkError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.schema.gate import resume_commands
from airflow_provider_cdc.stages import Stage, apply_stages
from airflow_provider_cdc.staging import BatchStore

if TYPE_CHECKING:
    from airflow_provider_cdc.schema.policy import SchemaPolicy

log = logging.getLogger("airflow_provider_cdc.pipeline")


def release_memory() -> None:
    """Hand freed Arrow buffers back to the system after a batch, so a long backlog does not ratchet up the
    process's peak memory (Arrow's pool otherwise keeps them for reuse)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def summarize(batch: ChangeBatch, manifest_uri: str | None) -> dict[str, Any]:
    """What a step hands over in XCom: the manifest URI and counts, never data."""
    return {
        "manifest_uri": manifest_uri,
        "source_id": batch.source_id,
        "batch_id": batch.batch_id,
        "change_count": batch.change_count,
        "ops": batch.op_totals(),
        "seq_from": batch.seq_from,
        "seq_to": batch.seq_to,
    }


def start_position(source: Source, sink: Sink, positions: PositionStore) -> Position | None:
    """The stored position, or the sink ledger's if that is later (a previous commit step did not finish)."""
    stored = positions.get(source.source_id)
    committed = sink.last_committed(source.source_id)
    if committed is not None and (stored is None or source.position_order(committed) > source.position_order(stored)):
        log.warning(
            "source %s: the sink ledger is ahead of the stored position cdc.position.%s (%s); resuming from the "
            "ledger at seq %s",
            source.source_id, source.source_id,
            "it is missing" if stored is None else "a commit step did not finish", committed.get("seq"),
        )
        # Marked: batches without changes leave no ledger row, so the source may be acknowledged past it.
        return {**committed, "from_ledger": True} if stored is None else committed
    return stored


def capture_from(source: Source, position: Position | None, max_changes: int) -> ChangeBatch:
    source.prepare(position)
    return source.capture(position, max_changes)


def capture_batch(
    source: Source,
    sink: Sink,
    positions: PositionStore,
    max_changes: int,
) -> ChangeBatch:
    position = start_position(source, sink, positions)
    try:
        return capture_from(source, position, max_changes)
    except PositionLostError as exc:
        # Overlapping runs (max_active_runs > 1): another run may have committed, and acknowledged the source,
        # after this one read the position. Read it again; only a position that stays behind is lost.
        again = start_position(source, sink, positions)
        if again is None or position is None or again == position or \
                source.position_order(again) <= source.position_order(position):
            raise
        log.info("source %s: another run committed up to seq %s meanwhile (%s); capturing from there",
                 source.source_id, again.get("seq"), exc)
        return capture_from(source, again, max_changes)


def capture_stage(
    source: Source,
    sink: Sink,
    positions: PositionStore,
    store: BatchStore,
    *,
    max_changes: int,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Capture the next batch and stage it. A run that captured before (its task was cleared) re-stages nothing:
    it returns the same manifest, so the identical change range is replayed."""
    if run_id is not None:
        previous = store.manifest_for_run(source.source_id, run_id)
        if previous is not None:
            batch = store.read(previous)
            log.info("run %s already captured batch %s (%s); replaying that batch", run_id, batch.batch_id, previous)
            return summarize(batch, previous)
    batch = capture_batch(source, sink, positions, max_changes)
    uri = store.write(batch, extra={FACTS_KEY: {CAPTURE: captured_facts(batch, run_id)}})
    if run_id is not None:
        store.remember_run(source.source_id, run_id, uri)
    summary = summarize(batch, uri)
    del batch
    release_memory()
    return summary


def captured_facts(batch: ChangeBatch, run_id: str | None) -> dict[str, Any]:
    """What the audit trail notes of a capture: when, what, and by which run (read back by commit)."""
    return {**stage_facts(batch.change_count, batch.counts(), quarantined=batch.quarantined_count), "run_id": run_id}


def _apply_stage(stage: Stage, batch: ChangeBatch, versions: dict[str, Any] | None,
                 facts: Mapping[str, Any] | None) -> tuple[ChangeBatch, dict[str, Any], dict[str, Any]]:
    """``stage`` over ``batch`` (:func:`apply_stages`), with the audit facts of what it made added to ``facts``."""
    made, versions_now = apply_stages([stage], batch, versions)
    facts_now = {**(facts or {}), stage.name: stage_facts(
        made.change_count, made.counts(), quarantined=made.quarantined_count - batch.quarantined_count)}
    return made, versions_now, facts_now


def run_stage(manifest_uri: str, stage: Stage, store: BatchStore) -> dict[str, Any]:
    """Staged mode's task for one stage of the list: read the upstream batch, apply ``stage``, stage the result
    beside it with the stage versions (and audit facts) accumulated so far. Re-running it (a cleared task) rewrites
    the same batch."""
    batch, manifest = store.read_staged(manifest_uri)
    made, versions, facts = _apply_stage(stage, batch, manifest.get("stage_versions"), manifest.get(FACTS_KEY))
    del batch
    uri = store.write(made, stage=stage.name, extra={"stage_versions": versions, FACTS_KEY: facts})
    summary = {**summarize(made, uri), "stage": stage.name, "stage_versions": versions}
    del made
    release_memory()
    return summary


def load_batch(
    batch: ChangeBatch,
    sink: Sink,
    *,
    run_id: str | None = None,
    stage_versions: dict[str, Any] | None = None,
    policy: SchemaPolicy | None = None,
    facts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply ``batch`` with its ledger row (which records ``stage_versions``) and its audit rows (from ``facts``,
    what capture and the stages noted) under the source's schema ``policy``; a batch already in the ledger is a
    no-op. A batch left without changes (nothing captured, or every row dropped by a stage) writes nothing, and so
    does a stale one (:func:`stale_against`: the summary says ``stale`` and why; its commit then stores nothing).

    The summary carries ``newly_held`` (tables the sink's schema gate held from this batch on, with the reason)
    to the commit step, which fails the run for them once the position is stored."""
    if batch.is_empty:
        log.info("batch %s has no changes; nothing to load", batch.batch_id)
        return {"batch_id": batch.batch_id, "applied": False, "empty": True, "newly_held": {}, "held_tables": {}}
    if batch.quarantined_count and not sink.capabilities.quarantine:
        raise SinkError(sink.sink_id, f"{batch.quarantined_count} changes of batch {batch.batch_id} were quarantined, "
                        f"and a {sink.capabilities.dialect or 'this'} sink cannot keep quarantined changes yet; "
                        "nothing was loaded. Fix the rows or rules, or set their policy to fail",
                        batch_id=batch.batch_id, terminal=True)
    stale = stale_against(batch, sink)
    if stale is not None:
        log.warning("source %s: %s", batch.source_id, stale)
        return {"batch_id": batch.batch_id, "applied": False, "empty": False, "stale": True, "reason": stale,
                "newly_held": {}, "held_tables": {}}
    versions: dict[str, dict[str, Any] | None] = {"stage_versions": stage_versions or {}}
    if facts:
        versions[FACTS_KEY] = dict(facts)
    result = sink.apply(batch, run_id=run_id, versions=versions, policy=policy)
    if result.stale is not None:  # refused under the sink's lock: another load committed after the check above
        return {**result.to_dict(), "empty": False, "stale": True, "reason": result.stale}
    if not result.applied:
        log.info("batch %s is already in the sink ledger; load is a no-op", batch.batch_id)
    return {**result.to_dict(), "empty": False}


def stale_against(batch: ChangeBatch, sink: Sink) -> str | None:
    """Why ``batch`` must not be loaded into ``sink`` (None: it may): it reads a snapshot and another capture of its
    range committed meanwhile (:mod:`airflow_provider_cdc.connectors.recapture`). Asked only of such batches, and
    before the sink's own check, so that every sink refuses them; a batch the ledger has is a plain replay."""
    if not reads_snapshot(batch):
        return None
    high_water = sink.high_water(batch.source_id)
    if not is_stale(batch, high_water) or sink.has_batch(batch.batch_id):
        return None
    return stale_reason(batch, high_water)


def load_stage(
    manifest_uri: str, sink: Sink, *, run_id: str | None = None, policy: SchemaPolicy | None = None
) -> dict[str, Any]:
    batch, manifest = BatchStore.read_staged(manifest_uri)
    result = load_batch(batch, sink, run_id=run_id, stage_versions=manifest.get("stage_versions"), policy=policy,
                        facts=manifest.get(FACTS_KEY))
    del batch
    release_memory()
    return result


class LoadNotCommittedError(CdcError):
    """Commit was asked for a batch the sink ledger does not have: its load never committed. Retrying the commit
    cannot change that; clearing the load task can."""

    terminal = True

    def __init__(self, source_id: str, batch_id: str) -> None:
        self.source_id, self.batch_id = source_id, batch_id
        super().__init__(
            f"source {source_id!r}: batch {batch_id} is not in the sink ledger, so its load did not commit; "
            "the position stays where it is. Clear the load task to apply it."
        )


def held_message(source_id: str, table: str, reason: str) -> str:
    """``table: reason``, plus the commands that resume it when the reason (a sink's own refusal) does not name
    them already (the schema gate's reasons do)."""
    text = f"{table}: {reason}"
    return text if f"schema accept {source_id}." in reason else f"{text}; {resume_commands(source_id, table)}"


class TablesHeldError(CdcError):
    """Tables became held in this run: a schema change their policy refused, or one the sink cannot follow. The
    batch committed for every other table and the position moved on; the held tables' changes wait in the sink.

    Terminal: the run fails once, so that the hold is seen. Later runs succeed while the tables stay held (with a
    :class:`SchemaChangeHeldWarning` each), so the other tables never stop behind a loop of failing runs."""

    terminal = True

    def __init__(self, source_id: str, held: Mapping[str, str]) -> None:
        self.source_id = source_id
        self.held = dict(held)
        count = f"{len(held)} table{'s' if len(held) != 1 else ''}"
        lines = "\n".join(f"- {held_message(source_id, table, reason)}" for table, reason in sorted(held.items()))
        super().__init__(
            f"source {source_id!r}: schema changes hold {count} from this batch on ({', '.join(sorted(held))}). The "
            f"batch was committed for every other table and the position stored; the held changes wait in the "
            f"sink, not lost, and later runs keep the other tables flowing.\n{lines}"
        )


class SchemaChangeHeldWarning(UserWarning):
    """A table is still held (a run before this one failed with :class:`TablesHeldError` for it). The run
    succeeds; this says, on every run, that the table's changes wait for ``schema accept`` or a re-snapshot."""


def _warn_still_held(source_id: str, held: Mapping[str, str]) -> None:
    for table, reason in sorted(held.items()):
        text = f"source {source_id!r}: table {table} is still held, its changes wait in the sink. " + held_message(
            source_id, table, reason)
        log.warning("%s", text)
        warnings.warn(text, SchemaChangeHeldWarning, stacklevel=3)


def commit_position(
    source: Source,
    sink: Sink,
    positions: PositionStore,
    *,
    batch_id: str,
    position_to: Position,
    needs_ledger: bool,
    newly_held: Mapping[str, str] | None = None,
    run_id: str | None = None,
    seq_from: int | None = None,
    acknowledge: Callable[[Position], None] | None = None,
) -> dict[str, Any]:
    """Store the batch's end position (never moving backwards), record ``batch_committed`` in the sink's audit
    trail (a batch that was loaded; once, however often this is retried), then acknowledge the source (through
    ``acknowledge`` when given: a fused loop defers it to its capture ahead); then report
    held tables: :class:`TablesHeldError` for those in ``newly_held`` (held by this batch's load, still held now), a
    warning for each one held before. The summary lists ``held_tables``.

    A batch the ledger lacks although the ledger went past its start (``seq_from``) was superseded: another capture
    of its range committed first, and its load refused it as stale. Nothing is stored for it (its position may lie
    past changes that nobody applied); the summary says ``superseded``. Any other batch the ledger lacks is a load
    that never committed: :class:`LoadNotCommittedError`."""
    if needs_ledger and not sink.has_batch(batch_id):
        if seq_from is not None and sink.high_water(source.source_id) >= seq_from:
            log.warning("source %s: batch %s is not in the sink ledger, which went past its start (seq %d) with "
                        "another capture of that range; its position is not stored, the next run captures from the "
                        "committed one", source.source_id, batch_id, seq_from)
            return {"batch_id": batch_id, "position_stored": False, "superseded": True,
                    "seq": (positions.get(source.source_id) or {}).get("seq"),
                    "held_tables": sink.held_tables(source.source_id)}
        raise LoadNotCommittedError(source.source_id, batch_id)
    stored = positions.get(source.source_id)
    newest = position_to
    if stored is None or source.position_order(position_to) > source.position_order(stored) or (
            source.position_order(position_to) == source.position_order(stored) and position_to != stored):
        positions.set(source.source_id, position_to, batch_id=batch_id)
        stored_now = True
    else:
        newest = stored
        stored_now = False
        log.info("cdc.position.%s already holds a later position; left as is", source.source_id)
    if needs_ledger:
        sink.record_audit([committed_entry(source.source_id, batch_id, run_id=run_id, position=position_to,
                                           position_stored=stored_now)])
    (acknowledge or source.acknowledge)(newest)
    # Committed first: the other tables keep flowing whatever follows.
    held = sink.held_tables(source.source_id)
    new = {table: reason for table, reason in (newly_held or {}).items() if table in held}
    _warn_still_held(source.source_id, {table: reason for table, reason in held.items() if table not in new})
    if new:
        # Fails this run once, so that the hold is seen; the runs after it only warn.
        raise TablesHeldError(source.source_id, new)
    return {"batch_id": batch_id, "position_stored": stored_now, "seq": newest.get("seq"), "held_tables": held}


def commit_stage(
    manifest_uri: str,
    source: Source,
    sink: Sink,
    positions: PositionStore,
    store: BatchStore,
    *,
    retention_hours: float | None = None,
    newly_held: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Commit the batch of the last staged step (the one load applied); ``newly_held`` is what that load's
    summary said (the commit task's input from the load task's XCom)."""
    manifest = store.read_manifest(manifest_uri)
    result = commit_position(
        source, sink, positions,
        batch_id=manifest["batch_id"],
        position_to=manifest["position_to"],
        needs_ledger=bool(manifest["change_count"] or manifest["schema_changes"] or manifest.get("quarantined")),
        newly_held=newly_held,
        run_id=((manifest.get(FACTS_KEY) or {}).get(CAPTURE) or {}).get("run_id"),
        seq_from=manifest.get("seq_from"),
    )
    if retention_hours is not None:  # skipped by a run that fails for a held table: the next run purges
        store.purge(source.source_id, retention_hours)
    return result


class CaptureAhead:
    """The next batch, captured in a thread while the current one goes through the stage list and the load: in a
    long-running fused run (``loop_seconds``) the source's read and the sink's write then use both cores.

    Capture only reads (it never acknowledges), so reading early changes nothing the exactly-once protocol relies
    on: the early batch is used only when the next batch's start position, read as usual once the current batch is
    committed, is the one it was captured from; otherwise (another run committed meanwhile, the ledger was ahead,
    the capture failed) it is dropped and the batch captured again. The source is used by one thread at a time: the
    thread is joined before the commit. Batches that read a snapshot are not read ahead (a page is valid only on
    top of what its position says the sink holds). Memory: two batches at a time, plus what a source that reads
    ahead (:class:`~airflow_provider_cdc.connectors.base.ReadsAhead`) holds of the next ones.

    The source's acknowledgement of a committed batch (the slot advance) is left to the thread too, ahead of its
    capture (:meth:`defer_acknowledgement`): it comes after the position is stored, as always, only later, and the
    loop settles the last one before it ends (:meth:`settle`). One that never happens (a kill) is what a crash
    between storing the position and acknowledging leaves anyway: the next capture or the sensor acknowledges.
    A source that reads ahead is acknowledged once per read-ahead's worth of batches (and whenever the loop finds
    nothing new): a PostgreSQL slot advance decodes from the slot's ``restart_lsn`` as a peek does, so one advance
    over four batches costs what one over a single batch does, where four cost four times as much."""

    # A source that can read several batches in one go (PostgreSQL: one peek instead of one per batch) reads this
    # many messages ahead at most: at 50,000 changes a batch, four batches per peek.
    READ_AHEAD_ROWS = 200_000
    # ... and is acknowledged once per read-ahead, but at least every this many batches: the slot never falls
    # far behind the stored position, however small the batches.
    ACKNOWLEDGE_EVERY_MAX = 4

    def __init__(self, source: Source, max_changes: int) -> None:
        self.source = source
        self.max_changes = max_changes
        self._acknowledge_every = 1
        if isinstance(source, ReadsAhead):
            source.read_ahead(self.READ_AHEAD_ROWS)
            self._acknowledge_every = max(1, min(self.ACKNOWLEDGE_EVERY_MAX,
                                                 self.READ_AHEAD_ROWS // max(max_changes, 1)))
        self._thread: threading.Thread | None = None
        self._from: Position | None = None
        self._batch: ChangeBatch | None = None
        self._error: BaseException | None = None
        self._unacknowledged: Position | None = None
        self._acknowledgements_deferred = 0

    def defer_acknowledgement(self, position: Position) -> None:
        """Acknowledge ``position`` before the next capture ahead (or at :meth:`settle`), not now."""
        self._unacknowledged = position

    def settle(self) -> None:
        """Wait for the thread, then acknowledge what is still unacknowledged (errors propagate, as a commit's)."""
        self.wait()
        if self._unacknowledged is not None:
            position, self._unacknowledged, self._acknowledgements_deferred = self._unacknowledged, None, 0
            self.source.acknowledge(position)

    def start(self, position: Position) -> None:
        """Capture from ``position`` in the background, after acknowledging the batch committed last (or, for a
        source that reads ahead, leaving that to a later start or to :meth:`settle`)."""
        self.wait()
        self._from, self._batch, self._error = position, None, None
        unacknowledged = self._unacknowledged
        if unacknowledged is not None and self._acknowledgements_deferred + 1 < self._acknowledge_every:
            self._acknowledgements_deferred += 1  # the next commit's position replaces it, and covers it
            unacknowledged = None
        else:
            self._unacknowledged, self._acknowledgements_deferred = None, 0

        def capture() -> None:
            try:
                if unacknowledged is not None:
                    self.source.acknowledge(unacknowledged)
                self._batch = capture_from(self.source, position, self.max_changes)
            except BaseException as exc:  # reported by take(), which captures again in the caller's thread
                self._error = exc
                if unacknowledged is not None and self._unacknowledged is None:
                    self._unacknowledged = unacknowledged  # settle() tries it again

        self._thread = threading.Thread(target=capture, name=f"cdc-capture-ahead-{self.source.source_id}",
                                        daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Until the background capture is done: before anything else uses the source."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def take(self, position: Position | None) -> ChangeBatch | None:
        """The batch captured ahead, if it starts at ``position`` (the start position read now); else None."""
        self.wait()
        started, batch, error = self._from, self._batch, self._error
        self._from = self._batch = self._error = None
        if started is None:
            return None
        if error is not None:
            log.info("source %s: the capture ahead failed (%s: %s); capturing again", self.source.source_id,
                     type(error).__name__, error)
            return None
        if position is None or _canonical(started) != _canonical(position):
            log.info("source %s: the position moved since the capture ahead started; capturing again",
                     self.source.source_id)
            return None
        return batch


def _canonical(position: Position) -> str:
    return json.dumps(position, sort_keys=True, default=str)


def run_fused(
    source: Source,
    sink: Sink,
    positions: PositionStore,
    *,
    max_changes: int,
    run_id: str | None = None,
    stages: Sequence[Stage] = (),
    policy: SchemaPolicy | None = None,
    ahead: CaptureAhead | None = None,
) -> dict[str, Any]:
    """Capture, the stage list, load and commit in one process, without staging: the lowest latency, and the
    same guarantees and the same ledger row as staged mode (tables held by this batch fail the run once, after
    the commit, as in staged mode). With ``ahead`` (a fused loop), the next batch is captured while this one
    loads, and this one is the batch captured during the previous load when it starts where that load ended."""
    started = time.monotonic()
    batch = ahead.take(start_position(source, sink, positions)) if ahead is not None else None
    if batch is None:
        batch = capture_batch(source, sink, positions, max_changes)
    else:
        log.info("source %s: batch %s was captured while the previous batch loaded", source.source_id,
                 batch.batch_id)
    if ahead is not None and not batch.is_empty and not reads_snapshot(batch):
        ahead.start(batch.position_to)  # the thread acknowledges the batch before this one first
    elif ahead is not None:
        ahead.settle()
    try:
        captured = batch.change_count
        newest_ts_ms = _newest_ts_ms(batch)
        facts: dict[str, Any] = {CAPTURE: captured_facts(batch, run_id)}
        stage_versions: dict[str, Any] = {}
        for stage in stages:  # one at a time, as staged mode runs them, so that each stage's facts are noted
            batch, stage_versions, facts = _apply_stage(stage, batch, stage_versions, facts)
        loaded = load_batch(batch, sink, run_id=run_id, stage_versions=stage_versions, policy=policy, facts=facts)
    finally:
        if ahead is not None:
            ahead.wait()  # the commit uses the source: one thread at a time
    committed = commit_position(
        source, sink, positions,
        batch_id=batch.batch_id,
        position_to=batch.position_to,
        needs_ledger=not batch.is_empty,
        newly_held=loaded.get("newly_held"),
        run_id=run_id,
        seq_from=batch.seq_from,
        acknowledge=None if ahead is None else ahead.defer_acknowledgement,
    )
    summary = {**summarize(batch, None), "captured": captured, "stage_versions": stage_versions, "load": loaded,
               "commit": committed, "held_tables": committed["held_tables"],
               # the newest source commit time captured (ms since epoch; None: no change) and what each stage
               # quarantined: what staged mode's metrics read from the staged files and the manifest's facts
               "newest_ts_ms": newest_ts_ms,
               "quarantined": {stage.name: int(facts[stage.name]["quarantined"]) for stage in stages}}
    log.info("fused run of %s: %d changes captured, %d after %d stages, in %.2fs", source.source_id, captured,
             batch.change_count, len(stages), time.monotonic() - started)
    del batch
    release_memory()
    return summary


def _newest_ts_ms(batch: ChangeBatch) -> int | None:
    """The newest source commit time (``_cdc_ts_ms``) of the batch's changes and schema changes (None: none)."""
    import pyarrow.compute as pc

    found = [pc.max(table.column("_cdc_ts_ms")).as_py() for table in batch.tables.values()
             if table.num_rows and "_cdc_ts_ms" in table.column_names]
    found += [change.ts_ms for change in batch.schema_changes if change.ts_ms]
    values = [int(value) for value in found if value is not None]
    return max(values) if values else None
