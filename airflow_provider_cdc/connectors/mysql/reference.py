"""A join rule's reference reader for MySQL and MariaDB: rows of one table by key, ``WHERE (k1, k2) IN (...)``.

``database.table`` (or a table of the URL's database); names in backquotes. Keys are sent as pymysql escapes their
Python values (MySQL compares a number with a text key by value); values come back typed: ``TIMESTAMP`` as UTC (the
session's zone), ``JSON`` parsed (MariaDB's too: a LONGTEXT with a ``json_valid`` CHECK, found in the catalog as the
snapshot finds it), ``TIME`` as a time of day, as the value contract has them.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from pymysql.constants import FIELD_TYPE

from airflow_provider_cdc.connectors.mysql.catalog import read_tables
from airflow_provider_cdc.connectors.mysql.connection import connect, database_of, quote_name
from airflow_provider_cdc.transform.join import chunks, contract_value, key_text


def _param(value: Any) -> Any:
    """A key value pymysql can escape."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)  # the session's time zone is UTC
    if isinstance(value, (bool, uuid.UUID, dict, list)):
        return key_text(value)
    return value


def lookup(url: str, table: str, key_columns: list[str], keys: list[tuple[Any, ...]], *,
           missing_ok: bool = False) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rows of ``table`` whose ``key_columns`` equal one of ``keys``: ``{key: {column: value}}``."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    if not keys:
        return out
    database, _, name = table.rpartition(".")
    target = f"{quote_name(database)}.{quote_name(name)}" if database else quote_name(name)
    columns = ", ".join(quote_name(c) for c in key_columns)
    one = "(" + ", ".join(["%s"] * len(key_columns)) + ")"
    conn = connect(url)
    try:
        where = database or database_of(url)
        schema = read_tables(conn, [(where, name)]).get(f"{where}.{name}")
        if schema is None and missing_ok:  # a sink table not created yet holds nothing
            return out
        logical = {c.name: c.logical_type for c in schema.columns} if schema is not None else {}
        with conn.cursor() as cursor:
            for chunk in chunks(keys):
                cursor.execute(f"SELECT * FROM {target} WHERE ({columns}) IN ({', '.join([one] * len(chunk))})",
                               [_param(v) for key in chunk for v in key])
                names = [d[0] for d in cursor.description]
                kinds = [d[1] for d in cursor.description]
                for values in cursor.fetchall():
                    typed = {n: _value(v, kind, logical.get(n)) for n, v, kind in zip(names, values, kinds)}
                    out.setdefault(tuple(typed[c] for c in key_columns), typed)
    finally:
        conn.close()
    return out


def _value(value: Any, kind: int, logical: str | None) -> Any:
    if value is None:
        return None
    if (kind == FIELD_TYPE.JSON or logical == "json") and isinstance(value, (str, bytes)):
        return json.loads(value)
    if (kind == FIELD_TYPE.TIMESTAMP or logical == "timestamptz") and isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.timezone.utc)
    return contract_value(value)
