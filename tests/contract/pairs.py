"""The (source, sink) pairs the contract suite runs over, and how each sink's rows are read back.

A pair knows how to build its Sink for a target schema and delete mode, and how to read a sink table back as
Python values keyed by column name; the suite compares those with the source's rows read the same way. A new
connector adds itself here (and its servers to conftest), nothing else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from airflow_provider_cdc.connectors.base import Sink
from airflow_provider_cdc.tables import Column
from airflow_provider_cdc.values import parse_value

SOFT_DELETED = "_cdc_deleted_at"


def normalise(value: Any, column: Column) -> Any:
    """One Python value per logical value, whatever the reader returned (text, typed, JSON as text...)."""
    if value is None:
        return None
    kind = column.logical_type
    if kind == "json":
        return json.loads(value) if isinstance(value, str) else value
    if kind == "uuid":
        return str(uuid.UUID(str(value)))
    if kind == "binary":
        return bytes(value)
    if kind in ("time", "decimal") and isinstance(value, str):
        return parse_value(value, kind)
    return value


def mysql_connect(url: str, database: str | None = None) -> Any:
    """A pymysql connection for reading test rows back: UTC session, utf8mb4, autocommit (the URL's database unless
    ``database`` is given)."""
    import pymysql

    from airflow_provider_cdc.connectors.mysql.connection import connect_kwargs, database_of

    return pymysql.connect(**connect_kwargs(url), database=database or database_of(url) or None, charset="utf8mb4",
                           autocommit=True, init_command="SET time_zone = '+00:00'")


def mysql_quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def time_of_day(value: dt.timedelta) -> dt.time:
    """pymysql reads a TIME as a ``timedelta`` (MySQL's TIME is a duration); a time of day within 0..24 h."""
    seconds, micros = divmod(value // dt.timedelta(microseconds=1), 1_000_000)
    if not 0 <= seconds < 86_400:
        raise ValueError(f"TIME {value} is not a time of day")
    return (dt.datetime.min + dt.timedelta(seconds=seconds, microseconds=micros)).time()


def normalise_mysql(value: Any, column: Column) -> Any:
    """A value read from a MySQL/MariaDB sink table as the Python value :func:`normalise` gives for a PostgreSQL
    one. What a MariaDB sink stores differently, and how it is read back:

    - ``boolean``: ``TINYINT(1)`` 0/1 -> ``False``/``True``;
    - ``integer`` (and ``decimal``) read as ``bytes``: a ``BIT(n)`` column -> its bits as an unsigned number;
    - ``timestamptz``: a naive ``DATETIME(6)`` holding UTC -> the same instant, tz-aware in UTC;
    - ``time``: pymysql's ``timedelta`` -> ``datetime.time``;
    - ``json``: text -> parsed (key order and spacing do not count);
    - ``binary``: ``bytes`` as they are; ``uuid``: text or MariaDB's ``UUID`` -> canonical lowercase text;
    - ``decimal``: ``Decimal`` as it is (compared by value: ``1.0 == 1.00``), text (an unconstrained PostgreSQL
      numeric stored as text) -> ``Decimal``;
    - ``other``: the source's text as it is (compared with PostgreSQL's ``::text``).
    """
    if value is None:
        return None
    kind = column.logical_type
    if kind == "boolean" and isinstance(value, int):
        return bool(value)
    if kind == "timestamptz" and isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    if kind == "time" and isinstance(value, dt.timedelta):
        return time_of_day(value)
    if kind in ("integer", "decimal") and isinstance(value, bytes):
        return int.from_bytes(value, "big")  # a BIT(n) column (MySQL source): its bits as an unsigned number
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if kind in ("json", "other", "text") and isinstance(value, bytes):
        value = value.decode()
    return normalise(value, column)


def mysql_logical_type(data_type: str, column_type: str, json_columns: set[str], name: str) -> str:
    """The logical type a MySQL/MariaDB source column is expected to have, by its declared type, and how its value
    is read back from the source for the comparison (pymysql, session in UTC; :func:`normalise_mysql`):

    =====================================================  ============  ============================================
    MariaDB type                                           logical type  the value compared
    =====================================================  ============  ============================================
    TINYINT (also TINYINT(1) / BOOL), SMALLINT, MEDIUMINT,  integer       the number (TINYINT(1) stays 0/1: MySQL has
    INT, BIGINT, signed or unsigned but BIGINT UNSIGNED;                 no boolean type, only a display width)
    YEAR
    BIT(n), n < 64                                         integer       the bits as an unsigned number (pymysql
                                                                         reads bytes)
    BIGINT UNSIGNED, BIT(64)                               decimal       the number (beyond int64)
    DECIMAL(p,s)                                           decimal       ``Decimal``, compared by value
    FLOAT, DOUBLE                                          float         the float pymysql reads (FLOAT: the shortest
                                                                         text of the single-precision value)
    CHAR, VARCHAR, *TEXT, ENUM, SET                        text          the string (SET: ``'a,c'``)
    LONGTEXT with ``CHECK (json_valid(col))`` (JSON)       json          parsed JSON
    DATETIME                                               timestamp     naive ``datetime`` (no zone: a wall clock)
    TIMESTAMP                                              timestamptz   the instant: read in a UTC session, then UTC
    DATE / TIME                                            date / time   ``date`` / ``time`` of day (pymysql reads a
                                                                         ``timedelta``)
    BINARY, VARBINARY, *BLOB                               binary        the bytes (BINARY(n): padded with 0x00)
    UUID (MariaDB 10.7+)                                   uuid          lowercase canonical text
    =====================================================  ============  ============================================
    """
    kind, declared = data_type.lower(), column_type.lower()
    if (kind == "bigint" and "unsigned" in declared) or declared == "bit(64)":
        return "decimal"
    if kind in ("tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year", "bit"):
        return "integer"
    if kind in ("decimal", "numeric"):
        return "decimal"
    if kind in ("float", "double", "real"):
        return "float"
    if kind in ("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"):
        return "binary"
    if kind in ("datetime", "timestamp", "date", "time", "uuid", "json"):
        return {"datetime": "timestamp", "timestamp": "timestamptz"}.get(kind, kind)
    if kind == "longtext" and name in json_columns:
        return "json"
    return "text"


def mysql_columns(url: str, database: str, table: str) -> list[Column]:
    """The columns of a MySQL/MariaDB table in their order, with the logical type each is expected to have."""
    with mysql_connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT CONSTRAINT_NAME FROM information_schema.CHECK_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = %s"
                    " AND TABLE_NAME = %s AND CHECK_CLAUSE LIKE 'json\\_valid(%%'", (database, table))
        json_columns = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s"
                    " AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION", (database, table))
        rows = cur.fetchall()
    return [Column(name, declared, mysql_logical_type(kind, declared, json_columns, name))
            for name, kind, declared in rows]


def mysql_rows(url: str, database: str, table: str, columns: list[Column], *, where: str = "") -> list[dict[str, Any]]:
    """Rows of a MySQL/MariaDB table, normalised per column (:func:`normalise_mysql`)."""
    select = ", ".join(mysql_quote(c.name) for c in columns)
    with mysql_connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {select} FROM {mysql_quote(database)}.{mysql_quote(table)} {where} ORDER BY 1")
        return [{c.name: normalise_mysql(v, c) for c, v in zip(columns, row)} for row in cur.fetchall()]


def pg_rows(url: str, schema: str, table: str, columns: list[Column], *, where: str = "") -> list[dict[str, Any]]:
    """Rows of a PostgreSQL table; ``other`` columns as PostgreSQL text (the only form that compares)."""
    select = sql.SQL(", ").join(
        sql.SQL("{}::text AS {}").format(sql.Identifier(c.name), sql.Identifier(c.name)) if c.logical_type == "other"
        else sql.Identifier(c.name) for c in columns)
    with psycopg.connect(url, row_factory=dict_row) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        query = sql.SQL("SELECT {} FROM {} {} ORDER BY 1").format(select, sql.Identifier(schema, table), sql.SQL(where))
        return [{c.name: normalise(row[c.name], c) for c in columns} for row in conn.execute(query)]


@dataclasses.dataclass
class SinkUnderTest:
    name: str
    make: Callable[[str, str], Sink]  # (target schema, delete mode) -> Sink
    read: Callable[[str, str, list[Column], bool], list[dict[str, Any]]]  # (schema, table, columns, live only)
    raw: Callable[[str, str], list[dict[str, Any]]]  # every column of a sink table, bookkeeping included
    location: str  # the sink's URL or root
    drop: Callable[[str], None] | None = None  # removes what the sink made for a target schema (None: nothing to do)


def postgres_sink(url: str) -> SinkUnderTest:
    from airflow_provider_cdc.connectors.postgres.sink import PgSink

    def read(schema: str, table: str, columns: list[Column], live: bool) -> list[dict[str, Any]]:
        with psycopg.connect(url) as conn:
            soft = conn.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
                                " AND column_name = %s", (schema, table, SOFT_DELETED)).fetchone()
        return pg_rows(url, schema, table, columns, where=f"WHERE {SOFT_DELETED} IS NULL" if live and soft else "")

    def raw(schema: str, table: str) -> list[dict[str, Any]]:
        with psycopg.connect(url, row_factory=dict_row) as conn:
            return conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(schema, table))).fetchall()

    return SinkUnderTest(
        "postgresql",
        lambda schema, delete_mode: PgSink(url, sink_id="warehouse", target_schema=schema, delete_mode=delete_mode),
        read, raw, url,
    )


def delta_sink(root: Path) -> SinkUnderTest:
    from deltalake import DeltaTable

    from airflow_provider_cdc.connectors.delta.options import DeltaSinkOptions
    from airflow_provider_cdc.connectors.delta.sink import DeltaSink

    def raw(schema: str, table: str) -> list[dict[str, Any]]:
        rows = DeltaTable(str(root / schema / table)).to_pyarrow_table().to_pylist()
        return sorted(rows, key=lambda r: tuple(str(v) for v in r.values()))

    def read(schema: str, table: str, columns: list[Column], live: bool) -> list[dict[str, Any]]:
        rows = [r for r in raw(schema, table) if not live or r.get(SOFT_DELETED) is None]
        out = [{c.name: normalise(r[c.name], c) for c in columns} for r in rows]
        return sorted(out, key=lambda r: r[columns[0].name])

    return SinkUnderTest(
        "delta",
        lambda schema, delete_mode: DeltaSink(str(root), sink_id="lake", target_schema=schema,
                                              delete_mode=delete_mode, options=DeltaSinkOptions()),
        read, raw, str(root),
    )


def mariadb_sink(url: str) -> SinkUnderTest:
    """A MariaDB sink: ``target_schema`` is a database (the sink creates it). Rows are read back with pymysql and
    normalised by :func:`normalise_mysql` so that they compare value for value with the source's."""
    import pymysql.cursors

    from airflow_provider_cdc.connectors.mysql.sink import MySqlSink

    def read(schema: str, table: str, columns: list[Column], live: bool) -> list[dict[str, Any]]:
        with mysql_connect(url) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
                        " AND column_name = %s", (schema, table, SOFT_DELETED))
            soft = cur.fetchone()
        return mysql_rows(url, schema, table, columns, where=f"WHERE {SOFT_DELETED} IS NULL" if live and soft else "")

    def raw(schema: str, table: str) -> list[dict[str, Any]]:
        with mysql_connect(url) as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute(f"SELECT * FROM {mysql_quote(schema)}.{mysql_quote(table)} ORDER BY 1")
            return list(cur.fetchall())

    def drop(schema: str) -> None:  # the target database is the sink's own making, not the fixture's
        with mysql_connect(url) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {mysql_quote(schema)}")

    return SinkUnderTest(
        "mariadb",
        lambda schema, delete_mode: MySqlSink(url, sink_id="warehouse", target_schema=schema, delete_mode=delete_mode),
        read, raw, url, drop,
    )


def normalise_mongodb(value: Any, column: Column) -> Any:
    """A field read from a MongoDB sink document as the Python value :func:`normalise` gives for a PostgreSQL one.
    What a MongoDB sink stores differently (:mod:`airflow_provider_cdc.connectors.mongodb.sink_values`), and how it
    is read back:

    - NULL: no field at all (read as None);
    - ``integer``: ``Int64`` -> int; ``decimal``: ``Decimal128`` -> ``Decimal`` (compared by value);
    - ``timestamptz``: a BSON date, read aware in UTC, as it is; ``timestamp``: the same wall clock, naive;
      ``date``: midnight UTC -> ``date``;
    - ``time``: its portable text (BSON has no time of day) -> ``datetime.time``;
    - ``json``: documents and arrays, their ``Int64`` and ``Decimal128`` as int and ``Decimal``;
    - ``uuid``: ``Binary`` subtype 4 -> canonical text; ``binary``: subtype 0, read as ``bytes``;
    - ``other``: the source's text as it is.
    """
    from bson import Binary

    from airflow_provider_cdc.connectors.mongodb.sink_values import plain

    if value is None:
        return None
    kind = column.logical_type
    if kind == "timestamp" and isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    if kind == "timestamptz" and isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc)
    if kind == "date" and isinstance(value, dt.datetime):
        return value.date()
    if kind == "uuid" and isinstance(value, Binary) and value.subtype == 4:
        return str(value.as_uuid())
    return normalise(plain(value), column)


def mongodb_sink(url: str) -> SinkUnderTest:
    """A MongoDB sink: ``target_schema`` is a database (made by the sink, dropped after), a table a collection.
    Documents are read back with pymongo and normalised by :func:`normalise_mongodb`."""
    from airflow_provider_cdc.connectors.mongodb.connection import connect
    from airflow_provider_cdc.connectors.mongodb.sink import MongoSink

    bookkeeping = ("_cdc_op", "_cdc_position", "_cdc_ts", SOFT_DELETED)

    def raw(schema: str, table: str) -> list[dict[str, Any]]:
        # A NULL is no field in a document: the bookkeeping fields read None where absent, as a column would.
        with connect(url) as client:
            documents = list(client[schema][table].find(sort=[("_id", 1)]))
        return [{**dict.fromkeys(bookkeeping), **document} for document in documents]

    def read(schema: str, table: str, columns: list[Column], live: bool) -> list[dict[str, Any]]:
        rows = [doc for doc in raw(schema, table) if not live or doc.get(SOFT_DELETED) is None]
        return [{c.name: normalise_mongodb(doc.get(c.name), c) for c in columns} for doc in rows]

    def drop(schema: str) -> None:  # the target database (ledger included) is the sink's own making
        with connect(url) as client:
            client.drop_database(schema)

    return SinkUnderTest(
        "mongodb",
        lambda schema, delete_mode: MongoSink(url, sink_id="warehouse", target_schema=schema,
                                              delete_mode=delete_mode),  # type: ignore[arg-type]
        read, raw, url, drop,
    )
