"""``python -m airflow_provider_cdc schema accept|versions|check``: the schema registry and held tables, by hand.

- ``schema versions <subject or source_id> [--json]``: every registered version of a subject (or of each subject of
  a source) with its id, fingerprint, status, position, time and compatibility outcome, and the held tables with
  their reasons;
- ``schema accept <subject> [--yes]``: accept the held schema versions of a held table: the sink migrates its table
  to the newest version, replays the held changes exactly once (one ledger batch
  ``<source_id>:accept:<schema.table>:<seq range>``) and stops holding it (:meth:`Sink.accept_table`);
- ``schema check <subject> --schema FILE.avsc [--level L]``: whether an Avro schema is compatible with the
  subject's registered versions, at the subject's level (``schema_changes:`` of cdc.yaml) or ``--level``.

A subject is ``<source_id>.<schema>.<table>`` (``<source_id>.<table>`` is accepted for a configured table whose name
is unambiguous). The registry lives in the sink, beside the ledger, so every command opens the source's sink the way
a task does (:class:`~airflow_provider_cdc.hooks.cdc.CdcHook`); none of them touches the source database.

The logic is in plain functions that return data (:func:`resolve_subject`, :func:`versions_report`,
:func:`accept_plan`, :func:`accept_subject`, :func:`check_schema`), which the REST API calls too; printing is apart.
``accept`` changes the sink, so like ``resnapshot`` it refuses while a run of ``cdc_<source_id>`` is running (a
load at the same time could hold changes the accept does not replay) unless ``--yes``, and asks on a terminal.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.config.models import DEFAULT_TABLE_SCHEMA
from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.resnapshot import CommandError, confirm, qualify_tables, refuse_while_running
from airflow_provider_cdc.schema.gate import COMMAND

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig, SourceConfig
    from airflow_provider_cdc.connectors.base import AcceptResult, Sink
    from airflow_provider_cdc.hooks.cdc import CdcHook
    from airflow_provider_cdc.schema import CompatibilityResult, SchemaPolicy, SchemaVersion


class SchemaCommandError(CommandError):
    """A ``schema`` command was refused or failed; the message says why and what to do."""


# -- subjects ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SubjectRef:
    """A configured source table as a registry subject."""

    source_id: str
    table: str  # schema.table

    @property
    def subject(self) -> str:
        return f"{self.source_id}.{self.table}"


def _source(config: CdcConfig, source_id: str) -> SourceConfig:
    for source in config.sources:
        if source.id == source_id:
            return source
    known = ", ".join(source.id for source in config.sources) or "none"
    raise SchemaCommandError(f"unknown source {source_id!r} in {config.directory / 'cdc.yaml'} (configured: {known})")


def subjects_of(source: SourceConfig) -> list[str]:
    """The subjects of a source's configured tables, in config order."""
    return [f"{source.id}.{table}" for table in source.qualified_names(DEFAULT_TABLE_SCHEMA)]


def resolve_subject(config: CdcConfig, name: str) -> SubjectRef:
    """``<source_id>.<schema>.<table>`` (or ``<source_id>.<table>``) → the configured source and table it names;
    an unknown source or table is an error naming the ones configured."""
    source_id, dot, table = name.partition(".")
    source = _source(config, source_id)
    if not dot or not table:
        raise SchemaCommandError(f"{name!r} is not a subject: write <source_id>.<schema>.<table> (subjects of source "
                                 f"{source_id}: {', '.join(subjects_of(source))})")
    try:
        (qualified,) = qualify_tables(source.qualified_tables(DEFAULT_TABLE_SCHEMA), [table])
    except CommandError as exc:
        raise SchemaCommandError(f"unknown subject {name!r}: {exc} (subjects of source {source_id}: "
                                 f"{', '.join(subjects_of(source))})") from None
    return SubjectRef(source.id, qualified)


def resolve_scope(config: CdcConfig, name: str) -> tuple[str, SubjectRef | None]:
    """A subject, or a source id alone (every subject of that source)."""
    if "." in name:
        ref = resolve_subject(config, name)
        return ref.source_id, ref
    return _source(config, name).id, None


# -- versions ------------------------------------------------------------------------------------------------


def compatibility_outcome(version: SchemaVersion) -> str:
    """What the gate found when it registered ``version``: ``compatible (BACKWARD)``, ``not BACKWARD compatible:
    ...`` naming each field, or ``-`` when it checked nothing (a subject's first version, a table already held,
    mode stop)."""
    found = version.compatibility
    if not found:
        return "-"
    level = found.get("level", "?")
    if found.get("compatible"):
        return f"compatible ({level})"
    problems = [problem.get("message") or problem.get("reason", "") for problem in found.get("problems", [])]
    return f"not {level} compatible: " + "; ".join(problems)


def version_summary(version: SchemaVersion) -> dict[str, Any]:
    """One version as JSON-safe data: everything the registry stores, and the compatibility outcome as text."""
    return {**version.to_dict(), "outcome": compatibility_outcome(version)}


def versions_report(sink: Sink, source_id: str, table: str | None = None) -> dict[str, Any]:
    """The registered versions of ``source_id``'s subjects (only ``table``'s when given), oldest first, and the
    source's held tables with their reasons (only ``table`` when given)."""
    subject = f"{source_id}.{table}" if table is not None else None
    subjects: dict[str, list[dict[str, Any]]] = {} if subject is None else {subject: []}
    for version in sorted(sink.schema_versions(source_id), key=lambda v: (v.subject, v.version)):
        if subject is None or version.subject == subject:
            subjects.setdefault(version.subject, []).append(version_summary(version))
    held = {name: reason for name, reason in sink.held_tables(source_id).items() if table is None or name == table}
    return {"source_id": source_id, "subjects": subjects, "held": held}


# -- accept --------------------------------------------------------------------------------------------------


def accept_plan(sink: Sink, ref: SubjectRef) -> dict[str, Any]:
    """What ``schema accept`` would do: the hold's reason, the held versions, and the held changes waiting. A
    table that is not held is refused (nothing to accept), naming the held ones."""
    held = sink.held_tables(ref.source_id)
    if ref.table not in held:
        others = ", ".join(f"{ref.source_id}.{table}" for table in sorted(held)) or "none"
        raise SchemaCommandError(f"{ref.subject} is not held, so there is nothing to accept (held subjects of source "
                                 f"{ref.source_id}: {others})")
    versions = [version.version for version in sink.schema_versions(ref.source_id)
                if version.subject == ref.subject and version.status == "held"]
    chunks = sink.held_changes(ref.source_id, ref.table)
    return {
        "subject": ref.subject, "table": ref.table, "reason": held[ref.table], "held_versions": versions,
        "held_batches": len(chunks), "held_events": sum(chunk.rows for chunk in chunks),
        "held_schema_changes": sum(len(chunk.changes) for chunk in chunks),
    }


def accept_subject(sink: Sink, ref: SubjectRef, policy: SchemaPolicy, *, run_id: str | None = None,
                   actor: str | None = None) -> AcceptResult:
    """Accept the held versions of ``ref``'s table and replay its held changes (:meth:`Sink.accept_table`), then
    record ``schema_accepted`` by ``actor`` (the REST API's Airflow user; default ``$CDC_ACTOR``, else the OS user)
    in the sink's audit trail."""
    from airflow_provider_cdc.connectors.audit import SCHEMA_ACCEPTED, audit_entry

    accept_plan(sink, ref)  # refuses a table that is not held, with the held ones named
    run_id = run_id or accept_run_id()
    result = sink.accept_table(ref.source_id, ref.table, policy=policy, run_id=run_id)
    sink.record_audit([audit_entry(SCHEMA_ACCEPTED, ref.source_id, actor=actor, batch_id=result.batch_id,
                                   run_id=run_id, details={**result.to_dict(), "mode": policy.mode})])
    return result


def accept_run_id() -> str:
    """The ledger row's run id of an accept: when and by what it was made (not an Airflow run)."""
    return f"schema_accept__{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


# -- check ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SchemaCheck:
    """A candidate schema against a subject's registered versions."""

    subject: str
    level: str
    against: list[int]
    result: CompatibilityResult

    @property
    def compatible(self) -> bool:
        return self.result.compatible

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "level": self.level, "against_versions": self.against,
                **self.result.to_dict()}


def read_schema_file(path: str | Path) -> dict[str, Any]:
    """An Avro schema (``.avsc``, JSON) from ``path``; a file that is not one is an error naming it."""
    from airflow_provider_cdc.schema.avro import parse

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SchemaCommandError(f"cannot read {path}: {exc}") from None
    except ValueError as exc:
        raise SchemaCommandError(f"{path} is not JSON, so not an Avro schema (.avsc): {exc}") from None
    if not isinstance(doc, dict):
        raise SchemaCommandError(f"{path} is not an Avro record schema: a JSON object with type \"record\" expected")
    try:
        parse(doc)
    except Exception as exc:  # avro raises several kinds; each means the same here
        raise SchemaCommandError(f"{path} is not a valid Avro schema: {type(exc).__name__}: {exc}") from None
    return doc


def check_schema(sink: Sink, ref: SubjectRef, schema: Mapping[str, Any], level: str) -> SchemaCheck:
    """Whether ``schema`` is compatible at ``level`` with every registered version of ``ref`` that the level
    compares with (the latest, or all of them for a ``_TRANSITIVE`` level), as the schema gate checks a change."""
    from airflow_provider_cdc.schema import LEVELS, check

    if level not in LEVELS:
        raise SchemaCommandError(f"unknown compatibility level {level!r}; one of {', '.join(LEVELS)}")
    versions = sorted((version for version in sink.schema_versions(ref.source_id) if version.subject == ref.subject),
                      key=lambda version: version.version)
    history = [(version.version, version.schema) for version in versions]
    compared = [number for number, _ in (history if level.endswith("_TRANSITIVE") else history[-1:])]
    if level == "NONE":
        compared = []
    return SchemaCheck(ref.subject, level, compared, check(schema, history, level))


# -- command line --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from airflow_provider_cdc.schema.compatibility import LEVELS

    commands = parser.add_subparsers(dest="schema_command", required=True, metavar="command")
    config_dir: dict[str, Any] = {
        "default": None, "help": "config directory (default: $CDC_CONFIG_DIR, else include/config)"}

    accept = commands.add_parser(
        "accept", help="accept the held schema change of a table and replay its held changes",
        description="Accept the held schema versions of a held table: migrate its sink table to the newest version, "
        "replay the changes held since (exactly once) and stop holding it. See the README, section Schema changes.")
    accept.add_argument("subject", help="<source_id>.<schema>.<table>")
    accept.add_argument("--config-dir", **config_dir)
    accept.add_argument("--yes", "-y", action="store_true",
                        help="do not ask for confirmation, and go ahead even while a DAG run is running")

    versions = commands.add_parser(
        "versions", help="the registered schema versions of a subject or of every subject of a source",
        description="Print each registered schema version (version, id, fingerprint, status, seq and position, "
        "time, compatibility outcome) and the held tables with their reasons.")
    versions.add_argument("name", metavar="subject_or_source", help="<source_id>.<schema>.<table>, or a source id")
    versions.add_argument("--config-dir", **config_dir)
    versions.add_argument("--json", action="store_true", help="print JSON instead of text")

    check = commands.add_parser(
        "check", help="check an Avro schema file against a subject's registered versions",
        description="Exit 0 when the schema is compatible with the subject's registered versions at its level "
        "(schema_changes of cdc.yaml, or --level), 1 when not, naming each incompatible field and why.")
    check.add_argument("subject", help="<source_id>.<schema>.<table>")
    check.add_argument("--schema", required=True, metavar="FILE.avsc", help="the Avro schema to check")
    check.add_argument("--level", choices=LEVELS, default=None,
                       help="the compatibility level (default: the subject's, from cdc.yaml)")
    check.add_argument("--config-dir", **config_dir)
    check.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace, *, stdin: Any = None, out: Any = None, err: Any = None) -> int:
    """The ``schema`` commands: 0 when done (``check``: compatible), 1 when refused, failed or incompatible."""
    stdin = stdin if stdin is not None else sys.stdin
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    command = {"accept": _accept, "versions": _versions, "check": _check}[args.schema_command]
    try:
        return command(args, stdin, out, err)
    except (CommandError, CdcError) as exc:  # refused, or the config or the sink is wrong or unreachable
        print(f"schema {args.schema_command}: {exc}", file=err)
        return 1


def _config(config_dir: str | None) -> CdcConfig:
    from airflow_provider_cdc.config import load_config

    return load_config(config_dir)


def _hook(config_dir: str | None, source_id: str) -> CdcHook:
    """The source's hook: its sink and policy are built exactly as a task builds them."""
    from airflow_provider_cdc.hooks.cdc import CdcHook

    return CdcHook(source_id, config_dir)


@contextmanager
def _sink_of(hook: CdcHook) -> Iterator[Sink]:
    sink = hook.get_sink()
    try:
        yield sink
    finally:
        sink.close()


def _versions(args: argparse.Namespace, stdin: Any, out: Any, err: Any) -> int:
    source_id, ref = resolve_scope(_config(args.config_dir), args.name)
    with _sink_of(_hook(args.config_dir, source_id)) as sink:
        report = versions_report(sink, source_id, ref.table if ref else None)
    if args.json:
        print(json.dumps(report, indent=2, default=str), file=out)
    else:
        print("\n".join(versions_lines(report)), file=out)
    return 0


def versions_lines(report: Mapping[str, Any]) -> list[str]:
    """``schema versions`` as text: a table of versions per subject, then the held tables."""
    subjects: Mapping[str, list[dict[str, Any]]] = report["subjects"]
    held: Mapping[str, str] = report["held"]
    lines = [f"source {report['source_id']}: {len(subjects)} subject{'s' if len(subjects) != 1 else ''}, "
             f"{len(held)} held table{'s' if len(held) != 1 else ''}"]
    header = ("version", "id", "fingerprint", "status", "seq", "position", "registered_at", "compatibility")
    for subject, versions in subjects.items():
        lines.append(f"{subject}:")
        if not versions:
            lines.append("  no registered version yet (the registry learns a table from its first batch)")
            continue
        rows = [header] + [
            (str(v["version"]), v["id"], v["fingerprint"], v["status"], str(v["seq"]), v["position"] or "-",
             v["registered_at"] or "-", v["outcome"]) for v in versions]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    if held:
        lines.append("held tables (their changes wait in the sink):")
        source_id = report["source_id"]
        for table, reason in sorted(held.items()):
            lines.append(f"  {table}: {reason}")
            lines.append(f"    accept: {COMMAND} schema accept {source_id}.{table}; or re-snapshot: {COMMAND} "
                         f"resnapshot {source_id} --table {table}")
    return lines


def _accept(args: argparse.Namespace, stdin: Any, out: Any, err: Any) -> int:
    ref = resolve_subject(_config(args.config_dir), args.subject)
    hook = _hook(args.config_dir, ref.source_id)
    policy = hook.schema_policy
    with _sink_of(hook) as sink:
        planned = accept_plan(sink, ref)
        refuse_while_running(hook.source_config.dag_id, "a load running meanwhile could hold changes of the table "
                             "that the accept does not replay", yes=args.yes, err=err)
        print(f"schema accept of {ref.subject} will:", file=out)
        for line in accept_lines(planned, policy):
            print(f"  - {line}", file=out)
        confirm(stdin, out, yes=args.yes)
        result = accept_subject(sink, ref, policy)
    print(accepted_text(result), file=out)
    return 0


def accept_lines(planned: Mapping[str, Any], policy: SchemaPolicy) -> list[str]:
    versions = ", ".join(str(number) for number in planned["held_versions"]) or "none"
    # The gate's reason ends with how to resume (this command): only what was refused and why is worth repeating.
    reason = str(planned["reason"]).split(". Its changes are held", 1)[0]
    return [
        f"accept the held version{'s' if len(planned['held_versions']) != 1 else ''} {versions} of "
        f"{planned['subject']} (held because: {reason})",
        f"migrate the sink table of {planned['table']} to the newest version (schema_changes mode {policy.mode}); "
        "a type change converts the values already there with a plain cast, or the accept fails and changes "
        "nothing. A type change rewrites the source's rows without logging them: if the source converted with an "
        "expression other than a cast (ALTER ... TYPE ... USING f(col)), only a re-snapshot of the table is exact",
        f"replay the {planned['held_events']} held change{'s' if planned['held_events'] != 1 else ''} of "
        f"{planned['held_batches']} batch{'es' if planned['held_batches'] != 1 else ''} exactly once, then stop "
        f"holding {planned['table']}: its changes flow again from the next run",
    ]


def accepted_text(result: AcceptResult) -> str:
    versions = ", ".join(str(number) for number in result.accepted_versions) or "none"
    head = (f"accepted {result.subject}: version{'s' if len(result.accepted_versions) != 1 else ''} {versions} "
            "accepted")
    if result.batch_id is None:
        replay = "no held change to replay"
    elif not result.applied:
        replay = (f"the replay batch {result.batch_id} was already in the sink ledger, so nothing was replayed "
                  "twice")
    else:
        replay = (f"{result.replayed_events} held event{'s' if result.replayed_events != 1 else ''} replayed as "
                  f"batch {result.batch_id} ({result.upserted} upserted, {result.deleted} deleted)")
    return f"{head}; {replay}; {result.table} is no longer held and flows again from the next run"


def _check(args: argparse.Namespace, stdin: Any, out: Any, err: Any) -> int:
    ref = resolve_subject(_config(args.config_dir), args.subject)
    hook = _hook(args.config_dir, ref.source_id)
    schema = read_schema_file(args.schema)
    level = args.level or hook.schema_policy.level(ref.table)
    with _sink_of(hook) as sink:
        found = check_schema(sink, ref, schema, level)
    if args.json:
        print(json.dumps(found.to_dict(), indent=2), file=out)
    else:
        print("\n".join(check_lines(found, args.schema)), file=out)
    return 0 if found.compatible else 1


def check_lines(found: SchemaCheck, path: str) -> list[str]:
    if not found.against:
        why = "NONE checks nothing" if found.level == "NONE" else "it has no registered version yet"
        return [f"{path} is compatible with {found.subject} at {found.level}: {why}"]
    against = ", ".join(str(number) for number in found.against)
    checked = f"checked against version{'s' if len(found.against) != 1 else ''} {against}"
    if found.compatible:
        return [f"{path} is compatible with {found.subject} at {found.level} ({checked})"]
    lines = [f"{path} is NOT compatible with {found.subject} at {found.level} ({checked}):"]
    lines += [f"  - {problem.describe()}" for problem in found.result.problems]
    return lines
