"""TableSchema -> Avro record schema: types from the value contract, defaults in Avro's physical encoding, names,
aliases for renames, and the identity of a version (schema_key) versus Avro's fingerprint."""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

import avro.schema
import pytest

from airflow_provider_cdc.schema.avro import (
    avro_field,
    avro_name,
    avro_schema,
    canonical_form,
    column_of,
    field_names,
    fingerprint,
    parse,
    schema_key,
)
from airflow_provider_cdc.schema.compatibility import check
from airflow_provider_cdc.tables import Column, TableSchema
from airflow_provider_cdc.values import LOGICAL_TYPES

ID = Column("id", "bigint", "integer", nullable=False, primary_key=True, ordinal=1)
AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def table(*columns: Column, name: str = "items", dialect: str = "postgresql") -> TableSchema:
    return TableSchema("public", name, (ID, *columns), dialect)


def field(doc: dict[str, Any], column: str) -> dict[str, Any]:
    """The field of ``doc`` that stands for source column ``column``."""
    matches = [item for item in doc["fields"] if column_of(item) == column]
    assert len(matches) == 1, f"{column!r} is in {len(matches)} fields of {doc['fields']}"
    return matches[0]


def parsed(doc: dict[str, Any]) -> avro.schema.RecordSchema:
    """The schema as the Avro library reads it (local-timestamp-micros is unknown to avro 1.12's Python reader: it
    keeps the long and warns, which is what Avro's spec asks of a reader that lacks a logical type)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", avro.errors.IgnoredLogicalType)
        schema = avro.schema.parse(json.dumps(doc))
    assert isinstance(schema, avro.schema.RecordSchema)
    return schema


# --- types ------------------------------------------------------------------------------------------------------

TYPE_CASES: list[tuple[str, Column, Any]] = [
    ("integer", Column("c", "bigint", "integer", nullable=False), "long"),
    ("decimal", Column("c", "numeric(12,2)", "decimal", nullable=False, precision=12, scale=2),
     {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}),
    ("float", Column("c", "double precision", "float", nullable=False), "double"),
    ("boolean", Column("c", "boolean", "boolean", nullable=False), "boolean"),
    ("text", Column("c", "text", "text", nullable=False), "string"),
    ("timestamptz", Column("c", "timestamp with time zone", "timestamptz", nullable=False),
     {"type": "long", "logicalType": "timestamp-micros"}),
    ("timestamp", Column("c", "timestamp without time zone", "timestamp", nullable=False),
     {"type": "long", "logicalType": "local-timestamp-micros"}),
    ("date", Column("c", "date", "date", nullable=False), {"type": "int", "logicalType": "date"}),
    ("time", Column("c", "time without time zone", "time", nullable=False),
     {"type": "long", "logicalType": "time-micros"}),
    ("json", Column("c", "jsonb", "json", nullable=False), "string"),
    ("binary", Column("c", "bytea", "binary", nullable=False), "bytes"),
    ("uuid", Column("c", "uuid", "uuid", nullable=False), {"type": "string", "logicalType": "uuid"}),
    ("other", Column("c", "int4range", "other", nullable=False), "string"),
]


def test_the_type_cases_cover_every_logical_type_of_the_value_contract() -> None:
    assert sorted(case[0] for case in TYPE_CASES) == sorted(LOGICAL_TYPES)


@pytest.mark.parametrize(("logical", "column", "expected"), TYPE_CASES, ids=[case[0] for case in TYPE_CASES])
def test_each_logical_type_maps_to_its_documented_avro_type(logical: str, column: Column, expected: Any) -> None:
    doc = avro_schema(table(column), source_id="shop")
    out = field(doc, "c")
    assert out["type"] == expected
    assert out["cdc.logical_type"] == logical
    assert out["cdc.source_type"] == column.source_type
    assert "default" not in out  # NOT NULL, no backfill: a reader of older data has nothing to fill in
    avro_type = parsed(doc).fields_dict["c"].type
    physical = expected if isinstance(expected, str) else expected["type"]
    assert avro_type.type == physical
    if isinstance(expected, dict) and logical != "timestamp":
        assert avro_type.get_prop("logicalType") == expected["logicalType"]


def test_an_unconstrained_decimal_is_a_string_and_a_real_is_a_float() -> None:
    doc = avro_schema(table(Column("n", "numeric", "decimal", nullable=False),
                            Column("r", "real", "float", nullable=False),
                            Column("f4", "float4", "float", nullable=False),
                            Column("mf", "float", "float", nullable=False)), source_id="shop")
    assert field(doc, "n")["type"] == "string"  # any scale: only text stays exact
    assert field(doc, "r")["type"] == "float"
    assert field(doc, "f4")["type"] == "float"
    assert field(doc, "mf")["type"] == "float"  # MySQL FLOAT is 4 bytes
    parsed(doc)


@pytest.mark.parametrize("source_type", [
    "smallint", "integer", "int2", "int4", "serial", "smallserial",  # PostgreSQL
    "int", "int(11)", "tinyint", "tinyint(1)", "mediumint", "smallint unsigned", "tinyint(3) unsigned",  # MySQL
    "mediumint unsigned",  # at most 16777215: fits in 32 bits
    "SMALLINT", "Integer",
])
def test_integers_of_at_most_32_bits_are_avro_int(source_type: str) -> None:
    assert avro_field(Column("c", source_type, "integer", nullable=False), "c")["type"] == "int"


@pytest.mark.parametrize("source_type", [
    "bigint", "int8", "bigserial",  # PostgreSQL
    "int unsigned", "int(10) unsigned", "integer unsigned", "bigint unsigned", "bigint(20)", "INT UNSIGNED",  # MySQL
    "int unsigned zerofill",
])
def test_integers_wider_than_32_bits_are_avro_long(source_type: str) -> None:
    assert avro_field(Column("c", source_type, "integer", nullable=False), "c")["type"] == "long"


# --- nullability and defaults -----------------------------------------------------------------------------------

def test_a_nullable_column_is_a_union_with_null_first_and_default_null() -> None:
    doc = avro_schema(table(Column("note", "text", "text", nullable=True),
                            Column("at", "date", "date", nullable=True)), source_id="shop")
    assert field(doc, "note")["type"] == ["null", "string"]
    assert field(doc, "note")["default"] is None
    assert field(doc, "at")["type"] == ["null", {"type": "int", "logicalType": "date"}]
    assert field(doc, "id")["type"] == "long" and field(doc, "id")["cdc.key"] is True
    schema = parsed(doc)
    assert schema.fields_dict["note"].has_default and schema.fields_dict["note"].default is None
    assert not schema.fields_dict["id"].has_default


def test_a_nullable_key_column_is_not_a_union() -> None:
    key = Column("code", "text", "text", nullable=True, primary_key=True, ordinal=1)
    doc = avro_schema(TableSchema("public", "codes", (key,)), source_id="shop")
    assert doc["fields"][0]["type"] == "string"


BACKFILLS: list[tuple[Column, Any]] = [
    (Column("c", "date", "date", nullable=False, backfill="2024-05-01"), 19844),  # days since 1970-01-01
    (Column("c", "date", "date", nullable=False, backfill="1969-12-31"), -1),
    (Column("c", "timestamp with time zone", "timestamptz", nullable=False, backfill="2024-05-01T12:00:00.25Z"),
     1_714_564_800_250_000),  # microseconds since the epoch, UTC
    (Column("c", "timestamp", "timestamp", nullable=False, backfill="2024-05-01T12:00:00.25"), 1_714_564_800_250_000),
    (Column("c", "time", "time", nullable=False, backfill="12:00:00.25"), 43_200_250_000),
    (Column("c", "numeric(12,2)", "decimal", nullable=False, backfill="1.5", precision=12, scale=2), "\x00\x96"),
    (Column("c", "numeric(12,2)", "decimal", nullable=False, backfill="-1.5", precision=12, scale=2), "\xff\x6a"),
    (Column("c", "numeric(12,2)", "decimal", nullable=False, backfill="0", precision=12, scale=2), "\x00"),
    (Column("c", "numeric(5,0)", "decimal", nullable=False, backfill="127", precision=5, scale=0), "\x7f"),
    (Column("c", "numeric(5,0)", "decimal", nullable=False, backfill="128", precision=5, scale=0), "\x00\x80"),
    (Column("c", "bytea", "binary", nullable=False, backfill="deadbeef"), "\xde\xad\xbe\xef"),
    (Column("c", "integer", "integer", nullable=False, backfill="-42"), -42),
    (Column("c", "double precision", "float", nullable=False, backfill="1.5"), 1.5),
    (Column("c", "boolean", "boolean", nullable=False, backfill="true"), True),
    (Column("c", "text", "text", nullable=False, backfill="new"), "new"),
    (Column("c", "jsonb", "json", nullable=False, backfill='{"a": 1}'), '{"a": 1}'),
    (Column("c", "uuid", "uuid", nullable=False, backfill="6f1c7d2e-0000-4000-8000-000000000001"),
     "6f1c7d2e-0000-4000-8000-000000000001"),
    (Column("c", "numeric", "decimal", nullable=False, backfill="1.2300"), "1.2300"),  # unconstrained: text
]


@pytest.mark.parametrize(("column", "expected"), BACKFILLS,
                         ids=[f"{c.logical_type}:{c.backfill}" for c, _ in BACKFILLS])
def test_a_backfill_is_the_default_in_avros_physical_encoding(column: Column, expected: Any) -> None:
    doc = avro_schema(table(column), source_id="shop")
    out = field(doc, "c")
    assert out["default"] == expected
    assert type(out["default"]) is type(expected)
    assert out["cdc.backfill"] == column.backfill
    schema = parsed(doc)
    assert schema.fields_dict["c"].has_default
    # The stored document is JSON: the default survives a strict JSON round trip unchanged.
    assert json.loads(json.dumps(doc, allow_nan=False))["fields"][1]["default"] == expected


def test_a_decimal_default_is_the_twos_complement_of_the_unscaled_value_as_latin1_text() -> None:
    column = Column("c", "numeric(20,4)", "decimal", nullable=False, backfill="-123456789.0125", precision=20, scale=4)
    default = field(avro_schema(table(column), source_id="shop"), "c")["default"]
    assert int.from_bytes(default.encode("latin-1"), "big", signed=True) == -1_234_567_890_125


def test_a_nullable_column_with_a_backfill_puts_the_backfills_type_first_in_the_union() -> None:
    column = Column("c", "date", "date", nullable=True, backfill="2024-05-01")
    out = field(avro_schema(table(column), source_id="shop"), "c")
    assert out["type"] == [{"type": "int", "logicalType": "date"}, "null"]
    assert out["default"] == 19844


@pytest.mark.parametrize("column", [
    Column("c", "date", "date", nullable=False, backfill="infinity"),
    Column("c", "timestamp with time zone", "timestamptz", nullable=False, backfill="-infinity"),
    Column("c", "timestamp", "timestamp", nullable=False, backfill="infinity"),
    Column("c", "numeric(12,2)", "decimal", nullable=False, backfill="NaN", precision=12, scale=2),
    Column("c", "numeric(12,2)", "decimal", nullable=False, backfill="Infinity", precision=12, scale=2),
    Column("c", "numeric(12,2)", "decimal", nullable=False, backfill="1.555", precision=12, scale=2),
    Column("c", "double precision", "float", nullable=False, backfill="NaN"),
    Column("c", "real", "float", nullable=False, backfill="-Infinity"),
], ids=lambda c: f"{c.source_type}:{c.backfill}")
def test_a_backfill_with_no_avro_form_keeps_no_default(column: Column) -> None:
    doc = avro_schema(table(column), source_id="shop")
    out = field(doc, "c")
    assert "default" not in out
    assert out["cdc.backfill"] == column.backfill  # still known to the sink
    json.dumps(doc, allow_nan=False)  # the document is strict JSON (PostgreSQL jsonb refuses NaN)
    assert not parsed(doc).fields_dict["c"].has_default
    nullable = avro_schema(table(column.__class__(**{**column.to_dict(), "nullable": True})), source_id="shop")
    assert field(nullable, "c")["default"] is None
    assert field(nullable, "c")["type"][0] == "null"


# --- names ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("email", "email"),
    ("Order Date", "Order_Date"),
    ("1st", "_1st"),
    ("prénom", "pr_nom"),
    ("名前", "__"),
    ("a-b.c", "a_b_c"),
    ("_ok", "_ok"),
])
def test_avro_name_keeps_valid_names_and_replaces_the_rest(name: str, expected: str) -> None:
    assert avro_name(name) == expected
    assert AVRO_NAME.fullmatch(avro_name(name))


def test_columns_that_are_not_avro_names_get_unique_fields_that_keep_the_column_name() -> None:
    names = ["a b", "a_b", "a-b", "a_b_2", "1st", "prénom", "prènom", "名前", "住所", "A", "a", "Order Date"]
    doc = avro_schema(table(*(Column(n, "text", "text", ordinal=i + 2) for i, n in enumerate(names))),
                      source_id="shop")
    fields = [item["name"] for item in doc["fields"]]
    assert len(set(fields)) == len(fields)
    assert all(AVRO_NAME.fullmatch(item) for item in fields)
    assert [column_of(item) for item in doc["fields"]] == ["id", *names]
    # A valid Avro name is its own field name, whatever other columns the table has (case-only clashes are fine).
    assert {item["name"] for item in doc["fields"] if "cdc.column" not in item} == {"id", "a_b", "a_b_2", "A", "a"}
    assert field(doc, "Order Date")["name"] == "Order_Date"
    assert field(doc, "prénom")["cdc.column"] == "prénom"
    parsed(doc)
    # Deterministic: the same table gives the same fields, and the same document.
    again = avro_schema(table(*(Column(n, "text", "text", ordinal=i + 2) for i, n in enumerate(names))),
                        source_id="shop")
    assert again == doc and schema_key(again) == schema_key(doc)


def test_a_valid_column_name_keeps_its_field_when_a_clashing_column_comes_and_goes() -> None:
    spaced = Column("a b", "text", "text", nullable=True, ordinal=2)
    plain = Column("a_b", "bigint", "integer", nullable=False, ordinal=3)
    assert field_names([spaced, plain]) == {"a b": "a_b_2", "a_b": "a_b"}
    assert field_names([plain]) == {"a_b": "a_b"}
    # So dropping the nullable "a b" is the compatible drop it is, not a text->long change of field a_b.
    v1 = avro_schema(table(spaced, plain), source_id="shop")
    v2 = avro_schema(table(plain), source_id="shop", previous=table(spaced, plain), previous_doc=v1)
    assert check(v2, [(1, v1)], "FULL").compatible


def test_record_name_and_namespace_are_avro_names() -> None:
    doc = avro_schema(TableSchema("Sales Data", "Order Items", (ID,)), source_id="shop-eu")
    assert doc["name"] == "Order_Items"
    assert doc["namespace"] == "shop_eu.Sales_Data"
    assert doc["cdc.table"] == "Sales Data.Order Items"
    assert "cdc.dialect" not in doc
    assert parsed(doc).fullname == "shop_eu.Sales_Data.Order_Items"


# --- renames and aliases ----------------------------------------------------------------------------------------

def test_a_rename_adds_an_alias_and_aliases_accumulate_over_two_renames() -> None:
    v1_table = table(Column("email", "text", "text", ordinal=2), Column("name", "text", "text", ordinal=3))
    v2_table = table(Column("mail", "text", "text", ordinal=2), Column("name", "text", "text", ordinal=3))
    v3_table = table(Column("e-mail", "text", "text", ordinal=2), Column("name", "text", "text", ordinal=3))
    v1 = avro_schema(v1_table, source_id="shop")
    v2 = avro_schema(v2_table, source_id="shop", previous=v1_table, previous_doc=v1)
    v3 = avro_schema(v3_table, source_id="shop", previous=v2_table, previous_doc=v2)
    assert "aliases" not in field(v1, "email")
    assert field(v2, "mail")["aliases"] == ["email"]
    assert field(v3, "e-mail")["name"] == "e_mail"
    assert field(v3, "e-mail")["aliases"] == ["email", "mail"]
    assert "aliases" not in field(v3, "name")  # same ordinal, same name: not renamed
    # Avro's own resolution finds the first version's field through the accumulated alias.
    assert check(v3, [(1, v1), (2, v2)], "BACKWARD_TRANSITIVE").compatible
    for doc in (v1, v2, v3):
        parsed(doc)


def test_a_column_dropped_and_added_under_a_new_ordinal_is_not_a_rename() -> None:
    v1_table = table(Column("email", "text", "text", ordinal=2))
    v2_table = table(Column("mail", "text", "text", ordinal=3))
    v2 = avro_schema(v2_table, source_id="shop", previous=v1_table, previous_doc=avro_schema(v1_table,
                                                                                            source_id="shop"))
    assert "aliases" not in field(v2, "mail")


# --- identity ---------------------------------------------------------------------------------------------------

def test_decimal_precision_changes_schema_key_but_not_the_fingerprint_since_canonical_form_drops_logical_types(
) -> None:
    wide = avro_schema(table(Column("amount", "numeric(12,2)", "decimal", precision=12, scale=2)), source_id="shop")
    narrow = avro_schema(table(Column("amount", "numeric(10,2)", "decimal", precision=10, scale=2)), source_id="shop")
    assert schema_key(wide) != schema_key(narrow)
    assert canonical_form(wide) == canonical_form(narrow)
    assert fingerprint(wide) == fingerprint(narrow)
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint(wide))
    assert re.fullmatch(r"[0-9a-f]{64}", schema_key(wide))


def test_schema_key_ignores_key_order_but_not_content() -> None:
    doc = avro_schema(table(Column("note", "text", "text")), source_id="shop")
    reordered = dict(reversed(list(doc.items())))
    assert schema_key(reordered) == schema_key(doc)
    assert schema_key({**doc, "name": "other"}) != schema_key(doc)


def test_parse_gives_the_avro_librarys_schema() -> None:
    schema = parse(avro_schema(table(Column("note", "text", "text")), source_id="shop"))
    assert isinstance(schema, avro.schema.RecordSchema)
    assert [item.name for item in schema.fields] == ["id", "note"]


def test_every_generated_schema_parses_with_avro() -> None:
    """One table with every logical type, nullable and not, with and without backfills, and awkward names."""
    columns = []
    for i, (_, column, _) in enumerate(TYPE_CASES):
        base = column.to_dict()
        columns.append(Column(**{**base, "name": f"t{i}", "ordinal": 10 + i}))
        columns.append(Column(**{**base, "name": f"T {i}", "nullable": True, "ordinal": 100 + i}))
    columns += [Column(**{**column.to_dict(), "name": f"b{i}", "ordinal": 200 + i}) for i, (column, _) in
                enumerate(BACKFILLS)]
    doc = avro_schema(table(*columns, name="every type"), source_id="shop")
    schema = parsed(doc)
    assert len(schema.fields) == 1 + len(columns)
    assert json.loads(json.dumps(doc, allow_nan=False)) == doc
