"""The schema gate: every schema change in a batch is registered, checked, and either followed or held.

A sink calls :func:`decide` inside the transaction that applies the batch, with the versions and the held tables it
read in that transaction. The decision says:

* which versions to store (:attr:`GateDecision.registrations`), each with its status;
* which tables are held from now on, and why (:attr:`GateDecision.held`): their changes leave the batch and go into
  :attr:`GateDecision.chunks`, which the sink stores beside the ledger, so that they are held, not lost, and the
  position may pass them (they are in the sink, in the same transaction as the ledger row);
* the batch the sink applies: held tables removed; under ``lenient`` and ``ignore`` each table's schema and columns
  are those the sink follows (:attr:`SchemaVersion.sink_table`), not the source's;
* which sink columns to drop after the merge (:attr:`GateDecision.drops`, ``evolve`` only).

A sink that cannot follow a change the gate let through (a decimal narrowed: Avro cannot tell, the sink can) holds
the table too, with :meth:`GateDecision.hold`: same storage, same way out.

The way out is :func:`plan_accept` (``python -m airflow_provider_cdc schema accept <subject>``): the held versions
become ``accepted``, the held changes are read with the accepted schema (:mod:`.resolution`) and replayed into the
sink table, exactly once, through the sink's ordinary merge.

Everything a change refuses names the subject, the change, the mode, the level and the reason, and says how to resume.
The impact of a held table on downstream assets (the lineage issue) goes in through :data:`IMPACT_HOOKS`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.schema.avro import avro_schema, schema_key
from airflow_provider_cdc.schema.compatibility import check
from airflow_provider_cdc.schema.policy import DEFAULT_POLICY, SchemaPolicy
from airflow_provider_cdc.schema.registry import Registry, SchemaVersion, now_text, subject_of
from airflow_provider_cdc.schema.resolution import resolve_table
from airflow_provider_cdc.tables import SchemaChange, TableSchema

log = logging.getLogger("airflow_provider_cdc.schema")

IMPACT_HOOKS: list[Callable[[str, str], str | None]] = []
"""Functions ``(source_id, table) -> text or None`` whose text is added to a hold's message (downstream assets)."""


@dataclasses.dataclass
class HeldChunk:
    """The changes of one held table from one batch: its events (seq above the sink's high water) and schema
    changes, and the positions of the batch they came in (what an accept's ledger row records)."""

    source_id: str
    table: str
    batch_id: str
    seq_from: int
    seq_to: int
    schema: TableSchema
    changes: list[SchemaChange]
    data: pa.Table | None
    position_from: dict[str, Any]
    position_to: dict[str, Any]

    @property
    def rows(self) -> int:
        return 0 if self.data is None else self.data.num_rows

    def data_bytes(self) -> bytes | None:
        """The events as an Arrow IPC stream (how sinks store them)."""
        if self.data is None:
            return None
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, self.data.schema) as writer:
            writer.write_table(self.data)
        return sink.getvalue()

    def meta(self) -> dict[str, Any]:
        """Everything but the events, JSON-safe."""
        return {"schema": self.schema.to_dict(), "changes": [change.to_dict() for change in self.changes],
                "position_from": self.position_from, "position_to": self.position_to}

    @classmethod
    def from_stored(cls, *, source_id: str, table: str, batch_id: str, seq_from: int, seq_to: int,
                    meta: Mapping[str, Any] | str, data: bytes | None) -> HeldChunk:
        info: Mapping[str, Any] = json.loads(meta) if isinstance(meta, str) else meta
        events = pa.ipc.open_stream(io.BytesIO(data)).read_all() if data else None
        return cls(source_id, table, batch_id, int(seq_from), int(seq_to), TableSchema.from_dict(info["schema"]),
                   [SchemaChange.from_dict(change) for change in info["changes"]], events,
                   dict(info.get("position_from") or {}), dict(info.get("position_to") or {}))


@dataclasses.dataclass
class GateDecision:
    batch: ChangeBatch
    registry: Registry
    policy: SchemaPolicy
    high_water: int
    held: dict[str, str] = dataclasses.field(default_factory=dict)
    already_held: dict[str, str] = dataclasses.field(default_factory=dict)
    chunks: list[HeldChunk] = dataclasses.field(default_factory=list)
    drops: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    notes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    _original: ChangeBatch | None = None

    @property
    def registrations(self) -> list[SchemaVersion]:
        """New versions and status changes to store, in subject and version order."""
        return [self.registry.changed[key] for key in sorted(self.registry.changed)]

    @property
    def all_held(self) -> dict[str, str]:
        return {**self.already_held, **self.held}

    def ledger_versions(self) -> dict[str, Any]:
        """What the ledger row records as ``schema_versions``: the version each subject follows, the changes of this
        batch with their outcome, and the tables held."""
        return {"versions": self.registry.in_effect(), "changes": self.notes, "held": self.all_held}

    def hold(self, table: str, reason: str) -> None:
        """Hold ``table`` from this batch on (the gate refused a change, or the sink cannot follow one)."""
        if table in self.all_held:
            return
        self.held[table] = reason
        original = self._original or self.batch
        subject = subject_of(original.source_id, table)
        for version in list(self.registry.changed.values()):
            if version.subject == subject and version.status != "held" and version.seq > self.high_water:
                self.registry.add(dataclasses.replace(version, status="held"))
        for note in self.notes:  # a change the gate let through and the sink cannot follow: held, and why
            if note["subject"] == subject and note["outcome"] != "held":
                note.update(outcome="held", reason=reason)
        self.drops.pop(table, None)
        self._take_out(table, original)
        log.error("source %s: table %s is held from batch %s on: %s", original.source_id, table, original.batch_id,
                  reason)

    def _take_out(self, table: str, original: ChangeBatch) -> None:
        """Move ``table``'s part of the batch (above the high water) into a held chunk."""
        events = original.tables.get(table)
        if events is not None and self.high_water:
            events = events.filter(pc.greater(events["_cdc_seq"], self.high_water))
        changes = [change for change in original.schema_changes
                   if change.table == table and change.seq > self.high_water]
        schema = original.schemas.get(table) or (changes[-1].after if changes else None)
        if schema is not None and ((events is not None and events.num_rows) or changes):
            seqs = [change.seq for change in changes]
            if events is not None and events.num_rows:
                seqs += [pc.min(events["_cdc_seq"]).as_py(), pc.max(events["_cdc_seq"]).as_py()]
            self.chunks.append(HeldChunk(
                original.source_id, table, original.batch_id, min(seqs), max(seqs), schema, changes,
                events if events is not None and events.num_rows else None, original.position_from,
                original.position_to))
        self.batch.tables.pop(table, None)
        self.batch.schemas.pop(table, None)
        self.batch.schema_changes = [change for change in self.batch.schema_changes
                                     if change.table != table or change.seq <= self.high_water]


COMMAND = "python -m airflow_provider_cdc"


def log_held(decision: GateDecision, sink_id: str, kept_in: str, logger: logging.Logger) -> None:
    """One line per held table of a committed batch, saying what the sink did with its changes (kept in
    ``kept_in``, not applied). The gate logged each new hold with its reason when it decided."""
    batch = decision.batch
    for chunk in decision.chunks:
        if chunk.table in decision.held:
            logger.error("sink %s: table %s is held from batch %s on: its %d changes (seq %d-%d) are kept in %s, "
                         "not applied, until python -m airflow_provider_cdc schema accept %s (or a re-snapshot of "
                         "the table). The other tables keep flowing.", sink_id, chunk.table, batch.batch_id,
                         chunk.rows, chunk.seq_from, chunk.seq_to, kept_in, subject_of(batch.source_id, chunk.table))
        else:
            logger.error("sink %s, batch %s: %d changes of held table %s are not applied, kept in %s (%s)", sink_id,
                         batch.batch_id, chunk.rows, chunk.table, kept_in, decision.all_held.get(chunk.table))
    for table in decision.held.keys() - {chunk.table for chunk in decision.chunks}:
        logger.error("sink %s: table %s is held from batch %s on (no changes of it in this batch). The other "
                     "tables keep flowing.", sink_id, table, batch.batch_id)


def resume_commands(source_id: str, table: str) -> str:
    """How a held table flows again: accept its held changes, or re-snapshot it (discarding them)."""
    return (f"resume with: {COMMAND} schema accept {subject_of(source_id, table)} (replays its held changes), or "
            f"{COMMAND} resnapshot {source_id} --table {table} (discards them and reads the table anew)")


def _hold_message(subject: str, change: str, policy: SchemaPolicy, level: str, detail: str, table: str,
                  source_id: str) -> str:
    extra = [text for hook in IMPACT_HOOKS if (text := hook(source_id, table))]
    return (f"schema change of {subject} ({change}) refused under schema_changes mode {policy.mode}, compatibility "
            f"{level}: {detail}. Its changes are held in the sink, not lost; the other tables keep flowing; "
            f"{resume_commands(source_id, table)}" + "".join(f". {text}" for text in extra))


def describe_change(before: TableSchema | None, after: TableSchema) -> str:
    """A short text of what changed: added, dropped, renamed and retyped columns, nullability."""
    if before is None:
        return f"new table with columns {after.column_names}"
    parts = []
    old_by_ordinal = {col.ordinal: col for col in before.columns if col.ordinal is not None}
    old_by_name = {col.name: col for col in before.columns}
    seen = set()
    for col in after.columns:
        old = old_by_ordinal.get(col.ordinal) if col.ordinal is not None else None
        old = old if old is not None else old_by_name.get(col.name)
        if old is None:
            parts.append(f"added {col.name} {col.source_type}{'' if col.nullable else ' NOT NULL'}"
                         f"{'' if col.backfill is None else f' DEFAULT {col.backfill}'}")
            continue
        seen.add(old.name)
        if old.name != col.name:
            parts.append(f"renamed {old.name} to {col.name}")
        if old.source_type != col.source_type:
            parts.append(f"{col.name} type {old.source_type} -> {col.source_type}")
        if old.nullable != col.nullable:
            parts.append(f"{col.name} {'nullable' if col.nullable else 'NOT NULL'}")
    parts += [f"dropped {name}" for name in old_by_name if name not in seen]
    return ", ".join(parts) or "no column change"


def recreated_columns(before: TableSchema, after: TableSchema) -> list[str]:
    """Columns ``after`` has under a name ``before`` has, but with another identity (ordinal): dropped and added
    again, so every row's old value is gone at the source."""
    ordinals = {col.name: col.ordinal for col in before.columns}
    return [col.name for col in after.columns
            if col.ordinal is not None and ordinals.get(col.name) not in (None, col.ordinal)]


def lenient_table(sink: TableSchema, source: TableSchema) -> TableSchema:
    """``lenient``: the source's columns (new ones nullable, a renamed one as a new column) plus every column the
    sink had that the source no longer has under that name (kept, nullable)."""
    sink_names = {col.name for col in sink.columns}
    sink_ordinals = {col.ordinal: col.name for col in sink.columns if col.ordinal is not None}
    columns = []
    for col in source.columns:
        renamed = col.ordinal is not None and sink_ordinals.get(col.ordinal) not in (None, col.name)
        if col.name not in sink_names:
            # A renamed column is new to the sink: its existing rows hold their values under the old name, so the
            # source's backfill (the value of rows older than the column's ADD COLUMN) is not theirs.
            col = dataclasses.replace(col, nullable=True, ordinal=None if renamed else col.ordinal,
                                      backfill=None if renamed else col.backfill)
        columns.append(col)
    names = {col.name for col in columns}
    columns += [dataclasses.replace(col, nullable=True, primary_key=False, ordinal=None, backfill=None)
                for col in sink.columns if col.name not in names]
    return dataclasses.replace(source, columns=tuple(columns))


def _dropped(before: TableSchema, after: TableSchema) -> list[str]:
    """Columns of ``before`` that ``after`` has neither by name nor (renamed) by ordinal."""
    names = set(after.column_names)
    ordinals = {col.ordinal for col in after.columns if col.ordinal is not None}
    return [col.name for col in before.columns
            if col.name not in names and (col.ordinal is None or col.ordinal not in ordinals)]


def _evaluate(policy: SchemaPolicy, registry: Registry, subject: str, table: str, change: SchemaChange,
              doc: dict[str, Any], latest: SchemaVersion) -> tuple[str | None, str, TableSchema, str, dict[str, Any]]:
    """``(refusal or None, status, sink table, level, compatibility)`` of one change under the policy."""
    level = policy.level(table)
    followed = registry.latest_followed(subject) or latest
    previous_sink = followed.sink_table
    history = [(version.version, version.schema) for version in registry.versions(subject)]
    again = recreated_columns(previous_sink, change.after)
    approved = policy.registration(subject, doc)
    if approved is not None and not again:
        # Registered ahead through the REST API: the user approved this very schema, so the sink follows it as
        # under evolve; what the level would have said is kept for the record.
        result = check(doc, history, level)
        return None, "applied", change.after, level, {**result.to_dict(), "registered_version": approved}
    if policy.mode == "stop":
        return "mode stop refuses every change of an existing table", "held", change.after, level, {}
    if again and policy.mode != "ignore":
        return (f"column{'s' if len(again) > 1 else ''} {', '.join(again)} {'were' if len(again) > 1 else 'was'} "
                "dropped and added again at the source: its rows now hold the new column's default, which the "
                "change stream does not carry, while the sink's rows hold the old values. Only a re-snapshot of the "
                "table is exact"), "held", change.after, level, {}
    if policy.mode == "evolve":
        result = check(doc, history, level)
        return (None if result.compatible else result.describe()), "applied", change.after, level, result.to_dict()
    if policy.mode == "lenient":
        target = lenient_table(previous_sink, change.after)
        target_doc = avro_schema(target, source_id=subject.partition(".")[0], previous=previous_sink)
        sink_history = [(version.version, avro_schema(version.sink_table, source_id=subject.partition(".")[0]))
                        for version in registry.versions(subject) if version.status != "held"]
        result = check(target_doc, sink_history, level)
        return (None if result.compatible else result.describe()), "applied", target, level, result.to_dict()
    # ignore: the sink's columns must be able to read what the source now writes. Sinks create every non-key column
    # nullable, and a column the source no longer sends gets NULL there: only the types must fit, not NOT NULL.
    sink_columns = tuple(col if col.primary_key else dataclasses.replace(col, nullable=True)
                         for col in previous_sink.columns)
    sink_doc = avro_schema(dataclasses.replace(previous_sink, columns=sink_columns),
                           source_id=subject.partition(".")[0])
    result = check(doc, [(followed.version, sink_doc)], "FORWARD")
    refusal = None if result.compatible else (
        f"mode ignore keeps the sink's columns, but they cannot hold what the source now writes: {result.describe()}")
    return refusal, "ignored", previous_sink, "FORWARD", result.to_dict()


def _project(events: pa.Table | None, source: TableSchema, sink: TableSchema) -> pa.Table | None:
    if events is None or source.column_names == sink.column_names:
        return events
    # A column dropped within the batch is still in its events, holding the values of rows written before the drop.
    carried = tuple(dataclasses.replace(col, ordinal=None) for col in sink.columns
                    if col.name not in source.column_names and col.name in events.column_names)
    writer = dataclasses.replace(source, columns=(*source.columns, *carried)) if carried else source
    return resolve_table(events, writer, sink, by_ordinal=False, use_defaults=False)


def decide(
    batch: ChangeBatch,
    versions: Iterable[SchemaVersion],
    held: Mapping[str, str],
    policy: SchemaPolicy | None = None,
    high_water: int = 0,
) -> GateDecision:
    """Register and check every schema change of ``batch`` above ``high_water`` (see the module docstring)."""
    policy = policy or DEFAULT_POLICY
    registry = Registry(versions)
    working = dataclasses.replace(batch, tables=dict(batch.tables), schemas=dict(batch.schemas),
                                  schema_changes=list(batch.schema_changes))
    decision = GateDecision(working, registry, policy, high_water, already_held=dict(held), _original=batch)
    by_table: dict[str, list[SchemaChange]] = {}
    for change in sorted(batch.schema_changes, key=lambda change: change.seq):
        if change.seq > high_water:
            by_table.setdefault(change.table, []).append(change)
    for table in sorted({*by_table, *batch.schemas, *batch.tables}):
        subject = subject_of(batch.source_id, table)
        if table in held:
            for change in by_table.get(table, []):
                _register(decision, subject, change, "held", change.after, {})
            decision._take_out(table, batch)
            continue
        refused = False
        for change in by_table.get(table, []):
            latest = registry.latest(subject)
            if latest is None and change.before is not None:
                # The sink followed this table before the registry existed (an upgraded deployment): the schema it
                # followed becomes version 1, in effect before this batch (so a hold never marks it), and the change
                # is checked against it like any other.
                _register(decision, subject, SchemaChange(table, high_water, change.before), "applied",
                          change.before, {})
                latest = registry.latest(subject)
            doc = registry.document(subject, change.after, change.before)
            if latest is None:
                _register(decision, subject, change, "applied", change.after, {}, doc=doc)
                continue
            if schema_key(doc) == latest.key or (
                    latest.table.fingerprint() == change.after.fingerprint() and latest.status != "held"):
                continue
            what = describe_change(latest.table, change.after)
            if refused:
                _register(decision, subject, change, "held", change.after, {}, doc=doc)
                continue
            refusal, status, sink_table, level, compat = _evaluate(policy, registry, subject, table, change, doc,
                                                                   latest)
            if refusal is not None:
                version = _register(decision, subject, change, "held", change.after, compat, doc=doc)
                decision.notes.append({"subject": subject, "version": version.version, "seq": change.seq,
                                       "change": what, "mode": policy.mode, "level": level, "outcome": "held",
                                       "reason": refusal})
                decision.hold(table, _hold_message(subject, what, policy, level, refusal, table, batch.source_id))
                refused = True
                continue
            previous_sink = (registry.latest_followed(subject) or latest).sink_table
            version = _register(decision, subject, change, status, sink_table, compat, doc=doc)
            approved = compat.get("registered_version")
            note = {"subject": subject, "version": version.version, "seq": change.seq, "change": what,
                    "mode": policy.mode, "level": level, "outcome": status}
            if approved is not None:
                note["registered_version"] = approved
            decision.notes.append(note)
            log.info("source %s: %s version %d (%s): %s under mode %s, %s%s", batch.source_id, subject,
                     version.version, what, status, policy.mode, level,
                     f" (registered ahead through the REST API as version {approved})" if approved else "")
            if policy.mode == "evolve" or approved is not None:
                dropped = _dropped(previous_sink, change.after)
                if dropped:
                    decision.drops.setdefault(table, []).extend(dropped)
            else:
                _rewrite_change(decision, change, previous_sink, sink_table)
        if refused:
            continue
        if table in decision.drops:
            # A column dropped and added again within the batch is in the table's final schema: the sink keeps it.
            final = batch.schemas.get(table) or by_table[table][-1].after
            kept = [name for name in decision.drops[table] if name not in final.column_names]
            decision.drops[table] = list(dict.fromkeys(kept))
            if not kept:
                del decision.drops[table]
        if subject not in registry.subjects() and table in batch.schemas:
            # Data of a table the registry has not seen (a registry newer than the sink's tables): its first version.
            schema = batch.schemas[table]
            events = batch.tables.get(table)
            seq = pc.min(events["_cdc_seq"]).as_py() if events is not None and events.num_rows else batch.seq_from
            _register(decision, subject, SchemaChange(table, seq, schema), "applied", schema, {})
        _follow_sink_table(decision, table, subject)
    return decision


def _register(decision: GateDecision, subject: str, change: SchemaChange, status: str, sink_table: TableSchema,
              compat: dict[str, Any], *, doc: dict[str, Any] | None = None) -> SchemaVersion:
    registry = decision.registry
    doc = doc or registry.document(subject, change.after, change.before)
    latest = registry.latest(subject)
    if latest is not None and latest.key == schema_key(doc):
        return latest
    version = SchemaVersion(
        subject=subject, version=registry.next_version(subject), schema=doc, table=change.after,
        sink_table=sink_table, seq=change.seq, position=change.position, status=status,  # type: ignore[arg-type]
        mode=decision.policy.mode, compatibility=compat or None, batch_id=decision.batch.batch_id,
        registered_at=now_text(),
    )
    return registry.add(version)


def _rewrite_change(decision: GateDecision, change: SchemaChange, before: TableSchema, after: TableSchema) -> None:
    """Under ``lenient`` and ``ignore`` the sink follows ``after``, not the source's schema."""
    batch = decision.batch
    batch.schema_changes = [
        dataclasses.replace(item, before=before, after=after) if item is change else item
        for item in batch.schema_changes if item is not change or before.fingerprint() != after.fingerprint()
    ]


def _follow_sink_table(decision: GateDecision, table: str, subject: str) -> None:
    """Give the sink the schema it follows for ``table`` (and the events in those columns) where that is not the
    source's: a version followed under ``lenient`` or ``ignore``."""
    followed = decision.registry.latest_followed(subject)
    batch = decision.batch
    source = batch.schemas.get(table)
    # Whole tables, not fingerprints: a fingerprint ignores nullability, and lenient adds NOT NULL columns nullable.
    if followed is None or source is None or followed.sink_table == followed.table:
        return
    sink_table = followed.sink_table
    batch.schemas[table] = sink_table
    if table in batch.tables:
        projected = _project(batch.tables[table], source, sink_table)
        assert projected is not None
        batch.tables[table] = projected


class AcceptRefusedError(CdcError):
    """``schema accept`` cannot make the sink table faithful; the message says why and names the re-snapshot."""

    terminal = True


@dataclasses.dataclass
class AcceptPlan:
    """What ``schema accept`` does to one held table."""

    subject: str
    table: str
    target: TableSchema          # the sink table after the accept
    previous: TableSchema | None  # the sink table before (the last followed version's)
    registrations: list[SchemaVersion]
    batch: ChangeBatch | None    # the held changes, read with the target schema (None: nothing was held)
    drops: list[str]

    def ledger_versions(self, versions: Iterable[SchemaVersion], policy: SchemaPolicy | None,
                        held: dict[str, str]) -> dict[str, Any]:
        """The ``schema_versions`` of the replay's ledger row: the versions in effect once this plan's are stored
        beside ``versions``, what was accepted, and the tables still ``held``."""
        stored = {(version.subject, version.version): version for version in versions}
        stored.update({(version.subject, version.version): version for version in self.registrations})
        mode = (policy or DEFAULT_POLICY).mode
        return {
            "versions": Registry(stored.values()).in_effect(),
            "changes": [{"subject": self.subject, "version": version.version, "seq": version.seq,
                         "change": describe_change(self.previous, self.target), "mode": mode,
                         "outcome": "accepted"} for version in self.registrations],
            "held": held,
        }


def plan_accept(source_id: str, table: str, versions: Iterable[SchemaVersion], chunks: Iterable[HeldChunk],
                policy: SchemaPolicy | None = None) -> AcceptPlan:
    """The held versions of ``table`` become ``accepted``; its held changes are read with the newest version and
    replayed as one batch (``<source_id>:accept:<table>:<first seq>-<last seq>``)."""
    policy = policy or DEFAULT_POLICY
    registry = Registry(versions)
    subject = subject_of(source_id, table)
    latest = registry.latest(subject)
    chunks = sorted(chunks, key=lambda chunk: chunk.seq_from)
    followed = registry.latest_followed(subject)
    previous = followed.sink_table if followed is not None else None
    if latest is None:
        if not chunks:
            raise ValueError(f"{subject} has no registered version and nothing held")
        source_table = chunks[-1].schema
    else:
        source_table = latest.table
    if policy.mode == "lenient" and previous is not None:
        target = lenient_table(previous, source_table)
    elif policy.mode == "ignore" and previous is not None:
        target = previous
    else:
        target = source_table
    again = recreated_columns(previous, target) if previous is not None else []
    if again:
        raise AcceptRefusedError(
            f"{subject}: {', '.join(again)} dropped and added again at the source, so the sink's older rows hold "
            f"values the source no longer has and the change stream cannot say which; an accept would keep them. "
            f"Re-snapshot the table instead: python -m airflow_provider_cdc resnapshot {source_id} --table {table}")
    registrations = []
    for version in registry.versions(subject):
        if version.status == "held":
            registrations.append(registry.add(dataclasses.replace(version, status="accepted", sink_table=target)))
    drops = _dropped(previous, target) if previous is not None and policy.mode in ("evolve", "stop") else []
    batch = None
    if chunks:
        tables = [resolve_table(chunk.data, chunk.schema, target) for chunk in chunks if chunk.data is not None]
        seq_from, seq_to = chunks[0].seq_from, chunks[-1].seq_to
        change = SchemaChange(table, chunks[0].seq_from, target, before=previous)
        batch = ChangeBatch(
            source_id=source_id, batch_id=f"{source_id}:accept:{table}:{seq_from}-{seq_to}",
            position_from=chunks[0].position_from, position_to=chunks[-1].position_to, seq_from=seq_from,
            seq_to=seq_to, tables={table: pa.concat_tables(tables, promote_options="default")} if tables else {},
            schemas={table: target}, schema_changes=[change] if previous is not None else [],
        )
    return AcceptPlan(subject, table, target, previous, registrations, batch, drops)
