"""The MongoDB connector's factory: options, Source, Sink, ChangeProbe and capabilities.

Imported lazily by :mod:`airflow_provider_cdc.connectors.registry` for ``type: mongodb``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.connectors.mongodb.connection import database_of, normalize_uri
from airflow_provider_cdc.connectors.mongodb.options import MongoSourceOptions
from airflow_provider_cdc.connectors.mongodb.sink import CAPABILITIES
from airflow_provider_cdc.connectors.registry import AirflowHookRef, ConnectorFactory, lazy
from airflow_provider_cdc.errors import TableRefusedError

if TYPE_CHECKING:
    from airflow_provider_cdc.config import ConnectorConfig, SourceConfig
    from airflow_provider_cdc.connectors.mongodb.probe import MongoChangeProbe
    from airflow_provider_cdc.connectors.mongodb.sink import MongoSink
    from airflow_provider_cdc.connectors.mongodb.source import MongoSource


def _tables(config: SourceConfig, connection: str) -> list[str]:
    """``db.collection`` per configured entry (``db.*``: the whole database); an unqualified name is in the URL's
    database."""
    database = database_of(connection)
    if not database and any("." not in t for t in config.tables):
        raise TableRefusedError(config.id, "tables: name the database of each collection (shop.users, or shop.* for "
                                "all of them) in cdc.yaml, or put the database in the connection URL")
    return [f"{db}.{coll}" for db, coll in config.qualified_tables(database)]


def make_source(config: SourceConfig, connection: str, options: MongoSourceOptions) -> MongoSource:
    from airflow_provider_cdc.connectors.mongodb.source import MongoSource

    return MongoSource(connection, source_id=config.id, tables=_tables(config, connection), snapshot=config.snapshot,
                       options=options)


def make_sink(connector: ConnectorConfig, connection: str, source: SourceConfig, options: Any) -> MongoSink:
    from airflow_provider_cdc.connectors.mongodb.sink import MongoSink

    return MongoSink(connection, sink_id=connector.id, target_schema=source.target_schema,
                     delete_mode=source.delete_mode, ledger_schema=source.ledger_schema)


def make_probe(config: SourceConfig, connection: str, options: MongoSourceOptions) -> MongoChangeProbe:
    from airflow_provider_cdc.connectors.mongodb.probe import MongoChangeProbe

    return MongoChangeProbe(connection, source_id=config.id, tables=_tables(config, connection), options=options)



FACTORY = ConnectorFactory(
    type="mongodb",
    source_options=MongoSourceOptions,
    capabilities=CAPABILITIES,
    airflow_hook=AirflowHookRef("airflow.providers.mongo.hooks.mongo.MongoHook", "mongo_conn_id", extra="mongodb"),
    source=make_source,
    sink=make_sink,
    probe=make_probe,
    normalize_uri=normalize_uri,
    reference=lazy("airflow_provider_cdc.connectors.mongodb.reference", "lookup"),
)
