"""The BSON <-> value contract of MongoDB documents (pure: no server): canonical ``_id`` keys, column types as values
meet, the portable text of every BSON type, and the BSON a same-dialect sink gets back from it."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.datetime_ms import DatetimeMS

from airflow_provider_cdc.connectors.mongodb.documents import (
    MIXED,
    UnsupportedValueError,
    bson_alias,
    canonical_key,
    column_for,
    logical_type,
    parse_key,
    portable,
    to_bson,
    unify,
)
from airflow_provider_cdc.tables import Column

UTC = dt.timezone.utc
OID = ObjectId("0123456789abcdef01234567")
UUID = uuid.UUID("8c4b2a1e-7d3f-4e5a-9b6c-0d1e2f3a4b5c")


# --- keys -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [5, Int64(5), 5.0, Decimal128("5.00"), Decimal128("5"), Decimal128("0.5E1")])
def test_numbers_equal_in_mongodb_share_one_key(value: Any) -> None:
    assert canonical_key(value) == "5"


def test_keys_of_different_bson_types_never_collide() -> None:
    # ({"$oid": ...} is no key: the server refuses $-prefixed fields in _id.)
    keys = [5, "5", OID, str(OID), {"oid": str(OID)}, {"a": 1, "b": 2}, {"b": 2, "a": 1}, Decimal128("0.1"), 0.1,
            True, 1, None, "null", dt.datetime(2024, 1, 1, tzinfo=UTC), Binary.from_uuid(UUID), Binary(b"ab", 0),
            Code("x"), "x", Timestamp(1, 2), MinKey(), MaxKey(), [1, 2], "[1,2]", float("nan"), "NaN"]
    forms = [canonical_key(k) for k in keys]
    assert len(set(forms)) == len(forms), forms


def test_key_forms_are_readable_and_keep_field_order() -> None:
    assert canonical_key("5") == '"5"'
    assert canonical_key(OID) == '{"$oid":"0123456789abcdef01234567"}'
    assert canonical_key({"b": 2, "a": "x"}) == '{"b":2,"a":"x"}'
    assert canonical_key({"n": {"x": 5.0, "y": Int64(7)}}) == '{"n":{"x":5,"y":7}}'
    assert canonical_key(Decimal128("2.50")) == canonical_key(2.5) == "2.5"
    assert canonical_key(-0.0) == canonical_key(Decimal128("-0")) == "0"
    assert canonical_key(dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)) == \
        '{"$date":"2024-05-01T12:00:00.250Z"}'
    # A double's key is its exact value, so it never meets a Decimal128 of its shortest text.
    assert canonical_key(0.1) != canonical_key(Decimal128("0.1")) == "0.1"


@pytest.mark.parametrize("value", [
    5, -5, Int64(2 ** 40), 2 ** 63 - 1, 2.5, 1e20, Decimal128("0.1"), Decimal128("-12345678901234567890.123"),
    "5", "", "é ü 😀", OID, {"b": 2, "a": {"c": [1, "x", 2.5]}}, True, False, None,
    dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC), dt.datetime(1, 1, 1, tzinfo=UTC), DatetimeMS(-10 ** 15),
    Binary.from_uuid(UUID), Binary(b"\x00\xff", 5), Timestamp(1700000000, 3), Regex("^a", "i"), MinKey(), MaxKey(),
    Code("function() {}"), float("inf"), float("-inf"),
])
def test_parse_key_reads_back_the_same_key(value: Any) -> None:
    key = canonical_key(value)
    back = parse_key(key)
    assert canonical_key(back) == key
    if not isinstance(value, (float, Decimal128)):  # numbers come back as the narrowest exact type
        assert back == value or (isinstance(value, Binary) and value.subtype == 0 and back == bytes(value))


def test_parse_key_numbers_come_back_as_the_narrowest_exact_type() -> None:
    assert type(parse_key("5")) is int
    assert isinstance(parse_key(str(2 ** 40)), Int64)
    assert parse_key("2.5") == 2.5 and isinstance(parse_key("2.5"), float)
    assert parse_key("0.1") == Decimal128("0.1")
    assert parse_key("100000000000000000000") == 1e20  # beyond int64: a double, which holds it exactly
    assert parse_key('{"$date":"2024-05-01T12:00:00.250Z"}').tzinfo is not None
    assert parse_key("NaN") != parse_key("NaN")  # NaN, as a float


def test_a_native_uuid_key_is_its_binary_subtype_4() -> None:
    assert canonical_key(UUID) == canonical_key(Binary.from_uuid(UUID))


# --- column types ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "alias", "logical"), [
    (None, "null", "json"), (True, "bool", "boolean"), (5, "int", "integer"), (2 ** 31, "long", "integer"),
    (Int64(1), "long", "integer"), (1.5, "double", "float"), (Decimal128("1.50"), "decimal", "decimal"),
    ("a", "string", "text"), (dt.datetime(2024, 1, 1, tzinfo=UTC), "date", "timestamptz"),
    (DatetimeMS(-10 ** 15), "date", "timestamptz"), (OID, "objectId", "text"),
    (Binary.from_uuid(UUID), "uuid", "uuid"), (UUID, "uuid", "uuid"), (Binary(b"ab", 0), "binData", "binary"),
    (b"ab", "binData", "binary"), (Binary(b"ab", 5), "binData5", "json"), ({"a": 1}, "object", "json"),
    ([1], "array", "json"), (Timestamp(1, 1), "timestamp", "json"), (Regex("a"), "regex", "json"),
    (Code("x"), "javascript", "json"), (MinKey(), "minkey", "json"),
])
def test_bson_alias_and_logical_type(value: Any, alias: str, logical: str) -> None:
    assert bson_alias(value) == alias
    assert logical_type(alias) == logical


@pytest.mark.parametrize(("current", "alias", "value", "expected"), [
    (None, "int", 1, "int"), ("null", "string", "a", "string"), ("int", "null", None, "int"),
    (None, "null", None, "null"),
    ("int", "int", 1, "int"), ("int", "long", 2 ** 40, "long"), ("long", "int", 1, "long"),
    ("int", "double", 1.5, "decimal"), ("long", "double", 1.5, "decimal"), ("double", "int", 3, "double"),
    ("double", "long", 2 ** 53 + 1, "decimal"), ("int", "decimal", Decimal128("1"), "decimal"),
    ("decimal", "double", 1.5, "decimal"), ("int", "string", "5", MIXED), ("string", "int", 5, MIXED),
    ("object", "array", [], MIXED), ("uuid", "binData", b"", MIXED), (MIXED, "int", 5, MIXED),
    ("date", "string", "x", MIXED), ("bool", "int", 1, MIXED),
])
def test_unify(current: str | None, alias: str, value: Any, expected: str) -> None:
    assert unify(current, alias, value) == expected


def test_id_column_is_the_text_primary_key() -> None:
    column = column_for("_id", "objectId", 1)
    assert (column.source_type, column.logical_type, column.primary_key, column.nullable) == \
        ("_id", "text", True, False)
    field = column_for("price", "decimal", 4)
    assert (field.source_type, field.logical_type, field.primary_key, field.ordinal) == ("decimal", "decimal", False, 4)


# --- portable forms -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "alias", "text"), [
    (42, "int", "42"), (Int64(2 ** 40), "long", "1099511627776"), (1.5, "double", "1.5"),
    (float("nan"), "double", "NaN"), (float("-inf"), "double", "-Infinity"), (3, "double", "3.0"),
    (Decimal128("1.50"), "decimal", "1.50"), (Decimal128("-0.000"), "decimal", "-0.000"),
    (Decimal128("12345678901234567890.1234567890123"), "decimal", "12345678901234567890.1234567890123"),
    (Decimal128("NaN"), "decimal", "NaN"), (Decimal128("Infinity"), "decimal", "Infinity"),
    (5, "decimal", "5"), (1.5, "decimal", "1.5"),
    ("héllo", "string", "héllo"), (True, "bool", "true"), (False, "bool", "false"),
    (dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC), "date", "2024-05-01T12:00:00.25Z"),
    (dt.datetime(2024, 5, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))), "date", "2024-05-01T12:00:00Z"),
    (dt.datetime(2024, 5, 1, 12, 0), "date", "2024-05-01T12:00:00Z"),
    (OID, "objectId", "0123456789abcdef01234567"),
    (Binary.from_uuid(UUID), "uuid", str(UUID)), (UUID, "uuid", str(UUID)),
    (Binary(b"\x00\xff", 0), "binData", "00ff"), (b"\x01", "binData", "01"),
    (None, "int", None), (None, "object", None),
    ("5", MIXED, '"5"'), (5, MIXED, "5"), ("abc", MIXED, '"abc"'),
])
def test_portable_forms(value: Any, alias: str, text: str | None) -> None:
    assert portable(value, alias) == text


def test_nested_values_are_relaxed_extended_json() -> None:
    doc = {"a": {"$x": 1, "b.c": [1, 2.5, None]}, "d": dt.datetime(2024, 1, 1, tzinfo=UTC), "n": Decimal128("1.10"),
           "o": OID, "u": Binary.from_uuid(UUID), "s": "é"}
    assert portable(doc, "object") == (
        '{"a": {"$x": 1, "b.c": [1, 2.5, null]}, "d": {"$date": "2024-01-01T00:00:00Z"}, '
        '"n": {"$numberDecimal": "1.10"}, "o": {"$oid": "0123456789abcdef01234567"}, '
        '"u": {"$binary": {"base64": "jEsqHn0/TlqbbA0eLzpLXA==", "subType": "04"}}, "s": "é"}')
    assert portable([1, "x"], "array") == '[1, "x"]'
    assert portable(Timestamp(1, 2), "timestamp") == '{"$timestamp": {"t": 1, "i": 2}}'
    assert portable(Code("x"), "javascript") == '{"$code": "x"}'


def test_a_date_beyond_year_9999_in_a_date_column_has_no_portable_form() -> None:
    with pytest.raises(UnsupportedValueError, match="outside years 1 to 9999"):
        portable(DatetimeMS(2 ** 50), "date")
    assert portable({"d": DatetimeMS(2 ** 50)}, "object") == '{"d": {"$date": {"$numberLong": "1125899906842624"}}}'


# --- back to BSON ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    5, Int64(3), Int64(2 ** 40), 1.5, float("inf"), Decimal128("1.50"), Decimal128("-0.000"), Decimal128("NaN"),
    "héllo", True, dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC), OID, Binary.from_uuid(UUID),
    Binary(b"\x00\xff", 0), Binary(b"ab", 5), [1, "x", None, {"k": 2.5}], Timestamp(1, 2), Regex("a", "i"), MinKey(),
    Code("x"),
    {"a": {"b": Decimal128("1.0")}, "d": dt.datetime(2024, 1, 1, tzinfo=UTC), "o": OID, "x": DatetimeMS(2 ** 50)},
])
def test_to_bson_restores_the_value_for_the_mongodb_dialect(value: Any) -> None:
    alias = bson_alias(value)
    column = column_for("f", alias, 2)
    back = to_bson(portable(value, alias), column, "mongodb")
    assert type(back) is type(value) or (isinstance(value, Binary) and value.subtype == 0 and back == bytes(value))
    assert back == value or bson_alias(back) == alias and portable(back, alias) == portable(value, alias)


def test_to_bson_of_the_id_column_gives_the_key_back() -> None:
    column = column_for("_id", "_id", 1)
    for value in (OID, "5", 5, {"b": 1, "a": 2}, Decimal128("0.1")):
        assert to_bson(canonical_key(value), column, "mongodb") == value


def test_to_bson_of_a_mixed_column_keeps_each_value_s_type() -> None:
    column = column_for("m", MIXED, 3)
    assert to_bson(portable("5", MIXED), column, "mongodb") == "5"
    assert to_bson(portable(5, MIXED), column, "mongodb") == 5
    assert to_bson(portable(OID, MIXED), column, "mongodb") == OID


def test_to_bson_from_another_dialect_maps_from_the_logical_type() -> None:
    def col(logical: str) -> Column:
        return Column("c", "whatever", logical)

    assert to_bson("12.340", col("decimal"), "postgresql") == Decimal128("12.340")
    with pytest.raises(decimal.Inexact):
        to_bson("1." + "1" * 40, col("decimal"), "postgresql")
    assert to_bson("2024-05-01T12:00:00.25Z", col("timestamptz"), "postgresql") == \
        dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
    assert to_bson("2024-05-01", col("date"), "mysql") == dt.datetime(2024, 5, 1, tzinfo=UTC)
    assert to_bson("00ff", col("binary"), "postgresql") == Binary(b"\x00\xff", 0)
    assert to_bson(str(UUID), col("uuid"), "postgresql") == Binary.from_uuid(UUID)
    assert to_bson('{"a": [1, 2]}', col("json"), "postgresql") == {"a": [1, 2]}
    assert to_bson("12:30:00", col("time"), "postgresql") == "12:30:00"
    assert to_bson("7", col("integer"), "postgresql") == 7
    assert to_bson("true", col("boolean"), "postgresql") is True
    assert to_bson(None, col("integer"), "postgresql") is None


def test_the_fast_decimal_and_date_forms_equal_the_value_contracts():
    """decimal128_text and the UTC date path are the capture's hot path: they must give format_value's text."""
    import datetime as dt
    import random

    from bson import Decimal128

    from airflow_provider_cdc.connectors.mongodb.documents import decimal128_text, portable
    from airflow_provider_cdc.values import format_value

    rng = random.Random(9)
    cases = ["0", "-0", "0.00", "-0.00", "1E+3", "1.50", "-123.456", "1E-40", "9" * 34, "1E+6144", "1E-6143", "NaN",
             "-Infinity", "0E+5", "0E-5"]
    cases += [f"{rng.choice(['', '-'])}{rng.randrange(10 ** rng.randint(1, 34))}E{rng.randint(-60, 60)}"
              for _ in range(5000)]
    for text in cases:
        value = Decimal128(text)
        assert decimal128_text(value) == format_value(value.to_decimal(), "decimal"), text
    for _ in range(5000):
        when = dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=rng.randrange(315537897599999))
        expected = format_value(when, "timestamptz")
        assert portable(when, "date") == expected and portable(when.replace(tzinfo=None), "date") == expected
