"""Sink tables of a PostgreSQL sink: creating them, and following the source's schema changes exactly or not at all.

A PostgreSQL source's declared types are reused verbatim (:mod:`.types`); any other source's columns are mapped from
their logical type. Renames follow the column's identity (ordinal), added columns get the value older rows hold at the
source (their backfill), and a type change is followed only when it is a safe widening: anything else holds that
table back (:class:`TableHeld`) while the others keep flowing. Columns the source dropped are dropped after the
merge when the schema gate says so (mode ``evolve``: :meth:`TableDdl._drop_columns`).

``schema accept`` is the one place where a change that is not a safe widening is followed
(:meth:`TableDdl._force_table`): a person accepted it, so the column is converted in place, and the server refuses
a value that does not convert, which fails the accept with nothing changed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping, Sequence

import psycopg
import pyarrow.compute as pc
from psycopg import sql

from airflow_provider_cdc.connectors.postgres.types import (
    POSTGRES_DIALECT,
    canonical_type,
    is_safe_widening,
    logical_sink_type,
    sink_column_type,
)
from airflow_provider_cdc.connectors.postgres.values import pg_input_scalar
from airflow_provider_cdc.errors import SinkError, TableHeld
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.tables import (
    BOOKKEEPING_COLUMNS,
    Column,
    SchemaChange,
    TableSchema,
    unmergeable,
)

# PostgreSQL's NAMEDATALEN - 1.
MAX_IDENTIFIER_BYTES = 63

log = logging.getLogger("airflow_provider_cdc.sink.postgres")


def identifier_problem(name: str, what: str, table: str) -> str | None:
    """Why ``name`` cannot be a PostgreSQL table or column name as it is (None when it can). PostgreSQL would cut a
    longer name to 63 bytes without an error, so that two long names could become one table or column."""
    size = len(name.encode("utf-8"))
    if size > MAX_IDENTIFIER_BYTES:
        return (f"the {what} name {name!r} of source table {table} is {size} bytes long; PostgreSQL names hold "
                f"{MAX_IDENTIFIER_BYTES} bytes and would be cut short. Rename it at the source, or load it into "
                "another kind of sink")
    return None


@dataclasses.dataclass
class _Migration:
    """One sink table being migrated: its columns and types as they are now, and what errors must name."""

    target: sql.Identifier
    label: str
    source_id: str | None
    batch_id: str | None
    existing: dict[str, str]
    has_rows: bool | None = None


def ensure_schema(cur: psycopg.Cursor, name: str) -> None:
    # Look first: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the database even when it exists.
    cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,))
    if cur.fetchone() is None:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(name)))


class TableDdl:
    """The table half of :class:`~airflow_provider_cdc.connectors.postgres.sink.PgSink`."""

    sink_id: str
    target_schema: str
    delete_mode: str
    _conn: psycopg.Connection
    _type_exists: dict[str, bool]
    _reported_dropped: set[tuple[str, tuple[str, ...]]]

    def _table_label(self, schema: TableSchema) -> str:
        return f"{self.target_schema}.{schema.name}"

    def _migrate_tables(
        self, cur: psycopg.Cursor, batch: ChangeBatch, high_water: int, where: dict[str, str | None],
        held: Mapping[str, str], hold: Callable[[str, str], None],
        dropping: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Bring every sink table of the batch to the batch's schema, following its schema changes in ``seq`` order.

        Changes at or below the high water were applied by an earlier batch: replaying a rename or a type change
        after later ones would undo them, so only newer changes migrate. A table whose changes are all replayed is
        left alone when it exists (its final schema may be older than the sink's).

        A table the sink cannot follow exactly is passed to ``hold`` (``GateDecision.hold``: its changes leave the
        batch and are kept as held changes) with the reason; its migration is rolled back alone. ``dropping``: the
        columns that are dropped after the merge, per table (not reported as kept).
        """
        changes: dict[str, list[SchemaChange]] = {}
        for change in sorted(batch.schema_changes, key=lambda change: change.seq):
            changes.setdefault(change.table, []).append(change)
        names = [name for name in dict.fromkeys([*changes, *batch.schemas]) if name not in held]
        if not names:
            return
        ensure_schema(cur, self.target_schema)
        sources: dict[str, str] = {}
        for qualified in names:
            final = batch.schemas.get(qualified) or changes[qualified][-1].after
            where["table"] = self._table_label(final)
            first = sources.setdefault(final.name, final.qualified_name)
            if first != final.qualified_name:
                raise SinkError(
                    self.sink_id,
                    f"source tables {first} and {final.qualified_name} would both load into {where['table']}; "
                    f"give them separate sinks (target_schema) or rename one at the source",
                    table=where["table"], batch_id=batch.batch_id, terminal=True,
                )
            live = [change for change in changes.get(qualified, []) if change.seq > high_water]
            table = batch.tables.get(qualified)
            has_new_rows = table is not None and table.num_rows > 0 and (
                not high_water or pc.max(table["_cdc_seq"]).as_py() > high_water)
            earlier = [schema for change in changes.get(qualified, []) for schema in (change.before, change.after)
                       if schema is not None]
            try:
                with self._conn.transaction():  # a savepoint: a table that cannot follow is held, alone
                    self._ensure_table(cur, final, live, earlier=earlier, source_id=batch.source_id,
                                       batch_id=batch.batch_id, reconcile=bool(live) or has_new_rows,
                                       dropping=(dropping or {}).get(qualified, ()))
            except TableHeld as exc:
                # The gate logs the hold with its reason; the sink stores the mark with the batch.
                hold(qualified, str(exc))
        where["table"] = None

    def _existing_columns(self, cur: psycopg.Cursor, table: str) -> dict[str, str] | None:
        """The sink table's columns in order with their types (``format_type``), or None when it does not exist."""
        cur.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
            " WHERE n.nspname = %s AND c.relname = %s ORDER BY a.attnum",
            (self.target_schema, table),
        )
        rows = cur.fetchall()
        if not rows:
            return None
        return {name: type_ for name, type_ in rows if name is not None}

    def _bookkeeping_definitions(self) -> list[tuple[str, str]]:
        columns = [("_cdc_op", "text"), ("_cdc_position", "bigint"), ("_cdc_ts", "timestamptz")]
        if self.delete_mode == "soft":
            columns.append(("_cdc_deleted_at", "timestamptz"))
        return columns

    def _check_source_table(self, schema: TableSchema, label: str, batch_id: str | None) -> None:
        problem = unmergeable(schema)
        for what, name in [("table", schema.name), *(("column", c) for c in schema.column_names)]:
            if problem is None:
                problem = identifier_problem(name, what, schema.qualified_name)
        if problem:
            raise SinkError(self.sink_id, problem, table=label, batch_id=batch_id, terminal=True)

    def _ensure_table(
        self,
        cur: psycopg.Cursor,
        schema: TableSchema,
        changes: Sequence[SchemaChange] = (),
        *,
        earlier: Sequence[TableSchema] = (),
        source_id: str | None = None,
        batch_id: str | None = None,
        reconcile: bool = True,
        dropping: Collection[str] = (),
    ) -> None:
        """Create the sink table, or migrate it through ``changes`` and then to ``schema``.

        A new table gets the final schema's columns plus those of ``earlier`` schemas that the final one no longer
        has (dropped within the batch: the batch's rows may still carry them); a renamed column (same ordinal)
        is not made twice. ``dropping``: columns dropped after the merge, so not reported as kept.
        """
        label = self._table_label(schema)
        for each in (schema, *(change.after for change in changes)):
            self._check_source_table(each, label, batch_id)
        target = sql.Identifier(self.target_schema, schema.name)
        existing = self._existing_columns(cur, schema.name)
        if existing is None:
            columns = list(schema.columns)
            names = set(schema.column_names)
            ordinals = {col.ordinal for col in schema.columns if col.ordinal is not None}
            for other in earlier:
                for col in other.columns:
                    if col.name not in names and (col.ordinal is None or col.ordinal not in ordinals):
                        columns.append(col)
                        names.add(col.name)
            definitions = [
                sql.SQL("{} {}").format(sql.Identifier(col.name), sql.SQL(self._column_type(cur, col, schema)))
                for col in columns
            ]
            definitions += [
                sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(type_)) for name, type_ in
                self._bookkeeping_definitions()
            ]
            definitions.append(sql.SQL("PRIMARY KEY ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, schema.primary_key))))
            cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(target, sql.SQL(", ").join(definitions)))
            log.info("sink %s: created table %s (key %s) for source table %s", self.sink_id, label,
                     schema.primary_key, schema.qualified_name)
            return
        if not reconcile and not changes:
            return

        context = _Migration(target=target, label=label, source_id=source_id, batch_id=batch_id, existing=existing)
        for change in changes:
            self._rename_columns(cur, change, context)
            self._reconcile_columns(cur, change.after, change.before, context)
        self._reconcile_columns(cur, schema, None, context)
        added = [(name, type_) for name, type_ in self._bookkeeping_definitions() if name not in existing]
        if added:
            cur.execute(sql.SQL("ALTER TABLE {} {}").format(target, sql.SQL(", ").join(
                sql.SQL("ADD COLUMN IF NOT EXISTS {} {}").format(sql.Identifier(name), sql.SQL(type_))
                for name, type_ in added
            )))
            log.info("sink %s: table %s: added columns %s", self.sink_id, label, [name for name, _ in added])
        source_columns = set(schema.column_names)
        dropped = tuple(name for name in existing if name not in source_columns and name not in BOOKKEEPING_COLUMNS
                        and name not in dropping)
        if dropped and (label, dropped) not in self._reported_dropped:
            self._reported_dropped.add((label, dropped))
            log.info(
                "sink %s: table %s keeps columns %s that source table %s no longer has (rows changed from now on "
                "get NULL there)",
                self.sink_id, label, list(dropped), schema.qualified_name,
            )

    def _rename_columns(self, cur: psycopg.Cursor, change: SchemaChange, context: _Migration) -> None:
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
                cur.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                    context.target, sql.Identifier(old.name), sql.Identifier(col.name)))
                context.existing = existing = {
                    (col.name if name == old.name else name): type_ for name, type_ in existing.items()}
                log.info("sink %s: table %s: renamed column %s to %s (renamed at the source, seq %d)",
                         self.sink_id, context.label, old.name, col.name, change.seq)
            elif old.name in existing and col.name in existing:
                log.warning("sink %s: table %s: source renamed column %s to %s, but the sink has both; "
                            "leaving them as they are", self.sink_id, context.label, old.name, col.name)

    def _reconcile_columns(
        self, cur: psycopg.Cursor, schema: TableSchema, before: TableSchema | None, context: _Migration
    ) -> None:
        """Add the columns ``schema`` has and the sink lacks, and follow type changes that lose nothing.

        An added column is created with its backfill as a default that is dropped again at once: rows that existed
        before the source's ``ADD COLUMN`` hold that value at the source without any WAL telling us so. A type
        change the sink cannot follow exactly (not a safe widening) stops the batch: loading on would round or
        truncate values silently.
        """
        existing = context.existing
        old_by_ordinal = {col.ordinal: col for col in before.columns if col.ordinal is not None} if before else {}
        old_by_name = {col.name: col for col in before.columns} if before else {}
        for col in schema.columns:
            new_type = self._column_type(cur, col, schema)
            if col.name not in existing:
                self._add_column(cur, col, new_type, schema, context)
                continue
            old_type = existing[col.name]
            if canonical_type(old_type) == canonical_type(new_type):
                continue
            if is_safe_widening(old_type, new_type):
                cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(
                    context.target, sql.Identifier(col.name), sql.SQL(new_type)))
                existing[col.name] = new_type
                log.info("sink %s: table %s: column %s widened from %s to %s", self.sink_id, context.label,
                         col.name, old_type, new_type)
                continue
            declared = old_by_ordinal.get(col.ordinal) if col.ordinal is not None else None
            declared = declared or old_by_name.get(col.name)
            changed_at_source = declared is not None and canonical_type(
                sink_column_type(declared, schema.dialect)) != canonical_type(sink_column_type(col, schema.dialect))
            if not changed_at_source and is_safe_widening(new_type, old_type):
                continue  # the sink's column is wider than the source's: every value fits as it is
            raise TableHeld(
                self.sink_id,
                f"column {col.name!r} of source table {schema.qualified_name} changed type: {old_type} -> "
                f"{new_type} in the sink would not keep every value exactly (not a safe widening), so nothing of it "
                f"was "
                f"written. Re-snapshot the table (python -m airflow_provider_cdc resnapshot "
                f"{context.source_id or '<source_id>'} --table {schema.qualified_name}), accept the change (python "
                f"-m airflow_provider_cdc schema accept {context.source_id or '<source_id>'}.{schema.qualified_name}: "
                f"the sink's values are converted) or change the source column back to a type the sink can widen to",
                table=context.label, batch_id=context.batch_id,
            )

    def _add_column(
        self, cur: psycopg.Cursor, col: Column, type_: str, schema: TableSchema, context: _Migration
    ) -> None:
        if context.has_rows is None:
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(context.target))
            row = cur.fetchone()
            assert row is not None  # SELECT EXISTS returns one row
            context.has_rows = bool(row[0])
        if col.backfill_unknown and context.has_rows:
            raise TableHeld(
                self.sink_id,
                f"column {col.name!r} was added to source table {schema.qualified_name} in a way that rewrote "
                f"existing rows with values the change stream does not carry (a volatile default), so the rows "
                f"already in the sink cannot be given their values; nothing of it was written. Re-snapshot the table: "
                f"python -m airflow_provider_cdc resnapshot {context.source_id or '<source_id>'} "
                f"--table {schema.qualified_name}",
                table=context.label, batch_id=context.batch_id,
            )
        name = sql.Identifier(col.name)
        if col.backfill is not None and context.has_rows:
            cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {} DEFAULT {}::{}").format(
                context.target, name, sql.SQL(type_), sql.Literal(pg_input_scalar(col.backfill, col.logical_type)),
                sql.SQL(type_)))
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(context.target, name))
        else:
            cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(context.target, name, sql.SQL(type_)))
        context.existing[col.name] = type_
        log.info("sink %s: table %s: added column %s %s%s", self.sink_id, context.label, col.name, type_,
                 "" if col.backfill is None else f" (existing rows: {col.backfill!r})")

    def _force_table(
        self, cur: psycopg.Cursor, target: TableSchema, previous: TableSchema | None, *, source_id: str,
        seq: int = 0, batch_id: str | None = None,
    ) -> None:
        """Bring the sink table to ``target`` exactly, for ``schema accept``: columns renamed (same ordinal as in
        ``previous``) and added as :meth:`_ensure_table` does, and every type changed to the target's.

        A safe widening is altered as usual; any other type change is converted in place (``USING col::type``):
        the person who accepted it asked for that. The server refuses a value that does not convert, and then the
        accept fails with nothing changed. (The source converted its rows with its own ``USING``, which no change
        stream carries: where that was more than a cast, only a re-snapshot gives the sink the source's values.)
        Columns the target no longer has are left to the caller (``AcceptPlan.drops``, after the replay)."""
        label = self._table_label(target)
        self._check_source_table(target, label, batch_id)
        existing = self._existing_columns(cur, target.name)
        if existing is None:
            ensure_schema(cur, self.target_schema)
            self._ensure_table(cur, target, source_id=source_id, batch_id=batch_id)
            return
        context = _Migration(target=sql.Identifier(self.target_schema, target.name), label=label,
                             source_id=source_id, batch_id=batch_id, existing=existing)
        if previous is not None:
            self._rename_columns(cur, SchemaChange(target.qualified_name, seq, after=target, before=previous), context)
        for col in target.columns:
            new_type = self._column_type(cur, col, target)
            if col.name not in context.existing:
                self._add_column(cur, col, new_type, target, context)
                continue
            old_type = context.existing[col.name]
            if canonical_type(old_type) != canonical_type(new_type):
                self._convert_column(cur, col.name, old_type, new_type, target, context)
        added = [(name, type_) for name, type_ in self._bookkeeping_definitions() if name not in context.existing]
        for name, type_ in added:
            cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                context.target, sql.Identifier(name), sql.SQL(type_)))

    def _convert_column(
        self, cur: psycopg.Cursor, column: str, old_type: str, new_type: str, schema: TableSchema,
        context: _Migration,
    ) -> None:
        """Change one column's type, converting the values the sink has (see :meth:`_force_table`)."""
        widening = is_safe_widening(old_type, new_type)
        statement = sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(
            context.target, sql.Identifier(column), sql.SQL(new_type))
        if not widening:
            statement = sql.SQL("{} USING {}::{}").format(statement, sql.Identifier(column), sql.SQL(new_type))
        try:
            cur.execute(statement)
        except psycopg.Error as exc:
            server = exc.diag.message_primary or str(exc)
            raise SinkError(
                self.sink_id,
                f"column {column!r} of source table {schema.qualified_name} cannot be converted from {old_type} to "
                f"{new_type} in the sink: {server}. Nothing was changed and the table stays held. Fix or delete "
                f"those values in the sink table and accept again, or re-snapshot the table instead: python -m "
                f"airflow_provider_cdc resnapshot {context.source_id or '<source_id>'} --table "
                f"{schema.qualified_name}",
                table=context.label, batch_id=context.batch_id, terminal=True,
            ) from exc
        context.existing[column] = new_type
        log.info("sink %s: table %s: column %s %s from %s to %s", self.sink_id, context.label, column,
                 "widened" if widening else "converted", old_type, new_type)

    def _drop_columns(self, cur: psycopg.Cursor, schema: TableSchema, columns: Sequence[str]) -> list[str]:
        """Drop columns the source dropped (mode ``evolve``, after the merge); returns those dropped.

        Never a bookkeeping column or one of the sink table's key. A column something else depends on (a user's
        view) is kept, with a warning: the batch still commits, and the column holds NULL in rows changed since,
        as under ``lenient``."""
        label = self._table_label(schema)
        existing = self._existing_columns(cur, schema.name) or {}
        key = set(self._key_columns(cur, schema.name))
        dropped = []
        for name in dict.fromkeys(columns):
            if name not in existing or name in BOOKKEEPING_COLUMNS:
                continue
            if name in key:
                log.warning("sink %s: table %s: source table %s dropped column %s, which is part of the sink "
                            "table's key; it is kept", self.sink_id, label, schema.qualified_name, name)
                continue
            try:
                with self._conn.transaction():  # a savepoint: a column that cannot go stays, alone
                    cur.execute(sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(
                        sql.Identifier(self.target_schema, schema.name), sql.Identifier(name)))
            except psycopg.errors.DependentObjectsStillExist as exc:
                log.warning("sink %s: table %s: column %s, dropped at the source, is kept: %s", self.sink_id, label,
                            name, exc.diag.message_primary or exc)
                continue
            dropped.append(name)
        if dropped:
            log.info("sink %s: table %s: dropped columns %s (dropped at source table %s)", self.sink_id, label,
                     dropped, schema.qualified_name)
        return dropped

    def _key_columns(self, cur: psycopg.Cursor, table: str) -> list[str]:
        cur.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indisprimary AND n.nspname = %s AND c.relname = %s",
            (self.target_schema, table),
        )
        return [name for (name,) in cur.fetchall()]

    def _column_type(self, cur: psycopg.Cursor, col: Column, schema: TableSchema) -> str:
        """The sink type; a PostgreSQL type the sink database lacks (an enum, a domain) becomes the mapped one."""
        type_ = sink_column_type(col, schema.dialect)
        if schema.dialect != POSTGRES_DIALECT or type_ == logical_sink_type(col):
            return type_
        if type_ not in self._type_exists:
            try:
                with self._conn.transaction():  # a savepoint: older servers raise on text that does not parse
                    cur.execute("SELECT to_regtype(%s) IS NOT NULL", (type_,))
                    row = cur.fetchone()
                    assert row is not None  # a SELECT without FROM returns one row
                    self._type_exists[type_] = bool(row[0])
            except (psycopg.DataError, psycopg.ProgrammingError):
                self._type_exists[type_] = False
        if self._type_exists[type_]:
            return type_
        fallback = logical_sink_type(col)
        log.warning(
            "sink %s: type %s of %s.%s does not exist in the sink database; using %s",
            self.sink_id, type_, schema.qualified_name, col.name, fallback,
        )
        return fallback
