"""``quarantine replay`` into MongoSink against a real mongod replica set
(:func:`quarantine_replay_check.check_replay`)."""

from __future__ import annotations

from quarantine_replay_check import check_replay, check_validate_replay

from airflow_provider_cdc.connectors.mongodb.connection import database_of
from airflow_provider_cdc.connectors.mongodb.sink import MongoSink


def _names(mongo_server, db: str) -> dict[int, str]:
    with mongo_server.client() as client:
        return {int(doc["id"]): doc["name"] for doc in client[db]["items"].find()}


def test_quarantined_changes_are_replayed_once(mongo_server, mongo_database: str):
    db = database_of(mongo_database)
    with MongoSink(mongo_server.url(""), sink_id="warehouse", target_schema=db) as sink:
        check_replay(sink, lambda: _names(mongo_server, db))


def test_changes_a_quality_rule_refused_are_replayed_once(mongo_server, mongo_database: str):
    db = database_of(mongo_database)
    with MongoSink(mongo_server.url(""), sink_id="warehouse", target_schema=db) as sink:
        check_validate_replay(sink, lambda: _names(mongo_server, db))
