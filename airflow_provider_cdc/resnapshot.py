"""``python -m airflow_provider_cdc resnapshot <source_id> [--table T ...]``: the recovery after a lost position.

Whole source (no ``--table``), in this order, each step logged with its counts:

1. drop what holds the old position at the source (a replication slot, say), if it exists: the position it held is
   gone anyway;
2. delete the source's rows from the sink's ledger ``_cdc_ledger``: the ledger is the other half of the position
   (a run resumes from whichever of Variable and ledger is later), so a stale ledger row would resume the stream
   past the new snapshot;
3. truncate every configured table's sink table: the snapshot rebuilds them, numbered from ``seq`` 0 again;
4. purge the source's staged batches and run pointers, so that no cleared task replays a batch of the old stream;
5. delete the Variable ``cdc.position.<source_id>``;
6. store a fresh position from the source (which sets up a new holder) with the snapshot pending, whatever
   ``snapshot:`` says in cdc.yaml.

Every step is idempotent, so after a failure the command can simply be run again. Only the generic
:class:`~airflow_provider_cdc.connectors.base.Source` and ``Sink`` methods are used, so it works for every connector.

With ``--table``: the holder of the position, the ledger and the stream stay; only those tables' sink tables are
truncated, and the stored position gets those tables queued for a new snapshot while the other tables keep
streaming. A table the sink holds after a schema change is released instead: its held changes are discarded (the
snapshot reads it anew); ``schema accept`` is the alternative that keeps and replays them.

A running DAG run of ``cdc_<source_id>`` could commit an old position over the new one, so the command refuses
while one is running, unless ``--yes`` (then it warns). Without ``--yes`` it asks for confirmation on a terminal,
and refuses when stdin is not one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.config.models import DEFAULT_TABLE_SCHEMA
from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.positions import position_key
from airflow_provider_cdc.schema.gate import COMMAND

if TYPE_CHECKING:
    from airflow_provider_cdc.connectors.base import Position, Sink, Source
    from airflow_provider_cdc.hooks.cdc import CdcHook

log = logging.getLogger("airflow_provider_cdc.resnapshot")

# Purge staged batches "older than" one hour in the future: every one of them, including one written this second.
_PURGE_ALL_HOURS = -1.0


class CommandError(Exception):
    """A command of ``python -m airflow_provider_cdc`` was refused or failed; the message says why and what to do."""


class ResnapshotError(CommandError):
    """The re-snapshot was refused or a step failed; the message says which and what to do."""


@dataclass
class ResnapshotSummary:
    source_id: str
    tables: list[str]  # the tables re-snapshotted ("schema.table")
    whole_source: bool
    steps: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        scope = "every table" if self.whole_source else ", ".join(self.tables)
        what = "the source from scratch" if self.whole_source else "those tables, the others keep streaming"
        dag_id = f"cdc_{self.source_id}"
        head = f"re-snapshot of source {self.source_id} ({scope}) is set up; the DAG {dag_id} now snapshots {what}"
        return [head, f"  {len(self.steps)} steps done; unpause the DAG {dag_id} if it is paused"]


def _describe(position: Position) -> str:
    """The scalar parts of a position (``lsn=0/1A2B3C seq=0``): what a person compares, not remembered schemas."""
    parts = [f"{key}={value}" for key, value in position.items()
             if isinstance(value, (str, int, float)) and not isinstance(value, bool)]
    return " ".join(parts) or "(empty)"


def _reset_tables(sink: Sink, source_id: str, chosen: list[str]) -> str:
    """Truncate the sink table of each ``schema.table`` (sink tables keep the table's name, not its schema).

    A table the sink holds back (a schema change was refused) is released instead (:meth:`Sink.release_table`): its
    held changes are discarded, since the snapshot reads the table anew, and the sink makes its table anew with
    the source's current columns. ``schema accept`` is the way that keeps them; the summary says so."""
    parts = []
    for qualified in chosen:
        if sink.release_table(source_id, qualified):
            parts.append(f"{_sink_name(qualified)} (was held: released, its held changes discarded, its sink table "
                         f"made anew by the snapshot; {COMMAND} schema accept {source_id}.{qualified} is the "
                         "alternative that keeps them)")
            continue
        existed = sink.reset_table(_sink_name(qualified))
        parts.append(_sink_name(qualified) + (" (no sink table yet)" if existed is False else ""))
    return f"truncated sink tables {', '.join(parts)}"


def qualify_tables(configured: list[tuple[str, str]], requested: list[str]) -> list[str]:
    """``table`` or ``schema.table`` from the command line → configured ``schema.table`` names, in config order."""
    names = {f"{schema}.{table}" for schema, table in configured}
    by_bare: dict[str, list[str]] = {}
    for schema, table in configured:
        by_bare.setdefault(table, []).append(f"{schema}.{table}")
    chosen: set[str] = set()
    unknown: list[str] = []
    for name in requested:
        if name in names:
            chosen.add(name)
        elif len(by_bare.get(name, [])) == 1:
            chosen.add(by_bare[name][0])
        elif len(by_bare.get(name, [])) > 1:
            raise ResnapshotError(f"table {name!r} is ambiguous: qualify it ({', '.join(by_bare[name])})")
        else:
            unknown.append(name)
    if unknown:
        raise ResnapshotError(
            f"not a configured table of this source: {', '.join(unknown)} (configured: {', '.join(sorted(names))})"
        )
    return [f"{s}.{t}" for s, t in configured if f"{s}.{t}" in chosen]


def running_dag_runs(dag_id: str) -> list[str]:
    """Run ids of the DAG's runs in state ``running``, from Airflow's metadata database."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    with create_session() as session:
        return list(session.scalars(
            select(DagRun.run_id).where(DagRun.dag_id == dag_id, DagRun.state == DagRunState.RUNNING)
        ))


def refuse_while_running(dag_id: str, risk: str, *, yes: bool, err: Any = None) -> None:
    """Refuse (:class:`CommandError`) while a run of ``dag_id`` is running, saying the ``risk``; with ``yes`` only
    warn. When Airflow's metadata database cannot be read, warn and go on: the user was told to pause the DAG."""
    err = err if err is not None else sys.stderr
    try:
        running = running_dag_runs(dag_id)
    except Exception as exc:
        print(f"warning: could not check for running runs of DAG {dag_id} in Airflow's metadata database "
              f"({type(exc).__name__}: {exc}); make sure it is paused and idle", file=err)
        running = []
    if running:
        message = (f"DAG {dag_id} has {len(running)} running run{'s' if len(running) > 1 else ''} "
                   f"({', '.join(running)}): {risk}. Pause the DAG and let the run finish (or mark it failed) first")
        if not yes:
            raise CommandError(message + ", or pass --yes to go ahead anyway")
        print(f"warning: {message}; going ahead because of --yes", file=err)


def confirm(stdin: Any, out: Any, *, yes: bool) -> None:
    """Ask ``Go ahead? [y/N]`` on a terminal (not with ``yes``); refuse without a terminal to ask on."""
    if yes:
        return
    if not stdin.isatty():
        raise CommandError("stdin is not a terminal, so there is nobody to confirm: pass --yes")
    out.write("Go ahead? [y/N] ")
    out.flush()
    answer = stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise CommandError("not confirmed; nothing was changed")


def plan(hook: CdcHook, tables: list[str] | None) -> tuple[list[str], list[str]]:
    """The tables to re-snapshot (``schema.table``) and a description of what will happen, for the confirmation."""
    cfg = hook.source_config
    configured = cfg.qualified_tables(DEFAULT_TABLE_SCHEMA)
    chosen = qualify_tables(configured, tables) if tables else [f"{s}.{t}" for s, t in configured]
    sink = f"{cfg.sink}.{cfg.target_schema}"
    if tables:
        what = [
            f"truncate the sink table{'s' if len(chosen) > 1 else ''} {', '.join(_sink_name(t) for t in chosen)} "
            f"in {sink}; a table held after a schema change is released instead, and its held changes are "
            f"discarded ({COMMAND} schema accept {cfg.id}.<schema>.<table> keeps them instead)",
            f"queue {', '.join(chosen)} for a new snapshot in Variable {position_key(cfg.id)}; what holds the "
            "position at the source, the ledger and the other tables' stream stay as they are",
        ]
    else:
        what = [
            f"drop what holds the old position of {cfg.id} at the source (if it exists)",
            f"delete the rows of source {cfg.id} from the ledger _cdc_ledger of {cfg.sink}",
            f"truncate the sink tables {', '.join(_sink_name(t) for t in chosen)} in {sink}",
            f"purge the staged batches of {cfg.id}",
            f"delete Variable {position_key(cfg.id)}, then store a fresh position from the source with the snapshot "
            "of every table pending",
        ]
    return chosen, what


def _sink_name(qualified: str) -> str:
    return qualified.partition(".")[2]


def resnapshot(hook: CdcHook, tables: list[str] | None = None, *, actor: str | None = None,
               details: Mapping[str, Any] | None = None, run_id: str | None = None) -> ResnapshotSummary:
    """Run the re-snapshot of ``hook``'s source (the whole source, or only ``tables``); see the module docstring.
    Done, it is recorded as ``resnapshot_started`` by ``actor`` (default ``$CDC_ACTOR``, else the OS user) in the
    sink's audit trail, which the re-snapshot leaves as it is, with ``details`` (e.g. the reason a DAG was given)
    and ``run_id``."""
    from airflow_provider_cdc.connectors.audit import RESNAPSHOT_STARTED, audit_entry

    chosen, _ = plan(hook, tables)
    summary = ResnapshotSummary(hook.source_id, chosen, whole_source=not tables)
    source = hook.get_source()
    try:
        sink = hook.get_sink()
        try:
            if tables:
                _resnapshot_tables(hook, source, sink, chosen, summary)
            else:
                _resnapshot_source(hook, source, sink, chosen, summary)
            sink.record_audit([audit_entry(RESNAPSHOT_STARTED, hook.source_id, actor=actor, run_id=run_id, details={
                **(details or {}), "tables": summary.tables, "whole_source": summary.whole_source,
                "steps": summary.steps})])
        finally:
            sink.close()
    finally:
        source.close()
    return summary


def _step(summary: ResnapshotSummary, number: str, name: str, action: Callable[[], str]) -> None:
    try:
        outcome = action()
    except Exception as exc:
        done = "; the steps before it are done" if summary.steps else ""
        raise ResnapshotError(
            f"step {number} ({name}) failed: {type(exc).__name__}: {exc}{done}. Fix the cause and run the command "
            "again: every step can be repeated"
        ) from exc
    line = f"{number}. {outcome}"
    summary.steps.append(line)
    log.info("%s", line)


def _resnapshot_source(hook: CdcHook, source: Source, sink: Sink, chosen: list[str],
                       summary: ResnapshotSummary) -> None:
    source_id = hook.source_id

    def discard_holder() -> str:
        dropped = source.discard_position_holder()
        if dropped is None:
            return "nothing holds the old position at the source any more, nothing to drop"
        return f"dropped {dropped}"

    def forget_ledger() -> str:
        deleted = sink.forget_source(source_id)
        rows = f"{deleted} rows" if isinstance(deleted, int) and not isinstance(deleted, bool) else "the rows"
        return f"deleted {rows} of source {source_id} from the sink ledger"

    def reset_tables() -> str:
        return _reset_tables(sink, source_id, chosen)

    def purge() -> str:
        removed = hook.store.purge(source_id, older_than_hours=_PURGE_ALL_HOURS)
        return f"purged {removed} staged batch{'es' if removed != 1 else ''} of {source_id}"

    def delete_variable() -> str:
        existed = hook.positions.get_document(source_id) is not None
        if existed:
            hook.positions.delete(source_id)
            return f"deleted Variable {position_key(source_id)}"
        return f"Variable {position_key(source_id)}: not there, nothing to delete"

    def store_fresh() -> str:
        position = source.initial_position(snapshot=True)
        hook.positions.set(source_id, position, batch_id=None)
        return (f"stored a fresh position ({_describe(position)}) with the snapshot of "
                f"{len(chosen)} table{'s' if len(chosen) != 1 else ''} pending")

    _step(summary, "1", "drop what holds the old position", discard_holder)
    _step(summary, "2", "delete the ledger rows", forget_ledger)
    _step(summary, "3", "truncate the sink tables", reset_tables)
    _step(summary, "4", "purge staged batches", purge)
    _step(summary, "5", "delete the position Variable", delete_variable)
    _step(summary, "6", "store a fresh position", store_fresh)


def _resnapshot_tables(hook: CdcHook, source: Source, sink: Sink, chosen: list[str],
                       summary: ResnapshotSummary) -> None:
    source_id = hook.source_id
    position = hook.positions.get(source_id)
    if position is None:
        position = sink.last_committed(source_id)  # the Variable is lost: the ledger holds the same position
    if position is None:
        raise ResnapshotError(
            f"source {source_id} has no stored position yet: its first run snapshots every table anyway. "
            "Nothing to re-snapshot per table"
        )
    if not source.holds_position():
        raise ResnapshotError(
            f"what holds the position of source {source_id} at the source is gone, so the stream cannot continue: "
            "re-snapshot the whole source (without --table)"
        )

    def reset_tables() -> str:
        return _reset_tables(sink, source_id, chosen)

    def queue_snapshot() -> str:
        new_position = source.resnapshot_position(position, chosen)
        hook.positions.set(source_id, new_position, batch_id=None)
        return (f"stored position ({_describe(new_position)}) with {', '.join(chosen)} queued for a new snapshot; "
                "the other tables keep streaming")

    _step(summary, "1", "truncate the sink tables", reset_tables)
    _step(summary, "2", "queue the snapshot", queue_snapshot)


# -- command line ------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source_id", help="the source's id in cdc.yaml (its DAG is cdc_<source_id>)")
    parser.add_argument(
        "--table", action="append", dest="tables", metavar="T",
        help="re-snapshot only this table (table or schema.table; repeat for more); the others keep streaming",
    )
    parser.add_argument("--config-dir", default=None,
                        help="config directory (default: $CDC_CONFIG_DIR, else include/config)")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="do not ask for confirmation, and go ahead even while a DAG run is running")


def run(args: argparse.Namespace, *, stdin: Any = None, out: Any = None) -> int:
    """The ``resnapshot`` command: 0 when done, 1 when refused or failed (the message says why)."""
    stdin = stdin if stdin is not None else sys.stdin
    out = out if out is not None else sys.stdout
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        return _run(args, stdin, out)
    except (CommandError, CdcError) as exc:  # refused, or the source or sink cannot be reached
        print(f"resnapshot: {exc}", file=sys.stderr)
        return 1
    finally:
        log.removeHandler(handler)


def _run(args: argparse.Namespace, stdin: Any, out: Any) -> int:
    from airflow_provider_cdc.config import ConfigError
    from airflow_provider_cdc.hooks.cdc import CdcHook

    hook = CdcHook(args.source_id, args.config_dir)
    try:
        cfg = hook.source_config
    except ConfigError as exc:
        raise ResnapshotError(str(exc)) from exc
    except KeyError:
        known = ", ".join(s.id for s in hook.config.sources) or "none"
        raise ResnapshotError(f"unknown source {args.source_id!r} in {hook.config.directory / 'cdc.yaml'} "
                              f"(configured: {known})") from None
    chosen, what = plan(hook, args.tables)
    refuse_while_running(cfg.dag_id, "a run that commits after the re-snapshot would store an old position",
                         yes=args.yes)

    print(f"re-snapshot of source {cfg.id} ({'every table' if not args.tables else ', '.join(chosen)}) will:", file=out)
    for line in what:
        print(f"  - {line}", file=out)
    confirm(stdin, out, yes=args.yes)

    summary = resnapshot(hook, args.tables)
    print("\n".join(summary.lines()), file=out)
    return 0
