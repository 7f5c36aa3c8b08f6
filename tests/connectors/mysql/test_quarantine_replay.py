"""``quarantine replay`` into MySqlSink against a real MariaDB (:func:`quarantine_replay_check.check_replay`)."""

from __future__ import annotations

from quarantine_replay_check import check_replay, check_validate_replay

from airflow_provider_cdc.connectors.mysql.connection import connect, database_of
from airflow_provider_cdc.connectors.mysql.sink import MySqlSink


def _names(url: str) -> dict[int, str]:
    conn = connect(url, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, name FROM items")
            return {int(id_): name for id_, name in cur.fetchall()}
    finally:
        conn.close()


def test_quarantined_changes_are_replayed_once(mariadb_database: str):
    with MySqlSink(mariadb_database, sink_id="warehouse", target_schema=database_of(mariadb_database)) as sink:
        check_replay(sink, lambda: _names(mariadb_database))


def test_changes_a_quality_rule_refused_are_replayed_once(mariadb_database: str):
    with MySqlSink(mariadb_database, sink_id="warehouse", target_schema=database_of(mariadb_database)) as sink:
        check_validate_replay(sink, lambda: _names(mariadb_database))
