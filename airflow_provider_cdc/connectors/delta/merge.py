"""One table's changes of a batch as ONE Delta ``MERGE``: folded, typed, guarded, truncates included.

Preparing (:func:`prepare_table`) reads the target but writes nothing, so a batch that must stop (a value with no
typed form, a row whose unchanged values nobody has) stops before its first commit. Merging (:func:`merge_table`)
then commits once per table, with the batch as the table's application transaction.

* **Fold**: the events after the last truncate are folded per key (:func:`airflow_provider_cdc.fold.fold_changes`).
  Events before it are gone with the truncate; with soft deletes their rows are kept, marked deleted, as the
  PostgreSQL sink leaves them.
* **Guard**: a matched row changes only when ``target._cdc_position < source._cdc_position``: an older change never
  overwrites a newer one, and re-applying a change is a no-op.
* **Truncate**: every target row the post-truncate rows do not match, and older than the truncate, is deleted (soft:
  marked) in the same ``MERGE`` (``when_not_matched_by_source``).
* **Unchanged values** (PostgreSQL's unchanged TOAST) keep the target's value: they are read from the target row
  before the merge, in the snapshot the merge commits against. A row whose key changed takes them from the old
  key's row. A row for which neither the batch nor the target has them stops the batch (terminal): writing NULL
  there would be a silent gap.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable

from airflow_provider_cdc.connectors.delta.schema import quote
from airflow_provider_cdc.connectors.delta.storage import arrow_schema, commit_properties, empty_commit
from airflow_provider_cdc.connectors.delta.types import (
    BOOKKEEPING_COLUMNS,
    DELETED_AT,
    OP,
    POSITION,
    TS,
    UTC_MICROS,
    typed_columns,
    typed_values,
)
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import BEFORE_PREFIX, OP_DELETE, OP_TRUNCATE
from airflow_provider_cdc.fold import MOVED_COLUMN, fold_changes, key_arrays, normalise_key_text
from airflow_provider_cdc.tables import RESERVED_PREFIX, TableSchema
from airflow_provider_cdc.values import arrow_type

_DELETE = f"'{OP_DELETE}'"
BATCH_KEY, COUNTS_KEY = "cdc.batch_id", "cdc.counts"  # custom metadata of each merge commit


@dataclasses.dataclass
class PreparedTable:
    """A table's merge source (Delta-typed rows, one per key) and what the merge must also do."""

    name: str
    schema: TableSchema
    label: str
    source: pa.Table
    columns: list[str]  # source columns in ``source`` (the rest is bookkeeping)
    truncate: tuple[int, int] | None  # (seq, ts_ms) of the last truncate in the batch
    stats: dict[str, int]


def new_stats(events: int) -> dict[str, int]:
    return {"events": events, "skipped_replayed": 0, "staged": 0, "upserted": 0, "deleted": 0, "truncates": 0,
            "truncated_rows": 0}


def prepare_table(
    name: str,
    changes: pa.Table,
    schema: TableSchema,
    *,
    target: DeltaTable | None,
    delete_mode: str,
    sink_id: str,
    label: str,
    batch: Any,
    stats: dict[str, int],
) -> PreparedTable:
    """Fold, type and fill ``changes`` (already past the high water) into the table's merge source."""
    key = schema.primary_key
    changes = changes.sort_by("_cdc_seq")
    is_truncate = pc.equal(changes["_cdc_op"], OP_TRUNCATE)
    truncates = pc.indices_nonzero(is_truncate).to_pylist()
    truncate = None
    pre: pa.Table | None = None
    if truncates:
        last = truncates[-1]
        truncate = (changes["_cdc_seq"][last].as_py(), changes["_cdc_ts_ms"][last].as_py() or 0)
        stats["truncates"] = len(truncates)
        if delete_mode == "soft" and last > 0:
            pre = changes.slice(0, last).filter(pc.invert(is_truncate.slice(0, last)))
        changes = changes.slice(last + 1)
    folded = fold_changes(changes, key, schema.columns)
    if pre is not None and pre.num_rows:
        folded = _with_truncated_rows(folded, fold_changes(pre, key, schema.columns), key, schema, truncate)
    columns = [c for c in folded.column_names if not c.startswith(RESERVED_PREFIX) and c != MOVED_COLUMN]
    folded = _keys_only_for_deletes(folded, [c for c in columns if c not in key])
    folded = _canonical_text_keys(folded, key, schema)
    typed = typed_columns(folded, schema, columns, sink_id=sink_id, label=label, batch_id=batch.batch_id)
    needs_fill = pc.fill_null(pc.and_(pc.greater(pc.list_value_length(typed["_cdc_unchanged"]), 0),
                                      pc.not_equal(typed["_cdc_op"], OP_DELETE)), False)
    if pc.any(needs_fill).as_py():
        typed = _fill_unchanged(typed, needs_fill, schema, target, delete_mode, truncate,
                                sink_id=sink_id, label=label, batch=batch)
    source = typed.select(columns).append_column(OP, typed["_cdc_op"]).append_column(
        POSITION, typed["_cdc_seq"]).append_column(TS, _timestamps(typed["_cdc_ts_ms"]))
    if delete_mode == "soft":
        truncated = pc.equal(typed["_cdc_op"], OP_TRUNCATE)
        source = source.append_column(DELETED_AT, pc.if_else(truncated, source[TS], pa.scalar(None, UTC_MICROS)))
    stats["staged"] = source.num_rows
    return PreparedTable(name, schema, label, source, columns, truncate, stats)


def _canonical_text_keys(folded: pa.Table, key: list[str], schema: TableSchema) -> pa.Table:
    """Key columns that Delta stores as text but the source compares as numbers (a decimal without a declared
    precision) in their canonical text, so that ``1.0`` and ``1.00``, one key at the source, are one key here too
    (the fold already grouped them). The same number either way; only its trailing zeros go."""
    for name in key:
        column = schema.column(name)
        if column.logical_type != "decimal" or not pa.types.is_string(arrow_type(column)):
            continue
        for field in (name, BEFORE_PREFIX + name):
            if field in folded.column_names:
                folded = folded.set_column(folded.column_names.index(field), field,
                                           normalise_key_text(folded[field], column))
    return folded


def _keys_only_for_deletes(folded: pa.Table, values: list[str]) -> pa.Table:
    """A delete needs only its key (a soft delete keeps the sink's values): the old row image some sources send
    must not stop the batch over a value it would never write."""
    deletes = pc.equal(folded["_cdc_op"], OP_DELETE)
    if not values or not pc.any(deletes).as_py():
        return folded
    for name in values:
        column = folded[name]
        folded = folded.set_column(folded.column_names.index(name), folded.schema.field(name),
                                   pc.if_else(deletes, pa.scalar(None, column.type), column))
    return folded


def _timestamps(ts_ms: pa.ChunkedArray) -> pa.Array:
    return pc.cast(pc.multiply(pc.cast(ts_ms, pa.int64()), 1000), pa.int64()).cast(UTC_MICROS)


def _with_truncated_rows(folded: pa.Table, before: pa.Table, key: list[str], schema: TableSchema,
                         truncate: tuple[int, int] | None) -> pa.Table:
    """Soft deletes: rows written before the truncate stay, marked deleted by it (op ``t``, its seq and time)."""
    assert truncate is not None
    types = {col.name: col for col in schema.columns}
    later = set(zip(*(a.to_pylist() for a in key_arrays(folded, key, types)))) if folded.num_rows else set()
    earlier = list(zip(*(a.to_pylist() for a in key_arrays(before, key, types))))
    keep = pa.array([k not in later for k in earlier], pa.bool_())
    before = before.filter(keep)
    deleted = pc.equal(before["_cdc_op"], OP_DELETE)
    seq, ts_ms = truncate
    before = before.set_column(before.column_names.index("_cdc_op"), "_cdc_op",
                               pc.if_else(deleted, before["_cdc_op"], OP_TRUNCATE))
    before = before.set_column(before.column_names.index("_cdc_seq"), pa.field("_cdc_seq", pa.int64(), False),
                               pc.if_else(deleted, before["_cdc_seq"], pa.scalar(seq, pa.int64())))
    before = before.set_column(before.column_names.index("_cdc_ts_ms"), "_cdc_ts_ms",
                               pc.if_else(deleted, before["_cdc_ts_ms"], pa.scalar(ts_ms, pa.int64())))
    return pa.concat_tables([folded, before.cast(folded.schema)])


# --- unchanged values --------------------------------------------------------------------------------------------


def _fill_unchanged(
    typed: pa.Table, needs_fill: pa.ChunkedArray, schema: TableSchema, target: DeltaTable | None, delete_mode: str,
    truncate: tuple[int, int] | None, *, sink_id: str, label: str, batch: Any,
) -> pa.Table:
    """Give rows the values the source did not resend from the target row that holds them, or refuse."""
    key = schema.primary_key
    by_name = {col.name: col for col in schema.columns}
    rows = typed.filter(needs_fill).to_pylist()
    wanted: list[tuple[Any, ...]] = []
    origins: list[tuple[Any, ...] | None] = []
    for row in rows:
        origin: tuple[Any, ...] | None
        if row.get(MOVED_COLUMN):
            texts = [row.get(BEFORE_PREFIX + name) for name in key]
            origin = None if any(v is None for v in texts) else tuple(
                typed_values(pa.array([text], pa.string()), by_name[name])[0].as_py() for text, name in zip(texts, key))
        elif truncate is not None and row["_cdc_op"] != OP_TRUNCATE:
            origin = None  # the target's row is older than the truncate: not this row's value
        else:
            origin = tuple(row[name] for name in key)
        origins.append(origin)
        if origin is not None:
            wanted.append(origin)
    found = _lookup(target, key, wanted, live_only=delete_mode == "soft")
    filled = []
    for row, origin in zip(rows, origins):
        # A moved row must come from a live old row; an unmoved one may take a soft-deleted row's values (as PgSink).
        source_row = found.get(origin) if origin is not None else None
        if (source_row is None or (row.get(MOVED_COLUMN) and not source_row["_live"])
                or any(column not in source_row for column in row["_cdc_unchanged"])):
            _refuse(row, schema, sink_id=sink_id, label=label, batch=batch)
            continue
        for column in row["_cdc_unchanged"]:
            if column in row:
                row[column] = source_row[column]
        row["_cdc_unchanged"] = None
        filled.append(row)
    return pa.concat_tables([typed.filter(pc.invert(needs_fill)), pa.Table.from_pylist(filled, schema=typed.schema)])


def _lookup(target: DeltaTable | None, key: list[str], keys: list[tuple[Any, ...]],
            live_only: bool) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The target rows with these keys (key tuple → row, plus ``_live``)."""
    if target is None or not keys:
        return {}
    names = arrow_schema(target).names
    if any(name not in names for name in key):
        return {}
    where = None
    for i, name in enumerate(key):
        values = list({k[i] for k in keys})
        term = ds.field(name).isin(values)
        where = term if where is None else where & term
    table = target.to_pyarrow_dataset().to_table(filter=where)
    wanted = set(keys)
    out = {}
    for row in table.to_pylist():
        row_key = tuple(row[name] for name in key)
        if row_key in wanted:
            row["_live"] = not live_only or row.get(DELETED_AT) is None
            out[row_key] = row
    return out


def _refuse(row: dict[str, Any], schema: TableSchema, *, sink_id: str, label: str, batch: Any) -> NoReturn:
    key = schema.primary_key
    described = ", ".join(f"{name}={row.get(name)}" for name in key)
    moved = " (its key changed, and the old key's row is not in the sink)" if row.get(MOVED_COLUMN) else ""
    raise SinkError(
        sink_id,
        f"the row with key ({described}) of source table {schema.qualified_name} would be written without the "
        f"values of columns {list(row['_cdc_unchanged'])} (unchanged TOAST the source did not resend, and neither "
        f"this batch nor the sink has them){moved}; nothing was written. Re-snapshot the table: "
        f"python -m airflow_provider_cdc resnapshot {batch.source_id} --table {schema.qualified_name}",
        table=label, batch_id=batch.batch_id, terminal=True,
    )


# --- the merge ----------------------------------------------------------------------------------------------------


def merge_table(table: DeltaTable, prepared: PreparedTable, *, delete_mode: str, app_id: str, seq_to: int,
                batch_id: str) -> dict[str, int]:
    """Commit ``prepared`` into ``table`` as one ``MERGE`` carrying ``(app_id, seq_to)``; returns its stats."""
    stats = prepared.stats
    target_schema = arrow_schema(table)
    source = _cast_to_target(prepared.source, target_schema)
    key = prepared.schema.primary_key
    columns = [name for name in prepared.columns if name in target_schema.names]
    gone = [name for name in target_schema.names if name not in columns and name not in BOOKKEEPING_COLUMNS]
    counts = _pre_counts(table, source, key, delete_mode, prepared.truncate)
    counts.update(truncates=stats["truncates"], staged=stats["staged"], soft=int(delete_mode == "soft"))
    # The commit says which batch it is and what the merge's metrics cannot (see stats_of_commit).
    metadata = {BATCH_KEY: batch_id, COUNTS_KEY: json.dumps(counts, sort_keys=True)}
    guard = f"(t.{POSITION} IS NULL OR t.{POSITION} < s.{POSITION})"
    merger = table.merge(
        source, " AND ".join(f"t.{quote(name)} = s.{quote(name)}" for name in key), source_alias="s",
        target_alias="t", commit_properties=commit_properties({app_id: seq_to}, **metadata),
    )
    bookkeeping = {OP: f"s.{OP}", POSITION: f"s.{POSITION}", TS: f"s.{TS}"}
    updates = {quote(name): f"s.{quote(name)}" for name in columns if name not in key}
    updates.update({quote(name): "NULL" for name in gone})
    updates.update(bookkeeping)
    inserts = {quote(name): f"s.{quote(name)}" for name in columns}
    inserts.update(bookkeeping)
    if delete_mode == "soft":
        updates[DELETED_AT] = inserts[DELETED_AT] = f"s.{DELETED_AT}"
        merger = merger.when_matched_update({**bookkeeping, DELETED_AT: f"s.{TS}"},
                                            predicate=f"s.{OP} = {_DELETE} AND {guard}")
    else:
        merger = merger.when_matched_delete(predicate=f"s.{OP} = {_DELETE} AND {guard}")
    merger = merger.when_matched_update(updates, predicate=f"s.{OP} <> {_DELETE} AND {guard}")
    merger = merger.when_not_matched_insert(inserts, predicate=f"s.{OP} <> {_DELETE}")
    if prepared.truncate is not None:
        seq, ts_ms = prepared.truncate
        older = f"(t.{POSITION} IS NULL OR t.{POSITION} < {int(seq)})"
        if delete_mode == "soft":
            ts = f"CAST({int(ts_ms) * 1000} AS BIGINT)"
            at = f"arrow_cast({ts}, 'Timestamp(Microsecond, Some(\"UTC\"))')"
            merger = merger.when_not_matched_by_source_update(
                {DELETED_AT: at, OP: f"'{OP_TRUNCATE}'", POSITION: str(int(seq)), TS: at},
                predicate=f"t.{DELETED_AT} IS NULL AND {older}")
        else:
            merger = merger.when_not_matched_by_source_delete(predicate=older)
    version = table.version()
    metrics = merger.execute()
    if table.version() == version:  # nothing changed: delta-rs made no commit, so record the batch on its own
        empty_commit(table, {app_id: seq_to}, **metadata)
    stats.update(_effects(metrics, counts))
    return stats


def _effects(metrics: dict[str, Any], counts: dict[str, int]) -> dict[str, int]:
    """Rows upserted, deleted and truncated, from a merge's metrics and the counts taken before it."""
    inserted, updated = metrics.get("num_target_rows_inserted", 0), metrics.get("num_target_rows_updated", 0)
    deleted = metrics.get("num_target_rows_deleted", 0)
    if counts.get("soft"):
        return {"deleted": counts["deletes"], "upserted": inserted + counts["updates"],
                "truncated_rows": max(updated - counts["deletes"] - counts["updates"], 0)}
    rows_deleted = counts["deletes"] if counts.get("truncates") else deleted
    return {"deleted": rows_deleted, "upserted": inserted + updated, "truncated_rows": max(deleted - rows_deleted, 0)}


def stats_of_commit(table: DeltaTable, batch_id: str, stats: dict[str, int], *, look_back: int = 20) -> None:
    """Fill ``stats`` with what the commit of ``batch_id`` did to ``table`` (a replay after a crash skips the table,
    yet its ledger row should count the same rows as if nothing had happened). Unknown past ``look_back``."""
    for commit in table.history(look_back):
        if commit.get(BATCH_KEY) != batch_id:
            continue
        counts = json.loads(commit.get(COUNTS_KEY) or "{}")
        if counts:
            stats.update(_effects(commit.get("operationMetrics") or {}, counts))
            stats["truncates"] = counts.get("truncates", 0)
            stats["staged"] = counts.get("staged", 0)
        return


def _cast_to_target(source: pa.Table, target: pa.Schema) -> pa.Table:
    """The source in the target's column types (a column the sink holds wider, e.g. after a source narrowed it)."""
    for i, name in enumerate(source.column_names):
        if name in target.names and source.schema.field(name).type != target.field(name).type:
            source = source.set_column(i, pa.field(name, target.field(name).type),
                                       source[name].cast(target.field(name).type))
    return source


def _pre_counts(table: DeltaTable, source: pa.Table, key: list[str], delete_mode: str,
                truncate: tuple[int, int] | None) -> dict[str, int]:
    """How many source rows will delete and update a target row, where the merge's metrics cannot tell apart.

    Needed only with soft deletes (a soft delete is an update) or a truncate (its deletes mix with the rows'); the
    plain hard-delete merge reads its counts from delta-rs's metrics. An Arrow join of the batch's keys with the
    target's, in the snapshot the merge reads."""
    deletes = pc.equal(source[OP], OP_DELETE)
    if not ((delete_mode == "soft" and pc.any(deletes).as_py()) or truncate is not None):
        return {"deletes": 0, "updates": 0}
    names = arrow_schema(table).names
    if any(name not in names for name in key) or source.num_rows == 0:
        return {"deletes": 0, "updates": 0}
    where = None
    for name in key:
        term = ds.field(name).isin(pc.unique(source[name]))
        where = term if where is None else where & term
    target = table.to_pyarrow_dataset().to_table(filter=where, columns=[*key, POSITION])
    target = target.rename_columns([*key, "_cdc_t_position"])
    joined = source.select([*key, OP, POSITION]).join(target, keys=key, join_type="inner")
    newer = pc.or_(pc.is_null(joined["_cdc_t_position"]),
                   pc.less(pc.fill_null(joined["_cdc_t_position"], 0), joined[POSITION]))
    ops = joined.filter(newer)[OP]
    deleted = int(pc.sum(pc.equal(ops, OP_DELETE)).as_py() or 0)
    return {"deletes": deleted, "updates": len(ops) - deleted}
