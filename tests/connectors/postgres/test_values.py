"""Every PostgreSQL type family through the value contract: the portable form by snapshot and by stream (both
decoders), exact landing in a PostgreSQL sink, landing from a batch of another dialect, and the typed Arrow view."""

from __future__ import annotations

import datetime as dt
import decimal

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from airflow_provider_cdc import values
from airflow_provider_cdc.connectors.postgres.sink import PgSink
from airflow_provider_cdc.connectors.postgres.source import PgSource
from airflow_provider_cdc.connectors.postgres.values import numeric_precision_scale, to_pg_input, to_portable
from airflow_provider_cdc.events import ChangeBatch
from airflow_provider_cdc.tables import TableSchema

TYPES_DDL = [
    "CREATE TYPE mood AS ENUM ('sad', 'happy')",
    "CREATE TYPE pair AS (a int, b text)",
    "CREATE DOMAIN posint AS integer CHECK (VALUE > 0)",
]

# column, declared type, logical type, [(SQL literal, portable text, typed Python value or None: not typeable)]
CASES: list[tuple[str, str, str, list[tuple[str, str, object]]]] = [
    ("c_smallint", "smallint", "integer", [("-32768", "-32768", -32768), ("32767", "32767", 32767)]),
    ("c_int", "integer", "integer", [("-2147483648", "-2147483648", -2147483648), ("0", "0", 0)]),
    ("c_bigint", "bigint", "integer", [("9223372036854775807", "9223372036854775807", 9223372036854775807),
                                       ("-9223372036854775808", "-9223372036854775808", -9223372036854775808)]),
    ("c_num_c", "numeric(12,2)", "decimal", [("12.3", "12.30", decimal.Decimal("12.30")),
                                             ("-0.5", "-0.50", decimal.Decimal("-0.50")),
                                             ("'NaN'", "NaN", None)]),
    ("c_num", "numeric", "decimal", [("1e-20", "0.00000000000000000001", "0.00000000000000000001"),
                                     ("'NaN'", "NaN", "NaN"), ("'Infinity'", "Infinity", "Infinity"),
                                     ("123456789012345678901234567890.123456789",
                                      "123456789012345678901234567890.123456789",
                                      "123456789012345678901234567890.123456789")]),
    ("c_num_big", "numeric(38,10)", "decimal", [
        ("1234567890123456789012345678.0123456789", "1234567890123456789012345678.0123456789",
         decimal.Decimal("1234567890123456789012345678.0123456789"))]),
    ("c_real", "real", "float", [("1.5", "1.5", 1.5), ("'NaN'", "NaN", None), ("'-Infinity'", "-Infinity", None)]),
    ("c_double", "double precision", "float", [("0.1", "0.1", 0.1), ("1e100", "1e+100", 1e100),
                                               ("'Infinity'", "Infinity", None), ("'NaN'", "NaN", None)]),
    ("c_bool", "boolean", "boolean", [("true", "true", True), ("false", "false", False)]),
    ("c_text", "text", "text", [("'quote \" comma , back\\slash ''single'' tab\t nl\n end'",
                                 "quote \" comma , back\\slash 'single' tab\t nl\n end", "same"),
                                ("''", "", ""), ("'ünïcødé ✓'", "ünïcødé ✓", "ünïcødé ✓")]),
    ("c_varchar", "character varying(10)", "text", [("'abc'", "abc", "abc")]),
    ("c_char", "character(5)", "text", [("'ab'", "ab   ", "ab   ")]),
    ("c_name", "name", "text", [("'n'", "n", "n")]),
    ("c_bytea", "bytea", "binary", [("'\\x'", "", b""), ("'\\x5c00ff'", "5c00ff", b"\\\x00\xff"),
                                    ("'\\xDEADBEEF'", "deadbeef", b"\xde\xad\xbe\xef"),
                                    ("'a\\\\b'::bytea", "615c62", b"a\\b")]),
    ("c_tstz", "timestamp with time zone", "timestamptz", [
        ("'2024-05-01 12:00:00.25+02'", "2024-05-01T10:00:00.25Z",
         dt.datetime(2024, 5, 1, 10, 0, 0, 250000, tzinfo=dt.timezone.utc)),
        ("'2024-05-01 12:00:00+00'", "2024-05-01T12:00:00Z", dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc)),
        ("'2024-01-01 00:00:00.000001+00'", "2024-01-01T00:00:00.000001Z",
         dt.datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=dt.timezone.utc)),
        ("'infinity'", "infinity", None), ("'-infinity'", "-infinity", None),
        ("'0044-03-15 12:00:00+00 BC'", "0044-03-15 12:00:00+00 BC", None),
        ("'10000-01-01 00:00:00+00'", "10000-01-01 00:00:00+00", None)]),
    ("c_ts", "timestamp without time zone", "timestamp", [
        ("'2024-05-01 12:00:00.5'", "2024-05-01T12:00:00.5", dt.datetime(2024, 5, 1, 12, 0, 0, 500000)),
        ("'2024-05-01 00:00:00'", "2024-05-01T00:00:00", dt.datetime(2024, 5, 1)),
        ("'infinity'", "infinity", None)]),
    ("c_date", "date", "date", [("'2024-05-01'", "2024-05-01", dt.date(2024, 5, 1)), ("'infinity'", "infinity", None),
                                ("'-infinity'", "-infinity", None), ("'0001-01-01 BC'", "0001-01-01 BC", None)]),
    ("c_time", "time without time zone", "time", [("'12:00:00.25'", "12:00:00.25", dt.time(12, 0, 0, 250000)),
                                                  ("'23:59:59.999999'", "23:59:59.999999",
                                                   dt.time(23, 59, 59, 999999)),
                                                  ("'00:00:00'", "00:00:00", dt.time(0))]),
    ("c_timetz", "time with time zone", "other", [("'12:00:00+02'", "12:00:00+02", None)]),
    ("c_interval", "interval", "other", [("'1 year 2 mons 3 days 04:05:06.5'", "1 year 2 mons 3 days 04:05:06.5",
                                          None)]),
    ("c_json", "json", "json", [("'{\"b\": 1, \"a\": [1, 2]}'", '{"b": 1, "a": [1, 2]}', '{"b": 1, "a": [1, 2]}')]),
    ("c_jsonb", "jsonb", "json", [("'{\"b\": 1, \"a\": [1, 2]}'", '{"a": [1, 2], "b": 1}', '{"a": [1, 2], "b": 1}')]),
    ("c_uuid", "uuid", "uuid", [("'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                                 "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")]),
    ("c_int_arr", "integer[]", "other", [("'{1,2,NULL}'", "{1,2,NULL}", None)]),
    ("c_text_arr", "text[]", "other", [("ARRAY['a\"b', 'c,d', NULL, '']", '{"a\\"b","c,d",NULL,""}', None)]),
    ("c_int4range", "int4range", "other", [("'[1,10)'", "[1,10)", None), ("'empty'", "empty", None)]),
    ("c_tstzrange", "tstzrange", "other", [("'[2024-01-01 00:00+00,2024-02-01 00:00+00)'",
                                            '["2024-01-01 00:00:00+00","2024-02-01 00:00:00+00")', None)]),
    ("c_money", "money", "other", [("12.34", "<money>", None)]),
    ("c_inet", "inet", "other", [("'10.0.0.1'", "10.0.0.1", None), ("'::1/64'", "::1/64", None)]),
    ("c_cidr", "cidr", "other", [("'10.0.0.0/8'", "10.0.0.0/8", None)]),
    ("c_macaddr", "macaddr", "other", [("'08:00:2B:01:02:03'", "08:00:2b:01:02:03", None)]),
    ("c_enum", "mood", "other", [("'happy'", "happy", None)]),
    ("c_pair", "pair", "other", [("ROW(1, 'x y')", '(1,"x y")', None)]),
    ("c_domain", "posint", "other", [("5", "5", None)]),
    ("c_xml", "xml", "other", [("'<a>1</a>'", "<a>1</a>", None)]),
    ("c_bit", "bit(4)", "other", [("B'1010'", "1010", None)]),
    ("c_varbit", "bit varying", "other", [("B'101'", "101", None)]),
    ("c_tsvector", "tsvector", "other", [("'a fat cat'", "'a' 'cat' 'fat'", None)]),
    ("c_point", "point", "other", [("'(1,2)'", "(1,2)", None)]),
]
CITEXT = ("c_citext", "citext", "text", [("'MiXeD'", "MiXeD", "MiXeD")])
STREAM_OFFSET = 1000


def _execute(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def _has_citext(url: str) -> bool:
    try:
        _execute(url, "CREATE EXTENSION IF NOT EXISTS citext")
    except psycopg.Error:
        return False
    return True


def _has_xml(url: str) -> bool:
    """Whether the server was built with libxml (the embedded PostgreSQL 18 is not)."""
    try:
        _execute(url, "SELECT '<a/>'::xml")
    except psycopg.errors.FeatureNotSupported:
        return False
    return True


def _cases(url: str) -> list[tuple[str, str, str, list[tuple[str, str, object]]]]:
    cases = CASES if _has_xml(url) else [case for case in CASES if case[1] != "xml"]
    return cases + ([CITEXT] if _has_citext(url) else [])


def _rows(cases) -> list[tuple[int, str, str, str, object]]:
    """(id, column, SQL literal, portable text, typed value): one row per value, the other columns NULL."""
    out, n = [], 0
    for column, _, _, items in cases:
        for literal, portable, typed in items:
            n += 1
            out.append((n, column, literal, portable, typed))
    return out


@pytest.fixture
def value_table(pg_database_factory):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    cases = _cases(source_url)
    _has_citext(sink_url)
    for url in (source_url, sink_url):
        _execute(url, *TYPES_DDL)
    columns = ", ".join(f"{column} {declared}" for column, declared, _, _ in cases)
    _execute(source_url, f"CREATE TABLE vals (id int PRIMARY KEY, {columns})")
    rows = _rows(cases)
    with psycopg.connect(source_url, autocommit=True) as conn:
        for n, column, literal, _, _ in rows:
            conn.execute(f"INSERT INTO vals (id, {column}) VALUES ({n}, {literal})")
        money = conn.execute("SELECT 12.34::money::text").fetchone()[0]
    rows = [(n, c, lit, money if portable == "<money>" else portable, typed) for n, c, lit, portable, typed in rows]
    return source_url, sink_url, cases, rows


def _by_id(batch: ChangeBatch, offset: int = 0) -> dict[int, dict[str, str | None]]:
    return {int(row["id"]) - offset: row for row in batch.tables["public.vals"].to_pylist()}


def _assert_portable(found: dict[int, dict[str, str | None]], rows, how: str) -> None:
    problems = []
    for n, column, literal, portable, _ in rows:
        if found[n][column] != portable:
            problems.append(f"{how}: {column} {literal}: {found[n][column]!r} != {portable!r}")
    assert not problems, "\n".join(problems)


def _text_rows(url: str, columns: list[str]) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        select = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in ["id", *columns])
        return conn.execute(sql.SQL("SELECT {} FROM vals ORDER BY id").format(select)).fetchall()


def test_every_type_family_arrives_portable_and_lands_exactly(value_table):
    source_url, sink_url, cases, rows = value_table
    columns = [column for column, _, _, _ in cases]
    with PgSource(source_url, source_id="vals", tables=[("public", "vals")], slot_name="cdc_vals",
                  publication_name="cdc_vals_pub") as source:
        snapshot = source.capture(None, 10_000)
        schema = snapshot.schemas["public.vals"]
        assert schema.dialect == "postgresql"
        assert {c.name: c.logical_type for c in schema.columns if c.name != "id"} == {
            column: logical for column, _, logical, _ in cases}
        big = schema.column("c_num_big")
        assert (big.precision, big.scale) == (38, 10) and schema.column("c_num").precision is None
        _assert_portable(_by_id(snapshot), rows, "snapshot")

        _execute(source_url, f"INSERT INTO vals SELECT id + {STREAM_OFFSET}, {', '.join(columns)} FROM vals")
        streamed = {}
        for columnar in (True, False):
            source.columnar = columnar
            streamed[columnar] = source.capture(snapshot.position_to, 10_000)
            found = _by_id(streamed[columnar], STREAM_OFFSET)
            _assert_portable(found, rows, f"stream ({'columnar' if columnar else 'per message'})")
        assert streamed[True].tables["public.vals"].equals(streamed[False].tables["public.vals"])

    with PgSink(sink_url, sink_id="warehouse") as sink:
        assert sink.apply(snapshot).applied and sink.apply(streamed[True]).applied
    assert _text_rows(sink_url, columns) == _text_rows(source_url, columns)
    with psycopg.connect(sink_url) as conn:  # the source's own types, verbatim
        sink_types = dict(conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                                       "WHERE attrelid = 'vals'::regclass AND attnum > 0").fetchall())
    assert {c: sink_types[c] for c in columns} == {column: declared if declared != "bit varying" else declared
                                                   for column, declared, _, _ in cases}


@pytest.mark.parametrize("dialect", ["", "mysql"])
def test_a_batch_of_another_dialect_lands_by_logical_type(value_table, dialect):
    source_url, sink_url, cases, rows = value_table
    with PgSource(source_url, source_id="vals", tables=[("public", "vals")], slot_name="cdc_vals",
                  publication_name="cdc_vals_pub") as source:
        batch = source.capture(None, 10_000)
    schema = batch.schemas["public.vals"]
    batch.schemas["public.vals"] = TableSchema(schema.schema, schema.name, schema.columns, dialect)
    batch.schema_changes = [dataclass_replace(change, dialect) for change in batch.schema_changes]
    with PgSink(sink_url, sink_id="warehouse") as sink:
        assert sink.apply(batch).applied
    logical = {column: kind for column, _, kind, _ in cases}
    typed_columns = [c for c, _, kind, _ in cases if kind not in ("other", "text", "float", "json")]
    assert _text_rows(sink_url, typed_columns) == _text_rows(source_url, typed_columns)
    with psycopg.connect(sink_url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        landed = {}
        for column, _, _, _ in cases:
            for n, value in conn.execute(sql.SQL("SELECT id, {}::text FROM vals").format(sql.Identifier(column))):
                landed[(n, column)] = value
        sink_types = dict(conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                                       "WHERE attrelid = 'vals'::regclass AND attnum > 0").fetchall())
    assert sink_types["c_num_big"] == "numeric(38,10)" and sink_types["c_tstz"] == "timestamp with time zone"
    assert sink_types["c_interval"] == "text" and sink_types["c_bytea"] == "bytea"
    for n, column, _, portable, _ in rows:
        if logical[column] in ("other", "text"):
            assert landed[(n, column)] == portable, column  # a source's own text, kept as text


def dataclass_replace(change, dialect):
    import dataclasses

    after = TableSchema(change.after.schema, change.after.name, change.after.columns, dialect)
    return dataclasses.replace(change, after=after)


def test_typed_table_gives_arrow_types_and_values(value_table):
    source_url, _, cases, rows = value_table
    with PgSource(source_url, source_id="vals", tables=[("public", "vals")], slot_name="cdc_vals",
                  publication_name="cdc_vals_pub") as source:
        batch = source.capture(None, 10_000)
    schema = batch.schemas["public.vals"]
    table = batch.tables["public.vals"]
    portable_kinds = {"integer", "decimal", "float", "boolean", "timestamptz", "timestamp", "date", "time",
                      "binary", "uuid", "json", "text"}
    typeable = [n for n, column, _, _, typed in rows if typed is not None
                and schema.column(column).logical_type in portable_kinds]
    subset = table.filter(pa.compute.is_in(table["id"], pa.array([str(n) for n in typeable])))
    typed = values.typed_table(subset, schema)
    for column, _, kind, _ in cases:
        if kind in portable_kinds:
            assert typed.schema.field(column).type == values.arrow_type(schema.column(column)), column
    assert typed.schema.field("c_num_big").type == pa.decimal128(38, 10)
    assert typed.schema.field("c_tstz").type == pa.timestamp("us", tz="UTC")
    got = {int(row["id"]): row for row in typed.to_pylist()}
    for n, column, _, portable, expected in rows:
        if n not in got:
            continue
        value = got[n][column]
        if expected == "same":
            expected = portable
        if isinstance(expected, dt.datetime) and expected.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
        assert value == expected, (column, portable, value)
    # Values outside the Arrow type stop a typed view, or become NULL when asked.
    with pytest.raises(values.UntypedValueError, match="c_tstz"):
        values.typed_table(table, schema, columns=["c_tstz"])


# --- the conversion itself, without a server ----------------------------------------------------------------


def test_conversion_is_vectorised_idempotent_and_keeps_what_it_does_not_recognise():
    raw = pa.array(["2024-01-02 03:04:05.5+00", "infinity", "0044-03-15 12:00:00+00 BC", None,
                    "10000-01-01 00:00:00+00", "2024-01-02T03:04:05.5Z"])
    once = to_portable(raw, "timestamptz")
    assert once.to_pylist() == ["2024-01-02T03:04:05.5Z", "infinity", "0044-03-15 12:00:00+00 BC", None,
                                "10000-01-01 00:00:00+00", "2024-01-02T03:04:05.5Z"]
    assert to_portable(once, "timestamptz").equals(once)
    assert to_portable(pa.array(["t", "f", None, "true"]), "boolean").to_pylist() == ["true", "false", None, "true"]
    binary = to_portable(pa.array(["\\xdeadbeef", "\\x", None]), "binary")
    assert binary.to_pylist() == ["deadbeef", "", None]
    assert to_pg_input(binary, "binary").to_pylist() == ["\\xdeadbeef", "\\x", None]
    assert to_pg_input(pa.array(["\\x01"]), "binary").to_pylist() == ["\\x01"]
    assert to_portable(pa.array(["2024-01-02 03:04:05"]), "timestamp").to_pylist() == ["2024-01-02T03:04:05"]
    untouched = pa.array(["t"])
    assert to_portable(untouched, "text") is untouched
    assert numeric_precision_scale("numeric(12,2)") == (12, 2) and numeric_precision_scale("numeric") == (None, None)
    assert numeric_precision_scale("numeric(5)") == (5, 0)
