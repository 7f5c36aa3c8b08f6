"""PostgreSQL sink: apply a :class:`~airflow_provider_cdc.events.ChangeBatch` exactly once.

One batch is one transaction (DESIGN section 3, exactly-once protocol): the tables are created or widened, the
rows merged and the ``_cdc_ledger`` row inserted, then everything commits together. A crash anywhere before the
commit leaves nothing behind; a replay after it finds the batch in the ledger and does nothing.

Three guards make replays harmless at every granularity:

* the **ledger**: the same ``batch_id`` is applied once;
* the **high water**: events whose ``seq`` is at or below the highest ``seq_to`` committed for the source were
  loaded by an earlier batch that overlapped this one, so they are dropped;
* the **row guard**: a row is changed only by an event at least as new as its ``_cdc_position``, so an older
  change never overwrites a newer one and re-applying the same change is a no-op.

Rows are loaded columnar: the batch is folded per key with Arrow, written as CSV by Arrow and ``COPY``-ed into a
temporary stage, then one ``MERGE`` per table moves it into the target. Values arrive in PostgreSQL's own text
form, so COPY parses them with the target's column types: nothing is converted in Python.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any, Literal

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql
from psycopg.types.json import Jsonb

from airflow_provider_cdc.connectors.base import ApplyResult
from airflow_provider_cdc.connectors.postgres.types import (
    POSTGRES_DIALECT,
    canonical_type,
    is_safe_widening,
    logical_sink_type,
    sink_column_type,
)
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import (
    BEFORE_PREFIX,
    OP_DELETE,
    OP_TRUNCATE,
    RESERVED_PREFIX,
    ChangeBatch,
    Column,
    SchemaChange,
    TableSchema,
    reserved_columns,
)
from airflow_provider_cdc.fold import MOVED_COLUMN, fold_changes

log = logging.getLogger("airflow_provider_cdc.sink.postgres")

LEDGER_TABLE = "_cdc_ledger"
HELD_TABLE = "_cdc_held"  # source tables whose changes wait: a schema change the sink cannot follow
BOOKKEEPING_COLUMNS = ("_cdc_op", "_cdc_position", "_cdc_ts", "_cdc_deleted_at")
COPY_CHUNK_ROWS = 65_536  # rows per CSV chunk written to COPY: bounds the extra memory of the text form

DeleteMode = Literal["hard", "soft"]

_LEDGER_COLUMNS = (
    "batch_id", "source_id", "position_from", "position_to", "seq_from", "seq_to", "counts", "rule_versions",
    "schema_versions", "run_id", "rows_upserted", "rows_deleted",
)
_CSV_OPTIONS = pacsv.WriteOptions(include_header=False)


class TableHeld(SinkError):
    """A schema change the sink cannot follow exactly: that table is held back, the others keep flowing."""


class _DuplicateBatch(Exception):
    """The ledger insert met a concurrent commit of the same batch."""


@dataclasses.dataclass
class _Migration:
    """One sink table being migrated: its columns and types as they are now, and what errors must name."""

    target: sql.Identifier
    label: str
    source_id: str | None
    batch_id: str | None
    existing: dict[str, str]
    has_rows: bool | None = None


class PgSink:
    """Applies change batches to tables in one PostgreSQL schema, with the ledger in ``ledger_schema``.

    The ledger goes in ``target_schema`` unless told otherwise, so that a sink role needs rights on its own schema
    only (PostgreSQL 15 and later no longer let every role create tables in ``public``).

    Sink tables keep the source table's name (``<target_schema>.<table>``), the source's columns (types from
    :mod:`.types`), its primary key, and the bookkeeping columns ``_cdc_op``, ``_cdc_position`` (the ``seq`` of the
    row's last event) and ``_cdc_ts``; with ``delete_mode="soft"`` also ``_cdc_deleted_at``: deleted rows stay,
    marked, and come back to life if the key is inserted again.
    """

    def __init__(
        self,
        dsn: str,
        *,
        sink_id: str,
        target_schema: str = "public",
        delete_mode: DeleteMode = "hard",
        ledger_schema: str | None = None,
    ) -> None:
        if delete_mode not in ("hard", "soft"):
            raise ValueError(f"sink {sink_id!r}: delete_mode must be 'hard' or 'soft', not {delete_mode!r}")
        self.sink_id = sink_id
        self.target_schema = target_schema
        self.delete_mode: DeleteMode = delete_mode
        self.ledger_schema = ledger_schema or target_schema
        self._ledger = sql.Identifier(self.ledger_schema, LEDGER_TABLE)
        self._held = sql.Identifier(self.ledger_schema, HELD_TABLE)
        self._type_exists: dict[str, bool] = {}
        self._reported_dropped: set[tuple[str, tuple[str, ...]]] = set()
        try:
            # COPY sends Arrow's UTF-8 CSV as it is, so the session must expect UTF-8 whatever the server default.
            self._conn = psycopg.connect(dsn, autocommit=False, client_encoding="utf8")
        except psycopg.Error as exc:
            raise SinkError(sink_id, f"cannot connect to the sink database: {exc}") from exc

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PgSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- Sink protocol -----------------------------------------------------------------------------------------

    def ensure_tables(self, schemas: Iterable[TableSchema]) -> None:
        """Create missing sink tables and the ledger, and add columns the source gained, in one transaction."""
        schemas = list(schemas)
        where: dict[str, str | None] = {"table": None}
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                self._ensure_ledger(cur)
                if schemas:
                    self._ensure_schema(cur, self.target_schema)
                for schema in schemas:
                    where["table"] = self._table_label(schema)
                    self._ensure_table(cur, schema)
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot create or alter the table: {exc}", table=where["table"]) from exc

    def has_batch(self, batch_id: str) -> bool:
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                return self._ledger_exists(cur) and self._ledger_has(cur, batch_id)
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot read the ledger: {exc}", batch_id=batch_id) from exc

    def high_water(self, source_id: str) -> int:
        """The highest ``seq_to`` committed for ``source_id`` (0 when none)."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                return self._high_water(cur, source_id) if self._ledger_exists(cur) else 0
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot read the ledger for source {source_id!r}: {exc}") from exc

    def last_committed(self, source_id: str) -> dict[str, Any] | None:
        """``position_to`` of the ledger row with the highest ``seq_to`` for ``source_id`` (None when none).

        What the commit step stores when the position Variable is missing or behind: the sink is the truth."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                if not self._ledger_exists(cur):
                    return None
                cur.execute(sql.SQL(
                    "SELECT position_to FROM {} WHERE source_id = %s ORDER BY seq_to DESC, committed_at DESC LIMIT 1"
                ).format(self._ledger), (source_id,))
                row = cur.fetchone()
                return None if row is None else row[0]
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot read the ledger for source {source_id!r}: {exc}") from exc

    def apply(
        self,
        batch: ChangeBatch,
        *,
        run_id: str | None = None,
        rule_versions: dict[str, Any] | None = None,
        schema_versions: dict[str, Any] | None = None,
    ) -> ApplyResult:
        """Apply ``batch`` and record it in the ledger, in one transaction; a batch already there is a no-op."""
        started = time.monotonic()
        result = ApplyResult(batch_id=batch.batch_id, applied=False)
        where: dict[str, str | None] = {"table": None, "step": "apply"}
        try:
            with self._conn.transaction() as tx, self._conn.cursor() as cur:
                # Appliers of one source queue here, so the ledger check and the high water below stay true
                # until this transaction commits.
                cur.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                    (f"{self.ledger_schema}.{LEDGER_TABLE}/{batch.source_id}",),
                )
                self._ensure_ledger(cur)
                if self._ledger_has(cur, batch.batch_id):
                    raise psycopg.Rollback(tx)
                # The ledger row is what makes a replay a no-op: it must be as durable as the data it vouches for,
                # whatever the role or database sets (synchronous_commit = off would lose it on a server crash).
                self._force_durable_commit(cur)
                high_water = self._high_water(cur, batch.source_id)
                held = self._held_tables(cur, batch.source_id)
                held.update(self._migrate_tables(cur, batch, high_water, where, held))
                result.held_tables = held
                result.schema_changes = sum(1 for change in batch.schema_changes if change.seq > high_water)
                for name, changes in batch.tables.items():
                    if name in held:
                        log.error("sink %s, batch %s: %d changes of held table %s are not applied (%s)",
                                  self.sink_id, batch.batch_id, changes.num_rows, name, held[name])
                        continue
                    schema = batch.schemas.get(name)
                    if schema is None:
                        raise SinkError(self.sink_id, f"the batch has changes for {name} but no schema for it",
                                        table=name, batch_id=batch.batch_id)
                    where["table"] = self._table_label(schema)
                    stats = self._apply_table(cur, schema, changes, high_water, batch)
                    result.tables[name] = stats
                    result.upserted += stats["upserted"]
                    result.deleted += stats["deleted"]
                    result.skipped_replayed += stats["skipped_replayed"]
                    result.truncated_tables += 1 if stats["truncates"] else 0
                    log.info(
                        "sink %s, batch %s, table %s: %d events, %d replayed (skipped), %d staged after folding, "
                        "%d upserted, %d deleted, %d truncates (%d rows)",
                        self.sink_id, batch.batch_id, where["table"], stats["events"], stats["skipped_replayed"],
                        stats["staged"], stats["upserted"], stats["deleted"], stats["truncates"],
                        stats["truncated_rows"],
                    )
                where["table"] = None
                self._insert_ledger(cur, batch, result, run_id, rule_versions, schema_versions, high_water)
                result.applied = True
                where["step"] = "commit"
        except _DuplicateBatch:
            result.applied = False
        except psycopg.Error as exc:
            if where["step"] == "commit":
                message = (f"the commit did not complete ({_describe(exc)}); if the connection was lost its outcome "
                           f"is unknown: apply the batch again, the ledger recognises it if it did commit")
            else:
                message = f"apply failed, nothing was written: {_describe(exc)}"
            raise SinkError(self.sink_id, message, table=where["table"], batch_id=batch.batch_id) from exc
        except pa.ArrowException as exc:
            raise SinkError(self.sink_id, f"apply failed, nothing was written: cannot fold the changes: {exc}",
                            table=where["table"], batch_id=batch.batch_id) from exc
        result.seconds = time.monotonic() - started
        if result.applied:
            log.info(
                "sink %s: batch %s applied: %d upserted, %d deleted, %d tables truncated, %d replayed events "
                "skipped, %d schema changes, in %.3f s",
                self.sink_id, batch.batch_id, result.upserted, result.deleted, result.truncated_tables,
                result.skipped_replayed, result.schema_changes, result.seconds,
            )
        else:
            log.info("sink %s: batch %s is already in the ledger; nothing to do", self.sink_id, batch.batch_id)
        return result

    # --- re-snapshot ---------------------------------------------------------------------------------------------

    def forget_source(self, source_id: str) -> int:
        """Delete the ledger rows of ``source_id`` (its high water drops to 0): a re-snapshot starts it anew.

        Returns how many rows went. Its own transaction; a sink without a ledger has nothing to forget."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                if not self._ledger_exists(cur):
                    return 0
                self._force_durable_commit(cur)
                cur.execute(sql.SQL("DELETE FROM {} WHERE source_id = %s").format(self._ledger), (source_id,))
                deleted = max(cur.rowcount, 0)
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot delete the ledger rows of source {source_id!r}: "
                                          f"{_describe(exc)}") from exc
        log.info("sink %s: forgot source %s (%d ledger rows deleted)", self.sink_id, source_id, deleted)
        return deleted

    def reset_table(self, table: TableSchema | str) -> bool:
        """Empty the sink table of ``table`` (a source schema or the sink table's name) before a re-snapshot.

        ``TRUNCATE``, in its own transaction; returns whether the table existed. A ``schema.table`` name whose
        sink table does not exist under that exact name is taken as a source name (sink tables drop the schema).
        """
        label = None
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                name = table.name if isinstance(table, TableSchema) else table
                if not isinstance(table, TableSchema) and "." in name and self._existing_columns(cur, name) is None:
                    name = name.partition(".")[2]
                label = f"{self.target_schema}.{name}"
                if self._existing_columns(cur, name) is None:
                    log.info("sink %s: table %s does not exist; nothing to reset", self.sink_id, label)
                    return False
                self._force_durable_commit(cur)
                cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(self.target_schema, name)))
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot empty the table: {_describe(exc)}", table=label) from exc
        log.info("sink %s: emptied table %s for a re-snapshot", self.sink_id, label)
        return True

    # --- ledger ------------------------------------------------------------------------------------------------

    @staticmethod
    def _force_durable_commit(cur: psycopg.Cursor) -> None:
        cur.execute("SET LOCAL synchronous_commit = on")

    def _ledger_exists(self, cur: psycopg.Cursor) -> bool:
        cur.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (self.ledger_schema, LEDGER_TABLE),
        )
        return cur.fetchone() is not None

    def _ensure_ledger(self, cur: psycopg.Cursor) -> None:
        if self._ledger_exists(cur):
            return
        self._ensure_schema(cur, self.ledger_schema)
        cur.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " batch_id text PRIMARY KEY, source_id text NOT NULL, position_from jsonb, position_to jsonb,"
            " seq_from bigint, seq_to bigint, counts jsonb, rule_versions jsonb, schema_versions jsonb, run_id text,"
            " rows_upserted bigint, rows_deleted bigint, committed_at timestamptz DEFAULT now())"
        ).format(self._ledger))
        cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (source_id, seq_to)").format(
            sql.Identifier(f"{LEDGER_TABLE}_source_seq_idx"), self._ledger))

    def _ensure_held(self, cur: psycopg.Cursor) -> None:
        cur.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (source_id text NOT NULL, source_table text NOT NULL, reason text,"
            " batch_id text, held_at timestamptz DEFAULT now(), PRIMARY KEY (source_id, source_table))"
        ).format(self._held))

    def _held_tables(self, cur: psycopg.Cursor, source_id: str) -> dict[str, str]:
        cur.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s"
            " AND c.relname = %s", (self.ledger_schema, HELD_TABLE))
        if cur.fetchone() is None:
            return {}
        cur.execute(sql.SQL("SELECT source_table, reason FROM {} WHERE source_id = %s").format(self._held),
                    (source_id,))
        return dict(cur.fetchall())

    def held_tables(self, source_id: str) -> dict[str, str]:
        """Source tables of ``source_id`` whose changes the sink holds back (a schema change it cannot follow),
        with the reason. The other tables keep flowing; ``resnapshot --table`` releases one."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                return self._held_tables(cur, source_id)
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot read the held tables of source {source_id!r}: {exc}") from exc

    def release_table(self, source_id: str, table: str) -> bool:
        """Stop holding ``table`` (``schema.table`` of the source) back, and drop its sink table so that a
        re-snapshot creates it again with the source's current columns. True when it was held."""
        try:
            with self._conn.transaction(), self._conn.cursor() as cur:
                if table not in self._held_tables(cur, source_id):
                    return False
                self._force_durable_commit(cur)
                cur.execute(sql.SQL("DELETE FROM {} WHERE source_id = %s AND source_table = %s").format(self._held),
                            (source_id, table))
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
                    sql.Identifier(self.target_schema, table.partition(".")[2])))
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot release table {table}: {_describe(exc)}") from exc
        log.info("sink %s: released table %s of source %s (its sink table is created anew by the re-snapshot)",
                 self.sink_id, table, source_id)
        return True

    def _ledger_has(self, cur: psycopg.Cursor, batch_id: str) -> bool:
        cur.execute(sql.SQL("SELECT 1 FROM {} WHERE batch_id = %s").format(self._ledger), (batch_id,))
        return cur.fetchone() is not None

    def _high_water(self, cur: psycopg.Cursor, source_id: str) -> int:
        cur.execute(sql.SQL("SELECT coalesce(max(seq_to), 0) FROM {} WHERE source_id = %s").format(self._ledger),
                    (source_id,))
        return int(cur.fetchone()[0])

    def _insert_ledger(
        self,
        cur: psycopg.Cursor,
        batch: ChangeBatch,
        result: ApplyResult,
        run_id: str | None,
        rule_versions: dict[str, Any] | None,
        schema_versions: dict[str, Any] | None,
        high_water: int = 0,
    ) -> None:
        # The range this row vouches for starts after the high water: a batch that overlaps an earlier one (an
        # overlapping run captured a longer range from the same position) applied only what came after it.
        seq_from = max(batch.seq_from, high_water + 1)
        values = (
            batch.batch_id, batch.source_id, Jsonb(batch.position_from), Jsonb(batch.position_to), seq_from,
            batch.seq_to, Jsonb(batch.counts()), None if rule_versions is None else Jsonb(rule_versions),
            None if schema_versions is None else Jsonb(schema_versions), run_id, result.upserted, result.deleted,
        )
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            self._ledger, sql.SQL(", ").join(map(sql.Identifier, _LEDGER_COLUMNS)),
            sql.SQL(", ").join(sql.Placeholder() * len(_LEDGER_COLUMNS)),
        )
        try:
            with self._conn.transaction():  # a savepoint, so that a duplicate can be told apart from a failure
                cur.execute(statement, values)
        except psycopg.errors.UniqueViolation as exc:
            log.info("sink %s: batch %s was committed concurrently; rolling back this copy", self.sink_id,
                     batch.batch_id)
            raise _DuplicateBatch() from exc

    # --- tables ------------------------------------------------------------------------------------------------

    def _table_label(self, schema: TableSchema) -> str:
        return f"{self.target_schema}.{schema.name}"

    def _ensure_schema(self, cur: psycopg.Cursor, name: str) -> None:
        # Look first: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the database even when it exists.
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(name)))

    def _migrate_tables(
        self, cur: psycopg.Cursor, batch: ChangeBatch, high_water: int, where: dict[str, str | None],
        held: dict[str, str],
    ) -> dict[str, str]:
        """Bring every sink table of the batch to the batch's schema, following its schema changes in ``seq`` order.

        Changes at or below the high water were applied by an earlier batch: replaying a rename or a type change
        after later ones would undo them, so only newer changes migrate. A table whose changes are all replayed is
        left alone when it exists (its final schema may be older than the sink's).
        """
        changes: dict[str, list[SchemaChange]] = {}
        for change in sorted(batch.schema_changes, key=lambda change: change.seq):
            changes.setdefault(change.table, []).append(change)
        names = [name for name in dict.fromkeys([*changes, *batch.schemas]) if name not in held]
        newly_held: dict[str, str] = {}
        if not names:
            return newly_held
        self._ensure_schema(cur, self.target_schema)
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
                    table=where["table"], batch_id=batch.batch_id,
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
                                       batch_id=batch.batch_id, reconcile=bool(live) or has_new_rows)
            except TableHeld as exc:
                self._ensure_held(cur)
                cur.execute(sql.SQL("INSERT INTO {} (source_id, source_table, reason, batch_id) VALUES (%s, %s, %s, %s)"
                                    " ON CONFLICT DO NOTHING").format(self._held),
                            (batch.source_id, qualified, str(exc), batch.batch_id))
                newly_held[qualified] = str(exc)
                log.error("sink %s: table %s is held from batch %s on: %s. The other tables keep flowing.",
                          self.sink_id, qualified, batch.batch_id, exc)
        where["table"] = None
        return newly_held

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
        if not schema.primary_key:
            raise SinkError(
                self.sink_id,
                f"source table {schema.qualified_name} has no primary key; add a primary key at the source "
                f"(the sink merges changes by key)",
                table=label, batch_id=batch_id,
            )
        clashes = reserved_columns(schema.column_names)
        if clashes:
            raise SinkError(
                self.sink_id,
                f"source table {schema.qualified_name} has columns {clashes} in the reserved bookkeeping namespace "
                f"{RESERVED_PREFIX}*; rename them at the source",
                table=label, batch_id=batch_id,
            )

    def _ensure_table(
        self,
        cur: psycopg.Cursor,
        schema: TableSchema,
        changes: list[SchemaChange] = (),  # type: ignore[assignment]
        *,
        earlier: list[TableSchema] = (),  # type: ignore[assignment]
        source_id: str | None = None,
        batch_id: str | None = None,
        reconcile: bool = True,
    ) -> None:
        """Create the sink table, or migrate it through ``changes`` and then to ``schema``.

        A new table gets the final schema's columns plus those of ``earlier`` schemas that the final one no longer
        has (dropped within the batch: the batch's rows may still carry them); a renamed column (same ordinal)
        is not made twice.
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
        dropped = tuple(name for name in existing if name not in source_columns and name not in BOOKKEEPING_COLUMNS)
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
                f"{new_type} in the sink would not keep every value exactly (not a safe widening), so nothing of it was "
                f"written. Re-snapshot the table (python -m airflow_provider_cdc resnapshot "
                f"{context.source_id or '<source_id>'} --table {schema.qualified_name}) or change the source "
                f"column back to a type the sink can widen to",
                table=context.label, batch_id=context.batch_id,
            )

    def _add_column(
        self, cur: psycopg.Cursor, col: Column, type_: str, schema: TableSchema, context: _Migration
    ) -> None:
        if context.has_rows is None:
            cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(context.target))
            context.has_rows = bool(cur.fetchone()[0])
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
                context.target, name, sql.SQL(type_), sql.Literal(col.backfill), sql.SQL(type_)))
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(context.target, name))
        else:
            cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(context.target, name, sql.SQL(type_)))
        context.existing[col.name] = type_
        log.info("sink %s: table %s: added column %s %s%s", self.sink_id, context.label, col.name, type_,
                 "" if col.backfill is None else f" (existing rows: {col.backfill!r})")

    def _column_type(self, cur: psycopg.Cursor, col: Column, schema: TableSchema) -> str:
        """The sink type; a PostgreSQL type the sink database lacks (an enum, a domain) becomes the mapped one."""
        type_ = sink_column_type(col, schema.dialect)
        if schema.dialect != POSTGRES_DIALECT or type_ == logical_sink_type(col):
            return type_
        if type_ not in self._type_exists:
            try:
                with self._conn.transaction():  # a savepoint: older servers raise on text that does not parse
                    cur.execute("SELECT to_regtype(%s) IS NOT NULL", (type_,))
                    self._type_exists[type_] = bool(cur.fetchone()[0])
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

    # --- rows --------------------------------------------------------------------------------------------------

    def _apply_table(
        self, cur: psycopg.Cursor, schema: TableSchema, changes: pa.Table, high_water: int, batch: ChangeBatch
    ) -> dict[str, int]:
        """Apply one table's events: segments between truncates are folded and merged, in ``seq`` order."""
        stats = {"events": changes.num_rows, "skipped_replayed": 0, "staged": 0, "upserted": 0, "deleted": 0,
                 "truncates": 0, "truncated_rows": 0}
        if high_water:
            changes = changes.filter(pc.greater(changes["_cdc_seq"], high_water))
            stats["skipped_replayed"] = stats["events"] - changes.num_rows
        if changes.num_rows == 0:
            return stats
        changes = changes.sort_by("_cdc_seq")
        sink_columns = self._existing_columns(cur, schema.name) or {}
        # Source columns as the batch carries them (a column dropped within the batch may still be there, holding
        # the values of rows written before the drop), limited to those the sink has.
        columns = [name for name in changes.column_names
                   if not name.startswith(RESERVED_PREFIX) and name in sink_columns]
        # Sink columns the source no longer has: every row the merge writes gets NULL there, consistently.
        present = set(columns)
        gone = [name for name in sink_columns if name not in present and name not in BOOKKEEPING_COLUMNS]
        truncates = pc.indices_nonzero(pc.equal(changes["_cdc_op"], OP_TRUNCATE)).to_pylist()
        start = 0
        for index in [*truncates, changes.num_rows]:
            if index > start:
                self._merge_segment(cur, schema, columns, gone, sink_columns, changes.slice(start, index - start),
                                    stats, batch)
            if index < changes.num_rows:
                self._truncate(cur, schema, changes["_cdc_seq"][index].as_py(), changes["_cdc_ts_ms"][index].as_py(), stats)
            start = index + 1
        return stats

    def _truncate(self, cur: psycopg.Cursor, schema: TableSchema, seq: int, ts_ms: int | None,
                  stats: dict[str, int]) -> None:
        """Remove (or, soft, mark) the rows older than the truncate; newer rows were written after it."""
        target = sql.Identifier(self.target_schema, schema.name)
        if self.delete_mode == "hard":
            cur.execute(sql.SQL("DELETE FROM {} WHERE _cdc_position IS NULL OR _cdc_position < %(seq)s").format(
                target), {"seq": seq})
        else:
            cur.execute(sql.SQL(
                "UPDATE {} SET _cdc_deleted_at = to_timestamp(%(ts)s::bigint / 1000.0), _cdc_op = %(op)s,"
                " _cdc_position = %(seq)s, _cdc_ts = to_timestamp(%(ts)s::bigint / 1000.0)"
                " WHERE _cdc_deleted_at IS NULL AND (_cdc_position IS NULL OR _cdc_position < %(seq)s)"
            ).format(target), {"seq": seq, "ts": ts_ms, "op": OP_TRUNCATE})
        stats["truncates"] += 1
        stats["truncated_rows"] += max(cur.rowcount, 0)

    def _merge_segment(
        self,
        cur: psycopg.Cursor,
        schema: TableSchema,
        columns: list[str],
        gone: list[str],
        sink_columns: dict[str, str],
        segment: pa.Table,
        stats: dict[str, int],
        batch: ChangeBatch,
    ) -> None:
        key = schema.primary_key
        folded = fold_changes(segment, key, schema.columns)
        unchanged = unchanged_as_text(folded["_cdc_unchanged"])
        has_unchanged = bool(pc.any(pc.not_equal(unchanged, "{}")).as_py())
        moved = pc.fill_null(pc.and_(folded[MOVED_COLUMN], pc.not_equal(unchanged, "{}")), False)
        has_moved = has_unchanged and bool(pc.any(moved).as_py())
        # The stage is LIKE the target (which has its own _cdc_op ...), so the batch's bookkeeping gets stage names.
        staged = folded.select([*columns, "_cdc_op", "_cdc_seq", "_cdc_ts_ms"]).rename_columns(
            [*columns, "_cdc_s_op", "_cdc_s_seq", "_cdc_s_ts_ms"]).append_column("_cdc_s_unchanged", unchanged)
        extra = [sql.SQL("_cdc_s_op text, _cdc_s_seq bigint, _cdc_s_ts_ms bigint, _cdc_s_unchanged text[]")]
        from_columns = [f"_cdc_s_from_{i}" for i in range(len(key))]
        if has_moved:
            # Rows whose key changed and whose unchanged TOAST values live in the sink under their old key.
            staged = staged.append_column("_cdc_s_moved", moved)
            extra.append(sql.SQL("_cdc_s_moved boolean"))
            for name, stage_name in zip(key, from_columns):
                staged = staged.append_column(stage_name, folded[BEFORE_PREFIX + name])
                extra.append(sql.SQL("{} {}").format(sql.Identifier(stage_name), sql.SQL(sink_columns[name])))
        stats["staged"] += staged.num_rows

        target = sql.Identifier(self.target_schema, schema.name)
        stage = sql.Identifier("_cdc_stage")
        cur.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {}, {}) ON COMMIT DROP").format(
            stage, target, sql.SQL(", ").join(extra)))
        copy_columns = sql.SQL(", ").join(map(sql.Identifier, staged.column_names))
        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(stage, copy_columns)) as copy:
            # Arrow quotes every string and leaves NULL unquoted and empty, which is exactly CSV COPY's NULL
            # rule: "" is an empty string, nothing is NULL. Backslashes, tabs and newlines need no escaping.
            for chunk in staged.to_batches(max_chunksize=COPY_CHUNK_ROWS):
                out = pa.BufferOutputStream()
                pacsv.write_csv(chunk, out, _CSV_OPTIONS)
                copy.write(memoryview(out.getvalue()))

        # A fresh temp table has no statistics; with them the planner joins the stage to the target by its key.
        cur.execute(sql.SQL("ANALYZE {}").format(stage))
        on = sql.SQL(" AND ").join(
            sql.SQL("t.{0} = s.{0}").format(sql.Identifier(name)) for name in key
        )
        guard = sql.SQL("(t._cdc_position IS NULL OR t._cdc_position <= s._cdc_s_seq)")
        if has_moved:
            self._fill_moved_from_sink(cur, stage, target, key, columns, folded, from_columns)
        if has_unchanged:
            self._refuse_unresolved(cur, stage, target, schema, key, on, batch, has_moved)
        if pc.any(pc.equal(staged["_cdc_s_op"], OP_DELETE)).as_py():
            cur.execute(sql.SQL("SELECT count(*) FROM {} AS s JOIN {} AS t ON {} WHERE s._cdc_s_op = %s AND {}").format(
                stage, target, on, guard), (OP_DELETE,))
            deleted = int(cur.fetchone()[0])
        else:
            deleted = 0
        cur.execute(self._merge_statement(target, stage, key, columns, gone, on, guard, has_unchanged))
        stats["deleted"] += deleted
        stats["upserted"] += max(cur.rowcount, 0) - deleted
        cur.execute(sql.SQL("DROP TABLE {}").format(stage))

    def _fill_moved_from_sink(
        self,
        cur: psycopg.Cursor,
        stage: sql.Identifier,
        target: sql.Identifier,
        key: list[str],
        columns: list[str],
        folded: pa.Table,
        from_columns: list[str],
    ) -> None:
        """Give rows whose key changed the unchanged values the sink holds under their old key.

        Runs before the ``MERGE``, which deletes the old key's row in the same statement that inserts the new one.
        The new key's own sink row (if any) is never a source: it belongs to another row (a key swap).
        """
        wanted = {name for names in folded["_cdc_unchanged"].to_pylist() for name in names or ()}
        fill = [name for name in columns if name in wanted]
        if not fill:
            return
        sets = [sql.SQL("{0} = CASE WHEN {1} = ANY(s._cdc_s_unchanged) THEN o.{0} ELSE s.{0} END").format(
            sql.Identifier(name), sql.Literal(name)) for name in fill]
        sets.append(sql.SQL("_cdc_s_unchanged = '{}'"))
        match = sql.SQL(" AND ").join(sql.SQL("o.{} = s.{}").format(sql.Identifier(name), sql.Identifier(from_))
                                      for name, from_ in zip(key, from_columns))
        live = sql.SQL(" AND o._cdc_deleted_at IS NULL") if self.delete_mode == "soft" else sql.SQL("")
        cur.execute(sql.SQL(
            "UPDATE {stage} AS s SET {sets} FROM {target} AS o"
            " WHERE s._cdc_s_moved AND s._cdc_s_op <> {d} AND {match}{live}"
        ).format(stage=stage, sets=sql.SQL(", ").join(sets), target=target, d=sql.Literal(OP_DELETE),
                 match=match, live=live))

    def _refuse_unresolved(
        self,
        cur: psycopg.Cursor,
        stage: sql.Identifier,
        target: sql.Identifier,
        schema: TableSchema,
        key: list[str],
        on: sql.Composable,
        batch: ChangeBatch,
        has_moved: bool,
    ) -> None:
        """Stop before writing a row with values nobody has: unchanged TOAST neither the batch nor the sink holds.

        Such a row would be inserted with NULL in place of a value the source still has (or, for a row whose key
        changed, take another row's value): silent divergence. A matched update keeps the sink's own value instead.
        """
        moved = sql.SQL("s._cdc_s_moved OR ") if has_moved else sql.SQL("")
        cur.execute(sql.SQL(
            "SELECT {keys}, s._cdc_s_unchanged FROM {stage} AS s WHERE s._cdc_s_op <> {d}"
            " AND s._cdc_s_unchanged <> '{{}}' AND ({moved}NOT EXISTS (SELECT 1 FROM {target} AS t WHERE {on}))"
            " ORDER BY s._cdc_s_seq LIMIT 5"
        ).format(keys=sql.SQL(", ").join(sql.SQL("s.{}::text").format(sql.Identifier(name)) for name in key),
                 stage=stage, d=sql.Literal(OP_DELETE), moved=moved, target=target, on=on))
        rows = cur.fetchall()
        if not rows:
            return
        first = rows[0]
        described = ", ".join(f"{name}={value}" for name, value in zip(key, first[:-1]))
        raise SinkError(
            self.sink_id,
            f"the row with key ({described}) of source table {schema.qualified_name} would be written without "
            f"the values of columns {list(first[-1])} (unchanged TOAST the source did not resend, and neither this "
            f"batch nor the sink has them){f' ({len(rows)} rows or more)' if len(rows) > 1 else ''}; nothing was "
            f"written. Re-snapshot the table: python -m airflow_provider_cdc resnapshot {batch.source_id} "
            f"--table {schema.qualified_name}",
            table=self._table_label(schema), batch_id=batch.batch_id,
        )

    def _merge_statement(
        self,
        target: sql.Identifier,
        stage: sql.Identifier,
        key: list[str],
        columns: list[str],
        gone: list[str],
        on: sql.Composable,
        guard: sql.Composable,
        has_unchanged: bool,
    ) -> sql.Composed:
        ts = sql.SQL("to_timestamp(s._cdc_s_ts_ms / 1000.0)")
        updates = []
        for name in columns:
            if name in key:
                continue
            col = sql.Identifier(name)
            if has_unchanged:
                # Unchanged TOAST: the source did not send the value, so the sink keeps its own.
                updates.append(sql.SQL("{0} = CASE WHEN {1} = ANY(s._cdc_s_unchanged) THEN t.{0} ELSE s.{0} END").format(
                    col, sql.Literal(name)))
            else:
                updates.append(sql.SQL("{0} = s.{0}").format(col))
        # Columns the source dropped: the sink keeps them for old rows, but a row changed since has no value there.
        updates += [sql.SQL("{} = NULL").format(sql.Identifier(name)) for name in gone]
        updates += [sql.SQL("_cdc_op = s._cdc_s_op"), sql.SQL("_cdc_position = s._cdc_s_seq"), sql.SQL("_cdc_ts = {}").format(ts)]
        if self.delete_mode == "soft":
            updates.append(sql.SQL("_cdc_deleted_at = NULL"))
            on_delete = sql.SQL(
                "UPDATE SET _cdc_deleted_at = {0}, _cdc_op = s._cdc_s_op, _cdc_position = s._cdc_s_seq, _cdc_ts = {0}"
            ).format(ts)
        else:
            on_delete = sql.SQL("DELETE")
        insert_columns = [sql.Identifier(name) for name in columns] + [
            sql.Identifier("_cdc_op"), sql.Identifier("_cdc_position"), sql.Identifier("_cdc_ts")]
        insert_values = [sql.SQL("s.{}").format(sql.Identifier(name)) for name in columns] + [
            sql.SQL("s._cdc_s_op"), sql.SQL("s._cdc_s_seq"), ts]
        return sql.SQL(
            "MERGE INTO {target} AS t USING {stage} AS s ON {on}"
            " WHEN MATCHED AND s._cdc_s_op = {d} AND {guard} THEN {on_delete}"
            " WHEN MATCHED AND s._cdc_s_op <> {d} AND {guard} THEN UPDATE SET {updates}"
            " WHEN NOT MATCHED AND s._cdc_s_op <> {d} THEN INSERT ({insert_columns}) VALUES ({insert_values})"
        ).format(
            target=target, stage=stage, on=on, d=sql.Literal(OP_DELETE), guard=guard, on_delete=on_delete,
            updates=sql.SQL(", ").join(updates), insert_columns=sql.SQL(", ").join(insert_columns),
            insert_values=sql.SQL(", ").join(insert_values),
        )


def unchanged_as_text(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``_unchanged`` (list<string>) as PostgreSQL array literals for COPY: ``{"a","b"}``, NULL when absent."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.null_count == len(values):
        return pa.nulls(len(values), pa.string())
    elements = pc.list_flatten(values)
    escaped = pc.replace_substring(pc.replace_substring(elements, "\\", "\\\\"), '"', '\\"')
    quoted = pc.binary_join_element_wise('"', escaped, '"', "")
    offsets = pc.subtract(values.offsets, values.offsets[0])
    lists = pa.ListArray.from_arrays(offsets, quoted, mask=values.is_null())
    return pc.binary_join_element_wise("{", pc.binary_join(lists, ","), "}", "")


def _describe(exc: psycopg.Error) -> str:
    """The server's message plus where it happened (COPY line and column, for a value that does not fit)."""
    diag = exc.diag
    text = diag.message_primary or str(exc)
    if diag.message_detail:
        text += f" ({diag.message_detail})"
    if diag.context:
        text += f" [{diag.context.strip()}]"
    return text
