"""Sink tables of a MySQL sink: creating them, and following the source's schema changes exactly or not at all.

The rules are the PostgreSQL sink's (:mod:`airflow_provider_cdc.connectors.postgres.ddl`): a MySQL source's types
are reused verbatim, other sources are mapped (:mod:`.sink_types`); renames follow the column's identity (ordinal);
an added column gets the value older rows hold at the source (its backfill, through a default that is dropped again
at once); a type change is followed only when it is a safe widening, anything else holds the table
(:class:`TableHeld`) while the others keep flowing; columns the source dropped are dropped under ``evolve``; and
``schema accept`` converts a column in place (:meth:`TableDdl._force_table`), the server refusing a value that
does not convert.

What differs is MySQL's DDL: every ``CREATE``, ``ALTER`` and ``DROP`` commits on its own, so it cannot be part of
the batch's transaction, nor be rolled back when a later statement fails. Hence **plan, then execute**: a table's
whole migration is worked out first, from the columns the sink table has now (a simulated copy is updated step by
step), and a change the sink cannot follow is found before any statement runs, leaving that table untouched. The
statements then run in order, and each is a step a replay converges from: the plan is made again from the table as
it is, so a step already done is not planned again (a column already added, renamed or widened compares equal), and
a default left by a crash between ``ADD COLUMN ... DEFAULT`` and ``DROP DEFAULT`` is dropped by the next plan.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pymysql
from pymysql.cursors import Cursor

from airflow_provider_cdc.connectors.mysql.sink_storage import (
    describe,
    fetch_one,
    is_transient,
    run,
    sql_name,
    sql_table,
    sql_type,
)
from airflow_provider_cdc.connectors.mysql.sink_types import (
    canonical_type,
    case_clashes,
    check_values,
    identifier_problem,
    is_common_type,
    is_safe_widening,
    key_text_length,
    logical_sink_type,
    mysql_input_scalar,
    needs_binary_collation,
    table_column_types,
)
from airflow_provider_cdc.errors import SinkError, TableHeld
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.tables import (
    BOOKKEEPING_COLUMNS,
    Column,
    SchemaChange,
    TableSchema,
    unmergeable,
)
from airflow_provider_cdc.values import UntypedValueError

log = logging.getLogger("airflow_provider_cdc.sink.mysql")




@dataclasses.dataclass(frozen=True)
class SinkColumn:
    """One column of an existing sink table, as ``information_schema.COLUMNS`` shows it."""

    type: str
    collation: str | None = None
    has_default: bool = False
    key: bool = False


@dataclasses.dataclass
class _Migration:
    """One sink table being migrated: its columns as they will be after the planned steps, and the steps."""

    target: str
    label: str
    source_id: str | None
    batch_id: str | None
    existing: dict[str, SinkColumn]
    has_rows: bool | None = None
    steps: list[tuple[str, tuple[Any, ...], str]] = dataclasses.field(default_factory=list)

    def plan(self, statement: str, args: tuple[Any, ...], note: str) -> None:
        self.steps.append((statement, args, note))


class TableDdl:
    """The table half of :class:`~airflow_provider_cdc.connectors.mysql.sink.MySqlSink`."""

    sink_id: str
    target_schema: str
    delete_mode: str
    _binary_collation: str
    _lower_case_table_names: int
    _reported_dropped: set[tuple[str, tuple[str, ...]]]
    _type_exists_cache: dict[str, bool]

    if TYPE_CHECKING:  # from SinkStorage
        def _ensure_database(self, cur: Cursor, name: str) -> None: ...

    def _table_label(self, schema: TableSchema) -> str:
        return f"{self.target_schema}.{schema.name}"

    def _target(self, table: str) -> str:
        return sql_table(self.target_schema, table)

    # --- reading the catalog -----------------------------------------------------------------------------------

    def _existing_columns(self, cur: Cursor, table: str) -> dict[str, SinkColumn] | None:
        """The sink table's columns in order, or None when it does not exist (names compared exactly)."""
        run(cur, "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, COLLATION_NAME, COLUMN_DEFAULT, COLUMN_KEY"
                 " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s"
                 " ORDER BY ORDINAL_POSITION", (self.target_schema, table))
        columns = {
            name: SinkColumn(type=str(type_), collation=collation,
                             # MariaDB shows the text NULL for "DEFAULT NULL"; MySQL shows SQL NULL for both.
                             has_default=default is not None and default != "NULL", key=column_key == "PRI")
            for found, name, type_, collation, default, column_key in cur.fetchall() if found == table
        }
        return columns or None

    def _sink_types(self, cur: Cursor, schema: TableSchema) -> dict[str, str]:
        """The sink type of every column of ``schema`` (:func:`~.sink_types.table_column_types`); a MySQL source's
        type this server lacks (MariaDB's ``uuid`` or ``inet6`` on MySQL) becomes the logical type's."""
        types = table_column_types(schema)
        length = key_text_length(schema)
        for col in schema.columns:
            type_ = types[col.name]
            if is_common_type(type_) or self._type_exists(cur, type_):
                continue
            types[col.name] = logical_sink_type(col, key_length=length if col.primary_key else None)
            log.warning("sink %s: type %s of %s.%s does not exist on the sink server; using %s", self.sink_id, type_,
                        schema.qualified_name, col.name, types[col.name])
        return types

    def _type_exists(self, cur: Cursor, type_: str) -> bool:
        """Whether the server knows ``type_``: a temporary table of it can be made (no commit, nothing kept)."""
        if type_ not in self._type_exists_cache:
            probe = sql_table(self.target_schema, "_cdc_type_probe")
            try:
                run(cur, f"CREATE TEMPORARY TABLE {probe} (c {sql_type(type_)})")
                run(cur, f"DROP TEMPORARY TABLE {probe}")
                self._type_exists_cache[type_] = True
            except pymysql.err.MySQLError as exc:
                if is_transient(exc):
                    raise
                self._type_exists_cache[type_] = False
        return self._type_exists_cache[type_]

    def _has_rows(self, cur: Cursor, context: _Migration) -> bool:
        if context.has_rows is None:
            (found,) = fetch_one(cur, f"SELECT EXISTS (SELECT 1 FROM {context.target})")
            context.has_rows = bool(found)
        return context.has_rows

    # --- checks ------------------------------------------------------------------------------------------------

    def _check_source_table(self, schema: TableSchema, label: str, batch_id: str | None) -> None:
        def refuse(message: str) -> SinkError:
            return SinkError(self.sink_id, message, table=label, batch_id=batch_id, terminal=True)

        problem = identifier_problem(schema.name)
        if problem:
            raise refuse(f"source table {schema.qualified_name} cannot be a MySQL table: {problem}; rename it at the "
                         f"source, or load it into another kind of sink")
        # MySQL column names ignore case: _CDC_op is the sink's _cdc_op.
        unfit = unmergeable(schema, ignore_case=True)
        if unfit:
            raise refuse(unfit)
        for name in schema.column_names:
            problem = identifier_problem(name)
            if problem:
                raise refuse(f"column {name!r} of source table {schema.qualified_name} cannot be a MySQL column: "
                             f"{problem}; rename it at the source, or load the table into another kind of sink")
        clashes = case_clashes(schema.column_names)
        if clashes:
            pairs = ", ".join(f"{a!r} and {b!r}" for a, b in clashes)
            raise refuse(f"source table {schema.qualified_name} has columns that differ only in case ({pairs}); MySQL "
                         f"column names ignore case, so one sink table cannot hold both. Rename one at the source, or "
                         f"load the table into another kind of sink")

    def _check_collisions(self, batch: ChangeBatch, names: Sequence[str], where: dict[str, str | None]) -> None:
        """Two source tables must not load into one sink table (names compared without case where the server
        stores table names in lower case, ``lower_case_table_names`` 1 or 2)."""
        seen: dict[str, str] = {}
        for qualified in names:
            final = batch.schemas.get(qualified) or next(
                change.after for change in batch.schema_changes if change.table == qualified)
            key = final.name.lower() if self._lower_case_table_names else final.name
            first = seen.setdefault(key, final.qualified_name)
            if first != final.qualified_name:
                where["table"] = self._table_label(final)
                raise SinkError(
                    self.sink_id,
                    f"source tables {first} and {final.qualified_name} would both load into {where['table']}"
                    f"{' (this server ignores the case of table names)' if self._lower_case_table_names else ''}; "
                    f"give them separate sinks (target_schema) or rename one at the source",
                    table=where["table"], batch_id=batch.batch_id, terminal=True,
                )

    # --- migrating a batch's tables ----------------------------------------------------------------------------

    def _migrate_tables(
        self, cur: Cursor, batch: ChangeBatch, high_water: int, where: dict[str, str | None],
        held: Mapping[str, str], hold: Callable[[str, str], None],
        dropping: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Bring every sink table of the batch to the batch's schema, following its schema changes in ``seq`` order
        (as the PostgreSQL sink does), then drop the columns ``dropping`` names (mode ``evolve``).

        Each statement commits on its own (module docstring); a table the sink cannot follow is passed to ``hold``
        before any statement of it runs. Changes at or below the high water were applied by an earlier batch."""
        changes: dict[str, list[SchemaChange]] = {}
        for change in sorted(batch.schema_changes, key=lambda change: change.seq):
            changes.setdefault(change.table, []).append(change)
        names = [name for name in dict.fromkeys([*changes, *batch.schemas]) if name not in held]
        if not names:
            return
        self._check_collisions(batch, names, where)
        self._ensure_database(cur, self.target_schema)
        for qualified in names:
            final = batch.schemas.get(qualified) or changes[qualified][-1].after
            where["table"] = self._table_label(final)
            live = [change for change in changes.get(qualified, []) if change.seq > high_water]
            table = batch.tables.get(qualified)
            has_new_rows = table is not None and table.num_rows > 0 and (
                not high_water or pc.max(table["_cdc_seq"]).as_py() > high_water)
            earlier = [schema for change in changes.get(qualified, []) for schema in (change.before, change.after)
                       if schema is not None]
            try:
                self._ensure_table(cur, final, live, earlier=earlier, source_id=batch.source_id,
                                   batch_id=batch.batch_id, reconcile=bool(live) or has_new_rows,
                                   dropping=(dropping or {}).get(qualified, ()))
            except TableHeld as exc:
                hold(qualified, str(exc))  # the gate logs the hold with its reason
                continue
            if (dropping or {}).get(qualified):
                self._drop_columns(cur, final, (dropping or {})[qualified])
        where["table"] = None

    def _ensure_table(
        self,
        cur: Cursor,
        schema: TableSchema,
        changes: Sequence[SchemaChange] = (),
        *,
        earlier: Sequence[TableSchema] = (),
        source_id: str | None = None,
        batch_id: str | None = None,
        reconcile: bool = True,
        dropping: Collection[str] = (),
    ) -> None:
        """Create the sink table, or migrate it through ``changes`` and then to ``schema`` (plan, then execute).

        A new table gets the final schema's columns plus those of ``earlier`` schemas that the final one no longer
        has (dropped within the batch: the batch's rows may still carry them); a renamed column (same ordinal) is
        not made twice. ``dropping``: columns dropped after this, so not reported as kept."""
        label = self._table_label(schema)
        for each in (schema, *(change.after for change in changes)):
            self._check_source_table(each, label, batch_id)
        target = self._target(schema.name)
        existing = self._existing_columns(cur, schema.name)
        if existing is None:
            self._create_table(cur, schema, earlier, label, batch_id)
            return
        if not reconcile and not changes:
            return
        context = _Migration(target=target, label=label, source_id=source_id, batch_id=batch_id,
                             existing=dict(existing))
        for change in changes:
            self._plan_renames(change, context)
            self._plan_columns(cur, change.after, change.before, context)
        self._plan_columns(cur, schema, None, context)
        for name, type_ in self._bookkeeping_definitions():
            if name not in context.existing:
                context.plan(f"ALTER TABLE {target} ADD COLUMN {sql_name(name)} {type_} NULL", (),
                             f"added column {name}")
                context.existing[name] = SinkColumn(type_)
        self._run_plan(cur, context, schema)
        source_columns = set(schema.column_names)
        dropped = tuple(name for name in context.existing if name not in source_columns
                        and name not in BOOKKEEPING_COLUMNS and name not in dropping)
        if dropped and (label, dropped) not in self._reported_dropped:
            self._reported_dropped.add((label, dropped))
            log.info("sink %s: table %s keeps columns %s that source table %s no longer has (rows changed from now on "
                     "get NULL there)", self.sink_id, label, list(dropped), schema.qualified_name)

    def _create_table(self, cur: Cursor, schema: TableSchema, earlier: Sequence[TableSchema], label: str,
                      batch_id: str | None) -> None:
        types = self._sink_types(cur, schema)
        columns = [(col, types[col.name]) for col in schema.columns]
        names = set(schema.column_names)
        ordinals = {col.ordinal for col in schema.columns if col.ordinal is not None}
        for other in earlier:
            other_types = self._sink_types(cur, other)
            for col in other.columns:
                if col.name not in names and (col.ordinal is None or col.ordinal not in ordinals):
                    columns.append((dataclasses.replace(col, primary_key=False), other_types[col.name]))
                    names.add(col.name)
        definitions = [self._definition(col.name, type_, col.primary_key) for col, type_ in columns]
        definitions += [f"{sql_name(name)} {type_} NULL" for name, type_ in self._bookkeeping_definitions()]
        definitions.append(f"PRIMARY KEY ({', '.join(map(sql_name, schema.primary_key))})")
        statement = (f"CREATE TABLE IF NOT EXISTS {self._target(schema.name)} ({', '.join(definitions)})"
                     f" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
        self._execute(cur, statement, (), schema, label, batch_id)
        log.info("sink %s: created table %s (key %s) for source table %s", self.sink_id, label, schema.primary_key,
                 schema.qualified_name)

    def _definition(self, name: str, type_: str, key: bool) -> str:
        """A column definition: key columns NOT NULL, text keys in the binary no-pad collation (distinct keys stay
        distinct); the rest NULL (which also keeps a TIMESTAMP from updating itself)."""
        if not key:
            return f"{sql_name(name)} {sql_type(type_)} NULL"
        collation = (f" CHARACTER SET utf8mb4 COLLATE {self._binary_collation}" if needs_binary_collation(type_)
                     else "")
        return f"{sql_name(name)} {sql_type(type_)}{collation} NOT NULL"

    def _bookkeeping_definitions(self) -> list[tuple[str, str]]:
        columns = [("_cdc_op", "VARCHAR(1)"), ("_cdc_position", "BIGINT"), ("_cdc_ts", "DATETIME(6)")]
        if self.delete_mode == "soft":
            columns.append(("_cdc_deleted_at", "DATETIME(6)"))
        return columns

    # --- planning ----------------------------------------------------------------------------------------------

    def _plan_renames(self, change: SchemaChange, context: _Migration) -> None:
        """A column that keeps its ordinal but changes its name was renamed: rename it in the sink too."""
        if change.before is None:
            return
        old_by_ordinal = {col.ordinal: col for col in change.before.columns if col.ordinal is not None}
        existing = context.existing
        for col in change.after.columns:
            old = old_by_ordinal.get(col.ordinal) if col.ordinal is not None else None
            if old is None or old.name == col.name:
                continue
            if old.name in existing and col.name not in existing:
                context.plan(f"ALTER TABLE {context.target} RENAME COLUMN {sql_name(old.name)} TO {sql_name(col.name)}",
                             (), f"renamed column {old.name} to {col.name} (renamed at the source, seq {change.seq})")
                context.existing = existing = {
                    (col.name if name == old.name else name): info for name, info in existing.items()}
            elif old.name in existing and col.name in existing:
                log.warning("sink %s: table %s: source renamed column %s to %s, but the sink has both; leaving them as "
                            "they are", self.sink_id, context.label, old.name, col.name)

    def _plan_columns(self, cur: Cursor, schema: TableSchema, before: TableSchema | None,
                      context: _Migration) -> None:
        """Add the columns ``schema`` has and the sink lacks, follow type changes that lose nothing, and hold the
        table (:class:`TableHeld`) on one that would (as the PostgreSQL sink does)."""
        types = self._sink_types(cur, schema)
        before_types = self._sink_types(cur, before) if before is not None else {}
        old_by_ordinal = {col.ordinal: col for col in before.columns if col.ordinal is not None} if before else {}
        old_by_name = {col.name: col for col in before.columns} if before else {}
        for col in schema.columns:
            new_type = types[col.name]
            current = context.existing.get(col.name)
            if current is None:
                self._plan_add(cur, col, new_type, schema, context)
                continue
            if current.has_default and col.backfill is not None and not current.key:
                # Left by a crash between ADD COLUMN ... DEFAULT and DROP DEFAULT: the default served its rows.
                context.plan(f"ALTER TABLE {context.target} ALTER COLUMN {sql_name(col.name)} DROP DEFAULT", (),
                             f"dropped the default of column {col.name} left by an interrupted migration")
                context.existing[col.name] = dataclasses.replace(current, has_default=False)
            old_type = current.type
            if canonical_type(old_type) == canonical_type(new_type):
                continue
            if is_safe_widening(old_type, new_type):
                definition = self._definition(col.name, new_type, current.key)
                context.plan(f"ALTER TABLE {context.target} MODIFY COLUMN {definition}", (),
                             f"column {col.name} widened from {old_type} to {new_type}")
                context.existing[col.name] = dataclasses.replace(current, type=new_type)
                continue
            declared = old_by_ordinal.get(col.ordinal) if col.ordinal is not None else None
            declared = declared or old_by_name.get(col.name)
            changed_at_source = declared is not None and canonical_type(
                before_types[declared.name]) != canonical_type(new_type)
            if not changed_at_source and is_safe_widening(new_type, old_type):
                continue  # the sink's column is wider than the source's: every value fits as it is
            raise TableHeld(
                self.sink_id,
                f"column {col.name!r} of source table {schema.qualified_name} changed type: {old_type} -> {new_type} "
                f"in the sink would not keep every value exactly (not a safe widening), so nothing of it was written. "
                f"Re-snapshot the table (python -m airflow_provider_cdc resnapshot {context.source_id or '<source_id>'}"
                f" --table {schema.qualified_name}), accept the change (python -m airflow_provider_cdc schema accept "
                f"{context.source_id or '<source_id>'}.{schema.qualified_name}: the sink's values are converted) or "
                f"change the source column back to a type the sink can widen to",
                table=context.label, batch_id=context.batch_id,
            )

    def _plan_add(self, cur: Cursor, col: Column, type_: str, schema: TableSchema, context: _Migration) -> None:
        """Add a column; rows already there get its backfill (the value they hold at the source, which no change
        event carries) through a default that is dropped again at once."""
        has_rows = self._has_rows(cur, context)
        if col.backfill_unknown and has_rows:
            raise TableHeld(
                self.sink_id,
                f"column {col.name!r} was added to source table {schema.qualified_name} in a way that rewrote existing "
                f"rows with values the change stream does not carry (a volatile default), so the rows already in the "
                f"sink cannot be given their values; nothing of it was written. Re-snapshot the table: python -m "
                f"airflow_provider_cdc resnapshot {context.source_id or '<source_id>'} --table {schema.qualified_name}",
                table=context.label, batch_id=context.batch_id,
            )
        name = sql_name(col.name)
        if col.backfill is not None and has_rows:
            try:
                check_values(pa.array([col.backfill], pa.string()), col, type_, schema.dialect)
            except UntypedValueError as exc:
                raise SinkError(self.sink_id, f"column {col.name!r}: the value {col.backfill!r} that rows existing "
                                              f"before the column was added hold cannot be stored in a MySQL {type_} "
                                              f"column ({exc}); nothing of the table was written",
                                table=context.label, batch_id=context.batch_id, terminal=True) from exc
            value = mysql_input_scalar(col.backfill, col.logical_type, type_)
            # In parentheses: MySQL 8 takes a TEXT, BLOB or JSON default only as an expression.
            context.plan(f"ALTER TABLE {context.target} ADD COLUMN {name} {sql_type(type_)} NULL DEFAULT (%s)",
                         (value,), f"added column {col.name} {type_} (existing rows: {col.backfill!r})")
            context.plan(f"ALTER TABLE {context.target} ALTER COLUMN {name} DROP DEFAULT", (),
                         f"dropped the default of column {col.name} (it served the existing rows only)")
        else:
            context.plan(f"ALTER TABLE {context.target} ADD COLUMN {name} {sql_type(type_)} NULL", (),
                         f"added column {col.name} {type_}")
        context.existing[col.name] = SinkColumn(type_)

    # --- executing ---------------------------------------------------------------------------------------------

    def _run_plan(self, cur: Cursor, context: _Migration, schema: TableSchema) -> None:
        for statement, args, note in context.steps:
            self._execute(cur, statement, args, schema, context.label, context.batch_id)
            log.info("sink %s: table %s: %s", self.sink_id, context.label, note)
        context.steps.clear()

    def _execute(self, cur: Cursor, statement: str, args: tuple[Any, ...], schema: TableSchema, label: str,
                 batch_id: str | None) -> None:
        """Run one DDL statement; the errors a source table's shape causes become errors that say what to do."""
        try:
            run(cur, statement, args)
        except pymysql.err.MySQLError as exc:
            code = exc.args[0] if exc.args else None
            hints = {
                1060: "two of its columns have names MySQL takes for the same (column names ignore case); rename one "
                      "at the source",
                1071: f"its key ({', '.join(schema.primary_key)}) needs more than MySQL's 3072 bytes of index; give "
                      f"the source table a shorter key, or load it into another kind of sink",
                1118: "its columns need more than MySQL's row size limit (65,535 bytes for columns stored in the row); "
                      "load it into another kind of sink, or make the widest source columns TEXT",
            }
            if code in hints:
                raise SinkError(self.sink_id, f"source table {schema.qualified_name} cannot be created or migrated in "
                                              f"MySQL: {hints[code]} ({describe(exc)})",
                                table=label, batch_id=batch_id, terminal=True) from exc
            raise

    # --- drops, accept -----------------------------------------------------------------------------------------

    def _drop_columns(self, cur: Cursor, schema: TableSchema, columns: Sequence[str]) -> list[str]:
        """Drop columns the source dropped (mode ``evolve``); returns those dropped.

        Never a bookkeeping column or one of the sink table's key. A column the server will not drop (an index or
        a generated column of the user's depends on it) is kept, with a warning: its rows changed from now on hold
        NULL there, as under ``lenient``."""
        label = self._table_label(schema)
        existing = self._existing_columns(cur, schema.name) or {}
        dropped = []
        for name in dict.fromkeys(columns):
            info = existing.get(name)
            if info is None or name in BOOKKEEPING_COLUMNS:
                continue
            if info.key:
                log.warning("sink %s: table %s: source table %s dropped column %s, which is part of the sink table's "
                            "key; it is kept", self.sink_id, label, schema.qualified_name, name)
                continue
            try:
                run(cur, f"ALTER TABLE {self._target(schema.name)} DROP COLUMN {sql_name(name)}")
            except pymysql.err.MySQLError as exc:
                if is_transient(exc):
                    raise
                log.warning("sink %s: table %s: column %s, dropped at the source, is kept: %s", self.sink_id, label,
                            name, describe(exc))
                continue
            dropped.append(name)
        if dropped:
            log.info("sink %s: table %s: dropped columns %s (dropped at source table %s)", self.sink_id, label,
                     dropped, schema.qualified_name)
        return dropped

    def _force_table(
        self, cur: Cursor, target: TableSchema, previous: TableSchema | None, *, source_id: str, seq: int = 0,
        batch_id: str | None = None,
    ) -> None:
        """Bring the sink table to ``target`` exactly, for ``schema accept``: columns renamed (same ordinal as in
        ``previous``) and added as :meth:`_ensure_table` does, and every type changed to the target's.

        A type change that is not a safe widening is converted in place (``MODIFY COLUMN``): the person who accepted
        it asked for that. In strict mode the server refuses a value that does not convert (``'a'`` into an
        integer, a number out of range), and then the accept fails with that column unchanged (each ``ALTER`` is
        atomic); decimals are rounded to the new scale, as the source's own ``ALTER TABLE`` did. Columns the target
        no longer has are left to the caller (``AcceptPlan.drops``)."""
        label = self._table_label(target)
        self._check_source_table(target, label, batch_id)
        existing = self._existing_columns(cur, target.name)
        if existing is None:
            self._ensure_database(cur, self.target_schema)
            self._create_table(cur, target, (), label, batch_id)
            return
        context = _Migration(target=self._target(target.name), label=label, source_id=source_id, batch_id=batch_id,
                             existing=dict(existing))
        if previous is not None:
            self._plan_renames(SchemaChange(target.qualified_name, seq, after=target, before=previous), context)
        types = self._sink_types(cur, target)
        for col in target.columns:
            if col.name not in context.existing:
                self._plan_add(cur, col, types[col.name], target, context)
        for name, type_ in self._bookkeeping_definitions():
            if name not in context.existing:
                context.plan(f"ALTER TABLE {context.target} ADD COLUMN {sql_name(name)} {type_} NULL", (),
                             f"added column {name}")
        self._run_plan(cur, context, target)
        for col in target.columns:
            current = context.existing[col.name]
            if canonical_type(current.type) != canonical_type(types[col.name]):
                self._convert_column(cur, col.name, current, types[col.name], target, context)

    def _convert_column(self, cur: Cursor, column: str, current: SinkColumn, new_type: str, schema: TableSchema,
                        context: _Migration) -> None:
        """Change one column's type, converting the values the sink has (see :meth:`_force_table`)."""
        widening = is_safe_widening(current.type, new_type)
        try:
            run(cur, f"ALTER TABLE {context.target} MODIFY COLUMN {self._definition(column, new_type, current.key)}")
        except pymysql.err.MySQLError as exc:
            if is_transient(exc):
                raise
            raise SinkError(
                self.sink_id,
                f"column {column!r} of source table {schema.qualified_name} cannot be converted from {current.type} to "
                f"{new_type} in the sink: {describe(exc)}. The column keeps its type, and the table stays held with "
                f"its held changes. Fix or delete those values in the sink table and accept again, or re-snapshot the "
                f"table instead: python -m "
                f"airflow_provider_cdc resnapshot {context.source_id or '<source_id>'} --table "
                f"{schema.qualified_name}",
                table=context.label, batch_id=context.batch_id, terminal=True,
            ) from exc
        context.existing[column] = dataclasses.replace(current, type=new_type)
        log.info("sink %s: table %s: column %s %s from %s to %s", self.sink_id, context.label, column,
                 "widened" if widening else "converted", current.type, new_type)
