"""Folding within a batch (DESIGN section 3, step 5): last write wins, TOAST gaps filled from earlier events."""

from __future__ import annotations

from airflow_provider_cdc.events import Column, TableChangesBuilder, TableSchema
from airflow_provider_cdc.fold import fold_changes

ITEMS = TableSchema("public", "items", (
    Column("shop", "text", "text", False, True), Column("id", "int", "integer", False, True),
    Column("name", "text"), Column("doc", "text"),
))


def events(*rows):
    builder = TableChangesBuilder(ITEMS)
    for op, seq, values, unchanged in rows:
        builder.append(op, seq, 0, None, None, list(values), unchanged=unchanged)
    return builder.finish()


def by_key(table) -> dict:
    return {(r["shop"], r["id"]): (r["_cdc_op"], r["_cdc_seq"], r["name"], r["doc"], r["_cdc_unchanged"]) for r in table.to_pylist()}


def test_last_write_wins_per_composite_key_and_delete_after_insert_is_a_delete():
    folded = fold_changes(events(
        ("c", 3, ("a", "1", "first", "x"), None),
        ("u", 5, ("a", "1", "second", "x"), None),
        ("c", 4, ("b", "1", "other shop", None), None),  # same id, other shop: another key
        ("c", 6, ("a", "2", "gone", None), None),
        ("d", 7, ("a", "2", None, None), None),
    ), ["shop", "id"])
    assert by_key(folded) == {
        ("a", "1"): ("u", 5, "second", "x", None),
        ("b", "1"): ("c", 4, "other shop", None, None),
        ("a", "2"): ("d", 7, None, None, None),
    }


def test_unchanged_values_come_from_the_latest_earlier_event_that_sent_them():
    folded = fold_changes(events(
        ("u", 1, ("a", "1", "n1", "big v1"), None),
        ("u", 2, ("a", "1", "n2", "big v2"), None),
        ("u", 3, ("a", "1", "n3", None), ["doc"]),
        ("u", 4, ("a", "9", "lonely", None), ["doc"]),  # nothing earlier: the sink keeps its value
        ("d", 5, ("a", "7", None, None), None),
        ("u", 6, ("a", "7", "back", None), ["doc"]),  # before it a delete: no value to take
    ), ["shop", "id"])
    assert by_key(folded) == {
        ("a", "1"): ("u", 3, "n3", "big v2", None),
        ("a", "9"): ("u", 4, "lonely", None, ["doc"]),
        ("a", "7"): ("u", 6, "back", None, ["doc"]),
    }
