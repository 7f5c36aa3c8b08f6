"""Catalog look-ups on a PostgreSQL source: relation ids, primary keys, declared types.

Relation messages carry type OIDs and typmods; ``format_type`` turns them into the declared type
(``numeric(12,2)``, ``timestamp with time zone``), which the sink reuses so that types survive exactly. Primary keys
come from ``pg_index``: with REPLICA IDENTITY FULL a Relation message flags every column as key, which is not the
row's identity.
"""

from __future__ import annotations

import psycopg

from airflow_provider_cdc.connectors.postgres.pgoutput import Relation
from airflow_provider_cdc.connectors.postgres.types import POSTGRES_DIALECT
from airflow_provider_cdc.connectors.postgres.values import numeric_precision_scale, to_portable_scalar
from airflow_provider_cdc.tables import Column, TableSchema

_LOGICAL_BY_TYPE = {
    "smallint": "integer", "integer": "integer", "bigint": "integer", "oid": "integer",
    "numeric": "decimal", "real": "float", "double precision": "float",
    "boolean": "boolean",
    "text": "text", "character varying": "text", "character": "text", "name": "text", "citext": "text",
    "timestamp with time zone": "timestamptz", "timestamp without time zone": "timestamp",
    "date": "date", "time without time zone": "time",
    "json": "json", "jsonb": "json", "bytea": "binary", "uuid": "uuid",
}


def logical_type(declared: str) -> str:
    """The portable family of a declared type: ``numeric(12,2)`` → ``decimal``; arrays and the rest → ``other``.

    ``money`` (text in the server's locale) and ``time with time zone`` (an offset without a date means no instant)
    have no portable form: ``other``, their PostgreSQL text."""
    if declared.endswith("]"):
        return "other"
    base = declared.split("(")[0].strip()
    for family in ("timestamp", "time"):  # "timestamp(3) with time zone": the modifier splits the words
        if base == family or base.startswith(family + " "):
            zone = "with" if "with time zone" in declared else "without"
            base = f"{family} {zone} time zone"
            break
    return _LOGICAL_BY_TYPE.get(base, "other")


def make_column(name: str, declared: str, *, nullable: bool = True, primary_key: bool = False,
                ordinal: int | None = None, backfill: str | None = None, backfill_unknown: bool = False) -> Column:
    """A column as the PostgreSQL source declares it: logical type, numeric precision and scale, and its backfill
    (PostgreSQL text) in the portable form."""
    kind = logical_type(declared)
    precision, scale = numeric_precision_scale(declared) if kind == "decimal" else (None, None)
    return Column(name, declared, kind, nullable, primary_key, ordinal, to_portable_scalar(backfill, kind),
                  backfill_unknown, precision, scale)


class Catalog:
    """Cached catalog queries over one connection (valid for one capture)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._types: dict[tuple[int, int], str] = {}
        self._keys: dict[int, list[str]] = {}
        self._attributes: dict[int, dict[str, tuple[int, str | None, bool]]] = {}

    def relid(self, schema: str, table: str) -> int | None:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                (schema, table),
            )
            row = cur.fetchone()
        return row[0] if row else None

    def relation_info(self, relid: int) -> dict:
        """What decides whether and how a table can be captured: its kind, replica identity, key, deferrability."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT c.relkind, c.relreplident, c.relispartition,"
                " EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid) AS has_children,"
                " (SELECT con.condeferrable FROM pg_constraint con WHERE con.conrelid = c.oid AND con.contype = 'p')"
                " FROM pg_class c WHERE c.oid = %s",
                (relid,),
            )
            row = cur.fetchone()
        if row is None:
            raise LookupError(f"relation {relid} no longer exists (dropped while it was being read)")
        relkind, replident, is_partition, has_children, pk_deferrable = row
        return {
            "relkind": relkind,
            "replica_identity": replident,
            "is_partition": is_partition,
            "has_children": has_children,
            "pk_deferrable": bool(pk_deferrable),
            "primary_key": self._index_columns(relid, "i.indisprimary"),
            "identity_index": self._index_columns(relid, "i.indisreplident"),
        }

    def _index_columns(self, relid: int, condition: str) -> list[str]:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT a.attname FROM pg_index i "
                "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                f"WHERE i.indrelid = %s AND {condition} ORDER BY k.ord",
                (relid,),
            )
            return [r[0] for r in cur.fetchall()]

    def primary_key(self, relid: int) -> list[str]:
        """The columns a sink merges by: the primary key, or the replica identity index where the table uses
        ``REPLICA IDENTITY USING INDEX`` (then deletes carry exactly those columns)."""
        if relid not in self._keys:
            with self.conn.cursor() as cur:
                cur.execute("SELECT relreplident FROM pg_class WHERE oid = %s", (relid,))
                row = cur.fetchone()
            identity = row[0] if row else "d"
            key = self._index_columns(relid, "i.indisreplident") if identity == "i" else []
            self._keys[relid] = key or self._index_columns(relid, "i.indisprimary")
        return self._keys[relid]

    def type_name(self, oid: int, typmod: int) -> str:
        key = (oid, typmod)
        if key not in self._types:
            with self.conn.cursor() as cur:
                cur.execute("SELECT format_type(%s, %s)", (oid, typmod if typmod >= 0 else None))
                row = cur.fetchone()
                assert row is not None  # a SELECT without FROM returns one row
                self._types[key] = row[0]
        return self._types[key]

    def attributes(self, relid: int) -> dict[str, tuple[int, str | None, bool]]:
        """Current columns by name: attnum (identity), the value rows older than the column hold (PostgreSQL's
        "missing value" of ``ADD COLUMN ... DEFAULT``, which writes no WAL), and whether that value is unknown
        (a default without a missing value: a volatile default rewrote the table, without logical changes)."""
        if relid not in self._attributes:
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT a.attname, a.attnum, a.atthasmissing, (a.attmissingval::text::text[])[1],"
                    " d.adbin IS NOT NULL"
                    " FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
                    " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped",
                    (relid,),
                )
                self._attributes[relid] = {
                    name: (attnum, missing if has_missing else None, bool(has_default and not has_missing))
                    for name, attnum, has_missing, missing, has_default in cur.fetchall()
                }
        return self._attributes[relid]

    def _column(self, relid: int, name: str, declared: str, keys: set[str], nullable: bool,
                previous: TableSchema | None) -> Column:
        attribute = self.attributes(relid).get(name)
        ordinal: int | None
        if attribute is not None:
            ordinal, backfill, unknown = attribute
        else:
            # Renamed or dropped since this change was written: the identity is the one last seen under this name.
            known = {c.name: c for c in previous.columns} if previous is not None else {}
            ordinal = known[name].ordinal if name in known else None
            backfill, unknown = None, False
        return make_column(name, declared, nullable=nullable, primary_key=name in keys, ordinal=ordinal,
                           backfill=backfill, backfill_unknown=unknown)

    def table_schema(self, relid: int) -> TableSchema:
        """The table's current columns from the catalog (used by the snapshot)."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = %s",
                (relid,),
            )
            row = cur.fetchone()
            if row is None:
                raise LookupError(f"relation {relid} no longer exists (dropped while it was being read)")
            schema, name = row
            cur.execute(
                "SELECT attname, format_type(atttypid, atttypmod), NOT attnotnull FROM pg_attribute "
                "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                (relid,),
            )
            rows = cur.fetchall()
        keys = set(self.primary_key(relid))
        columns = tuple(self._column(relid, attname, declared, keys, nullable, None)
                        for attname, declared, nullable in rows)
        return TableSchema(schema, name, columns, POSTGRES_DIALECT)

    def schema_from_relation(self, rel: Relation, previous: TableSchema | None = None) -> TableSchema:
        """The columns a Relation message announced, with identities from the catalog (or ``previous``).

        A table dropped since keeps the key it had when last seen (its last changes still merge by it)."""
        keys = set(self.primary_key(rel.relid))
        if not keys and previous is not None and not self.attributes(rel.relid):
            keys = set(previous.primary_key)
        columns = []
        for name, oid, typmod in zip(rel.columns, rel.type_oids, rel.typmods):
            declared = self.type_name(oid, typmod)
            columns.append(self._column(rel.relid, name, declared, keys, name not in keys, previous))
        return TableSchema(rel.namespace, rel.name, tuple(columns), POSTGRES_DIALECT)
