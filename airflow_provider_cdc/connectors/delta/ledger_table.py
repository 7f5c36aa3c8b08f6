"""The file sink's own Delta tables: the ledger (``<root>/_cdc_ledger``), the audit trail (``<root>/_cdc_audit``) and
the held tables (``<root>/_cdc_held``). (The schema registry and the held changes live beside them: :mod:`.registry`.)

A Delta sink has no transaction across tables, so the ledger row cannot commit with the data. It is appended
**after** every table's commit, and each of those commits carries the batch as a Delta application transaction
(``<source_id>:<schema.table>`` at version ``seq_to``). A crash in between leaves tables that say "done" and a
ledger that does not: the replay skips those tables by their transaction version and appends the ledger row. So
the ledger here is the audit trail and the batch-level guard, and Delta's log the table-level one.

Rows are built and read only through :mod:`airflow_provider_cdc.connectors.ledger` (JSON columns as text).

A batch's audit rows (:func:`airflow_provider_cdc.connectors.audit.batch_audit_entries`) are appended the same way,
just before its ledger row, with the application transaction ``<source_id>:_cdc_audit`` at ``seq_to``: the replay
after a crash between the two finds that version and appends none again. Other entries (``batch_committed``, the
commands') are appended unless their ``audit_id`` is there.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable, write_deltalake

from airflow_provider_cdc.connectors.audit import (
    AUDIT_COLUMNS,
    AUDIT_TABLE,
    AuditEntry,
    missing,
    newest_first,
    since_utc,
)
from airflow_provider_cdc.connectors.delta.storage import (
    commit_properties,
    join,
    open_table,
    reset_app_transactions,
)
from airflow_provider_cdc.connectors.delta.types import UTC_MICROS
from airflow_provider_cdc.connectors.ledger import LEDGER_COLUMNS, LEDGER_TABLE, LedgerRow, latest

HELD_TABLE = "_cdc_held"
COMPACT_EVERY = 100  # ledger commits between two compactions of its files

_ARROW_OF_LOGICAL = {"text": pa.string(), "json": pa.string(), "integer": pa.int64(), "timestamptz": UTC_MICROS}
LEDGER_SCHEMA = pa.schema([pa.field(name, _ARROW_OF_LOGICAL[kind]) for name, kind in LEDGER_COLUMNS])
AUDIT_SCHEMA = pa.schema([pa.field(name, _ARROW_OF_LOGICAL[kind]) for name, kind in AUDIT_COLUMNS])
HELD_SCHEMA = pa.schema([
    pa.field("source_id", pa.string()),
    pa.field("source_table", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("batch_id", pa.string()),
    pa.field("held_at", UTC_MICROS),
])


def ledger_app_id(source_id: str) -> str:
    return f"{source_id}:{LEDGER_TABLE}"


def audit_app_id(source_id: str) -> str:
    return f"{source_id}:{AUDIT_TABLE}"


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class SmallTable:
    """A Delta table of a few bookkeeping rows, read whole through pyarrow with a filter."""

    schema: pa.Schema

    def __init__(self, uri: str, storage_options: dict[str, str]) -> None:
        self.uri = uri
        self.storage_options = storage_options

    def table(self) -> DeltaTable | None:
        return open_table(self.uri, self.storage_options)

    def read(self, where: ds.Expression, columns: list[str] | None = None) -> pa.Table:
        table = self.table()
        if table is None:
            return self.schema.empty_table() if columns is None else self.schema.empty_table().select(columns)
        return table.to_pyarrow_dataset().to_table(filter=where, columns=columns)

    def append(self, rows: pa.Table, app_transactions: dict[str, int] | None = None) -> None:
        write_deltalake(self.uri, rows, mode="append", storage_options=self.storage_options or None,
                        commit_properties=commit_properties(app_transactions or {}))

    def _compact_now_and_then(self) -> None:
        """Every append adds a file; merging them now and then keeps a read (the ledger's :meth:`has_batch`)
        reading a few files, not one per batch ever applied (a continuous pipeline applies thousands a day). Old
        files stay until a VACUUM."""
        table = self.table()
        if table is not None and table.version() % COMPACT_EVERY == 0:
            table.optimize.compact()


def newest_rows(rows: list[LedgerRow], limit: int) -> list[LedgerRow]:
    """``rows`` newest first (highest ``seq_to``, the later commit on a tie), at most ``limit``."""
    oldest = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    ordered = sorted(rows, key=lambda row: (row.seq_to, row.committed_at or oldest), reverse=True)
    return ordered[:max(limit, 0)]


class DeltaLedger(SmallTable):
    """``<root>/_cdc_ledger``: one :class:`LedgerRow` per applied batch."""

    schema = LEDGER_SCHEMA

    def __init__(self, root: str, storage_options: dict[str, str]) -> None:
        super().__init__(join(root, LEDGER_TABLE), storage_options)

    def rows(self, source_id: str | None = None, batch_id: str | None = None) -> list[LedgerRow]:
        where = ds.field("source_id").is_valid()
        if source_id is not None:
            where = where & (ds.field("source_id") == source_id)
        if batch_id is not None:
            where = where & (ds.field("batch_id") == batch_id)
        return [LedgerRow.from_record(record) for record in self.read(where).to_pylist()]

    def has_batch(self, batch_id: str) -> bool:
        return self.read(ds.field("batch_id") == batch_id, ["batch_id"]).num_rows > 0

    def high_water(self, source_id: str) -> int:
        return self.applied(source_id, None)[1]

    def applied(self, source_id: str, batch_id: str | None) -> tuple[bool, int]:
        """Whether ``batch_id`` of ``source_id`` is in the ledger, and the source's high water, in one read (an
        apply needs both; each read replays the table's log)."""
        rows = self.read(ds.field("source_id") == source_id, ["batch_id", "seq_to"])
        has = batch_id is not None and bool(pc.any(pc.equal(rows["batch_id"], batch_id)).as_py())
        return has, int(pc.max(rows["seq_to"]).as_py() or 0) if rows.num_rows else 0

    def last_committed(self, source_id: str) -> dict[str, Any] | None:
        newest = latest(self.rows(source_id))
        return None if newest is None else newest.position_to

    def recent_rows(self, source_id: str, limit: int) -> list[LedgerRow]:
        """The ``limit`` latest rows of ``source_id``, in :func:`~airflow_provider_cdc.connectors.ledger.latest`'s
        order (newest first)."""
        return newest_rows(self.rows(source_id), limit)

    def latest_row(self, source_id: str) -> LedgerRow | None:
        """The source's latest row (:func:`~airflow_provider_cdc.connectors.ledger.latest`), read with the columns
        the audit trail compares only (the positions and counts of every batch ever applied are not needed)."""
        columns = ["batch_id", "source_id", "seq_to", "stage_versions", "committed_at"]
        records = self.read(ds.field("source_id") == source_id, columns).to_pylist()
        return latest([LedgerRow.from_record(record) for record in records])

    def append_row(self, row: LedgerRow, *, app_transaction: bool = True) -> None:
        """Append ``row`` with the batch as the ledger's own application transaction (``<source>:_cdc_ledger``).

        ``app_transaction=False`` for the row of a ``schema accept`` replay: its range lies below the source's high
        water, and Delta keeps only the last version of an application id, which must not go backwards."""
        record = row.to_record(json_as_text=True)
        table = pa.Table.from_pylist([record], schema=LEDGER_SCHEMA)
        self.append(table, {ledger_app_id(row.source_id): row.seq_to} if app_transaction else None)
        self._compact_now_and_then()


    def forget(self, source_id: str) -> int:
        """Delete the rows of ``source_id`` and set its ledger transaction back (its ``seq`` starts again)."""
        table = self.table()
        if table is None:
            return 0
        metrics = table.delete(f"source_id = {sql_text(source_id)}",
                               commit_properties=commit_properties({ledger_app_id(source_id): 0}))
        reset_app_transactions(table, [ledger_app_id(source_id)])
        return int(metrics.get("num_deleted_rows", 0))


class DeltaAudit(SmallTable):
    """``<root>/_cdc_audit``: the audit trail (:mod:`airflow_provider_cdc.connectors.audit`), ``details`` as JSON
    text."""

    schema = AUDIT_SCHEMA

    def __init__(self, root: str, storage_options: dict[str, str]) -> None:
        super().__init__(join(root, AUDIT_TABLE), storage_options)

    def append_batch(self, source_id: str, seq_to: int, entries: list[AuditEntry]) -> bool:
        """Append a batch's entries exactly once (module docstring); False when an earlier attempt did."""
        table = self.table()
        if table is not None and (table.transaction_version(audit_app_id(source_id)) or 0) >= seq_to:
            return False
        self.append(self._rows(entries), {audit_app_id(source_id): seq_to})
        self._compact_now_and_then()
        return True

    def record(self, entries: list[AuditEntry]) -> int:
        """Append those of ``entries`` whose ``audit_id`` is not there yet; how many."""
        ids = [entry.audit_id for entry in entries]
        present = self.read(ds.field("audit_id").isin(ids), ["audit_id"])["audit_id"].to_pylist() if ids else []
        new = missing(entries, present)
        if new:
            self.append(self._rows(new))
            self._compact_now_and_then()
        return len(new)

    def entries(self, source_id: str | None, batch_id: str | None, action: str | None, since: Any,
                limit: int) -> list[AuditEntry]:
        where = ds.field("audit_id").is_valid()
        for name, value in (("source_id", source_id), ("batch_id", batch_id), ("action", action)):
            if value is not None:
                where = where & (ds.field(name) == value)
        if since is not None:
            where = where & (ds.field("at") >= pa.scalar(since_utc(since), UTC_MICROS))
        rows = self.read(where)
        return newest_first((AuditEntry.from_record(record) for record in rows.to_pylist()), limit)

    def forget(self, source_id: str) -> None:
        """Set the source's audit transaction back (its ``seq`` starts again); the entries stay: they are history."""
        table = self.table()
        if table is not None:
            reset_app_transactions(table, [audit_app_id(source_id)])

    @staticmethod
    def _rows(entries: list[AuditEntry]) -> pa.Table:
        return pa.Table.from_pylist([entry.to_record(json_as_text=True) for entry in entries], schema=AUDIT_SCHEMA)


class HeldTables(SmallTable):
    """``<root>/_cdc_held``: source tables whose changes wait (a schema change the sink cannot follow)."""

    schema = HELD_SCHEMA

    def __init__(self, root: str, storage_options: dict[str, str]) -> None:
        super().__init__(join(root, HELD_TABLE), storage_options)

    def held(self, source_id: str) -> dict[str, str]:
        return {table: reason for table, (reason, _) in self.marks(source_id).items()}

    def marks(self, source_id: str) -> dict[str, tuple[str, str | None]]:
        """Held table → (reason, id of the batch that held it)."""
        rows = self.read(ds.field("source_id") == source_id, ["source_table", "reason", "batch_id"]).to_pylist()
        return {row["source_table"]: (row["reason"], row["batch_id"]) for row in rows}

    def hold(self, source_id: str, source_table: str, reason: str, batch_id: str | None) -> None:
        self.hold_many(source_id, {source_table: reason}, batch_id)

    def hold_many(self, source_id: str, reasons: dict[str, str], batch_id: str | None) -> None:
        """Mark the tables of ``reasons`` held (one commit; tables held already keep their mark)."""
        held = self.held(source_id)
        now = dt.datetime.now(dt.timezone.utc)
        rows = [{"source_id": source_id, "source_table": table, "reason": reason, "batch_id": batch_id,
                 "held_at": now} for table, reason in sorted(reasons.items()) if table not in held]
        if rows:
            self.append(pa.Table.from_pylist(rows, schema=HELD_SCHEMA))

    def release(self, source_id: str, source_table: str) -> bool:
        table = self.table()
        if table is None or source_table not in self.held(source_id):
            return False
        table.delete(f"source_id = {sql_text(source_id)} AND source_table = {sql_text(source_table)}")
        return True
