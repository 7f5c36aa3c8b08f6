"""Folding within a batch (DESIGN section 3, step 5): last write wins, TOAST gaps filled from earlier events."""

from __future__ import annotations

from airflow_provider_cdc.events import TableChangesBuilder
from airflow_provider_cdc.fold import fold_changes
from airflow_provider_cdc.tables import Column, TableSchema

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
    return {(r["shop"], r["id"]): (r["_cdc_op"], r["_cdc_seq"], r["name"], r["doc"], r["_cdc_unchanged"])
            for r in table.to_pylist()}


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


def test_numeric_and_citext_keys_fold_by_value():
    import pyarrow as pa

    from airflow_provider_cdc.fold import normalise_key_text

    numeric = Column("k", "numeric(10,2)", "decimal", primary_key=True)
    texts = pa.array(["1", "1.0", "1.00", "10", "10.50", "-0", "-0.00", "0.0", "-1.10", "100.", "NaN", None])
    assert normalise_key_text(texts, numeric).to_pylist() == [
        "1", "1", "1", "10", "10.5", "0", "0", "0", "-1.1", "100", "NaN", None]
    citext = Column("e", "citext", "text", primary_key=True)
    assert normalise_key_text(pa.array(["Bob@X.org"]), citext).to_pylist() == ["bob@x.org"]
    assert normalise_key_text(pa.array(["1.0"]), Column("k", "text")).to_pylist() == ["1.0"]

    schema = TableSchema("public", "p", (numeric, Column("v", "text")))
    builder = TableChangesBuilder(schema)
    for seq, key in enumerate(["1", "1.0", "1.00", "2.50", "2.5"], start=1):
        builder.append("u", seq, 0, None, None, [key, f"v{seq}"])
    folded = fold_changes(builder.finish(), ["k"], schema.columns)
    assert sorted((r["k"], r["v"]) for r in folded.to_pylist()) == [("1.00", "v3"), ("2.5", "v5")]


def test_a_key_change_takes_missing_values_from_the_old_keys_history():
    schema = TableSchema("public", "b", (Column("id", "int", "integer", False, True), Column("doc", "text")))
    builder = TableChangesBuilder(schema)
    builder.append("u", 1, 0, None, None, ["1", "from batch"])
    builder.append("d", 2, 0, None, None, ["1", None])
    builder.append("c", 3, 0, None, None, ["2", None], before=["1", None], unchanged=["doc"])
    builder.append("d", 4, 0, None, None, ["2", None])
    builder.append("c", 5, 0, None, None, ["3", None], before=["2", None], unchanged=["doc"])
    builder.append("d", 6, 0, None, None, ["8", None])
    builder.append("c", 7, 0, None, None, ["9", None], before=["8", None], unchanged=["doc"])
    folded = {r["id"]: r for r in fold_changes(builder.finish(), ["id"], schema.columns).to_pylist()}
    assert (folded["3"]["doc"], folded["3"]["_cdc_unchanged"], folded["3"]["_cdc_moved"]) == ("from batch", None, True)
    # Nothing in the batch: the sink's row under the old key 8 has it.
    assert (folded["9"]["_cdc_unchanged"], folded["9"]["_cdc_moved"], folded["9"]["_cdc_before:id"]) == (
        ["doc"], True, "8")
