"""A join rule's reference reader for PostgreSQL: rows of one table by key, ``WHERE (k1, k2) IN (...)``.

Names are quoted with :class:`psycopg.sql.Identifier` (``schema.table``; an unqualified table is found on the
search path). Keys are sent as text of unknown type, so PostgreSQL casts each to its key column's type (an integer
batch field finds a ``numeric`` or ``text`` key alike, and the key's index is used); values come back as psycopg's
typed values, made the value contract's (:func:`~airflow_provider_cdc.transform.join.contract_value`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from airflow_provider_cdc.transform.join import chunks, contract_value, key_text

CONNECT_TIMEOUT = 10


def table_identifier(table: str) -> sql.Identifier:
    schema, _, name = table.rpartition(".")
    return sql.Identifier(schema, name) if schema else sql.Identifier(name)


def lookup(url: str, table: str, key_columns: list[str], keys: list[tuple[Any, ...]], *,
           missing_ok: bool = False) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rows of ``table`` whose ``key_columns`` equal one of ``keys``: ``{key: {column: value}}``. With
    ``missing_ok`` a table that does not exist holds nothing (a sink table not created yet)."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    if not keys:
        return out
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in key_columns)
    one = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() for _ in key_columns))
    with psycopg.connect(url, autocommit=True, client_encoding="utf8", connect_timeout=CONNECT_TIMEOUT,
                         row_factory=dict_row) as conn:
        conn.read_only = True
        if missing_ok:
            found = conn.execute("SELECT to_regclass(%s) AS relation",
                                 [table_identifier(table).as_string(conn)]).fetchone()
            if found is None or found["relation"] is None:
                return out
        for chunk in chunks(keys):
            query = sql.SQL("SELECT * FROM {} WHERE ({}) IN ({})").format(
                table_identifier(table), columns, sql.SQL(", ").join(one for _ in chunk))
            params = [v if isinstance(v, bytes) else key_text(v) for key in chunk for v in key]
            for row in conn.execute(query, params):
                typed = {name: contract_value(value) for name, value in row.items()}
                out.setdefault(tuple(typed[c] for c in key_columns), typed)
    return out
