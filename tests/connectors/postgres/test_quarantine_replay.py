"""``quarantine replay`` into PgSink against real PostgreSQL servers (:mod:`quarantine_replay_check`)."""

from __future__ import annotations

import psycopg
from quarantine_replay_check import check_replay, check_validate_replay

from airflow_provider_cdc.connectors.postgres.sink import PgSink


def _names(url: str) -> dict[int, str]:
    with psycopg.connect(url) as conn:
        return {int(id_): name for id_, name in conn.execute("SELECT id, name FROM public.items")}


def test_quarantined_changes_are_replayed_once(pg_database: str):
    with PgSink(pg_database, sink_id="warehouse") as sink:
        check_replay(sink, lambda: _names(pg_database))


def test_changes_a_quality_rule_refused_are_replayed_once(pg_database: str):
    with PgSink(pg_database, sink_id="warehouse") as sink:
        check_validate_replay(sink, lambda: _names(pg_database))
