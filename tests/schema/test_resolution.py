"""Reading changes written with one schema version with another (Avro's resolution, on a batch's columns)."""

from __future__ import annotations

import pyarrow as pa
from cdc_testing import batch_of

from airflow_provider_cdc.events import META_COLUMNS
from airflow_provider_cdc.schema.resolution import resolve_table, writer_columns
from airflow_provider_cdc.tables import Column, TableSchema

ID = Column("id", "bigint", "integer", nullable=False, primary_key=True, ordinal=1)
WRITER = TableSchema("public", "users", (
    ID, Column("email", "text", "text", ordinal=2), Column("old", "text", "text", ordinal=3)), "postgresql")
# email renamed to mail (same ordinal), old dropped, tier added with a backfill, note added without one.
READER = TableSchema("public", "users", (
    ID, Column("mail", "text", "text", ordinal=2), Column("tier", "text", "text", ordinal=4, backfill="basic"),
    Column("note", "text", "text", ordinal=5)), "postgresql")


def events(*items: tuple) -> pa.Table:
    return batch_of(list(items), WRITER).tables["public.users"]


def rows(table: pa.Table, *columns: str) -> list[tuple]:
    data = table.to_pydict()
    return list(zip(*(data[name] for name in columns)))


def test_writer_columns_by_ordinal_and_by_name() -> None:
    assert writer_columns(WRITER, READER) == {"id": "id", "mail": "email", "tier": None, "note": None}
    assert writer_columns(WRITER, READER, by_ordinal=False) == {"id": "id", "mail": None, "tier": None, "note": None}


def test_a_name_both_have_wins_over_an_ordinal() -> None:
    """The writer's column at the reader column's ordinal is still in the reader by name: not a rename."""
    reader = TableSchema("public", "users", (ID, Column("email", "text", "text", ordinal=6),
                                             Column("mail", "text", "text", ordinal=2)))
    assert writer_columns(WRITER, reader) == {"id": "id", "email": "email", "mail": None}


def test_resolve_renames_fills_defaults_and_drops() -> None:
    written = events(("c", 1, {"id": "1", "email": "a@x", "old": "o1"}), ("c", 2, {"id": "2", "email": None}))
    read = resolve_table(written, WRITER, READER)
    assert read.column_names == [*META_COLUMNS, "id", "mail", "tier", "note"]
    assert rows(read, "_cdc_seq", "id", "mail", "tier", "note") == [
        (1, "1", "a@x", "basic", None), (2, "2", None, "basic", None)]
    assert all(read.schema.field(name).type == pa.string() for name in ("id", "mail", "tier", "note"))
    # bookkeeping passes through untouched
    assert read["_cdc_op"].to_pylist() == ["c", "c"] and read["_cdc_pos"].to_pylist() == written["_cdc_pos"].to_pylist()


def test_resolve_by_name_only_leaves_a_renamed_column_null() -> None:
    read = resolve_table(events(("c", 1, {"id": "1", "email": "a@x"})), WRITER, READER, by_ordinal=False)
    assert rows(read, "id", "mail", "tier") == [("1", None, "basic")]


def test_without_defaults_a_column_the_writer_lacks_is_null() -> None:
    read = resolve_table(events(("c", 1, {"id": "1", "email": "a@x"})), WRITER, READER, use_defaults=False)
    assert rows(read, "id", "mail", "tier", "note") == [("1", "a@x", None, None)]


def test_before_images_follow_the_same_mapping() -> None:
    written = events(("u", 3, {"id": "1", "email": "new@x", "old": "o2"}, None,
                      {"id": "1", "email": "old@x", "old": "o1"}))
    read = resolve_table(written, WRITER, READER)
    assert read.column_names == [*META_COLUMNS, "id", "mail", "tier", "note", "_cdc_before:id", "_cdc_before:mail",
                                 "_cdc_before:tier", "_cdc_before:note"]
    assert rows(read, "mail", "_cdc_before:mail", "_cdc_before:tier", "_cdc_before:note") == [
        ("new@x", "old@x", "basic", None)]
    assert "_cdc_before:old" not in read.column_names


def test_without_before_images_none_are_made_up() -> None:
    read = resolve_table(events(("c", 1, {"id": "1"})), WRITER, READER)
    assert not [name for name in read.column_names if name.startswith("_cdc_before:")]


def test_unchanged_columns_are_renamed_and_a_dropped_one_leaves_the_list() -> None:
    written = events(("u", 4, {"id": "1", "old": "o"}, ["email"]), ("u", 5, {"id": "2"}, ["email", "old"]),
                     ("u", 6, {"id": "3", "email": "c@x", "old": "o"}))
    read = resolve_table(written, WRITER, READER)
    assert read["_cdc_unchanged"].to_pylist() == [["mail"], ["mail"], None]
    assert read.schema.field("_cdc_unchanged").type == pa.list_(pa.string())
    same = resolve_table(written, WRITER, WRITER)
    assert same["_cdc_unchanged"].to_pylist() == [["email"], ["email", "old"], None]


def test_an_empty_table_resolves_to_an_empty_table_of_the_reader() -> None:
    empty = events(("c", 1, {"id": "1"})).slice(0, 0)
    read = resolve_table(empty, WRITER, READER)
    assert read.num_rows == 0
    assert read.column_names == [*META_COLUMNS, "id", "mail", "tier", "note"]
