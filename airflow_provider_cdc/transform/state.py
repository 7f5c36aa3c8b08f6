"""One table's state while its rules run, and what applying them gives (:class:`TableResult`).

The row-image columns stay portable text throughout; rules replace whole columns. Which rows failed and which a
filter turned into deletes are NumPy masks over the input rows, so a row's index in :class:`RowFailure` is its index
in the input table whatever happened before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_cdc.events import BEFORE_PREFIX, OP_CREATE, OP_DELETE, OP_READ, OP_UPDATE
from airflow_provider_cdc.tables import RESERVED_PREFIX, Column, TableSchema
from airflow_provider_cdc.transform.errors import RuleConfigError, problem
from airflow_provider_cdc.transform.rules import ColumnLineage, CompiledRule

RULE_OPS = (OP_CREATE, OP_UPDATE, OP_READ)


@dataclasses.dataclass(frozen=True)
class RowFailure:
    """A row a rule could not handle: ``row`` is its index in the input table."""

    row: int
    rule_id: str
    field: str | None
    reason: str


@dataclasses.dataclass
class TableResult:
    """One table after the rules.

    ``table``: same layout as the input (bookkeeping kept, target columns added, dropped fields removed, failed rows
    removed). ``schema``: the input schema with targets added or retyped and dropped fields removed. ``columns``:
    rule id -> ``[(source field, target field)]`` for lineage (a filter's target is ``"*"``: it selects rows);
    ``lineage`` has the same edges with their OpenLineage transformation types. ``paths``: rule id -> how it ran
    (``vector``, ``row``, ``vector+row``, ``python`` for aggregates, ``structural`` for renames, ``failed`` when the
    table lacks a field the rule needs). ``counts``: rows in and out, failed, filtered, and rows per path.
    """

    table: pa.Table
    schema: TableSchema
    failures: list[RowFailure]
    columns: dict[str, list[tuple[str, str]]]
    counts: dict[str, int]
    paths: dict[str, str] = dataclasses.field(default_factory=dict)
    lineage: list[ColumnLineage] = dataclasses.field(default_factory=list)

    @property
    def failed_rows(self) -> list[int]:
        return sorted({f.row for f in self.failures})


class TableState:
    """One table's columns while its rules run: row-image text columns, before-image columns, bookkeeping, and
    which rows failed or were filtered out (NumPy masks over the input rows)."""

    def __init__(self, table: pa.Table, schema: TableSchema) -> None:
        self.table_name = schema.qualified_name
        self.schema = schema
        self.rows = table.num_rows
        self.meta_fields: list[pa.Field] = []
        self.meta: dict[str, pa.Array] = {}
        self.data: dict[str, pa.Array] = {}
        self.before: dict[str, pa.Array] = {}
        for field in table.schema:
            array = table.column(field.name).combine_chunks()
            if field.name.startswith(BEFORE_PREFIX):
                self.before[field.name[len(BEFORE_PREFIX):]] = array
            elif field.name.startswith(RESERVED_PREFIX):
                self.meta_fields.append(field)
                self.meta[field.name] = array
            else:
                self.data[field.name] = array
        self.has_before = bool(self.before)
        self.columns: dict[str, Column] = {c.name: c for c in schema.columns}
        for name in self.columns:
            if name not in self.data:
                self.data[name] = pa.nulls(self.rows, pa.string())
        self.key = list(schema.primary_key)
        ops = self.meta["_cdc_op"]
        self.active = pc.fill_null(pc.is_in(ops, value_set=pa.array(RULE_OPS)), False).to_numpy(zero_copy_only=False)
        self.dead = np.zeros(self.rows, dtype=bool)
        self.filtered = np.zeros(self.rows, dtype=bool)
        self.failures: list[RowFailure] = []
        self.unchanged: list[list[str]] | None = None
        unchanged = self.meta.get("_cdc_unchanged")
        if unchanged is not None and pc.sum(pc.list_value_length(unchanged)).as_py():
            self.unchanged = [list(v or ()) for v in unchanged.to_pylist()]
        self.unchanged_dirty = False
        self.counts = {"rows_in": self.rows, "vector_rows": 0, "jinja_rows": 0, "python_rows": 0,
                       "unchanged_marked": 0}
        self.paths: dict[str, str] = {}
        self._ts: list[int | None] | None = None
        self.vectorise = True

    # --- rows ---

    def live(self) -> np.ndarray:
        """Indices of rows rules still act on: c/u/r rows that neither failed nor were filtered out."""
        return np.flatnonzero(self.active & ~self.dead & ~self.filtered)

    def fail(self, row: int, rule: CompiledRule, field: str | None, reason: str) -> None:
        self.dead[row] = True
        self.failures.append(RowFailure(int(row), rule.rule_id, field, reason))

    def texts(self, name: str, rows: np.ndarray) -> list[str | None]:
        array = self.data[name]
        if len(rows) != self.rows:
            array = array.take(pa.array(rows, pa.int64()))
        return array.to_pylist()

    def ts(self, rows: np.ndarray) -> list[int | None]:
        if self._ts is None:
            ts = self.meta.get("_cdc_ts_ms")
            self._ts = ts.to_pylist() if ts is not None else [None] * self.rows
        return [self._ts[i] for i in rows]

    def unchanged_hits(self, rows: np.ndarray, inputs: Sequence[str]) -> dict[int, str]:
        """Row -> the first of ``inputs`` the source did not resend in it."""
        if self.unchanged is None or not inputs:
            return {}
        wanted = set(inputs)
        hits: dict[int, str] = {}
        for i in rows:
            names = self.unchanged[i]
            if names:
                common = [n for n in inputs if n in names] if wanted.intersection(names) else []
                if common:
                    hits[int(i)] = common[0]
        return hits

    def mark_unchanged(self, rows: list[int], target: str, computed: np.ndarray) -> None:
        """``target`` is unchanged in ``rows`` (its inputs were), and no longer in ``computed`` rows."""
        if self.unchanged is None:
            if not rows:
                return
            self.unchanged = [[] for _ in range(self.rows)]
        for i in rows:
            if target not in self.unchanged[i]:
                self.unchanged[i].append(target)
                self.counts["unchanged_marked"] += 1
                self.unchanged_dirty = True
        unchanged = self.unchanged
        for i in computed:  # a computed value replaces one the source had not resent
            names = unchanged[i]
            if names and target in names:
                names.remove(target)
                self.unchanged_dirty = True

    # --- columns ---

    def set_column(self, name: str, column: Column, values: pa.Array) -> None:
        if name in self.key:
            raise RuleConfigError(f"table {self.table_name}: field {name!r} is a key column; a rule may rename a key "
                                  "but not compute one", table=self.table_name, field=name)
        self.columns[name] = column
        self.data[name] = values
        if name in self.before:  # an old image must not carry what the rule replaced (an unmasked value)
            self.before[name] = pa.nulls(self.rows, pa.string())

    def rename(self, rule: CompiledRule, old: str, new: str) -> None:
        if old not in self.columns:
            raise RuleConfigError(problem(rule.rule_id, f"no such column to rename (columns: "
                                                        f"{', '.join(self.columns)})", key="rename_from", field=old,
                                          table=self.table_name), rule_id=rule.rule_id, table=self.table_name,
                                  field=old)
        if new == old:
            return
        if new in self.columns or new in self.data:
            raise RuleConfigError(problem(rule.rule_id, "a column of that name exists already", key="target_field",
                                          field=new, table=self.table_name), rule_id=rule.rule_id,
                                  table=self.table_name, field=new)
        self.columns = {(new if n == old else n): (dataclasses.replace(c, name=new) if n == old else c)
                        for n, c in self.columns.items()}
        self.data = {(new if n == old else n): a for n, a in self.data.items()}
        self.before = {(new if n == old else n): a for n, a in self.before.items()}
        self.key = [new if k == old else k for k in self.key]
        if self.unchanged is not None:
            for names in self.unchanged:
                if old in names:
                    names[names.index(old)] = new
                    self.unchanged_dirty = True

    def drop(self, rule: CompiledRule, name: str) -> None:
        if name in self.key:
            raise RuleConfigError(problem(rule.rule_id, "is a key column: the sink merges by key, so it cannot be "
                                                        "dropped", key="drop_fields", field=name,
                                          table=self.table_name), rule_id=rule.rule_id, table=self.table_name,
                                  field=name)
        self.columns.pop(name, None)
        self.data.pop(name, None)
        self.before.pop(name, None)
        if self.unchanged is not None:
            for names in self.unchanged:
                if name in names:
                    names.remove(name)
                    self.unchanged_dirty = True

    # --- the result ---

    def result(self, columns: dict[str, list[tuple[str, str]]], lineage: list[ColumnLineage]) -> TableResult:
        meta = dict(self.meta)
        data = dict(self.data)
        before = dict(self.before)
        if self.filtered.any():
            gone = pa.array(self.filtered)
            meta["_cdc_op"] = pc.if_else(gone, pa.scalar(OP_DELETE), meta["_cdc_op"])
            moved = self._moved_key(gone, before)
            for name in list(data):
                if name in self.key:
                    if moved is not None:
                        data[name] = pc.if_else(moved, before[name], data[name])
                else:
                    data[name] = pc.if_else(gone, pa.scalar(None, pa.string()), data[name])
            if self.unchanged is not None:
                for i in np.flatnonzero(self.filtered):
                    if self.unchanged[i]:
                        self.unchanged[i] = []
                        self.unchanged_dirty = True
        if self.unchanged_dirty and self.unchanged is not None and "_cdc_unchanged" in meta:
            meta["_cdc_unchanged"] = pa.array([v or None for v in self.unchanged], meta["_cdc_unchanged"].type)
        names: list[pa.Field] = list(self.meta_fields)
        arrays: list[pa.Array] = [meta[f.name] for f in self.meta_fields]
        for name, values in data.items():
            names.append(pa.field(name, pa.string()))
            arrays.append(values)
        if self.has_before:
            for name in data:
                names.append(pa.field(BEFORE_PREFIX + name, pa.string()))
                arrays.append(before.get(name, pa.nulls(self.rows, pa.string())))
        table = pa.Table.from_arrays(arrays, schema=pa.schema(names))
        if self.dead.any():
            table = table.filter(pa.array(~self.dead))
        schema = TableSchema(self.schema.schema, self.schema.name, tuple(self.columns.values()), self.schema.dialect)
        counts = dict(self.counts, rows_out=table.num_rows, failed=int(self.dead.sum()),
                      filtered=int((self.filtered & ~self.dead).sum()))
        return TableResult(table, schema, sorted(self.failures, key=lambda f: (f.row, f.rule_id)), columns, counts,
                           self.paths, lineage)

    def _moved_key(self, gone: pa.Array, before: Mapping[str, pa.Array]) -> pa.Array | None:
        """Filtered rows whose before-image holds a whole key: they delete that (old) key."""
        if not self.key or not all(k in before for k in self.key):
            return None
        moved = gone
        for k in self.key:
            moved = pc.and_(moved, pc.is_valid(before[k]))
        return moved if pc.any(moved).as_py() else None


def scatter(subset: pa.Array, rows: np.ndarray, total: int) -> pa.Array:
    """A column of ``total`` rows holding ``subset`` at ``rows`` (sorted) and NULL elsewhere."""
    if len(rows) == total:
        return subset
    mask = np.zeros(total, dtype=bool)
    mask[rows] = True
    return pc.replace_with_mask(pa.nulls(total, pa.string()), pa.array(mask), subset)
