"""The value contract: one portable form per logical type, the same from every source, and fixed Arrow types."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pyarrow as pa
import pytest

from airflow_provider_cdc.tables import Column, TableSchema
from airflow_provider_cdc.values import (
    LOGICAL_TYPES,
    UntypedValueError,
    arrow_type,
    format_value,
    parse_value,
    typed_column,
    typed_table,
)

UTC = dt.timezone.utc
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))

# (logical type, Python value, portable form): what every source must produce for that value.
FORMS = [
    ("integer", -42, "-42"),
    ("integer", 2**63 - 1, "9223372036854775807"),
    ("decimal", decimal.Decimal("-1234.5600"), "-1234.5600"),
    ("decimal", decimal.Decimal("1E+3"), "1000"),
    ("decimal", decimal.Decimal("NaN"), "NaN"),
    ("float", 1.5, "1.5"),
    ("float", 1e100, "1e+100"),
    ("float", float("inf"), "Infinity"),
    ("float", float("-inf"), "-Infinity"),
    ("boolean", True, "true"),
    ("boolean", False, "false"),
    ("text", "héllo, \"wörld\"\n", "héllo, \"wörld\"\n"),
    ("timestamptz", dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC), "2024-05-01T12:00:00.25Z"),
    ("timestamptz", dt.datetime(2024, 5, 1, 14, 0, 0, tzinfo=PLUS_TWO), "2024-05-01T12:00:00Z"),
    ("timestamptz", dt.datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=UTC), "2024-05-01T12:00:00.000001Z"),
    ("timestamp", dt.datetime(2024, 5, 1, 12, 0, 0, 120000), "2024-05-01T12:00:00.12"),
    ("date", dt.date(2024, 2, 29), "2024-02-29"),
    ("time", dt.time(23, 59, 59, 500000), "23:59:59.5"),
    ("time", dt.timedelta(hours=7, minutes=5, seconds=3), "07:05:03"),
    ("json", {"a": [1, 2], "b": None}, '{"a": [1, 2], "b": null}'),
    ("binary", b"\x00\xde\xad\\", "00dead5c"),
    ("binary", b"", ""),
    ("uuid", uuid.UUID("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
]


@pytest.mark.parametrize(("logical", "value", "portable"), FORMS, ids=[f"{f[0]}-{i}" for i, f in enumerate(FORMS)])
def test_format_value_gives_the_portable_form(logical, value, portable):
    assert format_value(value, logical) == portable
    assert format_value(None, logical) is None


def test_the_same_instant_from_any_zone_is_the_same_value():
    instants = [
        dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        dt.datetime(2024, 5, 1, 14, 0, tzinfo=PLUS_TWO),
        dt.datetime(2024, 5, 1, 7, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
    ]
    assert {format_value(i, "timestamptz") for i in instants} == {"2024-05-01T12:00:00Z"}


def test_a_naive_datetime_is_refused_as_timestamptz():
    with pytest.raises(ValueError, match="aware"):
        format_value(dt.datetime(2024, 5, 1), "timestamptz")


@pytest.mark.parametrize(("logical", "value", "portable"),
                         [f for f in FORMS if f[0] not in ("json",)
                          and not (f[0] == "time" and isinstance(f[1], dt.timedelta))])
def test_parse_value_inverts_format_value(logical, value, portable):
    parsed = parse_value(portable, logical)
    if logical == "timestamptz":
        assert parsed == value  # aware datetimes compare as instants
    elif logical == "decimal" and value.is_nan():
        assert parsed.is_nan()
    elif logical == "float":
        assert parsed == float(value)
    else:
        assert parsed == value


def test_parse_value_refuses_a_timestamptz_with_an_offset():
    with pytest.raises(ValueError, match="ending in Z"):
        parse_value("2024-05-01 12:00:00+00", "timestamptz")


def col(name: str, logical: str, **kw) -> Column:
    return Column(name, "", logical, **kw)


def test_every_logical_type_has_a_fixed_arrow_type():
    expected = {
        "integer": pa.int64(), "float": pa.float64(), "boolean": pa.bool_(), "text": pa.string(),
        "timestamptz": pa.timestamp("us", tz="UTC"), "timestamp": pa.timestamp("us"), "date": pa.date32(),
        "time": pa.time64("us"), "json": pa.string(), "binary": pa.binary(), "uuid": pa.string(),
        "other": pa.string(),
    }
    for logical in LOGICAL_TYPES:
        if logical == "decimal":
            continue
        assert arrow_type(col("c", logical)) == expected[logical], logical
    assert arrow_type(col("c", "decimal", precision=38, scale=10)) == pa.decimal128(38, 10)
    assert arrow_type(col("c", "decimal")) == pa.string()  # unconstrained: only text is exact
    assert arrow_type(col("c", "decimal", precision=60, scale=2)) == pa.string()


@pytest.mark.parametrize(("logical", "value", "portable"),
                         [f for f in FORMS if f[0] != "decimal" or not f[1].is_nan()])
def test_typed_column_agrees_with_the_reference(logical, value, portable):
    column = col("c", logical, precision=20, scale=4) if logical == "decimal" else col("c", logical)
    typed = typed_column(pa.array([portable, None], pa.string()), column)
    assert typed.type == arrow_type(column)
    got = typed[0].as_py()
    reference = parse_value(portable, logical)
    if logical in ("json", "uuid", "text", "other"):
        assert got == portable
    elif logical == "timestamptz":
        assert got == reference
    elif logical == "decimal":
        assert got == reference
    else:
        assert got == reference
    assert typed[1].as_py() is None


def test_decimal_keeps_38_digits_exactly():
    column = col("amount", "decimal", precision=38, scale=10)
    typed = typed_column(pa.array(["1234567890123456789012345678.0123456789", "-0.0000000001", "1.5"]), column)
    assert typed.to_pylist() == [
        decimal.Decimal("1234567890123456789012345678.0123456789"),
        decimal.Decimal("-0.0000000001"),
        decimal.Decimal("1.5000000000"),
    ]


def test_decimal_with_more_places_than_its_scale_is_refused_not_rounded():
    with pytest.raises(UntypedValueError, match="'1.005'"):
        typed_column(pa.array(["1.005"]), col("price", "decimal", precision=12, scale=2))


@pytest.mark.parametrize(("logical", "special"), [
    ("timestamptz", "infinity"), ("timestamp", "-infinity"), ("date", "infinity"), ("decimal", "NaN"),
])
def test_values_with_no_typed_form_are_refused_or_nulled_on_request(logical, special):
    column = col("c", logical, precision=10, scale=2) if logical == "decimal" else col("c", logical)
    with pytest.raises(UntypedValueError) as caught:
        typed_column(pa.array([special]), column)
    assert caught.value.column == "c" and caught.value.value == special
    assert special in str(caught.value)
    assert typed_column(pa.array([special, None]), column, specials_as_null=True).to_pylist() == [None, None]


def test_a_boolean_that_is_not_portable_is_refused():
    with pytest.raises(UntypedValueError, match="'t'"):
        typed_column(pa.array(["true", "t"]), col("flag", "boolean"))


def test_typed_table_converts_source_and_before_columns_and_leaves_bookkeeping():
    schema = TableSchema("s", "t", (
        Column("id", "", "integer", primary_key=True), Column("at", "", "timestamptz"), Column("ok", "", "boolean"),
    ))
    table = pa.table({
        "_cdc_op": ["u"], "_cdc_seq": pa.array([7], pa.int64()),
        "id": ["2"], "at": ["2024-05-01T12:00:00.5Z"], "ok": ["false"], "_cdc_before:id": ["1"],
    })
    typed = typed_table(table, schema)
    assert typed.schema.field("id").type == pa.int64()
    assert typed.schema.field("_cdc_before:id").type == pa.int64()
    assert typed.schema.field("_cdc_op").type == pa.string()
    assert typed.to_pylist() == [{
        "_cdc_op": "u", "_cdc_seq": 7, "id": 2, "at": dt.datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC),
        "ok": False, "_cdc_before:id": 1,
    }]
