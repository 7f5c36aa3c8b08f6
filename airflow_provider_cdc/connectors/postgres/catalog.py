"""Catalog look-ups on a PostgreSQL source: relation ids, primary keys, declared types.

Relation messages carry type OIDs and typmods; ``format_type`` turns them into the declared type
(``numeric(12,2)``, ``timestamp with time zone``), which the sink reuses so that types survive exactly. Primary keys
come from ``pg_index``: with REPLICA IDENTITY FULL a Relation message flags every column as key, which is not the
row's identity.
"""

from __future__ import annotations

import psycopg

from airflow_provider_cdc.connectors.postgres.pgoutput import Relation
from airflow_provider_cdc.events import Column, TableSchema

_LOGICAL_BY_TYPE = {
    "smallint": "integer", "integer": "integer", "bigint": "integer", "oid": "integer",
    "numeric": "decimal", "real": "float", "double precision": "float", "money": "decimal",
    "boolean": "boolean",
    "text": "text", "character varying": "text", "character": "text", "name": "text", "citext": "text",
    "timestamp with time zone": "timestamptz", "timestamp without time zone": "timestamp",
    "date": "date", "time without time zone": "time", "time with time zone": "time",
    "json": "json", "jsonb": "json", "bytea": "binary", "uuid": "uuid",
}


def logical_type(declared: str) -> str:
    """The portable family of a declared type: ``numeric(12,2)`` → ``decimal``; arrays and the rest → ``other``."""
    if declared.endswith("]"):
        return "other"
    base = declared.split("(")[0].strip()
    if base.startswith("timestamp"):
        base = "timestamp with time zone" if "with time zone" in declared else "timestamp without time zone"
    elif base.startswith("time"):
        base = "time with time zone" if "with time zone" in declared else "time without time zone"
    return _LOGICAL_BY_TYPE.get(base, "other")


class Catalog:
    """Cached catalog queries over one connection (valid for one capture)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._types: dict[tuple[int, int], str] = {}
        self._keys: dict[int, list[str]] = {}

    def relid(self, schema: str, table: str) -> int | None:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                (schema, table),
            )
            row = cur.fetchone()
        return row[0] if row else None

    def primary_key(self, relid: int) -> list[str]:
        if relid not in self._keys:
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT a.attname FROM pg_index i "
                    "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
                    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                    "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
                    (relid,),
                )
                self._keys[relid] = [r[0] for r in cur.fetchall()]
        return self._keys[relid]

    def type_name(self, oid: int, typmod: int) -> str:
        key = (oid, typmod)
        if key not in self._types:
            with self.conn.cursor() as cur:
                cur.execute("SELECT format_type(%s, %s)", (oid, typmod if typmod >= 0 else None))
                self._types[key] = cur.fetchone()[0]
        return self._types[key]

    def table_schema(self, relid: int) -> TableSchema:
        """The table's current columns from the catalog (used by the snapshot)."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = %s",
                (relid,),
            )
            schema, name = cur.fetchone()
            cur.execute(
                "SELECT attname, format_type(atttypid, atttypmod), NOT attnotnull FROM pg_attribute "
                "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                (relid,),
            )
            rows = cur.fetchall()
        keys = set(self.primary_key(relid))
        columns = tuple(
            Column(attname, declared, logical_type(declared), nullable, attname in keys)
            for attname, declared, nullable in rows
        )
        return TableSchema(schema, name, columns, "postgresql")

    def schema_from_relation(self, rel: Relation) -> TableSchema:
        keys = set(self.primary_key(rel.relid))
        columns = []
        for name, oid, typmod in zip(rel.columns, rel.type_oids, rel.typmods):
            declared = self.type_name(oid, typmod)
            columns.append(Column(name, declared, logical_type(declared), name not in keys, name in keys))
        return TableSchema(rel.namespace, rel.name, tuple(columns), "postgresql")
