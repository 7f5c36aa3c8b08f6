"""Quarantined rows: changes a stage could not handle (a rule whose expression failed, a failed expectation under
``policy: quarantine``), kept with their reason instead of being loaded or lost.

A stage takes such a row out of the batch's table and adds it to the batch's ``quarantine`` (an Arrow table of
:data:`BATCH_SCHEMA`, staged beside the tables); the sink stores those rows in its ``_cdc_quarantine`` table **in the
same transaction** as the batch's data and ledger row (:data:`SINK_COLUMNS`). The position then moves past them only
together with their safe keeping: nothing is lost, and a replayed batch (the ledger already has it) stores nothing
twice. The transform stage (issue 10) and the quality stage (issue 11) share the table.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from airflow_provider_cdc.errors import SinkError

if TYPE_CHECKING:
    from airflow_provider_cdc.connectors.base import ApplyResult
    from airflow_provider_cdc.events import ChangeBatch

QUARANTINE_TABLE = "_cdc_quarantine"

# One quarantined change as a batch carries it.
BATCH_SCHEMA = pa.schema([
    pa.field("source_table", pa.string(), nullable=False),  # schema.table at the source
    pa.field("stage", pa.string(), nullable=False),  # transform | validate
    pa.field("rule_id", pa.string()),  # the rule (transform) or check (validate) that refused the row
    pa.field("suite", pa.string()),  # the quality suite (validate)
    pa.field("field", pa.string()),  # the column concerned, when one is
    pa.field("reason", pa.string(), nullable=False),
    pa.field("row", pa.string(), nullable=False),  # the change's row image as JSON (portable text values)
    pa.field("op", pa.string(), nullable=False),
    pa.field("seq", pa.int64(), nullable=False),
    pa.field("ts_ms", pa.int64()),
])

# The sink's table: the batch's columns plus where and when. ``quarantine_id`` (:func:`quarantine_id`: source, batch,
# seq and stage) identifies a row: a replayed batch stores nothing twice, and a source whose ``seq`` starts again
# (a whole re-snapshot) never meets its old rows' keys.
SINK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("quarantine_id", "text"),
    ("source_id", "text"),
    ("batch_id", "text"),
    ("source_table", "text"),
    ("stage", "text"),
    ("rule_id", "text"),
    ("suite", "text"),
    ("field", "text"),
    ("reason", "text"),
    ("row", "json"),
    ("op", "text"),
    ("seq", "integer"),
    ("event_time", "timestamptz"),
    ("quarantined_at", "timestamptz"),
    ("replayed_batch_id", "text"),  # set when `quarantine replay` loaded the row (NULL: still waiting)
)
KEY_COLUMNS = ("quarantine_id",)


def quarantine_id(source_id: str, batch_id: str, seq: int, stage: str) -> str:
    """A short, fixed-length key (40 hex digits) for one quarantined change of one batch at one stage."""
    return hashlib.sha1(f"{source_id}\x00{batch_id}\x00{seq}\x00{stage}".encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a stage refused one change: ``row`` is its index in the batch table the stage was given."""

    row: int
    rule_id: str | None
    reason: str
    field: str | None = None
    suite: str | None = None


def refused_changes(table: pa.Table, source_table: str, stage: str,
                    refusals: Iterable[Refusal]) -> list[dict[str, Any]]:
    """The quarantine records (keys of :data:`BATCH_SCHEMA`) of ``refusals`` over ``table``: each refused change's
    row image (its source columns, bookkeeping and before-images left out), op, ``seq`` and time."""
    from airflow_provider_cdc.events import BEFORE_PREFIX, META_COLUMNS

    rows = table.select([c for c in table.column_names if c not in META_COLUMNS and not c.startswith(BEFORE_PREFIX)])
    meta = table.select(["_cdc_op", "_cdc_seq", "_cdc_ts_ms"])
    out = []
    for refusal in refusals:
        image = rows.slice(refusal.row, 1).to_pylist()[0]
        op, seq, ts_ms = (meta.column(i)[refusal.row].as_py() for i in range(3))
        out.append({"source_table": source_table, "stage": stage, "rule_id": refusal.rule_id, "suite": refusal.suite,
                    "field": refusal.field, "reason": refusal.reason, "row": image, "op": op, "seq": seq,
                    "ts_ms": ts_ms})
    return out


def count_by_rule(records: Iterable[Mapping[str, Any]]) -> str:
    """``rule_a: 3, rule_b: 1``: how many quarantine records each rule refused (for the stages' log lines)."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record["rule_id"]] = counts.get(record["rule_id"], 0) + 1
    return ", ".join(f"{rule}: {n}" for rule, n in counts.items())


def quarantine_rows(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """A batch's quarantine from dicts with the keys of :data:`BATCH_SCHEMA` (``row`` a dict or JSON text)."""
    records = []
    for row in rows:
        record = {name: row.get(name) for name in BATCH_SCHEMA.names}
        if not isinstance(record["row"], str):
            record["row"] = json.dumps(record["row"], ensure_ascii=False, sort_keys=True, default=str)
        records.append(record)
    return pa.Table.from_pylist(records, schema=BATCH_SCHEMA)


def merge(first: pa.Table | None, second: pa.Table | None) -> pa.Table | None:
    """Two stages' quarantines as one (None when neither has rows)."""
    parts = [t for t in (first, second) if t is not None and t.num_rows]
    if not parts:
        return None
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def sink_records(quarantine: pa.Table | None, *, source_id: str, batch_id: str, high_water: int = 0,
                 now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """The rows a sink stores for a batch's quarantine (:data:`SINK_COLUMNS`; ``row`` parsed JSON).

    Changes at or below ``high_water`` (the highest ``seq`` the sink committed for the source) were handled by an
    overlapping batch already, their quarantine included: they are left out, as the sink leaves out their data."""
    if quarantine is None or quarantine.num_rows == 0:
        return []
    now = now or dt.datetime.now(dt.timezone.utc)
    out = []
    for row in quarantine.to_pylist():
        if row["seq"] <= high_water:
            continue
        ts_ms = row.get("ts_ms")
        out.append({
            "quarantine_id": quarantine_id(source_id, batch_id, row["seq"], row["stage"]),
            "source_id": source_id, "batch_id": batch_id, "source_table": row["source_table"], "stage": row["stage"],
            "rule_id": row["rule_id"], "suite": row["suite"], "field": row["field"], "reason": row["reason"],
            "row": json.loads(row["row"]), "op": row["op"], "seq": row["seq"],
            "event_time": None if ts_ms is None else dt.datetime.fromtimestamp(ts_ms / 1000, dt.timezone.utc),
            "quarantined_at": now, "replayed_batch_id": None,
        })
    return out


# -- replay (``python -m airflow_provider_cdc quarantine replay``) -----------------------------------------------

REPLAY_MARK = "quarantine"


def replay_batch_id(source_id: str, quarantine_ids: Iterable[str]) -> str:
    """The ledger batch id of a replay of ``quarantine_ids``: ``<source_id>:quarantine:<12 hex>``, a SHA-1 of the
    sorted ids. Deterministic, so that replaying the same rows again finds the ledger row and does nothing."""
    digest = hashlib.sha1("\x00".join(sorted(set(quarantine_ids))).encode()).hexdigest()[:12]
    return f"{source_id}:{REPLAY_MARK}:{digest}"


def stored_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One stored ``_cdc_quarantine`` row as :meth:`Sink.quarantined` returns it, whatever the sink: every column
    of :data:`SINK_COLUMNS`, ``row`` a dict, ``seq`` an int, times in UTC (naive times are read as UTC)."""
    out: dict[str, Any] = {name: record.get(name) for name, _ in SINK_COLUMNS}
    if isinstance(out["row"], (str, bytes)):
        out["row"] = json.loads(out["row"])
    if out["seq"] is not None:
        out["seq"] = int(out["seq"])
    for name in ("event_time", "quarantined_at"):
        value = out[name]
        if isinstance(value, dt.datetime):
            out[name] = value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(
                dt.timezone.utc)
    return out


def sort_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored rows in a stable order: by ``seq``, then stage and id."""
    return sorted(rows, key=lambda row: (row["seq"], row["stage"], row["quarantine_id"]))


def refuse_held(sink_id: str, batch: ChangeBatch, held: Mapping[str, str]) -> None:
    """A replay never writes into a table held after a schema change (its changes wait in the sink; the command
    leaves such rows waiting, this guards a direct call)."""
    blocked = sorted(name for name in batch.tables if name in held)
    if blocked:
        raise SinkError(sink_id, f"cannot replay quarantined changes of {', '.join(blocked)}: the table is held after "
                                 f"a schema change; accept it first (python -m airflow_provider_cdc schema accept "
                                 f"{batch.source_id}.{blocked[0]}), then replay", table=blocked[0],
                        batch_id=batch.batch_id, terminal=True)


def log_replay(logger: logging.Logger, sink_id: str, result: ApplyResult) -> None:
    """The line every sink logs for a quarantine replay (:meth:`Sink.replay_quarantined`)."""
    logger.info("sink %s: quarantine replay %s: %s (%d upserted, %d deleted) in %.3f s", sink_id, result.batch_id,
                "loaded" if result.applied else "already in the ledger, nothing to do", result.upserted,
                result.deleted, result.seconds)
