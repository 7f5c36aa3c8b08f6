"""Schema evolution end to end: a real PostgreSQL source, the real DAG, the schema gate, and ``schema accept``.

What a new user does: ``airflow dags test cdc_<id>`` after an incompatible change on one table. That table is held
(its changes wait in the sink), the other table's changes land in the same run, later runs keep the others flowing,
and ``python -m airflow_provider_cdc schema accept <subject>`` brings the held changes in, exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest
from cdc_testing import ON_PG15_ONLY, assert_ledger_consistent, table_rows

from e2e.test_pg_edge_cases import Env, dags_test_cli, scalar, sink_columns

pytestmark = [pytest.mark.timeout(600), ON_PG15_ONLY]


@pytest.fixture
def env(pg_database_factory, tmp_path, monkeypatch) -> Env:
    from cdc_testing import unique_id

    return Env(pg_database_factory(), pg_database_factory(), unique_id("evo"), tmp_path / "config", monkeypatch)


def cli(env: Env, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "airflow_provider_cdc", *args, "--config-dir", str(env.config_dir)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CDC_CONFIG_DIR": str(env.config_dir)})
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def versions(env: Env, subject: str) -> list[dict]:
    out = json.loads(cli(env, "schema", "versions", subject, "--json").stdout)
    return out["subjects"][subject] if "subjects" in out else out[subject]


def ledger_schema_notes(env: Env) -> list[dict]:
    with psycopg.connect(env.sink_url) as conn:
        rows = conn.execute("SELECT schema_versions FROM _cdc_ledger WHERE source_id = %s ORDER BY seq_to",
                            (env.source_id,)).fetchall()
    return [note for (doc,) in rows if doc for note in doc.get("changes", [])]


def test_incompatible_change_holds_one_table_the_other_flows_and_accept_brings_the_held_changes_once(env):
    env.src("CREATE TABLE t (id int PRIMARY KEY, code text, note text)",
            "INSERT INTO t SELECT g, (g * 10)::text, 'n' || g FROM generate_series(1, 5) g",
            "CREATE TABLE o (id int PRIMARY KEY, v text)", "INSERT INTO o VALUES (1, 'one')")
    env.config(["t", "o"])
    dags_test_cli(env.source_id, env.config_dir)
    env.same("t")
    before = table_rows(env.sink_url, "t")

    # text -> integer is not BACKWARD compatible: t is held; o's change lands in the same run.
    env.src("ALTER TABLE t ALTER COLUMN code TYPE int USING code::int", "UPDATE t SET code = 99 WHERE id = 1",
            "INSERT INTO t VALUES (6, 60, 'n6')", "INSERT INTO o VALUES (2, 'two')")
    out = dags_test_cli(env.source_id, env.config_dir, expect_success=False)
    assert "state=failed" in out, out[-3000:]
    for word in (f"{env.source_id}.public.t", "code", "text -> integer", "evolve", "BACKWARD", "schema accept",
                 # the lineage's impact of the held table (a key column: severity high)
                 "impact: severity high (key columns affected: ", f"DAGs: cdc_{env.source_id}",
                 f"tables downstream: {env.sink_url.rpartition('/')[2]}.public.t"):
        assert word in out, f"{word!r} not in the run's output: {out[-3000:]}"
    env.same("o")
    assert table_rows(env.sink_url, "t") == before, "the held table changed"

    # Still held: later runs succeed, keep o flowing, and keep holding t's changes.
    env.src("INSERT INTO o VALUES (3, 'three')", "UPDATE t SET note = 'later' WHERE id = 2",
            "DELETE FROM t WHERE id = 3")
    out = dags_test_cli(env.source_id, env.config_dir)
    assert "held" in out
    env.same("o")
    assert table_rows(env.sink_url, "t") == before

    subject = f"{env.source_id}.public.t"
    registered = versions(env, subject)
    assert [(v["version"], v["status"]) for v in registered] == [(1, "applied"), (2, "held")]

    accepted = cli(env, "schema", "accept", subject, "--yes")
    assert "accepted" in accepted.stdout.lower()
    env.same("t")  # every held change arrived
    assert sink_columns(env.sink_url, "t")["code"] == "integer"
    assert [(v["version"], v["status"]) for v in versions(env, subject)] == [(1, "applied"), (2, "accepted")]
    assert_ledger_consistent(env.sink_url, env.source_id)

    # Exactly once: a second accept refuses, and the next runs carry on normally for both tables.
    again = cli(env, "schema", "accept", subject, "--yes", check=False)
    assert again.returncode == 1 and "not held" in (again.stdout + again.stderr)
    env.src("UPDATE t SET code = 7 WHERE id = 2", "INSERT INTO o VALUES (4, 'four')")
    dags_test_cli(env.source_id, env.config_dir)
    env.same("t")
    env.same("o")
    notes = ledger_schema_notes(env)
    held_note = next(note for note in notes if note["outcome"] == "held")
    assert held_note["mode"] == "evolve" and "code" in held_note["reason"], held_note


@pytest.mark.parametrize("mode", ["evolve", "lenient", "ignore", "stop"])
def test_compatible_changes_under_each_policy(env, mode):
    """Add a nullable column, rename one and drop one on t (all BACKWARD compatible); o always flows."""
    env.src("CREATE TABLE t (id int PRIMARY KEY, a text, b text, c text)",
            "INSERT INTO t SELECT g, 'a' || g, 'b' || g, 'c' || g FROM generate_series(1, 3) g",
            "CREATE TABLE o (id int PRIMARY KEY, v text)", "INSERT INTO o VALUES (1, 'one')")
    env.config(["t", "o"], extra=f"schema_changes:\n  mode: {mode}\n")
    env.run()
    env.src("ALTER TABLE t ADD COLUMN d int", "ALTER TABLE t RENAME COLUMN b TO b2", "ALTER TABLE t DROP COLUMN c",
            "UPDATE t SET d = 4, b2 = 'B1', a = 'A1' WHERE id = 1", "INSERT INTO o VALUES (2, 'two')")
    env.run(expect="failed" if mode == "stop" else "success")
    env.same("o")
    columns = set(sink_columns(env.sink_url, "t")) - {"_cdc_op", "_cdc_position", "_cdc_ts"}
    subject = f"{env.source_id}.public.t"
    statuses = [v["status"] for v in versions(env, subject)]
    if mode == "evolve":
        assert columns == {"id", "a", "b2", "d"}
        env.same("t")
        assert statuses[0] == "applied" and set(statuses[1:]) == {"applied"}
    elif mode == "lenient":
        assert columns == {"id", "a", "b", "b2", "c", "d"}
        with psycopg.connect(env.sink_url) as conn:
            assert conn.execute("SELECT a, b, b2, c, d FROM t WHERE id = 1").fetchone() == ("A1", None, "B1", None, 4)
            assert conn.execute("SELECT a, b, b2, c, d FROM t WHERE id = 2").fetchone() == ("a2", "b2", None, "c2",
                                                                                          None)
        assert set(statuses[1:]) == {"applied"}
    elif mode == "ignore":
        assert columns == {"id", "a", "b", "c"}
        assert scalar(env.sink_url, "SELECT a FROM t WHERE id = 1") == "A1"
        assert set(statuses[1:]) == {"ignored"}
    else:
        assert columns == {"id", "a", "b", "c"}
        assert scalar(env.sink_url, "SELECT a FROM t WHERE id = 1") == "a1"  # held: untouched
        assert "held" in statuses
        cli(env, "schema", "accept", subject, "--yes")
        env.same("t")
        columns = set(sink_columns(env.sink_url, "t")) - {"_cdc_op", "_cdc_position", "_cdc_ts"}
        assert columns == {"id", "a", "b2", "d"}


def test_a_column_dropped_and_added_again_is_held_and_only_a_resnapshot_resumes_it(env):
    """ALTER TABLE DROP COLUMN b, ADD COLUMN b DEFAULT: the source's rows all hold the default now, without any
    change in the stream for them. Following the change would leave the old values in the sink: held instead."""
    env.src("CREATE TABLE t (id int PRIMARY KEY, b text)",
            "INSERT INTO t SELECT g, 'old' || g FROM generate_series(1, 4) g",
            "CREATE TABLE o (id int PRIMARY KEY, v text)", "INSERT INTO o VALUES (1, 'one')")
    env.config(["t", "o"])
    env.run()
    env.src("ALTER TABLE t DROP COLUMN b", "ALTER TABLE t ADD COLUMN b text DEFAULT 'fresh'",
            "UPDATE t SET b = 'set' WHERE id = 1", "INSERT INTO o VALUES (2, 'two')")
    env.run(expect="failed")
    env.same("o")
    assert scalar(env.sink_url, "SELECT b FROM t WHERE id = 2") == "old2"  # held: untouched
    subject = f"{env.source_id}.public.t"
    refused = cli(env, "schema", "accept", subject, "--yes", check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "dropped and added again" in refused.stderr and "resnapshot" in refused.stderr
    cli(env, "resnapshot", env.source_id, "--table", "t", "--yes")
    env.run()
    assert env.same("t") == 4
    assert scalar(env.sink_url, "SELECT b FROM t WHERE id = 2") == "fresh"
