"""Connections to MySQL and MariaDB: driver keywords from a ``mysql://`` URL, and sessions in canonical settings.

Every session the connector opens (catalog, snapshot, sink) runs in UTC with ``utf8mb4``: a ``TIMESTAMP`` then
reads as the same instant whoever wrote it, and latin1 columns arrive converted to UTF-8 by the server. The binlog
reader gets the same keywords (:func:`connect_kwargs`), so its control connection agrees with the rest.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, unquote, unquote_plus, urlsplit, urlunsplit

import pymysql

MYSQL_DIALECT = "mysql"
DEFAULT_PORT = 3306
# sql_mode without NO_ZERO_DATE and friends: the sink must be able to store what a source stored, and with
# NO_BACKSLASH_ESCAPES unset the driver's own escaping stays correct.
SESSION_SQL_MODE = "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION"
_SCHEMES = ("mysql", "mariadb", "mysql+mysqldb", "mysql+pymysql", "mysql+mysqlconnector", "mariadb+mariadbconnector")
# URL query parameters the driver understands (anything else an Airflow Connection carries is dropped).
_INT_PARAMS = {"connect_timeout", "read_timeout", "write_timeout"}
_STR_PARAMS = {"unix_socket", "ssl_ca", "ssl_cert", "ssl_key"}


class BadMySqlUrl(ValueError):
    """A connection URL that is not a ``mysql://`` URL."""


def connect_kwargs(url: str) -> dict[str, Any]:
    """pymysql keywords from ``mysql://user:password@host:port/database?connect_timeout=5`` (never logged)."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise BadMySqlUrl(f"not a MySQL URL (expected mysql://user:password@host:port/database), scheme "
                          f"{parts.scheme!r}")
    kwargs: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or DEFAULT_PORT,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
    }
    for key, value in parse_qsl(parts.query):
        if key in _INT_PARAMS:
            kwargs[key] = int(value)
        elif key in _STR_PARAMS:
            kwargs[key] = value
    kwargs.setdefault("connect_timeout", 10)
    return kwargs


def normalize_uri(uri: str) -> str:
    """A ``mysql://`` URL from ``MySqlHook.get_uri()``: any driver scheme becomes ``mysql://``, and the user, password
    and database, which the hook encodes with ``quote_plus`` (a space as ``+``), are re-encoded with ``%20``."""
    parts = urlsplit(uri)
    if parts.scheme not in _SCHEMES:
        return uri
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    if parts.username is not None:
        auth = quote(unquote_plus(parts.username), safe="")
        if parts.password is not None:
            auth += ":" + quote(unquote_plus(parts.password), safe="")
        netloc = f"{auth}@{netloc}"
    path = "/" + quote(unquote_plus(parts.path.lstrip("/")), safe="") if parts.path.strip("/") else ""
    return urlunsplit(("mysql", netloc, path, parts.query, ""))


def database_of(url: str) -> str:
    """The database named in the URL's path ('' when none)."""
    return unquote(urlsplit(url).path.lstrip("/"))


def connect(url: str, *, autocommit: bool = True, database: str | None = None, **extra: Any) -> pymysql.Connection:
    """A pymysql connection in the canonical session settings (UTC, utf8mb4, strict SQL mode)."""
    kwargs = connect_kwargs(url)
    db = database if database is not None else database_of(url)
    conn = pymysql.connect(
        **kwargs, database=db or None, charset="utf8mb4", autocommit=autocommit, local_infile=True,
        init_command=f"SET time_zone = '+00:00', sql_mode = '{SESSION_SQL_MODE}'", **extra,
    )
    return conn


def quote_name(name: str) -> str:
    """A MySQL identifier in backquotes (a backquote inside is doubled): the only way names reach our SQL."""
    return "`" + name.replace("`", "``") + "`"


def qualified(schema: str, table: str) -> str:
    return f"{quote_name(schema)}.{quote_name(table)}"


def is_mariadb(conn: pymysql.Connection) -> bool:
    return "mariadb" in conn.get_server_info().lower()
