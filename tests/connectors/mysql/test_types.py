"""MySQL/MariaDB value mapping on a real MariaDB: every type reaches the same portable text through the snapshot
(catalog + pymysql + snapshot_formatter) and through the binlog (pymysqlreplication + table_map_matches +
bind_table_map + binlog_formatter), and that text is the one written here by hand."""

from __future__ import annotations

import datetime as dt
import decimal
import random
from typing import Any

import pytest
from pymysql.converters import escape_string
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import TableMapEvent, WriteRowsEvent

from airflow_provider_cdc.connectors.mysql import connection
from airflow_provider_cdc.connectors.mysql.catalog import read_tables
from airflow_provider_cdc.connectors.mysql.types import (
    ZERO_DATE,
    UnsupportedCharsetError,
    ZeroDateError,
    backfill_of,
    bind_table_map,
    binlog_formatter,
    column_from_binlog,
    float32_text,
    inet6_text,
    logical_of,
    parse_source_type,
    restore_binlog_values,
    schema_from_binlog,
    snapshot_formatter,
    snapshot_select_expr,
    table_map_matches,
    time_text,
)
from airflow_provider_cdc.tables import Column, TableSchema

# --- helpers ------------------------------------------------------------------------------------------------------


def lit(text: str) -> str:
    return "'" + escape_string(text) + "'"


def binlog_position(conn: Any) -> tuple[str, int]:
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    return row[0], int(row[1])


def execute(conn: Any, *statements: str) -> None:
    with conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)


def catalog_schema(url: str, db: str, table: str) -> TableSchema:
    with connection.connect(url) as conn:
        return read_tables(conn, [(db, table)])[f"{db}.{table}"]


def snapshot_texts(url: str, schema: TableSchema, **policy: Any) -> dict[int, dict[str, str | None]]:
    """Rows by id, as the snapshot path gives them."""
    formatters = [snapshot_formatter(c, **policy) for c in schema.columns]
    select = ", ".join(snapshot_select_expr(c) for c in schema.columns)
    with connection.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {select} FROM {connection.qualified(schema.schema, schema.name)} ORDER BY 1")
        return {row[0]: {c.name: f(v) for c, f, v in zip(schema.columns, formatters, row)} for row in cur.fetchall()}


def binlog_events(url: str, db: str, start: tuple[str, int]) -> BinLogStreamReader:
    return BinLogStreamReader(
        connection_settings=connection.connect_kwargs(url), server_id=random.randint(10_000, 2**31 - 1),
        blocking=False, only_schemas=[db], log_file=start[0], log_pos=start[1], resume_stream=True,
        only_events=[TableMapEvent, WriteRowsEvent],
    )


def binlog_texts(url: str, schema: TableSchema, start: tuple[str, int], **policy: Any
                 ) -> dict[int, dict[str, str | None]]:
    """Rows by id, as the binlog path gives them (the catalog schema must match every table map)."""
    formatters = {c.name: binlog_formatter(c, **policy) for c in schema.columns}
    out: dict[int, dict[str, str | None]] = {}
    stream = binlog_events(url, schema.schema, start)
    try:
        for event in stream:
            if event.table != schema.name:
                continue
            if isinstance(event, TableMapEvent):
                assert table_map_matches(schema, event.columns), [c.data for c in event.columns]
                bind_table_map(schema, event.columns)
                continue
            for row in event.rows:
                values = row["values"]
                restore_binlog_values(values, row["none_sources"])
                out[values[schema.columns[0].name]] = {name: f(values[name]) for name, f in formatters.items()}
    finally:
        stream.close()
    return out


# --- every type, both paths ---------------------------------------------------------------------------------------

EVERY_TYPE = """
CREATE TABLE every_type (
  id int PRIMARY KEY,
  ti tinyint, tu tinyint unsigned, si smallint, mi mediumint unsigned, i int, iu int unsigned, bi bigint,
  bu bigint unsigned, b1 tinyint(1), bo bool, bt bit(10), b64 bit(64),
  dc decimal(12,2), dbig decimal(65,30), f float, d double,
  c char(5), v varchar(20), tx text, lt longtext, l1 varchar(20) CHARACTER SET latin1,
  l1t text CHARACTER SET latin1, a1 varchar(10) CHARACTER SET ascii, u16 varchar(10) CHARACTER SET utf16,
  u16le varchar(10) CHARACTER SET utf16le, u32 varchar(5) CHARACTER SET utf32, ucs varchar(5) CHARACTER SET ucs2,
  u3 varchar(10) CHARACTER SET utf8mb3,
  e enum('small','medium','it''s','a\\\\b'), el enum('é','ü') CHARACTER SET latin1, st set('a','b','c','d'),
  stl set('ä','ö') CHARACTER SET latin1, em enum('😀','a'), j json,
  bn binary(4), vb varbinary(10), bl blob, lb longblob,
  da date, dt0 datetime, dt6 datetime(6), ts timestamp(6) NULL, ts0 timestamp NULL,
  tm time, tm3 time(3), tm1 time(1), tm6 time(6), y year,
  g geometry, p point, uu uuid, i4 inet4, i6 inet6,
  gv bigint AS (i * 2) VIRTUAL, gs varchar(40) AS (concat(v, '!')) STORED
)"""

LONG_TEXT = "ab" * 50_000
LATIN1_BYTES = bytes(range(256)).hex()
DEC_MAX = "9" * 35 + "." + "9" * 30
# (SQL literal, expected portable text) per column; id and the generated columns are added below.
ROWS: dict[int, dict[str, tuple[str, str | None]]] = {
    1: {
        "ti": ("42", "42"), "tu": ("200", "200"), "si": ("-300", "-300"), "mi": ("16777215", "16777215"),
        "i": ("-2147483648", "-2147483648"), "iu": ("4294967295", "4294967295"),
        "bi": ("-9223372036854775808", "-9223372036854775808"),
        "bu": ("18446744073709551615", "18446744073709551615"), "b1": ("2", "2"), "bo": ("1", "1"),
        "bt": ("b'1010000001'", "641"), "b64": ("x'FFFFFFFFFFFFFFFF'", "18446744073709551615"),
        "dc": ("-1234567890.12", "-1234567890.12"), "dbig": (DEC_MAX, DEC_MAX),
        "f": ("1.23456789", "1.2345679"), "d": ("0.1", "0.1"),
        "c": (lit("ab  "), "ab"), "v": (lit("héllo wörld 😀"), "héllo wörld 😀"),
        "tx": (lit("line1\nline2\ttab 'q' \\ \"dq\""), "line1\nline2\ttab 'q' \\ \"dq\""),
        "lt": (lit(LONG_TEXT), LONG_TEXT), "l1": (lit("café €"), "café €"),
        "l1t": (f"CAST(x'{LATIN1_BYTES}' AS CHAR CHARACTER SET latin1)", None),  # checked separately
        "a1": (lit("plain"), "plain"), "u16": (lit("😀é𝄞"), "😀é𝄞"), "u16le": (lit("añ😀"), "añ😀"),
        "u32": (lit("😀"), "😀"), "ucs": (lit("ñ€"), "ñ€"), "u3": (lit("ü€"), "ü€"),
        "e": (lit("it's"), "it's"), "el": (lit("ü"), "ü"), "st": (lit("d,a"), "a,d"), "stl": (lit("ö,ä"), "ä,ö"),
        "em": (lit("😀"), "😀"),
        "j": (lit('{"b": 1, "a":[1.0,1e2, 12345678901234567890123], "s": "é\\n"}'),
              '{"b": 1, "a":[1.0,1e2, 12345678901234567890123], "s": "é\\n"}'),
        "bn": (lit("ab"), "61620000"), "vb": ("x'00ff00'", "00ff00"), "bl": ("x''", ""),
        "lb": ("x'deadbeef'", "deadbeef"),
        "da": (lit("1899-12-31"), "1899-12-31"), "dt0": (lit("2024-05-01 12:00:00"), "2024-05-01T12:00:00"),
        "dt6": (lit("2024-05-01 12:00:00.000001"), "2024-05-01T12:00:00.000001"),
        "ts": (lit("2024-05-01 12:00:00.123456"), "2024-05-01T06:30:00.123456Z"),  # written at +05:30
        "ts0": (lit("1970-01-01 05:30:01"), "1970-01-01T00:00:01Z"),
        "tm": (lit("838:59:59"), "838:59:59"), "tm3": (lit("-01:00:00.001"), "-01:00:00.001"),
        "tm1": (lit("-00:00:00.5"), "-00:00:00.5"), "tm6": (lit("23:59:59.999999"), "23:59:59.999999"),
        "y": ("0", "0"),
        "g": ("ST_GeomFromText('POINT(1 2)', 4326)", "e61000000101000000000000000000f03f0000000000000040"),
        "p": ("POINT(3, 4)", "00000000010100000000000000000008400000000000001040"),
        "uu": (lit("123e4567-e89b-12d3-a456-426614174000"), "123e4567-e89b-12d3-a456-426614174000"),
        "i4": (lit("1.2.3.0"), "1.2.3.0"), "i6": (lit("::ffff:1.2.3.4"), "::ffff:1.2.3.4"),
    },
    2: {
        "ti": ("-128", "-128"), "tu": ("0", "0"), "si": ("32767", "32767"), "mi": ("0", "0"),
        "i": ("2147483647", "2147483647"), "iu": ("0", "0"), "bi": ("9223372036854775807", "9223372036854775807"),
        "bu": ("0", "0"), "b1": ("-1", "-1"), "bo": ("0", "0"), "bt": ("b'0'", "0"), "b64": ("b'0'", "0"),
        "dc": ("0", "0.00"), "dbig": ("-" + DEC_MAX, "-" + DEC_MAX),
        "f": ("3.40282346e38", "3.4028234663852886e+38"), "d": ("1.7976931348623157e308", "1.7976931348623157e+308"),
        "c": (lit(""), ""), "v": (lit(""), ""), "tx": (lit(""), ""), "lt": (lit(""), ""), "l1": (lit("Ÿ"), "Ÿ"),
        "l1t": (lit(""), ""), "a1": (lit(""), ""), "u16": (lit(""), ""), "u16le": (lit(""), ""),
        "u32": (lit(""), ""), "ucs": (lit(""), ""), "u3": (lit(""), ""),
        "e": (lit("a\\b"), "a\\b"), "el": (lit("é"), "é"), "st": (lit(""), ""), "stl": (lit(""), ""),
        "em": (lit("a"), "a"),
        "j": (lit("null"), "null"),
        "bn": ("x'00000000'", "00000000"), "vb": ("x''", ""), "bl": ("x'00'", "00"), "lb": ("x''", ""),
        "da": (lit("9999-12-31"), "9999-12-31"), "dt0": (lit("9999-12-31 23:59:59"), "9999-12-31T23:59:59"),
        "dt6": (lit("0001-01-01 00:00:00.000000"), "0001-01-01T00:00:00"),
        "ts": (lit("2038-01-19 08:44:07.999999"), "2038-01-19T03:14:07.999999Z"),
        "ts0": ("NULL", None),
        "tm": (lit("-838:59:59"), "-838:59:59"), "tm3": (lit("-00:00:01.5"), "-00:00:01.5"),
        "tm1": (lit("12:30:00.1"), "12:30:00.1"), "tm6": (lit("-00:00:01.000001"), "-00:00:01.000001"),
        "y": ("2155", "2155"), "g": ("NULL", None), "p": ("NULL", None),
        "uu": (lit("00000000-0000-0000-0000-000000000000"), "00000000-0000-0000-0000-000000000000"),
        "i4": (lit("0.0.0.0"), "0.0.0.0"), "i6": (lit("::"), "::"),
    },
    3: {},  # NULL everywhere
    4: {
        "ti": ("7", "7"), "i": ("7", "7"), "dc": ("0.5", "0.50"), "dbig": ("1e-30", "0.000000000000000000000000000001"),
        "f": ("16777217", "16777216.0"), "d": ("5e-324", "5e-324"), "c": (lit("x"), "x"), "v": (lit("x"), "x"),
        "st": (lit("c,b,a,d"), "a,b,c,d"), "e": (lit("small"), "small"),
        "j": (lit('[{"k": "é"}, true, -0.5e-3]'), '[{"k": "é"}, true, -0.5e-3]'),
        "da": (lit("0001-01-01"), "0001-01-01"), "dt0": (lit("1000-01-01 00:00:00"), "1000-01-01T00:00:00"),
        "dt6": (lit("1899-12-31 23:59:59.5"), "1899-12-31T23:59:59.5"),
        "ts": (lit("1970-01-01 05:30:01.000001"), "1970-01-01T00:00:01.000001Z"),
        "tm": (lit("00:00:00"), "00:00:00"), "tm3": (lit("-838:59:59.999"), "-838:59:59.999"),
        "tm1": (lit("-01:01:01.9"), "-01:01:01.9"), "tm6": (lit("-12:00:00.25"), "-12:00:00.25"),
        "y": ("1901", "1901"),
        "uu": (lit("f47ac10b-58cc-4372-a567-0e02b2c3d400"), "f47ac10b-58cc-4372-a567-0e02b2c3d400"),
        "i4": (lit("255.255.255.255"), "255.255.255.255"), "i6": (lit("2001:db8::1"), "2001:db8::1"),
    },
}
GENERATED = {1: ("-4294967296", "héllo wörld 😀!"), 2: ("4294967294", "!"), 3: (None, None), 4: ("14", "x!")}


def expected_rows() -> dict[int, dict[str, str | None]]:
    names = [c for c in ROWS[1] if c != "l1t"]
    out: dict[int, dict[str, str | None]] = {}
    for row_id, row in ROWS.items():
        out[row_id] = {"id": str(row_id), **{name: row.get(name, ("NULL", None))[1] for name in names}}
        out[row_id]["gv"], out[row_id]["gs"] = GENERATED[row_id]
    return out


def insert_every_type(conn: Any) -> None:
    for row_id, row in ROWS.items():
        names = ["id", *row]
        values = [str(row_id), *(literal for literal, _ in row.values())]
        execute(conn, f"INSERT INTO every_type ({', '.join(names)}) VALUES ({', '.join(values)})")


def test_every_type_reaches_the_same_text_from_snapshot_and_binlog(mariadb_server: Any, mariadb_database: str) -> None:
    url, db = mariadb_database, connection.database_of(mariadb_database)
    with mariadb_server.connect(db) as conn:
        execute(conn, EVERY_TYPE)
        start = binlog_position(conn)
        execute(conn, "SET time_zone = '+05:30'")
        insert_every_type(conn)
    schema = catalog_schema(url, db, "every_type")

    snapshot = snapshot_texts(url, schema)
    binlog = binlog_texts(url, schema, start)

    for row_id, expected in expected_rows().items():
        for name, text in expected.items():
            assert snapshot[row_id][name] == text, (row_id, name, "snapshot")
            assert binlog[row_id][name] == text, (row_id, name, "binlog")
    # latin1: all 256 bytes arrive as the server converts them (the snapshot is the server's own conversion), with
    # cp1252's five holes as C1 controls instead of a decoding error
    latin1 = binlog[1]["l1t"]
    assert latin1 == snapshot[1]["l1t"]
    assert latin1 is not None and len(latin1) == 256
    assert (latin1[0x41], latin1[0x80], latin1[0x81], latin1[0x9F], latin1[0xE9], latin1[0xFF]) == (
        "A", "€", "\x81", "Ÿ", "é", "ÿ")
    assert binlog[2]["l1t"] == snapshot[2]["l1t"] == ""


def test_catalog_types_and_binlog_columns(mariadb_server: Any, mariadb_database: str) -> None:
    url, db = mariadb_database, connection.database_of(mariadb_database)
    with mariadb_server.connect(db) as conn:
        execute(conn, EVERY_TYPE)
        start = binlog_position(conn)
        execute(conn, "INSERT INTO every_type (id) VALUES (1)")
    schema = catalog_schema(url, db, "every_type")
    by_name = {c.name: c for c in schema.columns}
    assert [(by_name[n].logical_type, by_name[n].precision, by_name[n].scale) for n in
            ("bi", "bu", "iu", "b1", "bt", "b64", "dc", "dbig", "f", "j", "bn", "da", "dt6", "ts", "tm3", "y", "g",
             "uu", "i6", "e", "st")] == [
        ("integer", None, None), ("decimal", 20, 0), ("integer", None, None), ("integer", None, None),
        ("integer", None, None), ("decimal", 20, 0), ("decimal", 12, 2), ("decimal", 65, 30), ("float", None, None),
        ("json", None, None), ("binary", None, None), ("date", None, None), ("timestamp", None, None),
        ("timestamptz", None, None), ("time", None, None), ("integer", None, None), ("other", None, None),
        ("uuid", None, None), ("text", None, None), ("text", None, None), ("text", None, None),
    ]
    assert (by_name["j"].source_type, by_name["iu"].source_type, by_name["e"].source_type) == (
        "longtext", "int(10) unsigned", "enum('small','medium','it''s','a\\\\b')")
    assert schema.primary_key == ["id"] and schema.dialect == "mysql"
    assert all(c.ordinal is None for c in schema.columns)

    stream = binlog_events(url, db, start)
    try:
        table_map = next(e for e in stream if isinstance(e, TableMapEvent) and e.table == "every_type")
        columns = list(table_map.columns)
    finally:
        stream.close()
    assert table_map_matches(schema, columns)
    from_binlog = {c.name: column_from_binlog(c) for c in columns}
    # Where the binlog tells, the same declared type as the catalog's COLUMN_TYPE
    for name in ("dc", "dbig", "v", "c", "l1", "u16", "u32", "ucs", "u3", "e", "st", "bn", "vb", "dt6", "ts", "tm3",
                 "tm", "bt", "b64", "tx", "lt", "bl", "lb", "da", "f", "d"):
        assert from_binlog[name].source_type == by_name[name].source_type, name
    assert (from_binlog["iu"].source_type, from_binlog["bu"].source_type, from_binlog["b1"].source_type) == (
        "int unsigned", "bigint unsigned", "tinyint")  # no display widths in the binlog
    for name, column in from_binlog.items():
        if name not in ("j", "uu", "i4", "i6"):  # MariaDB's JSON is LONGTEXT, UUID/INET are BINARY in the binlog
            assert (column.logical_type, column.precision, column.scale) == (
                by_name[name].logical_type, by_name[name].precision, by_name[name].scale), name
    assert (from_binlog["j"].source_type, from_binlog["uu"].source_type, from_binlog["i4"].source_type) == (
        "longtext", "binary(16)", "binary(4)")
    # the catalog (utf8mb3) shows an emoji label as '?'; the table map has it
    assert (by_name["em"].source_type, from_binlog["em"].source_type) == ("enum('?','a')", "enum('😀','a')")
    assert from_binlog["id"].primary_key and not from_binlog["v"].primary_key
    binlog_schema = schema_from_binlog(db, "every_type", columns)
    assert binlog_schema.primary_key == ["id"] and binlog_schema.column_names == schema.column_names


def test_table_map_written_before_an_alter_does_not_match_the_new_catalog(
        mariadb_server: Any, mariadb_database: str) -> None:
    url, db = mariadb_database, connection.database_of(mariadb_database)
    alters = {
        "v": "MODIFY v varchar(30)", "dc": "MODIFY dc decimal(14,2)", "e": "MODIFY e enum('a','b','c')",
        "u": "MODIFY u int", "t": "MODIFY t datetime(6)", "r": "RENAME COLUMN r TO r2", "x": "ADD COLUMN x int",
        "k": "DROP PRIMARY KEY, ADD PRIMARY KEY (id, k)",
    }
    with mariadb_server.connect(db) as conn:
        execute(conn, "CREATE TABLE m (id int PRIMARY KEY, k int NOT NULL DEFAULT 0, v varchar(20), dc decimal(12,2), "
                      "e enum('a','b'), u int unsigned, t datetime(3), r int)")
        start = binlog_position(conn)
        execute(conn, "INSERT INTO m (id) VALUES (1)")
        before = catalog_schema(url, db, "m")
        changed = {}
        for name, alter in alters.items():
            execute(conn, f"ALTER TABLE m {alter}")
            changed[name] = catalog_schema(url, db, "m")
            execute(conn, f"ALTER TABLE m {_undo(alter)}")
    stream = binlog_events(url, db, start)
    try:
        columns = next(e for e in stream if isinstance(e, TableMapEvent)).columns
    finally:
        stream.close()
    assert table_map_matches(before, columns)
    for name, schema in changed.items():
        assert not table_map_matches(schema, columns), name


def _undo(alter: str) -> str:
    return {
        "MODIFY v varchar(30)": "MODIFY v varchar(20)", "MODIFY dc decimal(14,2)": "MODIFY dc decimal(12,2)",
        "MODIFY e enum('a','b','c')": "MODIFY e enum('a','b')", "MODIFY u int": "MODIFY u int unsigned",
        "MODIFY t datetime(6)": "MODIFY t datetime(3)", "RENAME COLUMN r TO r2": "RENAME COLUMN r2 TO r",
        "ADD COLUMN x int": "DROP COLUMN x",
        "DROP PRIMARY KEY, ADD PRIMARY KEY (id, k)": "DROP PRIMARY KEY, ADD PRIMARY KEY (id)",
    }[alter]


INET_TEXTS = ["::", "::1", "::ffff:1.2.3.4", "::1.2.3.4", "2001:db8::1", "1:0:0:1::1", "1:0:0:1::", "::102",
              "::1:0:0", "1::", "1:2:3:4:5:6:7:8", "::ffff:0.0.0.0", "fe80::1:0:0:0", "1::2:0:3:0:4:0",
              "::fffe:102:304", "::1:0:0:0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00"]


def test_inet6_and_uuid_texts_match_mariadb(mariadb_server: Any, mariadb_database: str) -> None:
    url, db = mariadb_database, connection.database_of(mariadb_database)
    uuids = ["123e4567-e89b-12d3-a456-426614174000", "f47ac10b-58cc-4372-a567-0e02b2c3d479",
             "ffffffff-ffff-1fff-8fff-ffffffffff00", "00000000-0000-0000-0000-000000000001"]
    with mariadb_server.connect(db) as conn:
        execute(conn, "CREATE TABLE n (id int PRIMARY KEY, a inet6, u uuid)")
        start = binlog_position(conn)
        for i, text in enumerate(INET_TEXTS):
            execute(conn, f"INSERT INTO n VALUES ({i}, {lit(text)}, {lit(uuids[i % len(uuids)].upper())})")
    schema = catalog_schema(url, db, "n")
    snapshot, binlog = snapshot_texts(url, schema), binlog_texts(url, schema, start)
    for i, text in enumerate(INET_TEXTS):
        assert snapshot[i]["a"] == binlog[i]["a"] == text  # MariaDB prints what it was given in this form
        assert snapshot[i]["u"] == binlog[i]["u"] == uuids[i % len(uuids)]


# --- zero dates -----------------------------------------------------------------------------------------------------


def _zero_date_table(mariadb_server: Any, db: str) -> tuple[str, int]:
    with mariadb_server.connect(db) as conn:
        execute(conn, "CREATE TABLE z (id int PRIMARY KEY, da date, dt datetime, dt6 datetime(6), ts timestamp NULL, "
                      "dtn datetime NOT NULL)")
        start = binlog_position(conn)
        execute(conn, "SET sql_mode = '', time_zone = '+00:00'")
        execute(conn, "INSERT INTO z VALUES (1, '0000-00-00', '0000-00-00 00:00:00', '2024-00-10 10:00:00.5', "
                      "'0000-00-00 00:00:00', '0000-00-00 00:00:00')")
        execute(conn, "INSERT INTO z VALUES (2, '2024-00-10', '2024-05-00 10:00:00', NULL, NULL, "
                      "'2024-05-01 10:00:00')")
        execute(conn, "SET sql_mode = 'ALLOW_INVALID_DATES'")
        execute(conn, "INSERT INTO z VALUES (3, NULL, '2024-02-31 10:00:00', '2024-01-01 00:00:00', "
                      "'2024-01-01 00:00:00', '2024-02-30 00:00:00')")
    return start


def test_zero_dates_become_null_with_a_callback(mariadb_server: Any, mariadb_database: str) -> None:
    url, db = mariadb_database, connection.database_of(mariadb_database)
    start = _zero_date_table(mariadb_server, db)
    schema = catalog_schema(url, db, "z")
    seen: dict[str, list[tuple[str, str | None]]] = {"snapshot": [], "binlog": []}

    snapshot = snapshot_texts(url, schema, on_zero_date=lambda c, raw: seen["snapshot"].append((c, raw)))
    binlog = binlog_texts(url, schema, start, on_zero_date=lambda c, raw: seen["binlog"].append((c, raw)))

    expected = {
        1: {"id": "1", "da": None, "dt": None, "dt6": None, "ts": None, "dtn": None},
        2: {"id": "2", "da": None, "dt": None, "dt6": None, "ts": None, "dtn": "2024-05-01T10:00:00"},
        3: {"id": "3", "da": None, "dt": None, "dt6": "2024-01-01T00:00:00", "ts": "2024-01-01T00:00:00Z",
            "dtn": None},
    }
    assert snapshot == binlog == expected
    # NULLs (row 2's dt6 and ts, row 3's da) are not zero dates on either path
    assert seen["snapshot"] == [
        ("da", "0000-00-00"), ("dt", "0000-00-00 00:00:00"), ("dt6", "2024-00-10 10:00:00.500000"),
        ("ts", "0000-00-00 00:00:00"), ("dtn", "0000-00-00 00:00:00"),
        ("da", "2024-00-10"), ("dt", "2024-05-00 10:00:00"),
        ("dt", "2024-02-31 10:00:00"), ("dtn", "2024-02-30 00:00:00"),
    ]
    assert seen["binlog"] == [
        ("da", None), ("dt", None), ("dt6", None), ("ts", "0000-00-00 00:00:00"), ("dtn", None),
        ("da", None), ("dt", None),
        ("dt", None), ("dtn", None),
    ]


def test_zero_dates_refused_name_the_column(mariadb_server: Any, mariadb_database: str) -> None:
    url, db = mariadb_database, connection.database_of(mariadb_database)
    start = _zero_date_table(mariadb_server, db)
    schema = catalog_schema(url, db, "z")
    with pytest.raises(ZeroDateError, match=r"column 'da' holds '0000-00-00', which no other database can store.*"
                                            r"zero_dates: null") as snap:
        snapshot_texts(url, schema, zero_dates="refuse")
    assert (snap.value.column, snap.value.raw) == ("da", "0000-00-00")
    with pytest.raises(ZeroDateError, match=r"column 'da' holds a zero or invalid date \(the binlog keeps no text"):
        binlog_texts(url, schema, start, zero_dates="refuse")
    ts = schema.column("ts")
    with pytest.raises(ZeroDateError, match="column 'ts' holds '0000-00-00 00:00:00'"):
        binlog_formatter(ts, zero_dates="refuse")(dt.datetime(1970, 1, 1))
    with pytest.raises(ValueError, match="zero_dates must be one of null, refuse, not 'drop'"):
        snapshot_formatter(ts, zero_dates="drop")


def test_an_invalid_date_stops_the_binlog_reader(mariadb_server: Any, mariadb_database: str) -> None:
    """pymysqlreplication 1.0.17 raises on a DATE like 2024-02-31 (ALLOW_INVALID_DATES) inside its row parser; the
    snapshot gets the server's text, which the zero-date policy handles. This pins the library's behaviour."""
    url, db = mariadb_database, connection.database_of(mariadb_database)
    with mariadb_server.connect(db) as conn:
        execute(conn, "CREATE TABLE bad (id int PRIMARY KEY, da date)")
        start = binlog_position(conn)
        execute(conn, "SET sql_mode = 'ALLOW_INVALID_DATES'", "INSERT INTO bad VALUES (1, '2024-02-31')")
    schema = catalog_schema(url, db, "bad")
    assert snapshot_texts(url, schema) == {1: {"id": "1", "da": None}}
    with pytest.raises(ValueError, match="day is out of range for month"):
        binlog_texts(url, schema, start)


def test_bind_table_map_refuses_a_charset_it_cannot_decode(mariadb_server: Any, mariadb_database: str) -> None:
    url, db = mariadb_database, connection.database_of(mariadb_database)
    with mariadb_server.connect(db) as conn:
        execute(conn, "CREATE TABLE cy (id int PRIMARY KEY, name varchar(10) CHARACTER SET cp1251)")
        start = binlog_position(conn)
        execute(conn, "INSERT INTO cy VALUES (1, 'Ж')")
    stream = binlog_events(url, db, start)
    try:
        columns = next(e for e in stream if isinstance(e, TableMapEvent)).columns
    finally:
        stream.close()
    with pytest.raises(UnsupportedCharsetError, match="column 'name' uses character set 'cp1251', which the binlog "
                                                      "reader cannot decode exactly"):
        bind_table_map(None, columns)


# --- without a server ---------------------------------------------------------------------------------------------


def test_float32_text_is_the_shortest_text_of_the_4_byte_float() -> None:
    assert [float32_text(v) for v in (1.2345678806304932, 16777216.0, 1.100000023841858, 1.401298464324817e-45,
                                      3.4028232635611926e38, -0.0, 0.1)] == [
        "1.2345679", "16777216.0", "1.1", "1e-45", "3.4028233e+38", "-0.0", "0.1"]
    # the largest float32 keeps its digits: MySQL refuses 3.4028235e+38 in a FLOAT
    assert float32_text(3.4028234663852886e38) == "3.4028234663852886e+38"


def test_time_text_and_the_negative_fraction_fix() -> None:
    assert [time_text(m) for m in (0, 500_000, 86_399_999_999, -1_000, -3_020_399_000_000, 3_020_399_000_000)] == [
        "00:00:00", "00:00:00.5", "23:59:59.999999", "-00:00:00.001", "-838:59:59", "838:59:59"]
    column = Column("t", "time(3)", "time")
    # what pymysqlreplication hands over for -01:00:00.001 (it reads -01:00:00.999) and for -00:00:01.5
    fmt = binlog_formatter(column)
    assert fmt(-dt.timedelta(hours=1, microseconds=999_000)) == "-01:00:00.001"
    assert fmt(-dt.timedelta(seconds=1, microseconds=500_000)) == "-00:00:01.5"
    assert fmt(-dt.timedelta(hours=1)) == "-01:00:00"
    assert snapshot_formatter(column)(-dt.timedelta(hours=1, microseconds=1_000)) == "-01:00:00.001"


def test_mysql_binary_json_and_its_snapshot_text_agree() -> None:
    column = Column("doc", "json", "json")
    parsed = {b"a": [1, 2.5, b"\xc3\xa9", None, True], b"b": {b"n": 18446744073709551615},
              b"d": decimal.Decimal("1.50")}
    text = '{"a": [1, 2.5, "é", null, true], "b": {"n": 18446744073709551615}, "d": 1.50}'
    assert binlog_formatter(column)(parsed) == snapshot_formatter(column)(text) == (
        '{"a": [1, 2.5, "é", null, true], "b": {"n": 18446744073709551615}, "d": 1.5}')
    assert binlog_formatter(column)(None) is None and snapshot_formatter(column)("null") is None


def test_inet6_text_follows_mariadb() -> None:
    import ipaddress

    assert [inet6_text(ipaddress.IPv6Address(a).packed) for a in
            ("::ffff:0:0", "0:0:0:0:0:ffff:102:304", "::0.0.1.2", "1:0:2:0:3:0:4:0")] == [
        "::ffff:0.0.0.0", "::ffff:1.2.3.4", "::102", "1::2:0:3:0:4:0"]


def test_source_type_and_logical_type_table() -> None:
    assert parse_source_type("enum('it''s','a\\\\b','c,d)')").labels == ("it's", "a\\b", "c,d)")
    assert parse_source_type("int(10) unsigned zerofill") == parse_source_type("int(10) unsigned zerofill")
    assert parse_source_type("decimal(12,2) unsigned").args == (12, 2)
    cases = {
        ("int", "int(11)"): ("integer", None, None), ("int", "int(10) unsigned"): ("integer", None, None),
        ("bigint", "bigint(20) unsigned"): ("decimal", 20, 0), ("bigint", "bigint"): ("integer", None, None),
        ("tinyint", "tinyint(1)"): ("integer", None, None), ("bit", "bit(63)"): ("integer", None, None),
        ("bit", "bit(64)"): ("decimal", 20, 0), ("decimal", "decimal(10,0)"): ("decimal", 10, 0),
        ("float", "float"): ("float", None, None), ("double", "double"): ("float", None, None),
        ("varchar", "varchar(20)"): ("text", None, None), ("enum", "enum('a')"): ("text", None, None),
        ("set", "set('a')"): ("text", None, None), ("json", "json"): ("json", None, None),
        ("longblob", "longblob"): ("binary", None, None), ("date", "date"): ("date", None, None),
        ("datetime", "datetime(6)"): ("timestamp", None, None), ("timestamp", "timestamp"): ("timestamptz", None, None),
        ("time", "time(3)"): ("time", None, None), ("year", "year(4)"): ("integer", None, None),
        ("point", "point"): ("other", None, None), ("uuid", "uuid"): ("uuid", None, None),
        ("inet6", "inet6"): ("text", None, None), ("vector", "vector(3)"): ("other", None, None),
    }
    for (data_type, column_type), expected in cases.items():
        assert logical_of(data_type, column_type) == expected, column_type
    assert logical_of("longtext", "longtext", is_json=True) == ("json", None, None)


def test_mysql_defaults_are_read_unquoted() -> None:
    """MySQL 8 writes COLUMN_DEFAULT bare and flags expressions with DEFAULT_GENERATED (MariaDB: see test_catalog)."""
    def backfill(source_type: str, logical: str, default: str | None, extra: str = "", nullable: bool = True,
                 scale: int | None = None) -> tuple[str | None, bool]:
        column = Column("c", source_type, logical, nullable, precision=12 if scale is not None else None, scale=scale)
        return backfill_of(column, {"COLUMN_DEFAULT": default, "EXTRA": extra, "mariadb": False})

    assert backfill("varchar(10)", "text", "it's") == ("it's", False)
    assert backfill("varchar(10)", "text", "NULL") == ("NULL", False)  # the text NULL, not SQL NULL
    assert backfill("varchar(10)", "text", None) == (None, False)
    assert backfill("int", "integer", None, nullable=False) == ("0", False)
    assert backfill("decimal(12,2)", "decimal", "1.5", scale=2) == ("1.50", False)
    assert backfill("bit(3)", "integer", "b'101'") == ("5", False)
    assert backfill("binary(3)", "binary", "0x6162") == ("616200", False)
    assert backfill("datetime", "timestamp", "CURRENT_TIMESTAMP", "DEFAULT_GENERATED") == (None, True)
    assert backfill("char(36)", "text", "uuid()", "DEFAULT_GENERATED") == (None, True)
    assert backfill("json", "json", None, nullable=False) == (None, True)
    assert backfill("int", "integer", None, "VIRTUAL GENERATED") == (None, True)


def test_restore_binlog_values_marks_what_the_reader_folded_into_none() -> None:
    values = {"a": None, "b": None, "c": None, "d": 1}
    restore_binlog_values(values, {"a": "out of date range", "b": "empty set", "c": "null"})
    assert values == {"a": ZERO_DATE, "b": frozenset(), "c": None, "d": 1}
    assert binlog_formatter(Column("s", "set('x','y')", "text"))(frozenset()) == ""
