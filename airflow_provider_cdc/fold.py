"""Folding a run of change events to one per key: the exactly-once protocol's step 5 (DESIGN section 3).

Several changes to one key in a batch are folded in order: the last write wins, and a delete after an insert is a
delete (a no-op where the sink never had the row). Pure Arrow, no database, so every sink folds the same way.

Keys are compared as the database compares them, not as text: ``1.0`` and ``1.00`` are one ``numeric`` key and
``Bob`` and ``bob`` one ``citext`` key. Folding them apart would stage two rows that a sink's ``MERGE`` matches to the
same target row, which PostgreSQL refuses ("cannot affect row a second time") and other sinks apply in a random order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_cdc.events import BEFORE_PREFIX, OP_DELETE, OP_TRUNCATE
from airflow_provider_cdc.tables import BOOKKEEPING_COLUMNS, RESERVED_PREFIX, Column

_KEY_SEPARATOR = "\x00"  # source text never contains NUL, so joined composite keys cannot collide
MOVED_COLUMN = "_cdc_moved"  # fold output: the row's identity came from another key (see fold_changes)

_DECIMAL_TYPES = ("numeric", "decimal")


@dataclasses.dataclass
class TablePlan:
    """One table's events as a sink applies them: replays dropped, in ``seq`` order, split at truncates."""

    changes: pa.Table
    stats: dict[str, int]

    def columns_for(self, sink_columns: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """The source columns to write (as the batch carries them: a column dropped within the batch may still be
        there, holding the values of rows written before the drop), limited to those the sink has; and the sink
        columns the source no longer has (every row the merge writes gets NULL there, consistently)."""
        columns = [name for name in self.changes.column_names
                   if not name.startswith(RESERVED_PREFIX) and name in sink_columns]
        present = set(columns)
        gone = [name for name in sink_columns if name not in present and name not in BOOKKEEPING_COLUMNS]
        return columns, gone

    def parts(self) -> Iterator[tuple[str, Any]]:
        """``("merge", segment)`` for each run of events between truncates and ``("truncate", (seq, ts_ms))`` for
        each truncate, in ``seq`` order."""
        changes = self.changes
        truncates = pc.indices_nonzero(pc.equal(changes["_cdc_op"], OP_TRUNCATE)).to_pylist()
        start = 0
        for index in [*truncates, changes.num_rows]:
            if index > start:
                yield "merge", changes.slice(start, index - start)
            if index < changes.num_rows:
                yield "truncate", (changes["_cdc_seq"][index].as_py(), changes["_cdc_ts_ms"][index].as_py())
            start = index + 1


def plan_table(changes: pa.Table, high_water: int) -> TablePlan:
    """``changes`` without the events at or below ``high_water`` (loaded by an earlier batch), in ``seq`` order."""
    stats = {"events": changes.num_rows, "skipped_replayed": 0, "staged": 0, "upserted": 0, "deleted": 0,
             "truncates": 0, "truncated_rows": 0}
    if high_water:
        changes = changes.filter(pc.greater(changes["_cdc_seq"], high_water))
        stats["skipped_replayed"] = stats["events"] - changes.num_rows
    if changes.num_rows:
        changes = changes.sort_by("_cdc_seq")
    return TablePlan(changes, stats)


def fold_changes(segment: pa.Table, key: list[str], columns: Iterable[Column] = ()) -> pa.Table:
    """Reduce a run of events (no truncate inside) to the last event per key, in ``seq`` order.

    Last write wins: every event carries the full row image the sink must reach, so the last one is the result,
    and an insert followed by a delete is a delete (a no-op when the sink never had the row). The one exception is
    a column the last event did not send (``_cdc_unchanged``, PostgreSQL's unchanged TOAST): it is taken from the
    latest earlier event of the same row that did send it, else left in ``_cdc_unchanged`` for the sink.

    "The same row" follows key changes: an update that changed the key arrives as a delete of the old key and a
    create of the new one whose ``_cdc_before:<key>`` holds the old key, so its missing values are looked up under
    the old key (and that key's own old key, for chains ``1 -> 2 -> 3``), never under the new key, whose earlier
    events belong to another row. Such a row comes out with ``_cdc_moved`` true and, when values are still
    missing, ``_cdc_before:<key>`` set to the key the sink holds the row under (NULL when no sink row can have
    them: the sink must then refuse the row rather than write a gap).

    ``columns`` are the table's columns (at least the key's): their types say how keys compare (see
    :func:`key_arrays`). Without them keys compare as text.
    """
    types = {col.name: col for col in columns}
    segment = segment.sort_by("_cdc_seq")
    segment = segment.append_column("_cdc_row", pa.array(range(segment.num_rows), pa.int64()))
    norm_names = [f"_cdc_k{i}" for i in range(len(key))]
    keyed = pa.table(dict(zip(norm_names, key_arrays(segment, key, types)))).append_column(
        "_cdc_row", segment["_cdc_row"])
    last = keyed.group_by(norm_names, use_threads=False).aggregate([("_cdc_row", "max")])
    rows = last["_cdc_row_max"]
    folded = segment.take(pc.take(rows, pc.sort_indices(rows)))
    folded = folded.append_column(MOVED_COLUMN, pa.array([False] * folded.num_rows, pa.bool_()))
    needs_fill = pc.fill_null(
        pc.and_(pc.greater(pc.list_value_length(folded["_cdc_unchanged"]), 0),
                pc.not_equal(folded["_cdc_op"], OP_DELETE)),
        False,
    )
    if pc.any(needs_fill).as_py():
        folded = _fill_unchanged(segment, folded, needs_fill, key, types)
    return folded.drop_columns(["_cdc_row"])


def key_arrays(table: pa.Table, names: Sequence[str], types: dict[str, Column],
               prefix: str = "") -> list[pa.ChunkedArray]:
    """The key columns of ``table`` (``prefix + name``) in a form where equal keys have equal text.

    ``numeric``: trailing fractional zeros and a trailing point go, and ``-0`` is ``0`` (PostgreSQL prints
    ``1.0`` and ``1.00`` for values it finds equal); ``citext``: lower case, as citext compares.
    """
    return [normalise_key_text(table[prefix + name], types.get(name)) for name in names]


def normalise_key_text(values: pa.ChunkedArray | pa.Array, column: Column | None) -> pa.ChunkedArray | pa.Array:
    """One key column's text, normalised so that keys the database finds equal are equal text."""
    kind = _key_kind(column)
    if kind == "decimal":
        values = pc.replace_substring_regex(values, r"^(-?\d*\.\d*?)0+$", r"\1")
        values = pc.replace_substring_regex(values, r"^(-?\d*)\.$", r"\1")
        return pc.replace_substring_regex(values, r"^-(0*)$", r"\1")
    if kind == "citext":
        return pc.utf8_lower(values)
    return values


def _key_kind(column: Column | None) -> str:
    if column is None:
        return "text"
    base = (column.source_type or "").strip().lower().split(".")[-1].strip('"')
    if base.endswith("[]"):
        return "text"
    if base == "citext":
        return "citext"
    if base.split("(")[0].strip() in _DECIMAL_TYPES or (not column.source_type and column.logical_type == "decimal"):
        return "decimal"
    return "text"


def _row_key(row: dict[str, Any], names: Sequence[str], prefix: str = "") -> tuple[Any, ...]:
    return tuple(row.get(prefix + name) for name in names)


def _fill_unchanged(
    segment: pa.Table, folded: pa.Table, needs_fill: pa.ChunkedArray, key: list[str], types: dict[str, Column]
) -> pa.Table:
    """Per-row Python, but only for the keys whose last event lacks some values (rare, and short-lived)."""
    before_names = [BEFORE_PREFIX + name for name in key]
    has_before = all(name in segment.column_names for name in before_names)
    wanted_columns = sorted({c for lst in folded.filter(needs_fill)["_cdc_unchanged"].to_pylist() for c in lst or ()})
    keep = ["_cdc_op", "_cdc_seq", "_cdc_unchanged", *[c for c in wanted_columns if c in segment.column_names]]
    history_table = segment.select(keep)
    for i, array in enumerate(key_arrays(segment, key, types)):
        history_table = history_table.append_column(f"_cdc_k{i}", array)
    if has_before:
        for i, array in enumerate(key_arrays(segment, key, types, BEFORE_PREFIX)):
            history_table = history_table.append_column(f"_cdc_b{i}", array)
    knames = [f"_cdc_k{i}" for i in range(len(key))]
    bnames = [f"_cdc_b{i}" for i in range(len(key))]
    earlier: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for event in history_table.to_pylist():  # in seq order
        earlier.setdefault(_row_key(event, knames), []).append(event)

    def moved_from(event: dict[str, Any]) -> tuple[Any, ...] | None:
        if not has_before or event["_cdc_op"] == OP_DELETE:
            return None
        old = _row_key(event, bnames)
        if any(v is None for v in old) or old == _row_key(event, knames):
            return None
        return old

    def previous(key_value: tuple[Any, ...], seq: int) -> dict[str, Any] | None:
        for event in reversed(earlier.get(key_value, [])):
            if event["_cdc_seq"] < seq:
                return event
        return None

    targets = folded.filter(needs_fill)
    target_keys = [dict(zip(knames, arrays))
                   for arrays in zip(*(a.to_pylist() for a in key_arrays(targets, key, types)))]
    target_rows = targets.to_pylist()
    filled = []
    for row, normal in zip(target_rows, target_keys):
        me = {**row, **normal}
        if has_before:
            me.update(zip(bnames, (normalise_key_text(pa.array([row.get(n)], pa.string()), types.get(k))[0].as_py()
                                   for n, k in zip(before_names, key))))
        still_missing = []
        origin: tuple[Any, ...] | None = None
        moved = False
        for column in row["_cdc_unchanged"]:
            value_found, value, moved_here, origin_here = _resolve(me, column, knames, moved_from, previous)
            moved = moved or moved_here
            if value_found:
                row[column] = value
            else:
                still_missing.append(column)
                origin = origin_here
        row["_cdc_unchanged"] = still_missing or None
        row[MOVED_COLUMN] = moved
        if has_before and moved:
            # Where the sink holds this row's missing values (NULL: nowhere, the sink must refuse the row).
            # Normalised text casts to the same key value in the sink (1.0 -> 1, Bob -> bob for citext).
            for name, value in zip(before_names, origin if still_missing and origin else [None] * len(key)):
                row[name] = value
        filled.append(row)
    return pa.concat_tables([
        folded.filter(pc.invert(needs_fill)),
        pa.Table.from_pylist(filled, schema=folded.schema),
    ])


def _resolve(
    target: dict[str, Any],
    column: str,
    knames: list[str],
    moved_from: Callable[[dict[str, Any]], tuple[Any, ...] | None],
    previous: Callable[[tuple[Any, ...], int], dict[str, Any] | None],
) -> tuple[bool, Any, bool, tuple[Any, ...] | None]:
    """Walk back through the row's history (across key changes) to the latest event that sent ``column``.

    Returns ``(found, value, moved, origin)``: ``origin`` is the (normalised) key under which the sink holds the
    row when the batch has no value, None when no sink row can hold it (a real delete came first).
    """
    moved, skip_delete = False, False
    key_value = _row_key(target, knames)
    old = moved_from(target)
    if old is not None:
        key_value, moved, skip_delete = old, True, True
    seq = target["_cdc_seq"]
    while True:
        prev = previous(key_value, seq)
        if prev is None:
            return False, None, moved, key_value
        seq = prev["_cdc_seq"]
        if prev["_cdc_op"] == OP_DELETE:
            if skip_delete:  # the delete half of the key change we are following
                skip_delete = False
                continue
            return False, None, moved, None  # what came before a delete is not this row's value
        skip_delete = False
        if column not in (prev["_cdc_unchanged"] or ()):
            return True, prev.get(column), moved, None
        old = moved_from(prev)
        if old is not None:
            key_value, moved, skip_delete = old, True, True

