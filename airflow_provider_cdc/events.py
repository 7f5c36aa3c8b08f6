"""Change events and Arrow-backed change batches: the contract between every stage.

A :class:`ChangeEvent` is Debezium-shaped (``op``, ``before``, ``after``, ``source``, ``ts_ms``) plus ``seq``, a
per-source counter that increases by one for every event the source ever emits. ``seq`` is assigned from the
position document, so capturing the same range twice reproduces the same numbers: that is what makes a batch
replayable and lets a sink guard every row with ``_cdc_position`` (the row's last ``seq``).

Row values travel as text in the **portable form** of their column's ``logical_type`` (the value contract,
:mod:`airflow_provider_cdc.values`), alongside the table's declared column types. Rules, checks and typed sinks
get Arrow types from :func:`airflow_provider_cdc.values.typed_table`; text keeps ``numeric(38,10)`` exact and lets a
sink of the source's own dialect load values it has no portable form for (``logical_type: other``) unchanged.

A :class:`ChangeBatch` keeps one ``pyarrow.Table`` per source table with these columns:

``_cdc_op``        ``c u d t r`` (create, update, delete, truncate, snapshot read)
``_cdc_seq``       int64, the event's ``seq``
``_cdc_ts_ms``     int64, commit time at the source (ms since epoch)
``_cdc_tx_id``     string, source transaction id (nullable)
``_cdc_pos``       string, the source-native position of the event's transaction (e.g. a commit LSN)
``_cdc_unchanged`` list<string>, columns whose value the source did not send (PostgreSQL unchanged TOAST): a
                   sink keeps its current value for them
``<column>``       string, the row image the sink must reach: ``after`` for c/u/r; for ``d`` the deleted key
                   (and, where the source sent it, the whole old row)
``_cdc_before:<column>`` string, the before-image, present only when the source sent one (REPLICA IDENTITY FULL,
                   or the old key of an update that changed the key)

Bookkeeping lives in the ``_cdc_`` namespace, which sources may not use (:mod:`airflow_provider_cdc.tables` names
offenders, and connectors refuse such tables at start): a source column may be called ``_op``, ``_seq`` or
``before.x``.

Schema changes (``op = "s"``) are kept beside the tables as :class:`~airflow_provider_cdc.tables.SchemaChange`
records; what a table looks like (columns, keys, types) lives in :mod:`airflow_provider_cdc.tables`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_cdc.tables import SchemaChange, TableSchema

OP_CREATE = "c"
OP_UPDATE = "u"
OP_DELETE = "d"
OP_TRUNCATE = "t"
OP_READ = "r"
OP_SCHEMA = "s"
ROW_OPS = frozenset({OP_CREATE, OP_UPDATE, OP_DELETE, OP_READ})
ALL_OPS = frozenset({*ROW_OPS, OP_TRUNCATE, OP_SCHEMA})

META_COLUMNS = ("_cdc_op", "_cdc_seq", "_cdc_ts_ms", "_cdc_tx_id", "_cdc_pos", "_cdc_unchanged")
BEFORE_PREFIX = "_cdc_before:"


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    connector: str
    db: str
    schema: str
    table: str
    position: str | None
    tx_id: str | None
    ts_ms: int


@dataclasses.dataclass(frozen=True)
class ChangeEvent:
    """One change, Debezium-shaped. ``unchanged`` names columns the source did not send (unchanged TOAST)."""

    op: str
    before: dict[str, str | None] | None
    after: dict[str, str | None] | None
    source: SourceInfo
    ts_ms: int
    seq: int
    unchanged: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.op not in ALL_OPS:
            raise ValueError(f"unknown op {self.op!r}; expected one of {sorted(ALL_OPS)}")

    @property
    def table(self) -> str:
        return f"{self.source.schema}.{self.source.table}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "before": self.before,
            "after": self.after,
            "source": dataclasses.asdict(self.source),
            "ts_ms": self.ts_ms,
            "seq": self.seq,
        }


def batch_schema(table: TableSchema, with_before: bool) -> pa.Schema:
    """The Arrow schema of one table's changes (see the module docstring)."""
    fields = [
        pa.field("_cdc_op", pa.string(), nullable=False),
        pa.field("_cdc_seq", pa.int64(), nullable=False),
        pa.field("_cdc_ts_ms", pa.int64()),
        pa.field("_cdc_tx_id", pa.string()),
        pa.field("_cdc_pos", pa.string()),
        pa.field("_cdc_unchanged", pa.list_(pa.string())),
    ]
    fields += [pa.field(c, pa.string()) for c in table.column_names]
    if with_before:
        fields += [pa.field(BEFORE_PREFIX + c, pa.string()) for c in table.column_names]
    return pa.schema(fields)


class TableChangesBuilder:
    """Appends events for one table column by column (the decoder's hot path: no per-event objects)."""

    __slots__ = ("table", "ops", "seqs", "ts", "txs", "positions", "unchanged", "values", "before", "_has_before")

    def __init__(self, table: TableSchema) -> None:
        self.table = table
        self.ops: list[str] = []
        self.seqs: list[int] = []
        self.ts: list[int] = []
        self.txs: list[str | None] = []
        self.positions: list[str | None] = []
        self.unchanged: list[list[str] | None] = []
        self.values: list[list[str | None]] = [[] for _ in table.columns]
        self.before: list[list[str | None]] | None = None
        self._has_before = False

    def __len__(self) -> int:
        return len(self.ops)

    def append(
        self,
        op: str,
        seq: int,
        ts_ms: int,
        tx_id: str | None,
        position: str | None,
        row: list[str | None],
        before: list[str | None] | None = None,
        unchanged: list[str] | None = None,
    ) -> None:
        n = len(self.ops)
        self.ops.append(op)
        self.seqs.append(seq)
        self.ts.append(ts_ms)
        self.txs.append(tx_id)
        self.positions.append(position)
        self.unchanged.append(unchanged)
        for col, value in zip(self.values, row):
            col.append(value)
        if before is not None and self.before is None:
            self.before = [[None] * n for _ in self.table.columns]
        if self.before is not None:
            for col, value in zip(self.before, before or [None] * len(self.values)):
                col.append(value)

    def finish(self) -> pa.Table:
        return changes_table(self.table, self.ops, self.seqs, self.ts, self.txs, self.positions, self.unchanged,
                             self.values, self.before)


def changes_table(table: TableSchema, ops: list[str], seqs: list[int], ts: list[int], txs: list[str | None],
                  positions: list[str | None], unchanged: list[list[str] | None], values: list[list[str | None]],
                  before: list[list[str | None]] | None = None) -> pa.Table:
    """One table's changes from its columns (each a list with one entry per event; ``values`` and ``before`` one list
    per column of ``table``): what :class:`TableChangesBuilder` and columnar decoders finish with."""
    schema = batch_schema(table, before is not None)
    arrays: list[Any] = [ops, seqs, ts, txs, positions, unchanged, *values, *(before or [])]
    return pa.Table.from_arrays([pa.array(a, type=f.type) for a, f in zip(arrays, schema)], schema=schema)


@dataclasses.dataclass
class ChangeBatch:
    """A micro-batch from one source: changes per table, schema changes, and the position range it covers.

    ``schemas`` holds each table's latest schema in the batch (the one its Arrow columns follow);
    ``schema_changes`` lists every change in ``seq`` order. ``position_from`` is the position the capture started
    after; ``position_to`` the one to store once the batch is loaded. ``batch_id`` is deterministic
    (``<source_id>:<first>-<last>``) so that replays are recognised.
    """

    source_id: str
    batch_id: str
    position_from: dict[str, Any]
    position_to: dict[str, Any]
    seq_from: int
    seq_to: int
    tables: dict[str, pa.Table] = dataclasses.field(default_factory=dict)
    schemas: dict[str, TableSchema] = dataclasses.field(default_factory=dict)
    schema_changes: list[SchemaChange] = dataclasses.field(default_factory=list)
    connector: str = ""
    database: str = ""
    # Changes a stage took out of ``tables`` with their reason (:mod:`airflow_provider_cdc.quarantine`): stored by the
    # sink in ``_cdc_quarantine`` in the batch's own transaction. None: none.
    quarantine: pa.Table | None = None

    @property
    def quarantined_count(self) -> int:
        return 0 if self.quarantine is None else self.quarantine.num_rows

    @property
    def change_count(self) -> int:
        return sum(t.num_rows for t in self.tables.values())

    @property
    def is_empty(self) -> bool:
        return self.change_count == 0 and not self.schema_changes and not self.quarantined_count

    def counts(self) -> dict[str, dict[str, int]]:
        """Per table, how many events of each op (what the ledger and the logs report)."""
        out: dict[str, dict[str, int]] = {}
        for name, table in self.tables.items():
            if table.num_rows == 0:
                continue
            vc = pc.value_counts(table.column("_cdc_op")).to_pylist()
            out[name] = {item["values"]: item["counts"] for item in vc}
        for change in self.schema_changes:
            out.setdefault(change.table, {})
            out[change.table][OP_SCHEMA] = out[change.table].get(OP_SCHEMA, 0) + 1
        return out

    def op_totals(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for per_table in self.counts().values():
            for op, n in per_table.items():
                totals[op] = totals.get(op, 0) + n
        return totals

    def events(self) -> Iterator[ChangeEvent]:
        """All events in ``seq`` order, as Debezium-shaped objects (for tests, rules and lineage, not bulk loads)."""
        items: list[tuple[int, ChangeEvent]] = []
        for change in self.schema_changes:
            schema, _, name = change.table.partition(".")
            info = SourceInfo(self.connector, self.database, schema, name, change.position, None, change.ts_ms)
            items.append((change.seq, ChangeEvent(OP_SCHEMA, None, None, info, change.ts_ms, change.seq)))
        for qualified, table in self.tables.items():
            schema_obj = self.schemas[qualified]
            cols = schema_obj.column_names
            before_cols = [BEFORE_PREFIX + c for c in cols]
            has_before = before_cols[0] in table.column_names if cols else False
            for row in table.to_pylist():
                op = row["_cdc_op"]
                image = {c: row[c] for c in cols}
                before = {c: row[BEFORE_PREFIX + c] for c in cols} if has_before else None
                if before is not None and all(v is None for v in before.values()):
                    before = None
                if op == OP_DELETE:
                    before, after = before or image, None
                elif op == OP_TRUNCATE:
                    before, after = None, None
                else:
                    after = image
                info = SourceInfo(
                    self.connector, self.database, schema_obj.schema, schema_obj.name,
                    row["_cdc_pos"], row["_cdc_tx_id"], row["_cdc_ts_ms"],
                )
                items.append((row["_cdc_seq"], ChangeEvent(
                    op, before, after, info, row["_cdc_ts_ms"], row["_cdc_seq"], frozenset(row["_cdc_unchanged"] or ()),
                )))
        items.sort(key=lambda item: item[0])
        return (event for _, event in items)


def align(table: pa.Table, old: TableSchema, new: TableSchema) -> pa.Table:
    """Changes written under ``old`` columns, renamed and filled to ``new`` ones by column identity (ordinal).

    A column renamed in between takes its new name; a column added in between gets the value rows older than it
    hold (its backfill); a column dropped in between stays, for the sink to keep."""
    by_ordinal = {c.ordinal: c for c in new.columns if c.ordinal is not None}
    names = list(table.column_names)
    old_names = set(old.column_names)
    for col in old.columns:
        target = by_ordinal.get(col.ordinal) if col.ordinal is not None else None
        if target is not None and target.name != col.name and target.name not in old_names:
            for prefix in ("", BEFORE_PREFIX):
                if prefix + col.name in names:
                    names[names.index(prefix + col.name)] = prefix + target.name
    table = table.rename_columns(names)
    for col in new.columns:
        if col.name not in table.column_names:
            values = pa.array([col.backfill] * table.num_rows, pa.string())
            # Truncate rows carry no row image.
            values = pc.if_else(pc.equal(table["_cdc_op"], OP_TRUNCATE), None, values)
            table = table.append_column(col.name, values)
    return table


def make_batch_id(source_id: str, first: str, last: str) -> str:
    """``<source_id>:<first position>-<last position>``: the same range always yields the same id."""
    return f"{source_id}:{first}-{last}"


def concat_tables(tables: Iterable[pa.Table]) -> pa.Table:
    """Concatenate per-chunk tables of one source table, widening to before-image columns where any chunk had them."""
    tables = [t for t in tables if t is not None]
    if not tables:
        raise ValueError("nothing to concatenate")
    return pa.concat_tables(tables, promote_options="default")
