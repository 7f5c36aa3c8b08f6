"""``python -m airflow_provider_cdc quarantine list|replay``: the quarantined changes of a source, and the way back for
them once the rule that refused them is fixed (issue 10: "a command re-applies quarantined rows after a rule is
fixed, exactly once").

- ``quarantine list <source_id> [--all] [--json]``: the rows of the sink's ``_cdc_quarantine`` still waiting (with
  ``--all`` the replayed ones too): id, table, stage, rule, field, reason, seq;
- ``quarantine replay <source_id> [--table T] [--rule R] [--yes]``: the waiting rows become a batch again (their row
  images, in the table's registered column order), go through the source's CURRENT stage list
  (:func:`airflow_provider_cdc.stages.build_stages`: the fixed rules and suites) from the stage that refused them on
  (a row of ``transform`` as captured, through transform and validate; a row of ``validate`` as transformed, through
  validate only), and what passes is loaded by
  :meth:`Sink.replay_quarantined`: past the high water but guarded per row by ``_cdc_position`` (a newer change to the
  same key, loaded meanwhile, wins), with its ledger row ``<source_id>:quarantine:<hash of the ids>`` and the rows'
  ``replayed_batch_id``, in one transaction. A second replay of the same rows finds the ledger row and does nothing;
  rows that fail again stay waiting, as they are, and are reported.

Not replayed (they stay waiting and the command says so): rows whose key the source no longer has (a hard delete
since leaves no trace in the sink; :func:`leave_rows_gone_at_source` asks the source), rows of a table the sink
holds after a schema change (``schema accept`` it first), and an older row of a change whose ``seq`` a later row
of the same table has too (a whole re-snapshot started ``seq`` again: the row is stale).

Like ``schema accept``, ``replay`` changes the sink, so it refuses while a run of ``cdc_<source_id>`` is running
unless ``--yes``, and asks on a terminal. The logic is in plain functions that return data (:func:`list_rows`,
:func:`plan_replay`, :func:`replay`); printing is apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.events import TableChangesBuilder
from airflow_provider_cdc.quarantine import replay_batch_id
from airflow_provider_cdc.resnapshot import CommandError, confirm, refuse_while_running
from airflow_provider_cdc.tables import Column, TableSchema

if TYPE_CHECKING:
    from airflow_provider_cdc.connectors.base import ApplyResult, Sink
    from airflow_provider_cdc.events import ChangeBatch
    from airflow_provider_cdc.hooks.cdc import CdcHook
    from airflow_provider_cdc.stages import Stage

# The stages that quarantine, in the order they run: a row goes back through the stage that refused it and those
# after it (rows of ``validate`` were transformed already).
REPLAYABLE_STAGES = ("transform", "validate")
# Columns of ``quarantine list`` (text) in order.
LIST_COLUMNS = ("quarantine_id", "source_table", "stage", "suite", "rule_id", "field", "seq", "reason")


class QuarantineCommandError(CommandError):
    """A ``quarantine`` command was refused or failed; the message says why and what to do."""


# -- list ----------------------------------------------------------------------------------------------------


def list_rows(sink: Sink, source_id: str, *, all_rows: bool = False) -> list[dict[str, Any]]:
    """The quarantined rows of ``source_id`` by ``seq``: those waiting, or every one with ``all_rows``."""
    return sink.quarantined(source_id, waiting_only=not all_rows)


def list_lines(rows: Sequence[Mapping[str, Any]], source_id: str, *, all_rows: bool = False) -> list[str]:
    """``quarantine list`` as text: a table of the rows, and how to replay them."""
    what = "quarantined rows" if all_rows else "quarantined rows waiting"
    if not rows:
        return [f"source {source_id}: no {what}"]
    header = ("id", "table", "stage", "suite", "rule", "field", "seq", "reason") + (
        ("replayed in",) if all_rows else ())
    table = [header] + [
        (str(row["quarantine_id"])[:12], str(row["source_table"]), str(row["stage"]), str(row["suite"] or "-"),
         str(row["rule_id"] or "-"),
         str(row["field"] or "-"), str(row["seq"]), _one_line(str(row["reason"])))
        + ((row["replayed_batch_id"] or "waiting",) if all_rows else ())
        for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [f"source {source_id}: {len(rows)} {what}"]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
    lines.append(f"after fixing the rule (or the data): python -m airflow_provider_cdc quarantine replay {source_id}")
    return lines


def _one_line(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# -- replay --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ReplayPlan:
    """The waiting rows a replay takes, and those it leaves waiting (with why)."""

    source_id: str
    rows: list[dict[str, Any]]
    left: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)  # reason -> rows

    def describe(self) -> list[str]:
        tables = sorted({row["source_table"] for row in self.rows})
        lines = [f"run {len(self.rows)} quarantined change{'s' if len(self.rows) != 1 else ''} of "
                 f"{', '.join(tables) or 'no table'} through the current rules, and load those that pass exactly "
                 "once (a newer change to the same key, loaded meanwhile, is kept)"]
        lines += [f"leave {len(rows)} waiting: {reason}" for reason, rows in self.left.items()]
        return lines


@dataclasses.dataclass
class ReplayOutcome:
    """What a replay did."""

    source_id: str
    selected: int
    batch_id: str | None = None
    replayed: int = 0
    still_failing: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # the rows' new failures
    left: dict[str, int] = dataclasses.field(default_factory=dict)
    applied: bool = False
    upserted: int = 0
    deleted: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan_replay(sink: Sink, source_id: str, *, table: str | None = None, rule: str | None = None) -> ReplayPlan:
    """The waiting rows of ``source_id`` (only ``table``'s, ``schema.table`` or a bare
    table name, and only ``rule``'s, when given) that a replay takes; see the module docstring for those left."""
    plan = ReplayPlan(source_id, [])
    held = sink.held_tables(source_id)
    latest: dict[tuple[str, int, str], dict[str, Any]] = {}
    for row in sink.quarantined(source_id, waiting_only=True):
        if table is not None and table not in (row["source_table"], row["source_table"].partition(".")[2]):
            continue
        if rule is not None and row["rule_id"] != rule:
            continue
        if row["stage"] not in REPLAYABLE_STAGES:
            plan.left.setdefault(f"stage {row['stage']} is not one that quarantines ({', '.join(REPLAYABLE_STAGES)})",
                                 []).append(row)
        elif row["source_table"] in held:
            plan.left.setdefault(f"{row['source_table']} is held after a schema change: accept it first "
                                 f"(python -m airflow_provider_cdc schema accept {source_id}.{row['source_table']})",
                                 []).append(row)
        else:
            key = (row["source_table"], row["seq"], row["stage"])
            older = latest.get(key)
            if older is not None:
                stale, latest[key] = sorted((older, row), key=_quarantined_at)
                plan.left.setdefault("an older row of the same change (before a whole re-snapshot)",
                                     []).append(stale)
            else:
                latest[key] = row
    plan.rows = sorted(latest.values(), key=lambda row: (row["seq"], row["source_table"]))
    return plan


GONE_AT_SOURCE = ("its key is no longer at the source (deleted since it was quarantined): a replay would bring back "
                  "a row the source no longer has")


def leave_rows_gone_at_source(hook: CdcHook, sink: Sink, plan: ReplayPlan) -> None:
    """Move to ``plan.left`` the rows whose key the source no longer has. A hard delete leaves no trace in the sink,
    so the per-row guard alone would let the replay bring such a row back: the source is asked, by key, through
    its connector's reference reader (the join rules' reader)."""
    from airflow_provider_cdc.connectors.mongodb.documents import ID_FIELD
    from airflow_provider_cdc.transform.join import key_text
    from airflow_provider_cdc.transform.stage import ReferenceLookup
    from airflow_provider_cdc.values import parse_value

    lookup = ReferenceLookup(hook.source_config, hook.config)
    by_table: dict[str, list[dict[str, Any]]] = {}
    for row in plan.rows:
        by_table.setdefault(row["source_table"], []).append(row)
    kept: list[dict[str, Any]] = []
    for table, rows in by_table.items():
        schema = input_schema(sink, plan.source_id, table, rows,
                              keep_derived=any(row["stage"] != REPLAYABLE_STAGES[0] for row in rows))
        key = [column for column in schema.columns if column.primary_key]
        if not key:
            kept += rows
            continue
        mongo_ids = hook.source_config.type == "mongodb" and [c.name for c in key] == [ID_FIELD]
        if mongo_ids:
            present = _mongo_ids_present(hook, table, [row["row"].get(ID_FIELD) for row in rows])
            found = [row for row in rows if row["row"].get(ID_FIELD) in present]
        else:
            keys = [tuple(parse_value(_text(row["row"].get(c.name)), c.logical_type) for c in key) for row in rows]
            at_source = lookup(None, table, [c.name for c in key], keys)
            texts = {tuple(key_text(v) for v in k) for k in at_source}
            found = [row for row, k in zip(rows, keys) if tuple(key_text(v) for v in k) in texts]
        kept += found
        gone = [row for row in rows if row not in found]
        if gone:
            plan.left.setdefault(GONE_AT_SOURCE, []).extend(gone)
    plan.rows = sorted(kept, key=lambda row: (row["seq"], row["source_table"]))


def _mongo_ids_present(hook: CdcHook, table: str, ids: list[Any]) -> set[str]:
    """The canonical ``_id`` keys of ``ids`` that the MongoDB source's collection ``table`` still holds."""
    from airflow_provider_cdc.connectors.mongodb.connection import connect
    from airflow_provider_cdc.connectors.mongodb.documents import canonical_key, parse_key
    from airflow_provider_cdc.hooks.cdc import entry_dsn

    database, _, collection = table.partition(".")
    with connect(entry_dsn(hook.config, hook.source_config)) as client:
        found = client[database][collection].find({"_id": {"$in": [parse_key(str(i)) for i in ids]}}, {"_id": 1})
        return {canonical_key(document["_id"]) for document in found}


def _quarantined_at(row: Mapping[str, Any]) -> dt.datetime:
    return row["quarantined_at"] or dt.datetime.min.replace(tzinfo=dt.timezone.utc)


def input_schema(sink: Sink, source_id: str, table: str, rows: Sequence[Mapping[str, Any]], *,
                 keep_derived: bool = False) -> TableSchema:
    """The columns the replayed rows are read with: the table's latest registered version, without the columns the
    rules derived (the rules make them again; with ``keep_derived``, for rows refused after the rules ran, with
    them), plus any field of the row images it lacks (a field a rule dropped) as text; with no registered version,
    the row images' fields as text, the first one the key."""
    subject = f"{source_id}.{table}"
    versions = [version for version in sink.schema_versions(source_id) if version.subject == subject]
    schema_name, _, name = table.partition(".")
    if versions:
        registered = max(versions, key=lambda version: version.version).table
        columns = [column for column in registered.columns if keep_derived or not column.derived]
        dialect = registered.dialect
    else:
        columns, dialect = [], ""
    known = {column.name for column in columns}
    for row in rows:
        for field in row["row"]:
            if field not in known:
                columns.append(Column(field, "text", "text", primary_key=not versions and not known))
                known.add(field)
    return TableSchema(schema_name, name, tuple(columns), dialect=dialect)


def _text(value: Any) -> str | None:
    """A row image's value as portable text (it was stored as text; a sink may have read JSON back as numbers)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def build_batch(sink: Sink, source_id: str, rows: Sequence[Mapping[str, Any]], *,
                keep_derived: bool = False) -> ChangeBatch:
    """Quarantined ``rows`` as one batch, tables by ``source_table``, changes in ``seq`` order. Its position is the
    sink's last committed one (the replay moves no position: its ledger row's ``seq_to`` lies below the high
    water, and where it ties, the position it names is the same)."""
    from airflow_provider_cdc.events import ChangeBatch

    by_table: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_table.setdefault(row["source_table"], []).append(row)
    tables, schemas = {}, {}
    for name, table_rows in by_table.items():
        schema = input_schema(sink, source_id, name, table_rows, keep_derived=keep_derived)
        builder = TableChangesBuilder(schema)
        for row in table_rows:
            event_time = row["event_time"]
            ts_ms = int(event_time.timestamp() * 1000) if event_time is not None else None
            builder.append(row["op"], row["seq"], ts_ms, None, None,  # type: ignore[arg-type]
                           [_text(row["row"].get(column)) for column in schema.column_names])
        tables[name], schemas[name] = builder.finish(), schema
    seqs = [row["seq"] for row in rows]
    position = sink.last_committed(source_id) or {}
    return ChangeBatch(source_id=source_id, batch_id=replay_batch_id(source_id, _ids(rows)),
                       position_from=position, position_to=position, seq_from=min(seqs, default=0),
                       seq_to=max(seqs, default=0), tables=tables, schemas=schemas)


def stages_from(stages: Sequence[Stage], stage: str) -> list[Stage]:
    """The stages a row refused by ``stage`` goes through again: that stage and those after it."""
    later = REPLAYABLE_STAGES[REPLAYABLE_STAGES.index(stage):]
    return [each for each in stages if each.name in later or each.name not in REPLAYABLE_STAGES]


def _ids(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [row["quarantine_id"] for row in rows]


def replay(sink: Sink, plan: ReplayPlan, stages: Sequence[Stage], *, run_id: str | None = None,
           actor: str | None = None) -> ReplayOutcome:
    """Run the plan's rows through ``stages`` (the source's current stage list, from the stage that refused each
    row on) and load what passes with :meth:`Sink.replay_quarantined` (module docstring): one replay batch per
    stage that refused rows, so each goes through exactly the stages it had not passed.

    Both ways in (the command and :class:`~airflow_provider_cdc.operators.quarantine.CdcQuarantineReplayOperator`)
    come here, so ``quarantine_replayed`` is recorded here, by ``actor`` (default ``$CDC_ACTOR``, else the OS
    user): one entry per replay batch, its id derived from the batch's, so that a replay run again after a crash
    records what the first run could not, and nothing twice."""
    from airflow_provider_cdc.connectors.audit import QUARANTINE_REPLAYED, audit_entry

    outcome = ReplayOutcome(plan.source_id, len(plan.rows), left={reason: len(rows) for reason, rows in
                                                                  plan.left.items()})
    if not plan.rows:
        return outcome
    run_id = run_id or replay_run_id()
    batch_ids: list[str] = []
    entries = []
    for stage in REPLAYABLE_STAGES:
        rows = [row for row in plan.rows if row["stage"] == stage]
        if rows:
            failing = len(outcome.still_failing)
            result = _replay_rows(sink, plan.source_id, rows, stages_from(stages, stage), outcome, run_id,
                                  keep_derived=stage != REPLAYABLE_STAGES[0])
            details = {"stage": stage, "selected": len(rows), "still_failing": len(outcome.still_failing) - failing,
                       "left": outcome.left}
            if result is not None:
                batch_ids.append(result.batch_id)
                details.update(applied=result.applied, upserted=result.upserted, deleted=result.deleted)
            entries.append(audit_entry(QUARANTINE_REPLAYED, plan.source_id, actor=actor, run_id=run_id,
                                       batch_id=result.batch_id if result is not None else None, details=details))
    outcome.batch_id = ", ".join(batch_ids) or None
    sink.record_audit(entries)
    return outcome


def _replay_rows(sink: Sink, source_id: str, rows: list[dict[str, Any]], stages: Sequence[Stage],
                 outcome: ReplayOutcome, run_id: str, *, keep_derived: bool) -> ApplyResult | None:
    """Replay ``rows`` (all refused by one stage) through ``stages``; adds to ``outcome``; what the sink did with
    the replay batch (None: no row passed)."""
    from airflow_provider_cdc.stages import apply_stages

    batch = build_batch(sink, source_id, rows, keep_derived=keep_derived)
    made, stage_versions = apply_stages(stages, batch)
    failed = {(row["source_table"], row["seq"]): row for row in
              (made.quarantine.to_pylist() if made.quarantine is not None else [])}
    passed = [row for row in rows if (row["source_table"], row["seq"]) not in failed]
    outcome.still_failing += [
        {**failed[(row["source_table"], row["seq"])], "quarantine_id": row["quarantine_id"]}
        for row in rows if (row["source_table"], row["seq"]) in failed]
    if not passed:
        return None
    seqs = [row["seq"] for row in passed]
    made = dataclasses.replace(made, batch_id=replay_batch_id(source_id, _ids(passed)), seq_from=min(seqs),
                               seq_to=max(seqs), quarantine=None)
    result: ApplyResult = sink.replay_quarantined(made, _ids(passed), run_id=run_id,
                                                  versions={"stage_versions": stage_versions})
    outcome.applied = outcome.applied or result.applied
    if result.applied:
        outcome.replayed += len(passed)
    outcome.upserted += result.upserted
    outcome.deleted += result.deleted
    return result


def replay_run_id() -> str:
    """The ledger row's run id of a replay: when and by what it was made (not an Airflow run)."""
    return f"quarantine_replay__{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


def outcome_lines(outcome: ReplayOutcome) -> list[str]:
    lines = []
    if outcome.selected == 0:
        lines.append(f"source {outcome.source_id}: no quarantined change to replay")
    elif outcome.batch_id is None:
        lines.append(f"source {outcome.source_id}: none of the {outcome.selected} quarantined changes passes the "
                     "rules yet; nothing was loaded")
    elif not outcome.applied:
        lines.append(f"source {outcome.source_id}: the replay batch {outcome.batch_id} is in the sink ledger already, "
                     "so nothing was loaded twice")
    else:
        lines.append(f"source {outcome.source_id}: {outcome.replayed} quarantined change"
                     f"{'s' if outcome.replayed != 1 else ''} replayed as batch {outcome.batch_id} "
                     f"({outcome.upserted} upserted, {outcome.deleted} deleted; a newer change to a key was kept)")
    if outcome.still_failing:
        lines.append(f"{len(outcome.still_failing)} still failing (they stay waiting, with their first reason):")
        lines += [f"  {failure['quarantine_id'][:12]} {failure['source_table']} seq {failure['seq']}: rule "
                  f"{failure['rule_id']}{' field ' + failure['field'] if failure['field'] else ''}: "
                  f"{_one_line(str(failure['reason']))}" for failure in outcome.still_failing]
    for reason, count in outcome.left.items():
        lines.append(f"{count} left waiting: {reason}")
    return lines


# -- command line --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="quarantine_command", required=True, metavar="command")
    config_dir: dict[str, Any] = {
        "default": None, "help": "config directory (default: $CDC_CONFIG_DIR, else include/config)"}

    listing = commands.add_parser(
        "list", help="the quarantined changes of a source still waiting (--all: every one)",
        description="Print the rows of the sink's _cdc_quarantine of a source: id, table, stage, rule, field, seq "
        "and reason.")
    listing.add_argument("source_id", help="the source's id in cdc.yaml")
    listing.add_argument("--all", action="store_true", dest="all_rows", help="the replayed rows too")
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    listing.add_argument("--config-dir", **config_dir)

    again = commands.add_parser(
        "replay", help="run the waiting quarantined changes through the fixed rules and load them, exactly once",
        description="Run the waiting quarantined changes of stage transform through the source's current rules and "
        "load those that pass, exactly once (a ledger batch <source_id>:quarantine:<hash>); a newer change to the "
        "same key, loaded meanwhile, is kept. Rows that fail again stay waiting.")
    again.add_argument("source_id", help="the source's id in cdc.yaml")
    again.add_argument("--table", default=None, metavar="T", help="only this table (table or schema.table)")
    again.add_argument("--rule", default=None, metavar="R", help="only the rows this rule refused")
    again.add_argument("--config-dir", **config_dir)
    again.add_argument("--yes", "-y", action="store_true",
                       help="do not ask for confirmation, and go ahead even while a DAG run is running")


def run(args: argparse.Namespace, *, stdin: Any = None, out: Any = None, err: Any = None) -> int:
    """The ``quarantine`` commands: 0 when done, 1 when refused or failed (the message says why)."""
    stdin = stdin if stdin is not None else sys.stdin
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    command = {"list": _list, "replay": _replay}[args.quarantine_command]
    try:
        return command(args, stdin, out, err)
    except (CommandError, CdcError) as exc:
        print(f"quarantine {args.quarantine_command}: {exc}", file=err)
        return 1


def plan_for(hook: CdcHook, sink: Sink, *, table: str | None = None, rule: str | None = None) -> ReplayPlan:
    """The replay plan of ``hook``'s source: its waiting rows (``table``'s, ``rule``'s), those gone at the source
    left waiting. Refused when the sink keeps no quarantine."""
    if not sink.capabilities.quarantine:
        raise QuarantineCommandError(f"the sink of source {hook.source_id} keeps no quarantine")
    plan = plan_replay(sink, hook.source_id, table=table, rule=rule)
    leave_rows_gone_at_source(hook, sink, plan)
    return plan


def _hook(config_dir: str | None, source_id: str) -> CdcHook:
    from airflow_provider_cdc.hooks.cdc import CdcHook

    hook = CdcHook(source_id, config_dir)
    known = [source.id for source in hook.config.sources]
    if source_id not in known:
        raise QuarantineCommandError(f"unknown source {source_id!r} in {hook.config.directory / 'cdc.yaml'} "
                                     f"(configured: {', '.join(known) or 'none'})")
    return hook


def _list(args: argparse.Namespace, stdin: Any, out: Any, err: Any) -> int:
    sink = _hook(args.config_dir, args.source_id).get_sink()
    try:
        rows = list_rows(sink, args.source_id, all_rows=args.all_rows)
    finally:
        sink.close()
    if args.json:
        print(json.dumps(rows, indent=2, default=str, ensure_ascii=False), file=out)
    else:
        print("\n".join(list_lines(rows, args.source_id, all_rows=args.all_rows)), file=out)
    return 0


def _replay(args: argparse.Namespace, stdin: Any, out: Any, err: Any) -> int:
    from airflow_provider_cdc.stages import build_stages

    hook = _hook(args.config_dir, args.source_id)
    stages = build_stages(hook.source_config, hook.config)
    sink = hook.get_sink()
    try:
        plan = plan_for(hook, sink, table=args.table, rule=args.rule)
        if not plan.rows:
            print("\n".join(outcome_lines(ReplayOutcome(args.source_id, 0, left={
                reason: len(rows) for reason, rows in plan.left.items()}))), file=out)
            return 0
        refuse_while_running(hook.source_config.dag_id, "a load running meanwhile could commit a change to a key "
                             "that the replay does not see", yes=args.yes, err=err)
        print(f"quarantine replay of source {args.source_id} will:", file=out)
        for line in plan.describe():
            print(f"  - {line}", file=out)
        confirm(stdin, out, yes=args.yes)
        outcome = replay(sink, plan, stages)
    finally:
        sink.close()
    print("\n".join(outcome_lines(outcome)), file=out)
    return 0
