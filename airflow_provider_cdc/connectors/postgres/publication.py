"""What a PostgreSQL source sets up before capture: the publication, and the refusal of tables it cannot capture.

Everything is checked before anything is published: a table the sink could not merge, or whose application writes a
publication would break (REPLICA IDENTITY NOTHING, a deferrable key), is refused and never added. Partitioned tables
are published through their root (``publish_via_partition_root``); inheritance parents are published ``ONLY``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from airflow_provider_cdc.connectors.postgres.catalog import Catalog
from airflow_provider_cdc.errors import SourceError
from airflow_provider_cdc.tables import reserved_columns

log = logging.getLogger("airflow_provider_cdc.source.postgres")


class PublicationSetup:
    """The publication half of :class:`~airflow_provider_cdc.connectors.postgres.source.PgSource`'s ``prepare``."""

    source_id: str
    publication_name: str
    create_publication: bool
    if TYPE_CHECKING:
        @property
        def conn(self) -> psycopg.Connection: ...  # PgSource's connection
    _row_filters: dict[str, str]

    @staticmethod
    def _refusal(catalog: Catalog, info: dict[str, Any]) -> str | None:
        """Why a table cannot be captured faithfully, or None."""
        identity = info["replica_identity"]
        if identity == "n":
            return ("REPLICA IDENTITY NOTHING: its updates and deletes carry no key, and publishing it would make "
                    "the application's own UPDATE and DELETE fail; set REPLICA IDENTITY DEFAULT (with a primary "
                    "key) or USING INDEX")
        if info["pk_deferrable"] and identity != "f":
            return ("its primary key is DEFERRABLE, which cannot identify rows for logical replication (publishing "
                    "it would make the application's UPDATE and DELETE fail); make the key NOT DEFERRABLE, or set "
                    "REPLICA IDENTITY FULL")
        if identity == "i" and not info["identity_index"]:
            return "REPLICA IDENTITY USING INDEX names no index"
        if identity in ("d", "f") and not info["primary_key"]:
            return ("has no primary key; the sink merges changes by key: add a primary key, or a unique index on "
                    "NOT NULL columns with REPLICA IDENTITY USING INDEX")
        schema = catalog.table_schema(info["relid"])
        clashes = reserved_columns(schema.column_names)
        if clashes:
            return (f"columns {clashes} are in the _cdc_ namespace that the pipeline reserves for its bookkeeping; "
                    "rename them at the source")
        return None

    def _ensure_publication(self, cur: psycopg.Cursor, present: dict[tuple[str, str], dict[str, Any]],
                            refused: dict[str, str]) -> None:
        """Make the publication cover exactly the configured tables we can capture (when it is ours), or check
        that the user's publication covers them, with no column list and a row filter the snapshot can apply."""
        pub = sql.Identifier(self.publication_name)
        cur.execute("SELECT oid, puballtables, pubviaroot FROM pg_publication WHERE pubname = %s",
                    (self.publication_name,))
        row = cur.fetchone()
        wanted = {key: info for key, info in present.items() if f"{key[0]}.{key[1]}" not in refused}
        partitioned = any(info["relkind"] == "p" for info in wanted.values())

        def target(key: tuple[str, str]) -> sql.Composable:
            # ONLY: an inheritance parent's children are tables of their own (its snapshot reads it ONLY too).
            only = sql.SQL("" if present[key]["relkind"] == "p" else "ONLY ")
            return sql.SQL("{}{}").format(only, sql.Identifier(*key))

        if row is None:
            if not self.create_publication:
                raise SourceError(self.source_id, f"publication {self.publication_name!r} does not exist; create it "
                                  "or set create_publication: true")
            if not wanted:
                return
            cur.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)").format(
                pub, sql.SQL(", ").join(target(k) for k in wanted)))
            log.info("created publication %s for %s", self.publication_name,
                     ", ".join(f"{s}.{t}" for s, t in wanted))
            return
        pub_oid, all_tables, via_root = row
        cur.execute(
            "SELECT n.nspname, c.relname FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.prpubid = %s",
            (pub_oid,),
        )
        members = {(s, t) for s, t in cur.fetchall()}
        cur.execute("SELECT n.nspname FROM pg_publication_namespace p JOIN pg_namespace n ON n.oid = p.pnnspid "
                    "WHERE p.pnpubid = %s", (pub_oid,))
        schemas = {s for (s,) in cur.fetchall()}
        covered = {k for k in wanted if all_tables or k in members or k[0] in schemas}
        if self.create_publication:
            added = [k for k in wanted if k not in covered]
            removed = [k for k in members if k not in wanted]
            if added:
                cur.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    pub, sql.SQL(", ").join(target(k) for k in added)))
                log.info("publication %s now covers %s", self.publication_name,
                         ", ".join(f"{s}.{t}" for s, t in added))
            if removed:
                cur.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
                    pub, sql.SQL(", ").join(sql.Identifier(*k) for k in removed)))
                log.info("publication %s no longer covers %s (not configured, or refused)", self.publication_name,
                         ", ".join(f"{s}.{t}" for s, t in removed))
            if partitioned and not via_root:
                cur.execute(sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = true)").format(pub))
            return
        problems = [f"{s}.{t} is not in it" for s, t in wanted if (s, t) not in covered]
        if partitioned and not via_root:
            problems.append("it does not set publish_via_partition_root = true, which partitioned tables need")
        cur.execute("SELECT schemaname, tablename, attnames, rowfilter FROM pg_publication_tables WHERE pubname = %s",
                    (self.publication_name,))
        self._row_filters = {}
        for schema, table, attnames, rowfilter in cur.fetchall():
            key = (schema, table)
            if key not in wanted:
                continue
            columns = Catalog(self.conn).table_schema(wanted[key]["relid"]).column_names
            if attnames is not None and sorted(attnames) != sorted(columns):
                problems.append(f"{schema}.{table} has a column list ({', '.join(attnames)}); the sink needs every "
                                "column: remove the column list")
            if rowfilter:
                self._row_filters[f"{schema}.{table}"] = rowfilter
        if problems:
            raise SourceError(self.source_id, f"publication {self.publication_name!r} (create_publication: false): "
                              + "; ".join(problems))
