"""The MySQL / MariaDB connector's factory: options, Source, Sink, ChangeProbe, capabilities and config checks.

Imported lazily by :mod:`airflow_provider_cdc.connectors.registry` for ``type: mysql`` (MariaDB too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.connectors.mysql.connection import database_of, normalize_uri
from airflow_provider_cdc.connectors.mysql.options import MySqlSourceOptions
from airflow_provider_cdc.connectors.mysql.sink import CAPABILITIES
from airflow_provider_cdc.connectors.registry import AirflowHookRef, ConnectorFactory, lazy
from airflow_provider_cdc.errors import TableRefusedError

if TYPE_CHECKING:
    from airflow_provider_cdc.config import ConnectorConfig, SourceConfig
    from airflow_provider_cdc.connectors.mysql.probe import MySqlChangeProbe
    from airflow_provider_cdc.connectors.mysql.sink import MySqlSink
    from airflow_provider_cdc.connectors.mysql.source import MySqlSource


def _tables(config: SourceConfig, connection: str) -> list[tuple[str, str]]:
    """``(database, table)`` per configured table; an unqualified name is in the URL's database."""
    database = database_of(connection)
    if not database and any("." not in t for t in config.tables):
        raise TableRefusedError(config.id, "tables: name the database of each table (shop.users) in cdc.yaml, or put "
                                "the database in the connection URL")
    return config.qualified_tables(database)


def make_source(config: SourceConfig, connection: str, options: MySqlSourceOptions) -> MySqlSource:
    from airflow_provider_cdc.connectors.mysql.source import MySqlSource

    return MySqlSource(connection, source_id=config.id, tables=_tables(config, connection), snapshot=config.snapshot,
                       options=options)


def make_sink(connector: ConnectorConfig, connection: str, source: SourceConfig, options: Any) -> MySqlSink:
    from airflow_provider_cdc.connectors.mysql.sink import MySqlSink

    return MySqlSink(connection, sink_id=connector.id, target_schema=source.target_schema,
                     delete_mode=source.delete_mode, ledger_schema=source.ledger_schema)


def make_probe(config: SourceConfig, connection: str, options: MySqlSourceOptions) -> MySqlChangeProbe:
    from airflow_provider_cdc.connectors.mysql.probe import MySqlChangeProbe

    return MySqlChangeProbe(connection, source_id=config.id,
                            tables=[f"{db}.{table}" for db, table in _tables(config, connection)])


def check_sources(entries: list[tuple[int, SourceConfig, MySqlSourceOptions]]) -> list[tuple[int, str, str]]:
    """Every binlog reader of one server needs its own replica server id: two sources on one connection must not
    share one (the server would disconnect the first reader when the second connects)."""
    problems: list[tuple[int, str, str]] = []
    first: dict[tuple[Any, ...], int] = {}
    for index, source, options in entries:
        key = (getattr(source, "connector", None), getattr(source, "conn_id", None),
               getattr(source, "connection_string", None), options.effective_server_id(source.id))
        if key in first:
            problems.append((index, "options.server_id", f"server_id {key[-1]} is also used by sources[{first[key]}] "
                             "on the same connection; set a distinct options.server_id"))
            continue
        first[key] = index
    return problems



FACTORY = ConnectorFactory(
    type="mysql",
    source_options=MySqlSourceOptions,
    capabilities=CAPABILITIES,
    airflow_hook=AirflowHookRef("airflow.providers.mysql.hooks.mysql.MySqlHook", "mysql_conn_id", extra="mysql"),
    source=make_source,
    sink=make_sink,
    probe=make_probe,
    normalize_uri=normalize_uri,
    check_sources=check_sources,
    reference=lazy("airflow_provider_cdc.connectors.mysql.reference", "lookup"),
)
