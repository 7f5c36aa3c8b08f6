"""The catalog of a MySQL/MariaDB source: each captured table's columns, key and engine from ``information_schema``,
and whether the table can be captured faithfully at all (:func:`refusal`).

All tables are read with one query per ``information_schema`` view (TABLES, COLUMNS, STATISTICS, and on MariaDB
CHECK_CONSTRAINTS), whatever their number. Names are matched exactly (``Users`` is not ``users``, as on a server with
``lower_case_table_names=0``); a table that does not exist is absent from the result.

**The key.** The PRIMARY KEY; without one, the first UNIQUE index (by index name) whose columns are all NOT NULL,
whose columns then carry ``primary_key=True`` (a unique prefix index counts: unique prefixes make the whole values
unique). No such index: no key columns, and :func:`refusal` says what to add.

**Engines.** Row events are written for every engine at the moment a statement changes rows, and a non-transactional
engine cannot roll back, so what the binlog says is what the table holds: MyISAM, Aria, CSV and ARCHIVE tables are
captured, with a caveat (:func:`caveats`): their snapshot is not a point-in-time image (a consistent-snapshot
transaction does not cover them), so the snapshot may already show changes that the stream replays afterwards; the
guarded merge converges, but the sink may show a newer row before older changes arrive. Refused, because the sink
would silently diverge: MEMORY (a server restart empties it, and the binlog records that as a ``DELETE FROM``
statement, not as row events), BLACKHOLE (stores nothing: the snapshot reads no rows that the binlog has), FEDERATED,
CONNECT and SPIDER (their rows live elsewhere, and writes made there are not in this binlog), MRG_MyISAM (writes
land in, and are logged as, its underlying tables), SEQUENCE, and views (no row events).

**Generated columns** stay ordinary columns: VIRTUAL and STORED values are in every binlog row image on MariaDB
10.11 (see :mod:`.types`) and in the snapshot. Their ``backfill`` is unknown (older rows hold computed values).
Two column names that differ only in case cannot exist (MySQL column names are case-insensitive).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Any

from airflow_provider_cdc.connectors.mysql.connection import MYSQL_DIALECT, is_mariadb
from airflow_provider_cdc.connectors.mysql.types import EXACT_CODECS, column_from_catalog
from airflow_provider_cdc.tables import TableSchema, reserved_columns

_TRANSACTIONAL = frozenset({"innodb", "xtradb", "rocksdb", "tokudb", "ndbcluster", "ndb"})
_NON_TRANSACTIONAL = frozenset({"myisam", "aria", "csv", "archive"})
_REFUSED_ENGINES = {
    "memory": "a server restart empties it, and the binlog records that as a DELETE FROM statement, not as row "
              "events, so the sink would keep rows the source lost",
    "heap": "a server restart empties it, and the binlog records that as a DELETE FROM statement, not as row "
            "events, so the sink would keep rows the source lost",
    "blackhole": "it stores nothing, so a snapshot reads none of the rows the binlog has",
    "federated": "its rows live on another server, and writes made there are not in this binlog",
    "federatedx": "its rows live on another server, and writes made there are not in this binlog",
    "connect": "its rows live outside this server, and changes made there are not in this binlog",
    "spider": "its rows live on other servers, and writes made there are not in this binlog",
    "mrg_myisam": "writes land in its underlying MyISAM tables and are logged under their names",
    "mrg_myisam_engine": "writes land in its underlying MyISAM tables and are logged under their names",
    "sequence": "it is a generated sequence, not stored rows",
}
_JSON_CHECK = re.compile(r"^\s*json_valid\s*\(\s*`((?:[^`]|``)+)`\s*\)\s*$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class TableInfo:
    """What the catalog says about a table beyond its columns: what :func:`refusal` and :func:`caveats` judge."""

    table_type: str  # BASE TABLE, VIEW, SYSTEM VERSIONED, SEQUENCE
    engine: str | None
    key_index: str | None  # PRIMARY, the unique index used as key, or None
    charsets: dict[str, str]  # character set of each text column
    mariadb: bool


@dataclasses.dataclass(frozen=True)
class CatalogTable:
    schema: TableSchema
    info: TableInfo


def _in_list(count: int) -> str:
    return ", ".join(["%s"] * count)


def read_catalog(conn: Any, tables: Sequence[tuple[str, str]]) -> dict[str, CatalogTable]:
    """``(database, table)`` pairs -> ``"db.table"`` -> :class:`CatalogTable`; missing tables are absent."""
    wanted = {(db, table) for db, table in tables}
    if not wanted:
        return {}
    databases = sorted({db for db, _ in wanted})
    names = sorted({table for _, table in wanted})
    where = f"TABLE_SCHEMA IN ({_in_list(len(databases))}) AND TABLE_NAME IN ({_in_list(len(names))})"
    args = [*databases, *names]
    mariadb = is_mariadb(conn)
    with conn.cursor() as cur:
        cur.execute(f"SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE, ENGINE FROM information_schema.TABLES WHERE {where}",
                    args)
        found = {(db, t): (table_type, engine) for db, t, table_type, engine in cur.fetchall() if (db, t) in wanted}
        cur.execute(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA,"
            f" GENERATION_EXPRESSION, CHARACTER_SET_NAME FROM information_schema.COLUMNS WHERE {where}"
            " ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION",
            args,
        )
        columns: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in cur.fetchall():
            if (row[0], row[1]) in found:
                columns.setdefault((row[0], row[1]), []).append(dict(zip(
                    ("COLUMN_NAME", "DATA_TYPE", "COLUMN_TYPE", "IS_NULLABLE", "COLUMN_DEFAULT", "EXTRA",
                     "GENERATION_EXPRESSION", "CHARACTER_SET_NAME"), row[2:])))
        cur.execute(
            "SELECT TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS"
            f" WHERE {where} ORDER BY TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
            args,
        )
        indexes: dict[tuple[str, str], dict[str, list[str | None]]] = {}
        for db, t, index, non_unique, column in cur.fetchall():
            if (db, t) in found and not int(non_unique):
                indexes.setdefault((db, t), {}).setdefault(index, []).append(column)
        json_columns: set[tuple[str, str, str]] = set()
        if mariadb:  # MariaDB's JSON is LONGTEXT with CHECK (json_valid(`col`))
            cur.execute(
                "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS"
                f" WHERE CONSTRAINT_SCHEMA IN ({_in_list(len(databases))}) AND TABLE_NAME IN ({_in_list(len(names))})",
                args,
            )
            for db, t, clause in cur.fetchall():
                match = _JSON_CHECK.match(clause or "")
                if match:
                    json_columns.add((db, t, match.group(1).replace("``", "`")))
    result: dict[str, CatalogTable] = {}
    for (db, table), (table_type, engine) in found.items():
        rows = columns.get((db, table), [])
        not_null = {r["COLUMN_NAME"] for r in rows if str(r["IS_NULLABLE"]).upper() != "YES"}
        key_index, key = _choose_key(indexes.get((db, table), {}), not_null)
        built = tuple(
            column_from_catalog({**r, "primary_key": r["COLUMN_NAME"] in key, "mariadb": mariadb,
                                 "is_json": (db, table, r["COLUMN_NAME"]) in json_columns})
            for r in rows
        )
        charsets = {r["COLUMN_NAME"]: r["CHARACTER_SET_NAME"] for r in rows if r["CHARACTER_SET_NAME"]}
        result[f"{db}.{table}"] = CatalogTable(
            TableSchema(db, table, built, MYSQL_DIALECT),
            TableInfo(str(table_type or ""), engine, key_index, charsets, mariadb),
        )
    return result


def read_tables(conn: Any, tables: Sequence[tuple[str, str]]) -> dict[str, TableSchema]:
    """``(database, table)`` pairs -> ``"db.table"`` -> its :class:`TableSchema` (columns in ORDINAL_POSITION order,
    key columns flagged, ``ordinal`` None); missing tables are absent."""
    return {name: found.schema for name, found in read_catalog(conn, tables).items()}


def _choose_key(unique: dict[str, list[str | None]], not_null: set[str]) -> tuple[str | None, set[str]]:
    """The PRIMARY KEY, else the first unique index (by name) on NOT NULL columns only (functional key parts, which
    have no column, do not count)."""
    if "PRIMARY" in unique:
        return "PRIMARY", {c for c in unique["PRIMARY"] if c}
    for name in sorted(unique):
        parts = unique[name]
        if parts and all(c is not None and c in not_null for c in parts):
            return name, {c for c in parts if c}
    return None, set()


def refusal(schema: TableSchema, info: TableInfo) -> str | None:
    """Why ``schema`` cannot be captured faithfully, or None: no key, a column in the ``_cdc_`` namespace, an engine
    whose changes are not (all) row events in this binlog, a view, or a text column in a charset the binlog reader
    cannot decode exactly."""
    name = schema.qualified_name
    if info.table_type.upper() == "VIEW":
        return f"{name} is a view: the binlog has no row events for views; capture the tables it reads instead"
    engine = (info.engine or "").lower()
    if engine in _REFUSED_ENGINES:
        return (f"{name} uses the {info.engine} engine, which cannot be captured faithfully: "
                f"{_REFUSED_ENGINES[engine]}; convert it, e.g. ALTER TABLE ... ENGINE=InnoDB")
    if info.table_type.upper() == "SEQUENCE":
        return f"{name} is a sequence: {_REFUSED_ENGINES['sequence']}"
    reserved = reserved_columns(schema.column_names)
    if reserved:
        return (f"{name} has columns in the _cdc_ namespace, which is reserved for bookkeeping: "
                f"{', '.join(reserved)}; rename them")
    if not schema.primary_key:
        return (f"{name} has no primary key and no unique index on NOT NULL columns, so its rows have no identity to "
                f"merge by: add a primary key, or a unique index on NOT NULL columns")
    undecodable = sorted(f"{column} ({charset})" for column, charset in info.charsets.items()
                         if charset.lower() not in EXACT_CODECS)
    if undecodable:
        return (f"{name} has text columns in character sets the binlog reader cannot decode exactly: "
                f"{', '.join(undecodable)} (supported: {', '.join(sorted(EXACT_CODECS))}); convert them, e.g. "
                f"ALTER TABLE ... CONVERT TO CHARACTER SET utf8mb4")
    return None


def caveats(schema: TableSchema, info: TableInfo) -> list[str]:
    """What holds less strictly for a table that :func:`refusal` accepts (to log at start)."""
    engine = (info.engine or "").lower()
    notes: list[str] = []
    if engine in _NON_TRANSACTIONAL:
        notes.append(
            f"{schema.qualified_name} uses the non-transactional {info.engine} engine: every change is in the binlog "
            f"as it happened, but its snapshot is not a point-in-time image, so the sink may briefly show rows newer "
            f"than the changes still to come; the stream converges them"
        )
    elif engine and engine not in _TRANSACTIONAL and info.table_type.upper() != "VIEW":
        notes.append(f"{schema.qualified_name} uses the {info.engine} engine, which has not been tested as a source")
    if info.key_index not in (None, "PRIMARY"):
        notes.append(f"{schema.qualified_name} has no primary key: rows are keyed by its unique index "
                     f"{info.key_index!r} ({', '.join(schema.primary_key)})")
    return notes


def refusals(found: Iterable[CatalogTable]) -> dict[str, str]:
    """``"db.table"`` -> reason, for every table that :func:`refusal` refuses."""
    return {t.schema.qualified_name: reason for t in found if (reason := refusal(t.schema, t.info)) is not None}
