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
  ``<root>/_cdc_held``, its changes held beside it, the other tables flowing, until ``schema accept`` or
  ``resnapshot --table`` releases it.
* ``schema accept`` plans with ``force=True``: such a type change is then a **conversion**, a rewrite whose casts
  are checked (pyarrow ``safe=True``) over every row before anything is written (:func:`check_conversions`), so a
  value that does not convert refuses the accept with nothing changed.
* Columns the schema gate drops (``evolve`` follows a ``DROP COLUMN``) go in a rewrite after the batch's merge
  (:func:`drop_columns`).
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
from airflow_provider_cdc.errors import SinkError, TableHeld
from airflow_provider_cdc.tables import (
    Column,
    SchemaChange,
    TableSchema,
    unmergeable,
)
from airflow_provider_cdc.values import UntypedValueError

log = logging.getLogger("airflow_provider_cdc.sink.delta")



@dataclasses.dataclass
class Migration:
    """What one table needs before the batch's rows fit: a new table, or changes to an existing one."""

    label: str
    create: pa.Schema | None = None
    renames: dict[str, str] = dataclasses.field(default_factory=dict)
    widen: dict[str, pa.DataType] = dataclasses.field(default_factory=dict)
    add: dict[str, tuple[pa.Field, Column | None]] = dataclasses.field(default_factory=dict)
    app_ids: list[str] | None = None  # set: record these on _cdc_position
    # Type changes that are not a safe widening, converted with checked casts (only when planned with force=True).
    convert: dict[str, pa.DataType] = dataclasses.field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.create is None and not (self.renames or self.widen or self.add or self.convert
                                            or self.app_ids is not None)


@dataclasses.dataclass
class MigrationContext:
    sink_id: str
    label: str
    source_id: str | None
    batch_id: str | None
    has_rows: Callable[[], bool]


def check_source_table(schema: TableSchema, *, sink_id: str, label: str, batch_id: str | None) -> None:
    """A table the sink cannot merge by key (no primary key, reserved column names) stops the batch: terminal."""
    problem = unmergeable(schema)
    if problem:
        raise SinkError(sink_id, problem, table=label, batch_id=batch_id, terminal=True)


def plan_migration(
    existing: pa.Schema | None,
    final: TableSchema,
    changes: Sequence[SchemaChange] = (),
    *,
    earlier: Sequence[TableSchema] = (),
    delete_mode: str,
    app_id: str | None,
    context: MigrationContext,
    force: bool = False,
) -> Migration:
    """What the Delta table needs to take ``final``'s rows after ``changes`` (raises :class:`TableHeld`).

    ``force`` (``schema accept``): a type change that is not a safe widening is planned as a conversion instead
    of holding the table."""
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
        _plan_columns(change.after, current, migration, context, force)
    _plan_columns(final, current, migration, context, force)
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
                  context: MigrationContext, force: bool = False) -> None:
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
        if force:
            if col.name in migration.add:
                migration.add[col.name] = (pa.field(col.name, new_type), migration.add[col.name][1])
            else:
                migration.widen.pop(col.name, None)
                migration.convert[col.name] = new_type
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
    if migration.renames or migration.widen or migration.convert:
        rewrite(table, migration.renames, {**migration.widen, **migration.convert})
        log.info("sink %s: table %s rewritten: renamed %s, widened %s, converted %s", sink_id, migration.label,
                 migration.renames, {k: str(v) for k, v in migration.widen.items()},
                 {k: str(v) for k, v in migration.convert.items()})
    if migration.add:
        _add_columns(table, migration, sink_id=sink_id, batch_id=batch_id)
    if migration.app_ids is not None:
        table.alter.set_column_metadata(POSITION, {APP_IDS_KEY: json.dumps(migration.app_ids)})
    reopened = open_table(uri, storage_options)
    assert reopened is not None
    return reopened


def rewrite(table: DeltaTable, renames: dict[str, str], retype: dict[str, pa.DataType],
            drop: Sequence[str] = ()) -> None:
    """Overwrite ``table`` with its own rows in one commit (streamed, not in memory): columns renamed (old name →
    new), given a new type (by new name; a checked cast, see :func:`check_conversions`) and dropped (old name).

    The table's application transactions live in its log, not in its files, so they survive the overwrite."""
    old = pa.schema([field for field in arrow_schema(table) if field.name not in drop])
    fields = []
    for field in old:
        name = renames.get(field.name, field.name)
        fields.append(pa.field(name, retype.get(name, field.type), field.nullable, field.metadata))
    new = pa.schema(fields)
    reader = table.to_pyarrow_dataset().scanner(columns=old.names).to_reader()

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            yield pa.RecordBatch.from_arrays(
                [column.cast(field.type) for column, field in zip(batch.columns, new)], schema=new)

    write_deltalake(table, pa.RecordBatchReader.from_batches(new, batches()), mode="overwrite",
                    schema_mode="overwrite")


def check_conversions(table: DeltaTable, migration: Migration, *, context: MigrationContext,
                      source_table: str) -> None:
    """Cast every value of the columns ``migration`` converts, before anything is written: a value that does not
    convert (``'abc'`` to an integer, a decimal with more digits than the new scale) refuses the accept with a
    terminal :class:`SinkError` naming the column and the value, and the table stays as it is."""
    if not migration.convert:
        return
    old_of = {new: old for old, new in migration.renames.items()}
    current = arrow_schema(table)
    columns = {old_of.get(name, name): new_type for name, new_type in migration.convert.items()}
    columns = {name: new_type for name, new_type in columns.items() if name in current.names}
    if not columns:
        return
    for batch in table.to_pyarrow_dataset().scanner(columns=list(columns)).to_batches():
        for name, new_type in columns.items():
            values = batch.column(name)
            try:
                values.cast(new_type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                value, reason = _first_unconvertible(values, new_type, exc)
                raise SinkError(
                    context.sink_id,
                    f"cannot convert column {name!r} of {context.label} from {current.field(name).type} to {new_type}:"
                    f" the value {value!r} does not convert ({reason}); nothing was changed and the table stays "
                    f"held. Change the value at the source and accept again, or re-snapshot the table instead: "
                    f"python -m airflow_provider_cdc resnapshot {context.source_id or '<source_id>'} --table "
                    f"{source_table}",
                    table=context.label, terminal=True,
                ) from exc


def _first_unconvertible(values: pa.Array, new_type: pa.DataType, error: Exception) -> tuple[object, str]:
    """The first value of ``values`` that does not cast to ``new_type``, and why (the batch's error if none alone)."""
    for value in values.unique():
        try:
            pa.array([value.as_py()], values.type).cast(new_type, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            return value.as_py(), str(exc)
    return None, str(error)


def drop_columns(uri: str, columns: Sequence[str], *, storage_options: dict[str, str], sink_id: str,
                 label: str) -> list[str]:
    """Rewrite the Delta table at ``uri`` without ``columns`` (those it still has: a replay finds them gone)."""
    table = open_table(uri, storage_options)
    if table is None:
        return []
    present = [name for name in columns if name in arrow_schema(table).names and name not in BOOKKEEPING_COLUMNS]
    if present:
        rewrite(table, {}, {}, present)
        log.info("sink %s: table %s: dropped columns %s (dropped at the source)", sink_id, label, present)
    return present


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
