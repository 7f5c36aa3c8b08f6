"""Where a PostgreSQL sink keeps the schema registry (``_cdc_schema_versions``) and the changes it holds back
(``_cdc_held_changes``), beside its ledger and written in the same transaction as the batch that brought them.

Why here and not in a service or in Airflow Variables: a version stored with the data can never disagree with what
the sink applied (:mod:`airflow_provider_cdc.schema.registry`). Held changes must live here for the same reason: the
ledger row of their batch lets the position pass them, so they are only safe once they are in the sink, committed
with that row.

Both tables are created the first time something is written to them; reading before that finds nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Json, Jsonb

from airflow_provider_cdc.schema.gate import HeldChunk
from airflow_provider_cdc.schema.registry import SchemaVersion, subject_of

VERSIONS_TABLE = "_cdc_schema_versions"
HELD_CHANGES_TABLE = "_cdc_held_changes"

# ``schema`` (the Avro document) is ``json``, not ``jsonb``: a version is identified by the SHA-256 of that exact
# document, and jsonb would change it on the way back (a decimal default is bytes as latin-1 text, and jsonb refuses
# "\u0000"; it also rewrites a float like 1e300 as an integer). The other documents only need to mean the same.
_VERSION_COLUMNS = (
    ("subject", "text NOT NULL"),
    ("version", "integer NOT NULL"),
    ("id", "text NOT NULL"),
    ("fingerprint", "text"),
    ("status", "text NOT NULL"),
    ("mode", "text"),
    ("seq", "bigint"),
    ("position", "text"),
    ("batch_id", "text"),
    ("registered_at", "timestamptz"),
    ("schema", "json NOT NULL"),
    ("source_table", "jsonb NOT NULL"),
    ("sink_table", "jsonb NOT NULL"),
    ("compatibility", "jsonb"),
)
_VERSION_NAMES = tuple(name for name, _ in _VERSION_COLUMNS)


class RegistryStorage:
    """The registry half of :class:`~airflow_provider_cdc.connectors.postgres.sink.PgSink` (like
    :class:`~.ledger.LedgerStorage`, a mixin over the sink's connection)."""

    ledger_schema: str

    def _relation_exists(self, cur: psycopg.Cursor, name: str) -> bool:
        cur.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (self.ledger_schema, name),
        )
        return cur.fetchone() is not None

    # --- versions ------------------------------------------------------------------------------------------------

    def _ensure_versions(self, cur: psycopg.Cursor) -> None:
        definitions = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind)) for name, kind in _VERSION_COLUMNS)
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY (subject, version))").format(
            sql.Identifier(self.ledger_schema, VERSIONS_TABLE), definitions))

    def _read_versions(self, cur: psycopg.Cursor, source_id: str) -> list[SchemaVersion]:
        """Every version of ``source_id``'s subjects (``<source_id>.<schema>.<table>``), in subject and version
        order. ``starts_with``, not ``LIKE``: a source id may hold ``_``, which LIKE reads as a wildcard."""
        if not self._relation_exists(cur, VERSIONS_TABLE):
            return []
        cur.execute(sql.SQL(
            "SELECT {} FROM {} WHERE starts_with(subject, %s) ORDER BY subject, version"
        ).format(sql.SQL(", ").join(map(sql.Identifier, _VERSION_NAMES)),
                 sql.Identifier(self.ledger_schema, VERSIONS_TABLE)), (f"{source_id}.",))
        return [_version_of(dict(zip(_VERSION_NAMES, row))) for row in cur.fetchall()]

    def _store_versions(self, cur: psycopg.Cursor, versions: Iterable[SchemaVersion]) -> int:
        """Insert new versions, or update one of the same (subject, version): its status can change (held ->
        accepted), nothing else of a version does."""
        versions = list(versions)
        if not versions:
            return 0
        self._ensure_versions(cur)
        statement = sql.SQL(
            "INSERT INTO {table} ({columns}) VALUES ({values}) ON CONFLICT (subject, version) DO UPDATE SET {updates}"
        ).format(
            table=sql.Identifier(self.ledger_schema, VERSIONS_TABLE),
            columns=sql.SQL(", ").join(map(sql.Identifier, _VERSION_NAMES)),
            values=sql.SQL(", ").join(sql.Placeholder() * len(_VERSION_NAMES)),
            updates=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(name))
                                       for name in _VERSION_NAMES if name not in ("subject", "version")),
        )
        cur.executemany(statement, [_version_record(version) for version in versions])
        return len(versions)

    def _accept_held_versions(self, cur: psycopg.Cursor, source_id: str, table: str) -> int:
        """Mark the held versions of ``table`` accepted (a re-snapshot follows the source's schema as it is)."""
        if not self._relation_exists(cur, VERSIONS_TABLE):
            return 0
        cur.execute(sql.SQL("UPDATE {} SET status = 'accepted' WHERE subject = %s AND status = 'held'").format(
            sql.Identifier(self.ledger_schema, VERSIONS_TABLE)), (subject_of(source_id, table),))
        return max(cur.rowcount, 0)

    # --- held changes --------------------------------------------------------------------------------------------

    def _ensure_held_changes(self, cur: psycopg.Cursor) -> None:
        cur.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (source_id text NOT NULL, source_table text NOT NULL,"
            " batch_id text NOT NULL, seq_from bigint NOT NULL, seq_to bigint NOT NULL, meta jsonb NOT NULL,"
            " data bytea, held_at timestamptz DEFAULT now(), PRIMARY KEY (source_id, source_table, batch_id))"
        ).format(sql.Identifier(self.ledger_schema, HELD_CHANGES_TABLE)))

    def _store_chunks(self, cur: psycopg.Cursor, chunks: Iterable[HeldChunk]) -> int:
        """Insert held chunks; one already there (same source, table and batch) stays as it is. Returns how many
        were new."""
        chunks = list(chunks)
        if not chunks:
            return 0
        self._ensure_held_changes(cur)
        inserted = 0
        statement = sql.SQL(
            "INSERT INTO {} (source_id, source_table, batch_id, seq_from, seq_to, meta, data)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
        ).format(sql.Identifier(self.ledger_schema, HELD_CHANGES_TABLE))
        for chunk in chunks:
            cur.execute(statement, (chunk.source_id, chunk.table, chunk.batch_id, chunk.seq_from, chunk.seq_to,
                                    Jsonb(chunk.meta()), chunk.data_bytes()))
            inserted += max(cur.rowcount, 0)
        return inserted

    def _read_chunks(self, cur: psycopg.Cursor, source_id: str, table: str) -> list[HeldChunk]:
        """The held chunks of ``table`` in ``seq`` order (the order a replay must follow)."""
        if not self._relation_exists(cur, HELD_CHANGES_TABLE):
            return []
        cur.execute(sql.SQL(
            "SELECT batch_id, seq_from, seq_to, meta, data FROM {} WHERE source_id = %s AND source_table = %s"
            " ORDER BY seq_from, seq_to, batch_id"
        ).format(sql.Identifier(self.ledger_schema, HELD_CHANGES_TABLE)), (source_id, table))
        return [HeldChunk.from_stored(source_id=source_id, table=table, batch_id=batch_id, seq_from=seq_from,
                                      seq_to=seq_to, meta=meta, data=None if data is None else bytes(data))
                for batch_id, seq_from, seq_to, meta, data in cur.fetchall()]

    def _delete_chunks(self, cur: psycopg.Cursor, source_id: str, table: str) -> int:
        if not self._relation_exists(cur, HELD_CHANGES_TABLE):
            return 0
        cur.execute(sql.SQL("DELETE FROM {} WHERE source_id = %s AND source_table = %s").format(
            sql.Identifier(self.ledger_schema, HELD_CHANGES_TABLE)), (source_id, table))
        return max(cur.rowcount, 0)


def _version_record(version: SchemaVersion) -> list[Any]:
    """The row of ``version`` in :data:`_VERSION_COLUMNS` order."""
    return [
        version.subject, version.version, version.id, version.fingerprint, version.status, version.mode, version.seq,
        version.position, version.batch_id,
        dt.datetime.fromisoformat(version.registered_at) if version.registered_at else None,
        Json(version.schema), Jsonb(version.table.to_dict()), Jsonb(version.sink_table.to_dict()),
        None if version.compatibility is None else Jsonb(version.compatibility),
    ]


def _version_of(row: dict[str, Any]) -> SchemaVersion:
    registered = row["registered_at"]
    return SchemaVersion.from_dict({
        **row, "table": row["source_table"],
        "registered_at": registered.astimezone(dt.timezone.utc).isoformat() if registered is not None else "",
    })
