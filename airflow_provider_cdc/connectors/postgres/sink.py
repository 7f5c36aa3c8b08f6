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

This module orchestrates; rows are merged in :mod:`.merge`, tables created and migrated in :mod:`.ddl`, and the
ledger and held tables kept in :mod:`.ledger` (the row itself is the shared
:func:`~airflow_provider_cdc.connectors.ledger.ledger_row`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Literal

import psycopg
import pyarrow as pa
from psycopg import sql

from airflow_provider_cdc.connectors.base import ApplyResult, SinkCapabilities
from airflow_provider_cdc.connectors.ledger import LEDGER_TABLE, ledger_row
from airflow_provider_cdc.connectors.postgres.ddl import TableDdl, TableHeld, ensure_schema
from airflow_provider_cdc.connectors.postgres.ledger import HELD_TABLE, DuplicateBatch, LedgerStorage
from airflow_provider_cdc.connectors.postgres.merge import RowMerge
from airflow_provider_cdc.connectors.postgres.types import POSTGRES_DIALECT
from airflow_provider_cdc.errors import SinkError
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.tables import TableSchema
from airflow_provider_cdc.values import LOGICAL_TYPES

__all__ = ["CAPABILITIES", "PgSink", "TableHeld"]

log = logging.getLogger("airflow_provider_cdc.sink.postgres")

DeleteMode = Literal["hard", "soft"]

CAPABILITIES = SinkCapabilities(
    native_types=frozenset(LOGICAL_TYPES), dialect=POSTGRES_DIALECT, transactional=True, merge_by_key=True,
    soft_delete=True, stores_other_exactly=True,
)


class PgSink(LedgerStorage, TableDdl, RowMerge):
    """Applies change batches to tables in one PostgreSQL schema, with the ledger in ``ledger_schema``.

    The ledger goes in ``target_schema`` unless told otherwise, so that a sink role needs rights on its own schema
    only (PostgreSQL 15 and later no longer let every role create tables in ``public``).

    Sink tables keep the source table's name (``<target_schema>.<table>``), the source's columns (types from
    :mod:`.types`), its primary key, and the bookkeeping columns ``_cdc_op``, ``_cdc_position`` (the ``seq`` of the
    row's last event) and ``_cdc_ts``; with ``delete_mode="soft"`` also ``_cdc_deleted_at``: deleted rows stay,
    marked, and come back to life if the key is inserted again.
    """

    capabilities = CAPABILITIES

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
        self._ledger_current = False
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
                    ensure_schema(cur, self.target_schema)
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
                row = self._last_committed(cur, source_id)
                return None if row is None else row.position_to
        except psycopg.Error as exc:
            raise SinkError(self.sink_id, f"cannot read the ledger for source {source_id!r}: {exc}") from exc

    def apply(
        self,
        batch: ChangeBatch,
        *,
        run_id: str | None = None,
        versions: dict[str, dict[str, Any] | None] | None = None,
    ) -> ApplyResult:
        """Apply ``batch`` and record it in the ledger, in one transaction; a batch already there is a no-op.

        ``versions`` (``rule_versions``, ``schema_versions``, ``stage_versions``) go into the ledger row."""
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
                self._insert_ledger(cur, ledger_row(batch, result, high_water=high_water, run_id=run_id,
                                                    versions=versions))
                result.applied = True
                where["step"] = "commit"
        except DuplicateBatch:
            result.applied = False
        except psycopg.Error as exc:
            if where["step"] == "commit":
                message = (f"the commit did not complete ({_describe(exc)}); if the connection was lost its outcome "
                           f"is unknown: apply the batch again, the ledger recognises it if it did commit")
            else:
                message = f"apply failed, nothing was written: {_describe(exc)}"
            raise SinkError(self.sink_id, message, table=where["table"], batch_id=batch.batch_id,
                            terminal=_is_terminal(exc)) from exc
        except pa.ArrowException as exc:
            raise SinkError(self.sink_id, f"apply failed, nothing was written: cannot fold the changes: {exc}",
                            table=where["table"], batch_id=batch.batch_id, terminal=True) from exc
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


def _is_terminal(exc: psycopg.Error) -> bool:
    """A value the sink's type refuses, or a constraint it breaks, fails the same way on every retry; connection
    loss, locks and serialization failures are transient."""
    return isinstance(exc, (psycopg.DataError, psycopg.IntegrityError))


def _describe(exc: psycopg.Error) -> str:
    """The server's message plus where it happened (COPY line and column, for a value that does not fit)."""
    diag = exc.diag
    text = diag.message_primary or str(exc)
    if diag.message_detail:
        text += f" ({diag.message_detail})"
    if diag.context:
        text += f" [{diag.context.strip()}]"
    return text
