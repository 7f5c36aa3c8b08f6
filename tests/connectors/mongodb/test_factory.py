"""The MongoDB connector's factory: URLs, options, tables, and Airflow Connections of type ``mongo`` resolved by
``MongoHook`` into a URL the source and sink connect with (against the real replica set)."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from airflow_provider_cdc.config import ConnectorConfig, SourceConfig
from airflow_provider_cdc.connectors.mongodb.connection import database_of, normalize_uri
from airflow_provider_cdc.connectors.mongodb.options import MongoSourceOptions
from airflow_provider_cdc.connectors.mongodb.probe import MongoChangeProbe
from airflow_provider_cdc.connectors.mongodb.sink import CAPABILITIES, MongoSink
from airflow_provider_cdc.connectors.mongodb.source import MongoSource
from airflow_provider_cdc.connectors.registry import factory, make_probe, make_sink, make_source
from airflow_provider_cdc.errors import TableRefusedError
from airflow_provider_cdc.hooks.cdc import connection_dsn


def test_mongohook_uris_become_driver_urls():
    url = normalize_uri("mongodb://u:p%40w@db.example:27018/shop?replicaSet=rs0&srv=false&allow_insecure=true")
    assert url == "mongodb://u:p%40w@db.example:27018/shop?replicaSet=rs0&tlsAllowInvalidCertificates=true"
    assert database_of(url) == "shop"
    assert database_of("mongodb://h:1/?replicaSet=rs0") == ""


def test_tables_are_qualified_by_the_urls_database():
    config = SourceConfig(id="m", type="mongodb", connection_string="mongodb://h:1/shop", tables=["users", "crm.leads",
                          "logs.*"], sink="warehouse")
    source = make_source(config, "mongodb://h:1/shop")
    assert isinstance(source, MongoSource)
    assert source.scope.tables == ["shop.users", "crm.leads"] and source.scope.whole == ["logs"]
    bare = SourceConfig(id="m", type="mongodb", connection_string="mongodb://h:1", tables=["users"], sink="warehouse")
    with pytest.raises(TableRefusedError, match="name the database"):
        make_source(bare, "mongodb://h:1")


def test_options_are_validated_and_the_sink_declares_its_capabilities():
    assert factory("mongodb").source_options is MongoSourceOptions
    with pytest.raises(ValueError, match="full_document"):
        MongoSourceOptions.model_validate({"full_document": "always"})
    with pytest.raises(ValueError, match="extra"):
        MongoSourceOptions.model_validate({"slot_name": "x"})
    assert factory("mongodb").capabilities is CAPABILITIES
    assert CAPABILITIES.dialect == "mongodb" and CAPABILITIES.transactional and "decimal" in CAPABILITIES.native_types


def test_an_airflow_connection_resolves_through_mongohook(mongo_server, mongo_database, monkeypatch):
    """A ``mongo`` Connection with the replica set in its extras: MongoHook's URI plus those extras connects."""
    parts = urlsplit(mongo_server.url(""))
    database = urlsplit(mongo_database).path.lstrip("/")
    monkeypatch.setenv("AIRFLOW_CONN_CDC_MONGO", json.dumps({
        "conn_type": "mongo", "host": parts.hostname, "port": parts.port, "schema": database,
        "extra": {"replicaSet": "rs0", "directConnection": True, "srv": False},
    }))
    url = connection_dsn("cdc_mongo", "mongodb")
    assert database_of(url) == database and "srv" not in url and "replicaSet=rs0" in url
    config = SourceConfig(id="m", type="mongodb", conn_id="cdc_mongo", tables=["users"], sink="w")
    source = make_source(config, url)
    with mongo_server.client() as client:
        client[database].users.insert_one({"_id": 1, "name": "a"})
    try:
        batch = source.capture(None, 100)  # snapshot first
    finally:
        source.close()
    assert batch.counts() == {f"{database}.users": {"r": 1, "s": 1}}
    sink = make_sink(ConnectorConfig(id="w", type="mongodb", conn_id="cdc_mongo"), url, config)
    assert isinstance(sink, MongoSink)
    sink.close()
    assert isinstance(make_probe(config, url), MongoChangeProbe)
