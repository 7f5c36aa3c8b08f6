"""OpenLineage dataset names of the tables a pipeline reads and writes, from a connector's type and driver URL.

The OpenLineage naming spec (https://openlineage.io/docs/spec/naming) names a dataset by the datasource it lives in
(the *namespace*, ``scheme://authority``) and its path there (the *name*):

===============  ===============================  =====================================================
connector type   namespace                        name
===============  ===============================  =====================================================
``postgresql``   ``postgres://{host}:{port}``     ``{database}.{schema}.{table}``
``mysql``        ``mysql://{host}:{port}``        ``{database}.{table}`` (MariaDB alike)
``mongodb``      ``mongodb://{host}:{port}``      ``{database}.{collection}``
``file``         ``file`` (local), ``s3://{bucket}``, ``gs://{bucket}``, ...   the table's path
===============  ===============================  =====================================================

Why this module parses URLs itself: the names must be the same wherever lineage is built (a task, the schema gate,
the REST API), without importing a database driver, and **never hold a credential**. Only the scheme, host, port and
path of a URL are read; user, password, query and fragment are dropped (one query key is read for PostgreSQL:
``dbname``, which names a database, not a secret). The default ports (5432, 3306, 27017) are filled in, as the spec's
``{host}:{port}`` asks, so that ``postgresql://db/shop`` and ``postgresql://db:5432/shop`` name the same table.

Choices the spec leaves open, made here once:

- A URL listing several hosts (a MongoDB replica set, libpq's ``host=a,b``) is named by its **first** host.
- ``mongodb+srv://`` URLs keep that scheme and no port: DNS picks the hosts and ports, so no port would be true.
- A local Delta root is namespace ``file`` and an absolute path (the spec's "local file system" row), resolved the
  way the file sink resolves it (relative roots against the working directory); ``file://host/...`` keeps the host.
  Object stores name the bucket in the namespace and the object key, without a leading ``/``, as the name.
- The sink's quarantine (``_cdc_quarantine``) is a dataset of its own, beside the ledger: ``ledger_schema``
  (default ``target_schema``) for the databases, the root for files.
"""

from __future__ import annotations

import dataclasses
import os
import re
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from airflow_provider_cdc.errors import CdcError

# As airflow_provider_cdc.quarantine names it (repeated here: that module brings pyarrow).
QUARANTINE_TABLE = "_cdc_quarantine"
DEFAULT_PG_SCHEMA = "public"

# connector type -> OpenLineage scheme of its namespace
SCHEMES: dict[str, str] = {"postgresql": "postgres", "mysql": "mysql", "mongodb": "mongodb"}
DEFAULT_PORTS: dict[str, int] = {"postgres": 5432, "mysql": 3306, "mongodb": 27017}
# URL schemes (before any ``+driver``) that name the same datasource kind
_URL_SCHEMES: dict[str, str] = {"postgresql": "postgres", "postgres": "postgres", "mysql": "mysql", "mariadb": "mysql",
                                "mongodb": "mongodb"}
# Object stores whose user-info part names a container, not a user (``abfss://container@account...``).
_CONTAINER_SCHEMES = frozenset({"abfss", "abfs", "wasbs", "wasb"})
_KEYWORD = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


class DatasetNamingError(CdcError, ValueError):
    """A URL or table that names no dataset (no host, no database). The message never repeats the URL: it may hold a
    password."""

    terminal = True


@dataclasses.dataclass(frozen=True)
class DatasetName:
    """An OpenLineage dataset identifier: ``namespace`` (the datasource) and ``name`` (the dataset in it)."""

    namespace: str
    name: str

    @property
    def uri(self) -> str:
        """The namespace and name as one URI (``postgres://db:5432/shop.public.users``, ``file:///data/lake/t``):
        readable, unique, and what the lineage graph uses as the dataset's node id."""
        if self.namespace == "file":
            return f"file://{self.name}" if self.name.startswith("/") else f"file:///{self.name}"
        return f"{self.namespace}/{self.name.lstrip('/')}"

    def to_dict(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name}


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """The parts of a driver URL that lineage may show: ``scheme`` (OpenLineage's), first host, port, database."""

    scheme: str
    host: str
    port: int | None
    database: str

    @property
    def namespace(self) -> str:
        return f"{self.scheme}://{self.host}" + (f":{self.port}" if self.port is not None else "")


def parse_endpoint(url: str) -> Endpoint:
    """Scheme, first host, port (default filled in) and database of a PostgreSQL, MySQL/MariaDB or MongoDB driver URL
    (a libpq ``key=value`` DSN too); user, password and query are never read (but PostgreSQL's ``dbname``)."""
    text = url.strip()
    if "://" not in text:
        return _keyword_dsn(text)
    try:
        parts = urlsplit(text)
    except ValueError:  # an unbalanced [ in the host: urllib's message would repeat the URL
        raise DatasetNamingError("a connection URL cannot be parsed (an unbalanced [ around an IPv6 host?)") from None
    raw = parts.scheme.lower()
    srv = raw == "mongodb+srv"
    base = _URL_SCHEMES.get(raw.partition("+")[0])
    if base is None:
        base = raw.partition("+")[0] or "unknown"
    host, port = _first_host(parts.netloc)
    if srv:
        scheme, port = "mongodb+srv", None
    else:
        scheme = base
        if port is None:
            port = DEFAULT_PORTS.get(base)
    database = unquote(parts.path.lstrip("/")).partition("/")[0]
    if base == "postgres" and not database:
        database = dict(parse_qsl(parts.query)).get("dbname", "")
    return Endpoint(scheme, host or "localhost", port, database)


def namespace_of(connector_type: str, url: str) -> str:
    """The OpenLineage namespace of a connector's datasource (see the module docstring)."""
    if connector_type == "file":
        return _file_location(url)[0]
    return parse_endpoint(url).namespace


def qualified_table(connector_type: str, url: str, table: str) -> str:
    """``schema.table`` of a ``tables`` entry as the connector's schemas name it: PostgreSQL qualifies a bare name
    with ``public``, MySQL and MongoDB with the URL's database (a first dot splits: ``shop.orders.2024`` is
    collection ``orders.2024`` of database ``shop``)."""
    if "." in table:
        return table
    if connector_type in ("mysql", "mongodb"):
        database = parse_endpoint(url).database
        if not database:
            raise DatasetNamingError(f"{connector_type} table {table!r} names no database, and neither does its "
                                     "URL; write database.table in cdc.yaml or put the database in the URL")
        return f"{database}.{table}"
    return f"{DEFAULT_PG_SCHEMA}.{table}"


def table_dataset(connector_type: str, url: str, table: str) -> DatasetName:
    """The dataset of a table read from a connector (a source table, a join's reference table); ``table`` as in the
    config (``users``, ``public.users``, ``shop.users``)."""
    qualified = qualified_table(connector_type, url, table)
    if connector_type == "file":
        namespace, root = _file_location(url)
        schema, _, name = qualified.partition(".")
        return DatasetName(namespace, _join(root, schema, name))
    endpoint = parse_endpoint(url)
    if endpoint.scheme == "postgres":
        if not endpoint.database:
            raise DatasetNamingError("a PostgreSQL URL names no database; OpenLineage names its tables "
                                     "{database}.{schema}.{table}: put the database in the URL")
        return DatasetName(endpoint.namespace, f"{endpoint.database}.{qualified}")
    return DatasetName(endpoint.namespace, qualified)


def sink_dataset(connector_type: str, url: str, target_schema: str, table: str) -> DatasetName:
    """The dataset a sink writes a source table to: the source table's name (its part after the first dot) in
    ``target_schema`` (for MySQL and MongoDB sinks, ``target_schema`` is the database; for files, a folder)."""
    name = table.partition(".")[2] if "." in table else table
    return table_dataset(connector_type, url, f"{target_schema}.{name}")


def quarantine_dataset(connector_type: str, url: str, ledger_schema: str) -> DatasetName:
    """The sink's ``_cdc_quarantine``: in ``ledger_schema`` (a source's ``ledger_schema``, default its
    ``target_schema``) for databases, directly under the root for files."""
    if connector_type == "file":
        namespace, root = _file_location(url)
        return DatasetName(namespace, _join(root, QUARANTINE_TABLE))
    return table_dataset(connector_type, url, f"{ledger_schema}.{QUARANTINE_TABLE}")


def asset_uri(connector_type: str, url: str, table: str) -> str:
    """The Airflow asset URI of the table :func:`table_dataset` names, in the scheme its provider registers
    (``postgres://host:port/database/schema/table``, ``mysql://host:port/database/table``,
    ``mongodb://host:port/database/collection``; a Delta table by its location, ``file:///...`` or ``s3://...``), so
    that the asset is the same one a provider's own operators and OpenLineage converters name. Each path part is
    percent-encoded (asset URIs are ASCII, and a table name may hold a ``/`` or a space); ``mongodb+srv`` becomes
    ``mongodb`` with its first host, as the mongo provider has no ``+srv`` scheme."""
    dataset = table_dataset(connector_type, url, table)  # validates: a database is named
    if connector_type == "file":
        return dataset.uri
    endpoint = parse_endpoint(url)
    parts = qualified_table(connector_type, url, table).split(".", 1)
    if endpoint.scheme == "postgres":
        parts = [endpoint.database, *parts]
    scheme = "mongodb" if endpoint.scheme == "mongodb+srv" else endpoint.scheme
    authority = endpoint.host + (f":{endpoint.port}" if endpoint.port is not None else "")
    return f"{scheme}://{authority}/" + "/".join(quote(part, safe="") for part in parts)


def sink_asset_uri(connector_type: str, url: str, target_schema: str, table: str) -> str:
    """The asset URI of the sink table a source table goes to (see :func:`sink_dataset`)."""
    name = table.partition(".")[2] if "." in table else table
    return asset_uri(connector_type, url, f"{target_schema}.{name}")


# --- helpers ----------------------------------------------------------------------------------------------------------


def _first_host(netloc: str) -> tuple[str, int | None]:
    """Host and port of the first host of ``netloc``, without its user info."""
    hosts = netloc.rpartition("@")[2]
    first = hosts.split(",")[0].strip()
    if first.startswith("["):  # IPv6: [::1]:5432
        end = first.find("]")
        host, rest = first[: end + 1], first[end + 1:]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = first.partition(":")
    return unquote(host).lower(), _port(port_text)


def _port(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit():
        raise DatasetNamingError("a connection URL has a port that is not a number")
    return int(text)


def _keyword_dsn(dsn: str) -> Endpoint:
    """A libpq ``host=... port=... dbname=...`` DSN (PostgreSQL's other connection string form)."""
    values = {key.lower(): value.strip("'") for key, value in _KEYWORD.findall(dsn)}
    if not values:
        raise DatasetNamingError("a connection string is neither a URL nor a key=value DSN")
    host = (values.get("host") or values.get("hostaddr") or "").split(",")[0]
    if host.startswith("/"):  # a Unix socket folder: the local server
        host = ""
    port = _port(values.get("port", "").split(",")[0]) or DEFAULT_PORTS["postgres"]
    return Endpoint("postgres", host.lower() or "localhost", port, values.get("dbname", ""))


def _file_location(url: str) -> tuple[str, str]:
    """Namespace and root path of a file sink's root (a local path, ``file://``, ``s3://``, ``gs://``...)."""
    text = url.strip()
    if not text:
        raise DatasetNamingError("a file connector names no root")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        host = parts.netloc.rpartition("@")[2].lower()
        path = unquote(parts.path)
        if host in ("", "localhost"):
            return "file", os.path.abspath(path)
        return f"file://{host}", path
    if scheme and len(scheme) > 1:  # s3://, gs://, az://... (a single letter is a Windows drive)
        user, at, host = parts.netloc.rpartition("@")
        authority = host.lower()
        if at and scheme in _CONTAINER_SCHEMES:
            authority = f"{user.partition(':')[0]}@{authority}"  # the container, never a password
        return f"{scheme}://{authority}", unquote(parts.path).strip("/")
    return "file", os.path.abspath(text)


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if root else "/".join(parts)
