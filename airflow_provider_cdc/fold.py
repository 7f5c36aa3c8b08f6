"""Folding a run of change events to one per key: the exactly-once protocol's step 5 (DESIGN section 3).

Several changes to one key in a batch are folded in order: the last write wins, and a delete after an insert is a
delete (a no-op where the sink never had the row). Pure Arrow, no database, so every sink folds the same way.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_cdc.events import OP_DELETE

_KEY_SEPARATOR = "\x00"  # source text never contains NUL, so joined composite keys cannot collide


def fold_changes(segment: pa.Table, key: list[str]) -> pa.Table:
    """Reduce a run of events (no truncate inside) to the last event per key, in ``seq`` order.

    Last write wins: every event carries the full row image the sink must reach, so the last one is the result,
    and an insert followed by a delete is a delete (a no-op when the sink never had the row). The one exception is
    a column the last event did not send (``_unchanged``, PostgreSQL's unchanged TOAST): it is taken from the latest
    earlier event of the key that did send it, else left in ``_unchanged`` for the sink to keep its own value.
    """
    segment = segment.sort_by("_cdc_seq")
    segment = segment.append_column("_cdc_row", pa.array(range(segment.num_rows), pa.int64()))
    last = segment.select([*key, "_cdc_row"]).group_by(key, use_threads=False).aggregate([("_cdc_row", "max")])
    rows = last["_cdc_row_max"]
    folded = segment.take(pc.take(rows, pc.sort_indices(rows)))
    needs_fill = pc.fill_null(
        pc.and_(pc.greater(pc.list_value_length(folded["_cdc_unchanged"]), 0),
                pc.not_equal(folded["_cdc_op"], OP_DELETE)),
        False,
    )
    if pc.any(needs_fill).as_py():
        folded = _fill_unchanged(segment, folded, needs_fill, key)
    return folded.drop_columns(["_cdc_row"])


def _key_array(table: pa.Table, key: list[str]) -> pa.ChunkedArray | pa.Array:
    if len(key) == 1:
        return table[key[0]]
    return pc.binary_join_element_wise(*(table[name] for name in key), _KEY_SEPARATOR)


def _fill_unchanged(segment: pa.Table, folded: pa.Table, needs_fill: pa.ChunkedArray, key: list[str]) -> pa.Table:
    """Per-row Python, but only for the keys whose last event lacks some values (rare, and short-lived)."""
    targets = folded.filter(needs_fill)
    wanted = _key_array(targets, key)
    if isinstance(wanted, pa.ChunkedArray):
        wanted = wanted.combine_chunks()
    history = segment.filter(pc.is_in(_key_array(segment, key), value_set=wanted))
    earlier: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for event in history.to_pylist():  # in seq order
        earlier.setdefault(tuple(event[name] for name in key), []).append(event)
    filled = []
    for row in targets.to_pylist():
        events = [e for e in earlier.get(tuple(row[name] for name in key), []) if e["_cdc_seq"] < row["_cdc_seq"]]
        still_missing = []
        for column in row["_cdc_unchanged"]:
            for event in reversed(events):
                if event["_cdc_op"] == OP_DELETE:
                    still_missing.append(column)  # what came before a delete is not this row's value
                    break
                if column not in (event["_cdc_unchanged"] or ()):
                    row[column] = event[column]
                    break
            else:
                still_missing.append(column)
        row["_cdc_unchanged"] = still_missing or None
        filled.append(row)
    return pa.concat_tables([
        folded.filter(pc.invert(needs_fill)),
        pa.Table.from_pylist(filled, schema=folded.schema),
    ])
