"""The audit trail: one :class:`AuditEntry` per operation, the same in every sink.

The ledger (:mod:`.ledger`) says *what* a sink holds; the audit trail says *what happened, when and by whom*: a batch
captured, transformed, validated, loaded and committed, the schema versions the gate registered, rule changes, schema
accepts, quarantine replays, re-snapshots, pipeline starts and stops, sources connected and schemas approved
ahead through the REST API. Each sink keeps it beside its ledger, in
``_cdc_audit`` (a table, a collection, a Delta table), and builds and reads it only through this module, so that the
columns and their meaning cannot drift apart between sinks.

**A crash loses none of it.** The rows of a batch up to ``batch_loaded`` are made by :func:`batch_audit_entries` from
what the load already has (the ledger row, the gate's registrations, the facts the pipeline gathered on the way) and
are written **with the batch**: in its transaction (PostgreSQL, MySQL, MongoDB), or, where there is none (Delta),
exactly once by an application transaction before the ledger row. A replayed batch, found in the ledger, writes none.
``batch_committed`` and the operations outside a batch go through :meth:`Sink.record_audit`, which inserts an entry
only when its ``audit_id`` is not there yet: batch rows have ids derived from the batch, so a retried commit writes
``batch_committed`` once.

**Who.** ``actor`` is the caller's own (the REST API passes the Airflow user), else ``$CDC_ACTOR``, else the OS user
(:func:`resolve_actor`). Rows a DAG run writes name the DAG: ``airflow:cdc_<source_id>`` (the DAG id of the source by
the naming contract; the run itself is in ``run_id``). Details never hold a credential: every text that looks like a
URL goes through :func:`~airflow_provider_cdc.config.models.mask_url`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.config.models import mask_url

if TYPE_CHECKING:
    from airflow_provider_cdc.connectors.ledger import LedgerRow
    from airflow_provider_cdc.schema.gate import GateDecision
    from airflow_provider_cdc.schema.registry import SchemaVersion

AUDIT_TABLE = "_cdc_audit"

# (name, logical type of the value contract) in storage order, as LEDGER_COLUMNS. ``details`` holds a document.
AUDIT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("audit_id", "text"),
    ("at", "timestamptz"),
    ("source_id", "text"),
    ("action", "text"),
    ("actor", "text"),
    ("batch_id", "text"),
    ("run_id", "text"),
    ("details", "json"),
)
AUDIT_COLUMN_NAMES = tuple(name for name, _ in AUDIT_COLUMNS)

# --- actions ---------------------------------------------------------------------------------------------------
# A batch, in the order its rows are made (and listed, newest last, when they share a time).
BATCH_CAPTURED = "batch_captured"
BATCH_TRANSFORMED = "batch_transformed"
BATCH_VALIDATED = "batch_validated"
BATCH_STAGED = "batch_staged"  # a registered stage other than transform and validate (stages.STAGE_FACTORIES)
RULES_CHANGED = "rules_changed"
SCHEMA_REGISTERED = "schema_registered"
BATCH_LOADED = "batch_loaded"
BATCH_COMMITTED = "batch_committed"
# Operations outside a batch.
SCHEMA_ACCEPTED = "schema_accepted"
QUARANTINE_REPLAYED = "quarantine_replayed"
RESNAPSHOT_STARTED = "resnapshot_started"
PIPELINE_STARTED = "pipeline_started"
PIPELINE_STOPPED = "pipeline_stopped"
SOURCE_CONNECTED = "source_connected"  # POST /cdc/api/v1/sources/connect registered (or replaced) the source
SCHEMA_APPROVED = "schema_approved"  # POST /cdc/api/v1/schema/register approved a schema ahead of its change

BATCH_ACTIONS = (BATCH_CAPTURED, BATCH_TRANSFORMED, BATCH_VALIDATED, BATCH_STAGED, RULES_CHANGED,
                 SCHEMA_REGISTERED, BATCH_LOADED, BATCH_COMMITTED)
ACTIONS = frozenset(BATCH_ACTIONS + (SCHEMA_ACCEPTED, QUARANTINE_REPLAYED, RESNAPSHOT_STARTED, PIPELINE_STARTED,
                                     PIPELINE_STOPPED, SOURCE_CONNECTED, SCHEMA_APPROVED))
# The action of each stage of the stage list (others: BATCH_STAGED), and the key of its versions whose change is a
# ``rules_changed`` row: transform rules, validate suites.
STAGE_ACTIONS = {"transform": BATCH_TRANSFORMED, "validate": BATCH_VALIDATED}
RULE_KEYS = {"transform": "rules", "validate": "suites"}

# The key of ``Sink.apply(versions=...)`` under which the pipeline hands over what it saw before the load (capture
# time and counts, and per stage its time, counts and quarantined changes): see :func:`stage_facts`.
FACTS_KEY = "audit"
CAPTURE = "capture"

ACTOR_ENV = "CDC_ACTOR"
_UTC = dt.timezone.utc


def resolve_actor(actor: str | None = None) -> str:
    """Who does an operation: ``actor`` when the caller knows (the REST API: the Airflow user), else ``$CDC_ACTOR``,
    else the OS user."""
    for candidate in (actor, os.environ.get(ACTOR_ENV)):
        if candidate and candidate.strip():
            return candidate.strip()
    try:
        return getpass.getuser()
    except Exception:  # no user name for this uid (a container): say so rather than fail the operation
        return "unknown"


def pipeline_actor(source_id: str, run_id: str | None) -> str:
    """The actor of the rows a pipeline run writes: its DAG (``airflow:cdc_<source_id>``); outside a DAG run (no
    run id: a script or a test calling the pipeline) :func:`resolve_actor`."""
    return f"airflow:cdc_{source_id}" if run_id else resolve_actor()


def audit_id_of(batch_id: str, action: str, part: str = "") -> str:
    """The id of a batch's entry: the same batch, action and part always give the same id, so writing it again is a
    no-op. A hash (32 hex digits), so that a long batch id still fits a key."""
    return hashlib.sha256(f"{batch_id}\x00{action}\x00{part}".encode()).hexdigest()[:32]


def safe_details(value: Any) -> Any:
    """``value`` as JSON-able data (tuples as lists, other objects as text) with every URL-shaped text masked."""
    if isinstance(value, Mapping):
        return {str(key): safe_details(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [safe_details(item) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value.isoformat() if isinstance(value, (dt.datetime, dt.date)) else str(value)
    return mask_url(text) if "://" in text or "password" in text.lower() else text


def _utc(value: dt.datetime | str | None) -> dt.datetime:
    if value is None:
        return dt.datetime.now(_UTC)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    """One operation. ``at`` is UTC; ``batch_id`` and ``run_id`` are None for operations outside a batch or a run;
    ``details`` is a JSON-able document without credentials. ``audit_id`` is unique: derived from the batch for its
    rows (:func:`audit_id_of`), random for the others, so that recording an entry twice keeps one."""

    at: dt.datetime
    source_id: str
    action: str
    actor: str
    batch_id: str | None = None
    run_id: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    audit_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", _utc(self.at))
        object.__setattr__(self, "details", safe_details(self.details or {}))
        if not self.audit_id:
            object.__setattr__(self, "audit_id", audit_id_of(self.batch_id, self.action) if self.batch_id
                               else uuid.uuid4().hex)

    def to_record(self, *, json_as_text: bool = False) -> dict[str, Any]:
        """The entry as column → value, in :data:`AUDIT_COLUMNS` order; ``details`` as a document or JSON text."""
        record = {name: getattr(self, name) for name in AUDIT_COLUMN_NAMES}
        if json_as_text:
            record["details"] = json.dumps(record["details"], sort_keys=True)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> AuditEntry:
        """Read a stored entry back (``details`` as text or as a document; unknown columns ignored)."""
        details = record.get("details")
        return cls(at=record["at"], source_id=record["source_id"], action=record["action"], actor=record["actor"],
                   batch_id=record.get("batch_id"), run_id=record.get("run_id"),
                   details=json.loads(details) if isinstance(details, (str, bytes)) else details or {},
                   audit_id=record["audit_id"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (``at`` as ISO text), for the REST API and ``--json`` output."""
        return {**self.to_record(), "at": self.at.isoformat()}


def audit_entry(
    action: str,
    source_id: str,
    *,
    actor: str | None = None,
    batch_id: str | None = None,
    run_id: str | None = None,
    details: Mapping[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> AuditEntry:
    """An entry of an operation done now by ``actor`` (:func:`resolve_actor`); ``action`` one of :data:`ACTIONS`."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; expected one of {', '.join(sorted(ACTIONS))}")
    return AuditEntry(at=at or dt.datetime.now(_UTC), source_id=source_id, action=action, actor=resolve_actor(actor),
                      batch_id=batch_id, run_id=run_id, details=dict(details or {}))


def pipeline_event(action: str, source_id: str, *, actor: str | None = None, run_id: str | None = None,
                   details: Mapping[str, Any] | None = None) -> AuditEntry:
    """``pipeline_started`` or ``pipeline_stopped`` (a DAG unpaused or paused, from the REST API or the UI)."""
    if action not in (PIPELINE_STARTED, PIPELINE_STOPPED):
        raise ValueError(f"{action!r} is not {PIPELINE_STARTED!r} or {PIPELINE_STOPPED!r}")
    return audit_entry(action, source_id, actor=actor, run_id=run_id, details=details)


def committed_entry(source_id: str, batch_id: str, *, run_id: str | None, position: Mapping[str, Any],
                    position_stored: bool) -> AuditEntry:
    """``batch_committed``: the position of ``batch_id`` is stored (its id derives from the batch: once only)."""
    return AuditEntry(at=dt.datetime.now(_UTC), source_id=source_id, action=BATCH_COMMITTED,
                      actor=pipeline_actor(source_id, run_id), batch_id=batch_id, run_id=run_id,
                      details={"position": dict(position), "seq": position.get("seq"),
                               "position_stored": position_stored})


# --- the rows of a batch ---------------------------------------------------------------------------------------


def stage_facts(changes: int, counts: Mapping[str, Mapping[str, int]], *, quarantined: int = 0,
                at: dt.datetime | None = None) -> dict[str, Any]:
    """What the pipeline notes of a batch after capture and after each stage (``versions[FACTS_KEY][name]``): when,
    how many changes, per table and op, and how many changes the stage quarantined."""
    return {"at": (at or dt.datetime.now(_UTC)).isoformat(), "changes": changes,
            "counts": {table: dict(ops) for table, ops in counts.items()}, "quarantined": quarantined}


def batch_audit_entries(
    row: LedgerRow,
    decision: GateDecision | None = None,
    *,
    versions: Mapping[str, Any] | None = None,
    previous: LedgerRow | None = None,
    quarantined: int = 0,
    actor: str | None = None,
) -> list[AuditEntry]:
    """The entries of a batch a sink applied, written with its ledger ``row`` (the one builder every sink uses):
    ``decision`` is the schema gate's for the batch, ``versions`` what :meth:`Sink.apply` was given (its
    ``versions[FACTS_KEY]``: what the pipeline noted at capture and after each stage), ``previous`` the source's
    latest ledger row before this one, ``quarantined`` the batch's quarantined changes.

    - ``batch_captured``: when and what was captured (``facts["capture"]``; without facts, the ledger row's counts
      at its commit time) and the position range;
    - one per stage of ``row.stage_versions``: ``batch_transformed`` (rule versions), ``batch_validated`` (suite
      versions and the metrics, quarantined counts included), ``batch_staged`` (any other stage), each with the
      stage's counts from ``facts``;
    - ``rules_changed`` for transform rules or validate suites whose versions differ from the ``previous`` ledger
      row of the source (on the first batch: every rule is added);
    - ``schema_registered`` per version the schema gate stored with this batch (``registrations``), with its
      outcome;
    - ``batch_loaded``: rows upserted and deleted, counts, quarantined changes, schema versions in effect and the
      tables held from this batch on.
    """
    facts = (versions or {}).get(FACTS_KEY) or {}
    registrations: Iterable[SchemaVersion] = decision.registrations if decision is not None else ()
    newly_held = decision.held if decision is not None else {}
    committed_at = row.committed_at or dt.datetime.now(_UTC)
    who = actor or pipeline_actor(row.source_id, row.run_id)

    def entry(action: str, details: Mapping[str, Any], *, at: Any = None, part: str = "") -> AuditEntry:
        return AuditEntry(at=_utc(at) if at else committed_at, source_id=row.source_id, action=action, actor=who,
                          batch_id=row.batch_id, run_id=row.run_id, details=dict(details),
                          audit_id=audit_id_of(row.batch_id, action, part))

    captured = facts.get(CAPTURE) or {}
    entries = [entry(BATCH_CAPTURED, {
        "changes": captured.get("changes", _changes(row.counts) + quarantined),
        "counts": captured.get("counts", row.counts),
        "seq_from": row.seq_from, "seq_to": row.seq_to,
        "position_from": row.position_from, "position_to": row.position_to,
    }, at=captured.get("at"))]
    stage_versions = row.stage_versions or {}
    for name, versions in stage_versions.items():
        seen = facts.get(name) or {}
        entries.append(entry(STAGE_ACTIONS.get(name, BATCH_STAGED), {
            "stage": name, "versions": versions,
            **{key: seen[key] for key in ("changes", "counts", "quarantined") if key in seen},
        }, at=seen.get("at"), part=name))
    entries += _rule_changes(row, previous, entry)
    notes = {(note.get("subject"), note.get("version")): note
             for note in ((row.schema_versions or {}).get("changes") or [])}
    for version in registrations:
        note = notes.get((version.subject, version.version), {})
        entries.append(entry(SCHEMA_REGISTERED, {
            "subject": version.subject, "version": version.version, "schema_id": version.id,
            "status": version.status, "mode": version.mode, "seq": version.seq,
            **{key: note[key] for key in ("change", "outcome", "level", "reason") if key in note},
        }, part=f"{version.subject}@{version.version}"))
    entries.append(entry(BATCH_LOADED, {
        "rows_upserted": row.rows_upserted, "rows_deleted": row.rows_deleted, "counts": row.counts,
        "quarantined": quarantined, "seq_from": row.seq_from, "seq_to": row.seq_to,
        "schema_versions": (row.schema_versions or {}).get("versions") or {},
        "newly_held": dict(newly_held),
    }))
    return entries


def _changes(counts: Mapping[str, Mapping[str, int]]) -> int:
    """Row changes in ``counts`` (schema changes, op ``s``, are not rows)."""
    return sum(n for ops in counts.values() for op, n in ops.items() if op != "s")


def _rule_changes(row: LedgerRow, previous: LedgerRow | None, entry: Any) -> list[AuditEntry]:
    """``rules_changed`` per stage whose rule (suite) versions differ from the previous batch's. A previous row
    without ``stage_versions`` (a ``schema accept`` replay, or a ledger of an older version) tells nothing."""
    if previous is not None and previous.stage_versions is None:
        return []
    before_all = (previous.stage_versions or {}) if previous is not None else {}
    now_all = row.stage_versions or {}
    out = []
    for stage, key in RULE_KEYS.items():
        before, now = _versions_of(before_all, stage, key), _versions_of(now_all, stage, key)
        if before == now:
            continue
        out.append(entry(RULES_CHANGED, {
            "stage": stage, "kind": key,
            "added": sorted(set(now) - set(before)), "removed": sorted(set(before) - set(now)),
            "changed": sorted(name for name in set(now) & set(before) if now[name] != before[name]),
            "versions": now, "previous_batch_id": previous.batch_id if previous is not None else None,
        }, part=stage))
    return out


def _versions_of(stage_versions: Mapping[str, Any], stage: str, key: str) -> dict[str, Any]:
    """``stage_versions[stage][key]`` as name → version (a stage that reported something else: under ``key``)."""
    reported = stage_versions.get(stage)
    value = reported.get(key) if isinstance(reported, Mapping) else None
    if value is None:
        return {}
    return dict(value) if isinstance(value, Mapping) else {key: value}


# --- reading ---------------------------------------------------------------------------------------------------

_RANK = {action: index for index, action in enumerate(BATCH_ACTIONS)}


def newest_first(entries: Iterable[AuditEntry], limit: int | None = None) -> list[AuditEntry]:
    """``entries`` newest first, once each (by ``audit_id``); rows of one batch at the same time in reverse order of
    the batch's steps (loaded above captured)."""
    unique = {entry.audit_id: entry for entry in entries}
    ordered = sorted(unique.values(), key=lambda e: (e.at, _RANK.get(e.action, len(_RANK)), e.audit_id),
                     reverse=True)
    return ordered if limit is None else ordered[:max(limit, 0)]


def matches(entry: AuditEntry, *, source_id: str | None = None, batch_id: str | None = None,
            action: str | None = None, since: dt.datetime | None = None) -> bool:
    """Whether ``entry`` passes the filters of :meth:`Sink.audit_entries` (for sinks that filter in Python)."""
    return ((source_id is None or entry.source_id == source_id)
            and (batch_id is None or entry.batch_id == batch_id)
            and (action is None or entry.action == action)
            and (since is None or entry.at >= _utc(since)))


def since_utc(since: dt.datetime | None) -> dt.datetime | None:
    """``since`` in UTC (naive: taken as UTC), as the sinks compare it."""
    return None if since is None else _utc(since)


def missing(entries: Sequence[AuditEntry], present: Iterable[str]) -> list[AuditEntry]:
    """The entries whose id is not in ``present``, once each (what :meth:`Sink.record_audit` still inserts)."""
    have = set(present)
    out: dict[str, AuditEntry] = {}
    for entry in entries:
        if entry.audit_id not in have:
            out.setdefault(entry.audit_id, entry)
    return list(out.values())
