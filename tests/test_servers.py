"""The test servers themselves: both PostgreSQL versions answer and can do logical decoding with pgoutput."""

from __future__ import annotations

import psycopg
import pytest
from conftest import require_server

EXPECTED_MAJOR = {"pg15": 15, "pg18": 18}


def test_server_answers_with_expected_version(pg_server):
    with psycopg.connect(pg_server.url("postgres")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert pg_server.version == EXPECTED_MAJOR[pg_server.name]
    assert pg_server.host and pg_server.port
    assert pg_server.url("somedb").endswith(f":{pg_server.port}/somedb")


def test_server_has_logical_wal_level(pg_server):
    with psycopg.connect(pg_server.url("postgres")) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        assert int(conn.execute("SHOW max_replication_slots").fetchone()[0]) >= 10


def test_pgoutput_slot_in_fresh_database(pg_server, pg_database):
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("CREATE PUBLICATION pub FOR TABLE t")
        conn.execute("SELECT pg_create_logical_replication_slot('s_test', 'pgoutput')")
        conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        messages = conn.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('s_test', NULL, NULL,"
            " 'proto_version', '1', 'publication_names', 'pub')"
        ).fetchall()
    kinds = [bytes(row[0][:1]) for row in messages]
    # Begin, Relation, two Inserts, Commit
    assert kinds.count(b"I") == 2
    assert kinds[0] == b"B" and kinds[-1] == b"C"


def test_factory_drops_databases_and_slots(pg_server, pg_database_factory):
    """The factory's cleanup, called by hand here: slots (even one held by a walsender) and databases go."""
    from conftest import _drop_database

    url = pg_database_factory("cdc_cleanup")
    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('s_cleanup', 'pgoutput')")
    # An active walsender holding the slot, as a streaming reader would.
    holder = psycopg.connect(url + "?replication=database", autocommit=True)
    try:
        holder.execute("START_REPLICATION SLOT s_cleanup LOGICAL 0/0 (proto_version '1', publication_names 'x')")
    except psycopg.Error:
        pass  # psycopg cannot consume COPY BOTH; the walsender still holds the slot until terminated
    _drop_database(pg_server, dbname)
    holder.close()
    with psycopg.connect(pg_server.url("postgres")) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (dbname,)).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's_cleanup'"
        ).fetchone() == (0,)


def test_require_server_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required in CI"):
        require_server("pgX", "not there")


def test_require_server_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="CI=true"):
        require_server("pgX", "not there")
