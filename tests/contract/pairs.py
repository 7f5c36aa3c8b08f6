"""The (source, sink) pairs the contract suite runs over, and how each sink's rows are read back.

A pair knows how to build its Sink for a target schema and delete mode, and how to read a sink table back as
Python values keyed by column name; the suite compares those with the source's rows read the same way. A new
connector adds itself here (and its servers to conftest), nothing else.
"""

from __future__ import annotations

import dataclasses
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
