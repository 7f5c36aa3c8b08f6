"""The pipeline status of each source, and its recent batches.

A source's status joins three records: Airflow's metadata (its DAG: paused, recent runs; given as a
:class:`DagState`, read by the plugin), the sink's ledger (the last batches: counts, commit time, quality metrics;
:mod:`.ledger`) and the position Variable ``cdc.position.<source_id>``. What cannot be read is listed under
``problems`` of that source, and the rest is still answered: a status page must work best when something is wrong.

Definitions (the fields' descriptions in :mod:`.models` say the same):

- ``lag_seconds``: now minus ``committed_at`` of the latest ledger row (how old the sink's view of the source is;
  an idle source's lag grows too, as nothing newer was committed);
- ``events_per_second``: changes of the recent batches over the summed run time of the DAG runs that loaded them
  (``run_id`` of the ledger row), i.e. the throughput while a run works, not diluted by idle time; a run still
  running (a fused loop's) counts from its start to its last commit;
- ``failure_rate``: failed / finished among the recent DAG runs;
- ``quality_score``: passed / evaluated changes of the latest batch's validated tables
  (``stage_versions.validate.metrics``), None when it had no quality rules.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.api.errors import NotFoundError
from airflow_provider_cdc.api.ledger import LedgerUnreadable, hook_rows
from airflow_provider_cdc.api.models import BatchInfo, BatchList, HeldTable, PipelineStatus, RunInfo, SourceStatus
from airflow_provider_cdc.config.models import mask_url

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig, SourceConfig
    from airflow_provider_cdc.connectors.ledger import LedgerRow

RECENT_BATCHES = 20  # ledger rows the rates are taken over
RECENT_RUNS = 20  # DAG runs the failure rate is taken over
FINISHED = frozenset({"success", "failed"})


@dataclasses.dataclass(frozen=True)
class RunRecord:
    run_id: str
    state: str | None
    run_type: str | None = None
    start_date: dt.datetime | None = None
    end_date: dt.datetime | None = None

    def seconds(self, until: dt.datetime | None = None) -> float | None:
        """How long the run took; a run still running: from its start to ``until`` (None without it)."""
        end = self.end_date or until
        if self.start_date is None or end is None:
            return None
        return max((end - self.start_date).total_seconds(), 0.0)

    def info(self) -> RunInfo:
        return RunInfo(run_id=self.run_id, state=self.state, run_type=self.run_type, start_date=self.start_date,
                       end_date=self.end_date)


@dataclasses.dataclass(frozen=True)
class DagState:
    """What Airflow's metadata says of one DAG: ``registered`` (the DAG processor parsed it), ``paused``, and its
    recent runs, newest first."""

    dag_id: str
    registered: bool = False
    paused: bool | None = None
    runs: tuple[RunRecord, ...] = ()


DagStates = Callable[[list[str]], Mapping[str, DagState]]
"""dag ids -> their states (the plugin reads Airflow's metadata database)."""


# --- pure parts ---------------------------------------------------------------------------------------------------


def events_of(row: LedgerRow) -> int:
    return sum(int(n) for per_table in (row.counts or {}).values() for n in per_table.values())


def quality_score(row: LedgerRow | None) -> float | None:
    """passed / evaluated over the tables the batch's validate stage judged (None: no quality rules ran)."""
    if row is None:
        return None
    metrics = ((row.stage_versions or {}).get("validate") or {}).get("metrics") or {}
    evaluated = sum(int(m.get("evaluated", 0)) for m in metrics.values() if isinstance(m, Mapping))
    passed = sum(int(m.get("passed", 0)) for m in metrics.values() if isinstance(m, Mapping))
    if not metrics:
        return None
    return passed / evaluated if evaluated else 1.0


def batch_info(row: LedgerRow) -> BatchInfo:
    return BatchInfo(
        batch_id=row.batch_id, source_id=row.source_id, seq_from=row.seq_from, seq_to=row.seq_to,
        counts={table: {op: int(n) for op, n in ops.items()} for table, ops in (row.counts or {}).items()},
        events=events_of(row), rows_upserted=int(row.rows_upserted or 0), rows_deleted=int(row.rows_deleted or 0),
        position_from=brief_position(row.position_from), position_to=brief_position(row.position_to),
        run_id=row.run_id, committed_at=row.committed_at, quality_score=quality_score(row),
    )


def brief_position(position: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A position without the table schemas a source may remember in it (kept in the Variable, not shown here)."""
    if position is None:
        return None
    return {k: v for k, v in position.items() if k not in ("schemas", "tables")}


def lag_seconds(rows: list[LedgerRow], now: dt.datetime) -> float | None:
    committed = [row.committed_at for row in rows if row.committed_at is not None]
    if not committed:
        return None
    return max((now - max(committed)).total_seconds(), 0.0)


def events_per_second(rows: list[LedgerRow], runs: Iterable[RunRecord]) -> float | None:
    by_id = {run.run_id: run for run in runs}
    # A run still running (a fused loop's long task) counts up to the last batch it committed.
    last_commit: dict[str, dt.datetime] = {}
    for row in rows:
        if row.run_id and row.committed_at is not None:
            last_commit[row.run_id] = max(row.committed_at, last_commit.get(row.run_id, row.committed_at))
    events = 0
    seconds = 0.0
    counted: set[str] = set()
    for row in rows:
        run = by_id.get(row.run_id or "")
        took = run.seconds(last_commit.get(run.run_id)) if run is not None else None
        if not took:  # unknown, or no time yet (a running run's first commit at its start)
            continue
        events += events_of(row)
        if run is not None and run.run_id not in counted:  # one run may load several batches (a fused loop)
            counted.add(run.run_id)
            seconds += took
    if seconds <= 0:
        return None
    return events / seconds


def failure_rate(runs: Iterable[RunRecord]) -> tuple[float | None, int]:
    finished = [run for run in runs if run.state in FINISHED]
    if not finished:
        return None, 0
    return sum(run.state == "failed" for run in finished) / len(finished), len(finished)


def source_status(source: SourceConfig, *, dag: DagState, rows: list[LedgerRow], position: dict[str, Any] | None,
                  held: Mapping[str, str], now: dt.datetime, problems: list[str] | None = None) -> SourceStatus:
    rate, finished = failure_rate(dag.runs[:RECENT_RUNS])
    latest = rows[0] if rows else None
    return SourceStatus(
        source_id=source.id, type=source.type, dag_id=source.dag_id, dag_registered=dag.registered,
        paused=dag.paused, latest_run=dag.runs[0].info() if dag.runs else None,
        last_batch=batch_info(latest) if latest is not None else None, position=position,
        lag_seconds=lag_seconds(rows, now), events_per_second=events_per_second(rows, dag.runs),
        failure_rate=rate, recent_runs=finished, quality_score=quality_score(latest),
        held_tables=[HeldTable(table=table, reason=reason) for table, reason in sorted(held.items())],
        problems=list(problems or ()),
    )


# --- reading ------------------------------------------------------------------------------------------------------


def describe_failure(what: str, exc: BaseException) -> str:
    """``what: ErrorClass: first line`` with URLs masked, for ``problems`` (never a password)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{what}: {type(exc).__name__}" + (f": {mask_url(text)}" if text else "")


class StatusReader:
    """Reads the status and batches of the sources of ``config``.

    ``dag_states``: dag ids -> :class:`DagState` (Airflow's metadata); ``positions``: the position documents
    (default: the Variables, :class:`~airflow_provider_cdc.positions.PositionStore`); ``hook``: source id ->
    :class:`~airflow_provider_cdc.hooks.cdc.CdcHook`-like object (sink DSN and sink), default a ``CdcHook`` sharing
    ``config``."""

    def __init__(self, config: CdcConfig, dag_states: DagStates, *,
                 positions: Callable[[str], dict[str, Any] | None] | None = None,
                 hook: Callable[[str], Any] | None = None) -> None:
        self.config = config
        self.dag_states = dag_states
        self._positions = positions
        self._hook = hook

    def sources(self, source_id: str | None = None) -> list[SourceConfig]:
        if source_id is None:
            return list(self.config.sources)
        for source in self.config.sources:
            if source.id == source_id:
                return [source]
        raise NotFoundError.unknown_source(source_id, (s.id for s in self.config.sources))

    def hook(self, source_id: str) -> Any:
        if self._hook is not None:
            return self._hook(source_id)
        from airflow_provider_cdc.hooks.cdc import CdcHook

        hook = CdcHook(source_id, config_dir=str(self.config.directory))
        hook.config = self.config  # the cached_property's slot: no second load
        return hook

    def position(self, source_id: str) -> dict[str, Any] | None:
        if self._positions is not None:
            return self._positions(source_id)
        from airflow_provider_cdc.positions import PositionStore

        return PositionStore().get_document(source_id)

    def ledger_rows(self, source: SourceConfig, limit: int) -> list[LedgerRow]:
        return hook_rows(self.hook(source.id), source_id=source.id, limit=limit)

    def held_tables(self, source: SourceConfig) -> dict[str, str]:
        sink = self.hook(source.id).get_sink()
        try:
            return dict(sink.held_tables(source.id))
        finally:
            sink.close()

    def status(self, source_id: str | None = None, *, now: dt.datetime | None = None) -> PipelineStatus:
        sources = self.sources(source_id)
        now = now or dt.datetime.now(dt.timezone.utc)
        states = self.dag_states([source.dag_id for source in sources])
        answers = []
        for source in sources:
            problems: list[str] = []
            rows: list[LedgerRow] = []
            held: dict[str, str] = {}
            position = None
            try:
                rows = self.ledger_rows(source, RECENT_BATCHES)
            except LedgerUnreadable as exc:
                problems.append(str(exc))
            except Exception as exc:
                problems.append(describe_failure(f"sink {source.sink!r}: the ledger", exc))
            try:
                held = self.held_tables(source)
            except Exception as exc:
                problems.append(describe_failure(f"sink {source.sink!r}: the held tables", exc))
            try:
                position = self.position(source.id)
            except Exception as exc:
                problems.append(describe_failure(f"Variable cdc.position.{source.id}", exc))
            dag = states.get(source.dag_id) or DagState(source.dag_id)
            answers.append(source_status(source, dag=dag, rows=rows, position=position, held=held, now=now,
                                         problems=problems))
        return PipelineStatus(generated_at=now, sources=answers)

    def batches(self, source_id: str | None = None, limit: int = 20) -> BatchList:
        """The latest ``limit`` batches of one source, or of every source (newest commit first)."""
        rows: list[LedgerRow] = []
        problems: list[str] = []
        for source in self.sources(source_id):
            try:
                rows += self.ledger_rows(source, limit)
            except LedgerUnreadable as exc:
                problems.append(str(exc))
            except Exception as exc:
                problems.append(describe_failure(f"sink {source.sink!r}: the ledger", exc))
        oldest = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
        rows.sort(key=lambda row: (row.committed_at or oldest, row.seq_to or 0), reverse=True)
        return BatchList(batches=[batch_info(row) for row in rows[:limit]], problems=problems)
