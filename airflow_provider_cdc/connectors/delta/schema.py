"""Following source schema changes in a Delta table: plan first (no I/O), then commit.

A batch's schema changes are planned for every table before anything is written, so a table that cannot follow is
known (and held) before the first commit, and a refused table stops the batch while nothing has changed yet.

* An **added** column is added to the Delta schema. Rows already there get NULL, or the column's ``backfill`` (what
  the source's ``ADD COLUMN ... DEFAULT`` gave them without a change event), in the same commit that adds it. A
  backfill the source cannot tell (``backfill_unknown``) holds the table when it has rows.
* A **dropped** column stays in Delta; rows written from then on hold NULL there.
* A **renamed** column (same ordinal, new name) and a **safe widening** (decimal to a larger precision, a wider
  integer or float) rewrite the table once with the new name or type: delta-rs has neither column mapping nor type
  widening, and a rewrite keeps every value exactly. A column the sink already holds wider stays as it is.
* Any other **type change** would round or reinterpret values, so the table is **held**: recorded in
  ``<root>/_cdc_held``, its changes skipped, the other tables flowing, until ``resnapshot --table`` releases it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator, Sequence

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.schema import Field

from airflow_provider_cdc.connectors.delta.storage import arrow_schema, open_table
from airflow_provider_cdc.connectors.delta.types import (
    APP_IDS_KEY,
    BOOKKEEPING_COLUMNS,
    POSITION,
    app_ids_of,
    bookkeeping_fields,
    delta_type,
    is_safe_widening,
    typed_values,
)
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.tables import RESERVED_PREFIX, Column, SchemaChange, TableSchema, reserved_columns
from airflow_provider_cdc.values import UntypedValueError

log = logging.getLogger("airflow_provider_cdc.sink.delta")


class TableHeld(SinkError):
    """A schema change the sink cannot follow exactly: that table is held back, the others keep flowing."""


@dataclasses.dataclass
class Migration:
    """What one table needs before the batch's rows fit: a new table, or changes to an existing one."""

    label: str
    create: pa.Schema | None = None
    renames: dict[str, str] = dataclasses.field(default_factory=dict)
    widen: dict[str, pa.DataType] = dataclasses.field(default_factory=dict)
    add: dict[str, tuple[pa.Field, Column | None]] = dataclasses.field(default_factory=dict)
    app_ids: list[str] | None = None  # set: record these on _cdc_position

    @property
    def empty(self) -> bool:
        return self.create is None and not (self.renames or self.widen or self.add or self.app_ids is not None)


@dataclasses.dataclass
class MigrationContext:
    sink_id: str
    label: str
    source_id: str | None
    batch_id: str | None
    has_rows: Callable[[], bool]


def check_source_table(schema: TableSchema, *, sink_id: str, label: str, batch_id: str | None) -> None:
    """A table the sink cannot merge by key (no primary key, reserved column names) stops the batch: terminal."""
    if not schema.primary_key:
        raise SinkError(sink_id, f"source table {schema.qualified_name} has no primary key; add a primary key at the "
                                 f"source (the sink merges changes by key)", table=label, batch_id=batch_id,
                        terminal=True)
    clashes = reserved_columns(schema.column_names)
    if clashes:
        raise SinkError(sink_id, f"source table {schema.qualified_name} has columns {clashes} in the reserved "
                                 f"bookkeeping namespace {RESERVED_PREFIX}*; rename them at the source",
                        table=label, batch_id=batch_id, terminal=True)


def plan_migration(
    existing: pa.Schema | None,
    final: TableSchema,
    changes: Sequence[SchemaChange] = (),
    *,
    earlier: Sequence[TableSchema] = (),
    delete_mode: str,
    app_id: str | None,
    context: MigrationContext,
) -> Migration:
    """What the Delta table needs to take ``final``'s rows after ``changes`` (raises :class:`TableHeld`)."""
    for each in (final, *(change.after for change in changes)):
        check_source_table(each, sink_id=context.sink_id, label=context.label, batch_id=context.batch_id)
    migration = Migration(label=context.label)
    if existing is None:
        columns = list(final.columns)
        names = set(final.column_names)
        ordinals = {col.ordinal for col in final.columns if col.ordinal is not None}
        for other in earlier:  # dropped within the batch: its rows may still carry them
            for col in other.columns:
                if col.name not in names and (col.ordinal is None or col.ordinal not in ordinals):
                    columns.append(col)
                    names.add(col.name)
        fields = [pa.field(col.name, delta_type(col)) for col in columns]
        migration.create = pa.schema(fields + bookkeeping_fields(delete_mode, [app_id] if app_id else []))
        return migration
    current = {field.name: field.type for field in existing}
    for change in changes:
        _plan_renames(change, current, migration, context)
        _plan_columns(change.after, current, migration, context)
    _plan_columns(final, current, migration, context)
    for field in bookkeeping_fields(delete_mode):
        if field.name not in current:
            migration.add[field.name] = (field, None)
    recorded = app_ids_of(existing)
    if app_id and app_id not in recorded:
        migration.app_ids = sorted([*recorded, app_id])
    return migration


def _plan_renames(change: SchemaChange, current: dict[str, pa.DataType], migration: Migration,
                  context: MigrationContext) -> None:
    if change.before is None:
        return
    old_by_ordinal = {col.ordinal: col for col in change.before.columns if col.ordinal is not None}
    for col in change.after.columns:
        old = old_by_ordinal.get(col.ordinal) if col.ordinal is not None else None
        if old is None or old.name == col.name or old.name not in current:
            continue
        if col.name in current:
            log.warning("sink %s: table %s: source renamed column %s to %s, but the sink has both; leaving them",
                        context.sink_id, context.label, old.name, col.name)
            continue
        current[col.name] = current.pop(old.name)
        original = next((k for k, v in migration.renames.items() if v == old.name), old.name)
        migration.renames[original] = col.name


def _plan_columns(schema: TableSchema, current: dict[str, pa.DataType], migration: Migration,
                  context: MigrationContext) -> None:
    for col in schema.columns:
        new_type = delta_type(col)
        if col.name not in current:
            if col.backfill_unknown and context.has_rows():
                raise TableHeld(
                    context.sink_id,
                    f"column {col.name!r} was added to source table {schema.qualified_name} in a way that rewrote "
                    f"existing rows with values the change stream does not carry (a volatile default), so the rows "
                    f"already in the sink cannot be given their values; nothing of it was written. Re-snapshot the "
                    f"table: python -m airflow_provider_cdc resnapshot {context.source_id or '<source_id>'} "
                    f"--table {schema.qualified_name}",
                    table=context.label, batch_id=context.batch_id,
                )
            migration.add[col.name] = (pa.field(col.name, new_type), col)
            current[col.name] = new_type
            continue
        old_type = current[col.name]
        if old_type == new_type or is_safe_widening(new_type, old_type):
            continue  # the same, or the sink's column is wider: every value fits as it is
        if is_safe_widening(old_type, new_type):
            if col.name in migration.add:
                migration.add[col.name] = (pa.field(col.name, new_type), migration.add[col.name][1])
            else:
                migration.widen[col.name] = new_type
            current[col.name] = new_type
            continue
        raise TableHeld(
            context.sink_id,
            f"column {col.name!r} of source table {schema.qualified_name} changed type: {old_type} -> {new_type} "
            f"({col.logical_type}, {col.source_type}) in the Delta table would not keep every value exactly (not a "
            f"safe widening), so nothing of it was written. Re-snapshot the table (python -m airflow_provider_cdc "
            f"resnapshot {context.source_id or '<source_id>'} --table {schema.qualified_name}) or change the source "
            f"column back to a type the sink can widen to",
            table=context.label, batch_id=context.batch_id,
        )


# --- committing a plan ----------------------------------------------------------------------------------------


def execute_migration(
    uri: str,
    table: DeltaTable | None,
    migration: Migration,
    *,
    storage_options: dict[str, str],
    name: str,
    configuration: dict[str, str] | None = None,
    sink_id: str,
    batch_id: str | None,
) -> DeltaTable:
    """Commit ``migration``; each step is idempotent, so a crash part-way is finished by the replay."""
    if migration.create is not None:
        log.info("sink %s: creating Delta table %s at %s", sink_id, migration.label, uri)
        return DeltaTable.create(uri, migration.create, mode="ignore", name=name, configuration=configuration or None,
                                 storage_options=storage_options or None)
    assert table is not None
    if migration.renames or migration.widen:
        rewrite(table, migration.renames, migration.widen)
        log.info("sink %s: table %s rewritten: renamed %s, widened %s", sink_id, migration.label,
                 migration.renames, {k: str(v) for k, v in migration.widen.items()})
    if migration.add:
        _add_columns(table, migration, sink_id=sink_id, batch_id=batch_id)
    if migration.app_ids is not None:
        table.alter.set_column_metadata(POSITION, {APP_IDS_KEY: json.dumps(migration.app_ids)})
    reopened = open_table(uri, storage_options)
    assert reopened is not None
    return reopened


def rewrite(table: DeltaTable, renames: dict[str, str], widen: dict[str, pa.DataType]) -> None:
    """Overwrite ``table`` with its own rows, columns renamed and widened, in one commit (streamed, not in memory)."""
    old = arrow_schema(table)
    fields = []
    for field in old:
        name = renames.get(field.name, field.name)
        fields.append(pa.field(name, widen.get(name, field.type), field.nullable, field.metadata))
    new = pa.schema(fields)
    reader = table.to_pyarrow_dataset().scanner(columns=old.names).to_reader()

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            yield pa.RecordBatch.from_arrays(
                [column.cast(field.type) for column, field in zip(batch.columns, new)], schema=new)

    write_deltalake(table, pa.RecordBatchReader.from_batches(new, batches()), mode="overwrite",
                    schema_mode="overwrite")


def _add_columns(table: DeltaTable, migration: Migration, *, sink_id: str, batch_id: str | None) -> None:
    """Add columns; those with a backfill get it on every existing row in the commit that adds them."""
    filled = {name: (field, col) for name, (field, col) in migration.add.items()
              if col is not None and col.backfill is not None}
    plain = [field for name, (field, _) in migration.add.items() if name not in filled]
    if filled and table.count() == 0:
        plain += [field for field, _ in filled.values()]
        filled = {}
    if plain:
        table.alter.add_columns([Field.from_arrow(field) for field in plain])
        log.info("sink %s: table %s: added columns %s", sink_id, migration.label, [f.name for f in plain])
    if not filled:
        return
    values = {}
    for name, (field, col) in filled.items():
        assert col is not None and col.backfill is not None
        try:
            values[name] = typed_values(pa.array([col.backfill], pa.string()), col).cast(field.type)
        except UntypedValueError as exc:
            raise SinkError(sink_id, f"column {name!r}: the value {col.backfill!r} that rows existing before the "
                                     f"column was added hold has no Delta {field.type} form: {exc}",
                            table=migration.label, batch_id=batch_id, terminal=True) from exc
    source = pa.table(values)
    # One source row matching every target row: the columns appear (merge_schema) already holding the backfill.
    table.merge(source, "1 = 1", source_alias="s", target_alias="t", merge_schema=True).when_matched_update(
        {quote(name): f"s.{quote(name)}" for name in filled}).execute()
    log.info("sink %s: table %s: added columns %s, existing rows backfilled", sink_id, migration.label, list(filled))


def quote(name: str) -> str:
    """A column name as a delta-rs (DataFusion) SQL identifier."""
    return "`" + name.replace("`", "``") + "`"


def bookkeeping_only(schema: pa.Schema) -> pa.Schema:
    """``schema``'s bookkeeping columns: what a released table keeps until the re-snapshot adds the rest."""
    return pa.schema([field for field in schema if field.name in BOOKKEEPING_COLUMNS])
