"""Regression tests for the PostgreSQL rows of EDGE_CASES.md, end to end through the real DAG (``dag.test()``; a
few through ``airflow dags test``) on both servers, comparing source and sink row for row or asserting the error.

Every test builds its own source and sink databases (``pg_database_factory``) and its own config directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import psycopg
import pytest
from cdc_testing import (
    assert_ledger_consistent,
    assert_same_rows,
    ledger_rows,
    slot_lsn,
    staged_run,
    table_rows,
    unique_id,
    write_config,
)
from conftest import _drop_database
from psycopg import sql

# A safety net: a product that wrongly finds nothing to capture would leave a DAG run's sensor waiting.
pytestmark = pytest.mark.timeout(400)
SENSOR_DEADLINE = 60

BIG = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g)"  # 128,000 chars: toasted


# --------------------------------------------------------------------------------------------------- helpers


def run_dag(source_id: str, config_dir, monkeypatch, *, expect: str = "success") -> None:
    """One run of the real DAG ``cdc_<id>`` with ``dag.test()``; retries off so that a failing run fails fast."""
    from airflow.utils.state import DagRunState

    from airflow_provider_cdc.dag_factory import build_dags

    monkeypatch.setenv("CDC_CONFIG_DIR", str(config_dir))
    dag = build_dags(config_dir)[f"cdc_{source_id}"]
    for task in dag.tasks:
        task.retries = 0
    # The sensor pokes in-process with a deadline: a product that wrongly finds nothing to capture fails the run
    # after SENSOR_DEADLINE seconds instead of leaving dag.test() waiting on a deferred trigger for ever.
    sensor = dag.get_task("wait_for_changes")
    sensor.deferrable = False
    sensor.timeout = SENSOR_DEADLINE
    dag_run = dag.test()
    wanted = DagRunState.SUCCESS if expect == "success" else DagRunState.FAILED
    if dag_run.state != wanted and wanted == DagRunState.SUCCESS:
        # Say why: the same stages in this process raise the task's exception.
        from airflow_provider_cdc.hooks.cdc import CdcHook

        try:
            staged_run(CdcHook(source_id, str(config_dir)), unique_id("why"))
            why = "an in-process staged run then succeeded"
        except Exception as exc:  # reported in the assertion
            why = f"{type(exc).__name__}: {exc}"
        pytest.fail(f"run of cdc_{source_id} ended {dag_run.state}: {why}", pytrace=False)
    assert dag_run.state == wanted, f"run of cdc_{source_id} ended {dag_run.state}, expected {wanted}"


def dags_test_cli(source_id: str, config_dir, *, expect_success: bool = True) -> str:
    """What a user types: ``airflow dags test cdc_<id>`` in a subprocess."""
    env = {**os.environ, "CDC_CONFIG_DIR": str(config_dir)}
    proc = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", f"cdc_{source_id}"],
                          env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    if expect_success:
        assert proc.returncode == 0 and "state=success" in out, out[-4000:]
    return out


def run_error(source_id: str, config_dir) -> Exception:
    """The exception one staged run (capture, load, commit in this process) raises: the message the DAG shows."""
    from airflow_provider_cdc.hooks.cdc import CdcHook

    hook = CdcHook(source_id, str(config_dir))
    with pytest.raises(Exception) as info:
        staged_run(hook, unique_id("err"))
    return info.value


def position(source_id: str) -> dict | None:
    from airflow_provider_cdc.positions import PositionStore

    return PositionStore().get_document(source_id)


def execute(url: str, *statements: str, params=None) -> None:
    """Run the statements in ONE transaction."""
    with psycopg.connect(url) as conn:
        for statement in statements:
            conn.execute(statement, params)
        conn.commit()


def autocommit(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def scalar(url: str, query: str, params=None):
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def sink_columns(sink_url: str, table: str, schema: str = "public") -> dict[str, str]:
    with psycopg.connect(sink_url) as conn:
        return dict(conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
            (schema, table)).fetchall())


def publication_tables(url: str, pubname: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {f"{s}.{t}" for s, t in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (pubname,)).fetchall()}


class Env:
    """A source database, a sink database, a source id and a config directory."""

    def __init__(self, source_url: str, sink_url: str, source_id: str, config_dir, monkeypatch) -> None:
        self.source_url, self.sink_url, self.source_id = source_url, sink_url, source_id
        self.config_dir, self.monkeypatch = config_dir, monkeypatch

    def config(self, tables: list[str], **kwargs) -> None:
        write_config(self.config_dir, source_id=self.source_id, source_url=self.source_url, sink_url=self.sink_url,
                     tables=tables, **kwargs)

    def run(self, expect: str = "success") -> None:
        run_dag(self.source_id, self.config_dir, self.monkeypatch, expect=expect)

    def error(self) -> Exception:
        return run_error(self.source_id, self.config_dir)

    def src(self, *statements: str) -> None:
        execute(self.source_url, *statements)

    def same(self, table: str, **kwargs) -> int:
        return assert_same_rows(self.source_url, self.sink_url, table, **kwargs)

    @property
    def slot(self) -> str:
        return f"cdc_{self.source_id}".lower()

    @property
    def pub(self) -> str:
        return f"cdc_{self.source_id}_pub"


@pytest.fixture
def env(pg_database_factory, tmp_path, monkeypatch) -> Env:
    return Env(pg_database_factory(), pg_database_factory(), unique_id("edge"), tmp_path / "config", monkeypatch)


def assert_failed_clearly(env: Env, *words: str) -> str:
    """A run fails, with a message naming every one of ``words`` (case-insensitive); the DAG run fails too.

    The in-process run comes first: a product that wrongly succeeds fails here at once instead of leaving a DAG
    run waiting for changes."""
    message = str(env.error())
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not named in the error: {message}"
    env.run(expect="failed")
    return message


# ------------------------------------------------------------------------------------ 1. DDL inside a transaction


def test_ddl_between_dml_in_one_transaction_never_shifts_values(env):
    env.src("CREATE TABLE t (id int PRIMARY KEY, a text, b text, c text)",
            "INSERT INTO t SELECT g, 'a' || g, 'b' || g, 'c' || g FROM generate_series(1, 10) g")
    env.config(["t"])
    env.run()
    env.same("t")

    env.src("UPDATE t SET a = 'a-before', b = 'b-before', c = 'c-before' WHERE id = 1",
            "ALTER TABLE t DROP COLUMN b",
            "UPDATE t SET a = 'a-after', c = 'c-after' WHERE id = 2",
            "INSERT INTO t (id, a, c) VALUES (11, 'a11', 'c11')")
    env.run()
    env.same("t")
    with psycopg.connect(env.sink_url) as conn:
        assert conn.execute("SELECT a, c FROM t WHERE id = 1").fetchone() == ("a-before", "c-before")
        assert conn.execute("SELECT a, c FROM t WHERE id = 2").fetchone() == ("a-after", "c-after")

    env.src("INSERT INTO t (id, a, c) VALUES (12, 'a12', 'c12')",
            "UPDATE t SET c = 'c3-before' WHERE id = 3",
            "ALTER TABLE t ADD COLUMN d int DEFAULT 7",
            "INSERT INTO t (id, a, c, d) VALUES (13, 'a13', 'c13', 13)",
            "UPDATE t SET a = 'a4-after', d = 4 WHERE id = 4")
    env.run()
    env.same("t")

    env.src("UPDATE t SET a = 'later', d = d + 1 WHERE id IN (1, 5, 13)", "DELETE FROM t WHERE id = 6")
    env.run()
    assert env.same("t") == 12
    assert_ledger_consistent(env.sink_url, env.source_id)


# ------------------------------------------------------------------------------------------ 2. schema evolution


def test_add_column_with_default_shows_in_existing_sink_rows(env):
    env.src("CREATE TABLE t (id int PRIMARY KEY, v text)",
            "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g")
    env.config(["t"])
    env.run()
    env.src("ALTER TABLE t ADD COLUMN d int DEFAULT 7",
            "ALTER TABLE t ADD COLUMN e text NOT NULL DEFAULT 'x'")
    env.src("UPDATE t SET v = 'changed' WHERE id = 1")  # only one row is sent by the stream
    env.run()
    env.same("t")
    assert scalar(env.sink_url, "SELECT count(*) FROM t WHERE d = 7 AND e = 'x'") == 20


def test_safe_type_widening_follows(env):
    env.src("CREATE TABLE t (id int PRIMARY KEY, n numeric(6,2), s varchar(3), i int)",
            "INSERT INTO t SELECT g, g + 0.25, 'ab', g FROM generate_series(1, 5) g")
    env.config(["t"])
    env.run()
    env.src("ALTER TABLE t ALTER COLUMN n TYPE numeric(12,4)",
            "ALTER TABLE t ALTER COLUMN s TYPE varchar(10)",
            "ALTER TABLE t ALTER COLUMN i TYPE bigint")
    env.src("UPDATE t SET n = 1.2345, s = 'abcdefghij', i = 1099511627776 WHERE id = 1")
    env.run()
    env.same("t")
    assert scalar(env.sink_url, "SELECT n::text FROM t WHERE id = 1") == "1.2345"
    types = sink_columns(env.sink_url, "t")
    assert (types["n"], types["s"], types["i"]) == ("numeric(12,4)", "character varying(10)", "bigint")


@pytest.mark.parametrize("change", ["numeric_narrowing", "text_to_int"])
def test_unsafe_type_change_holds_only_that_table_until_it_is_resnapshotted(env, change):
    env.src("CREATE TABLE t (id int PRIMARY KEY, n numeric(12,4), s text)",
            "INSERT INTO t SELECT g, g + 0.1234, g::text FROM generate_series(1, 5) g",
            "CREATE TABLE o (id int PRIMARY KEY, v text)", "INSERT INTO o VALUES (1, 'one')")
    env.config(["t", "o"])
    env.run()
    before = table_rows(env.sink_url, "t")
    if change == "numeric_narrowing":
        env.src("ALTER TABLE t ALTER COLUMN n TYPE numeric(6,2)", "UPDATE t SET s = '99' WHERE id = 1")
        words = ("t", "n", "numeric", "held", "resnapshot")
    else:
        env.src("ALTER TABLE t ALTER COLUMN s TYPE int USING s::int", "UPDATE t SET n = 9 WHERE id = 1")
        words = ("t", "s", "int", "held", "resnapshot")
    env.src("INSERT INTO o VALUES (2, 'two')")
    message = assert_failed_clearly(env, *words)
    assert re.search(r"\bt\b", message), message
    assert table_rows(env.sink_url, "t") == before, "the held table changed"
    env.same("o")  # the other table kept flowing
    env.src("INSERT INTO o VALUES (3, 'three')", "UPDATE t SET s = '7' WHERE id = 2")
    env.run()  # still held: later runs succeed (with a warning), and still move the others
    env.same("o")
    assert table_rows(env.sink_url, "t") == before
    proc = subprocess.run([sys.executable, "-m", "airflow_provider_cdc", "resnapshot", env.source_id, "--table", "t",
                           "--yes", "--config-dir", str(env.config_dir)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CDC_CONFIG_DIR": str(env.config_dir)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "was held" in proc.stdout + proc.stderr
    env.run()
    env.same("t")
    env.same("o")


def test_rename_column_renames_the_sink_column(env):
    env.src("CREATE TABLE t (id int PRIMARY KEY, b text)",
            "INSERT INTO t SELECT g, 'b' || g FROM generate_series(1, 5) g")
    env.config(["t"])
    env.run()
    env.src("ALTER TABLE t RENAME COLUMN b TO b2", "UPDATE t SET b2 = 'new' WHERE id = 1")
    env.run()
    env.same("t")
    columns = sink_columns(env.sink_url, "t")
    assert "b2" in columns and "b" not in columns, columns
    assert scalar(env.sink_url, "SELECT b2 FROM t WHERE id = 2") == "b2"


@pytest.mark.parametrize("mode", ["evolve", "lenient"])
def test_drop_column_is_dropped_under_evolve_and_kept_with_nulls_under_lenient(env, mode):
    env.src("CREATE TABLE t (id int PRIMARY KEY, a text, b text)",
            "INSERT INTO t SELECT g, 'a' || g, 'b' || g FROM generate_series(1, 5) g")
    env.config(["t"], extra=f"schema_changes:\n  mode: {mode}\n")
    env.run()
    env.src("ALTER TABLE t DROP COLUMN b", "UPDATE t SET a = 'changed' WHERE id = 1",
            "INSERT INTO t VALUES (6, 'a6')")
    env.run()
    env.same("t")
    if mode == "evolve":
        assert "b" not in sink_columns(env.sink_url, "t")
        return
    assert "b" in sink_columns(env.sink_url, "t")
    with psycopg.connect(env.sink_url) as conn:
        rows = dict(conn.execute("SELECT id, b FROM t").fetchall())
    assert rows[1] is None and rows[6] is None and rows[2] == "b2", rows


# ------------------------------------------------------------------------------ 3. primary-key update over TOAST


@pytest.mark.parametrize("identity", ["DEFAULT", "FULL"])
@pytest.mark.parametrize("loaded_by", ["snapshot", "stream"])
def test_primary_key_update_keeps_an_unchanged_toasted_value(env, identity, loaded_by):
    env.src("CREATE TABLE t (id int PRIMARY KEY, name text, bio text)",
            "ALTER TABLE t ALTER COLUMN bio SET STORAGE EXTERNAL",
            f"ALTER TABLE t REPLICA IDENTITY {identity}",
            "INSERT INTO t SELECT g, 'n' || g, NULL FROM generate_series(1, 10) g")
    if loaded_by == "snapshot":
        env.src(f"UPDATE t SET bio = {BIG} || id WHERE id IN (5, 6)")
    env.config(["t"])
    env.run()
    if loaded_by == "stream":
        env.src(f"UPDATE t SET bio = {BIG} || id WHERE id IN (5, 6)")
        env.run()
    env.src("UPDATE t SET id = id + 1000 WHERE id = 5")
    env.src("UPDATE t SET id = id + 1000, name = 'moved' WHERE id = 6")
    env.run()
    env.same("t")
    with psycopg.connect(env.sink_url) as conn:
        rows = dict(conn.execute("SELECT id, length(bio) FROM t WHERE id > 1000").fetchall())
    assert rows == {1005: 4000 * 32 + 1, 1006: 4000 * 32 + 1}, rows


def test_primary_key_update_of_toasted_rows_during_a_multi_run_snapshot(env):
    """Found by the kill tests: the key of a toasted row changes while the snapshot is still in progress."""
    env.src("CREATE TABLE t (id int PRIMARY KEY, name text, bio text)",
            "ALTER TABLE t ALTER COLUMN bio SET STORAGE EXTERNAL",
            "INSERT INTO t SELECT g, 'n' || g, NULL FROM generate_series(1, 12) g",
            f"UPDATE t SET bio = {BIG} || id WHERE id IN (2, 8, 11)")
    env.config(["t"], batch_size=4)
    env.run()  # rows 1-4
    env.src("UPDATE t SET id = 102 WHERE id = 2")  # already in the sink
    env.src("UPDATE t SET id = 108 WHERE id = 8")  # not read by the snapshot yet
    env.run()
    env.src("UPDATE t SET id = 111 WHERE id = 11")
    for _ in range(8):
        env.run()
        if "snapshot" not in position(env.source_id) and \
                scalar(env.sink_url, "SELECT count(*) FROM t WHERE id = 111") == 1:
            break
    assert env.same("t") == 12
    assert_ledger_consistent(env.sink_url, env.source_id)


# ------------------------------------------------------------------------------------------- 4. replica identity


def test_replica_identity_using_index_without_primary_key(env):
    env.src("CREATE TABLE u (code text NOT NULL, region int NOT NULL, v text)",
            "CREATE UNIQUE INDEX u_code_region ON u (code, region)",
            "ALTER TABLE u REPLICA IDENTITY USING INDEX u_code_region",
            "INSERT INTO u SELECT 'c' || g, g % 3, 'v' || g FROM generate_series(1, 20) g")
    env.config(["u"])
    env.run()
    env.same("u")
    env.src("INSERT INTO u VALUES ('new', 1, 'inserted')",
            "UPDATE u SET v = 'updated' WHERE code IN ('c1', 'c2')",
            "UPDATE u SET code = 'c3-moved' WHERE code = 'c3'",
            "DELETE FROM u WHERE code IN ('c4', 'c5')")
    env.run()
    assert env.same("u") == 19


@pytest.mark.parametrize("kind", ["identity_nothing", "deferrable_pk"])
def test_unusable_identity_is_refused_before_publishing(env, kind):
    env.src("CREATE TABLE good (id int PRIMARY KEY, v text)", "INSERT INTO good VALUES (1, 'g')")
    if kind == "identity_nothing":
        env.src("CREATE TABLE bad (id int PRIMARY KEY, v text)", "ALTER TABLE bad REPLICA IDENTITY NOTHING")
        words = ("bad", "replica identity")
    else:
        env.src("CREATE TABLE bad (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, v text)")
        words = ("bad", "deferrable")
    env.src("INSERT INTO bad SELECT g, 'v' || g FROM generate_series(1, 5) g")
    env.config(["good", "bad"])
    assert_failed_clearly(env, *words)
    assert "public.bad" not in publication_tables(env.source_url, env.pub)
    # The application's own writes still work.
    env.src("UPDATE bad SET v = 'app' WHERE id = 1", "DELETE FROM bad WHERE id = 2")
    if kind == "deferrable_pk":
        env.src("UPDATE bad SET id = 3 - id WHERE id IN (1, 3)")  # a deferred key swap by the application
    assert scalar(env.source_url, "SELECT count(*) FROM bad") == 4


def test_key_swap_in_one_transaction_under_full_identity_loses_no_row(env):
    env.src("CREATE TABLE s (id int PRIMARY KEY, v text)", "ALTER TABLE s REPLICA IDENTITY FULL",
            "INSERT INTO s VALUES (1, 'one'), (2, 'two'), (5, 'five')")
    env.config(["s"])
    env.run()
    env.src("UPDATE s SET id = -id WHERE id IN (1, 2)", "UPDATE s SET id = 3 + id WHERE id IN (-1, -2)")
    env.run()
    assert env.same("s") == 3
    assert dict(table_rows(env.sink_url, "s", columns=["id", "v"])) == {"1": "two", "2": "one", "5": "five"}


# -------------------------------------------------------------------------------- 5. partitions and inheritance


def test_partitioned_table_lands_under_the_parent_over_several_runs(env):
    env.src("CREATE TABLE p (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)",
            "CREATE TABLE p_eu PARTITION OF p FOR VALUES IN ('eu')",
            "CREATE TABLE p_us PARTITION OF p FOR VALUES IN ('us')",
            "INSERT INTO p SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, 'v' || g "
            "FROM generate_series(1, 30) g")
    env.config(["p"], batch_size=20)
    env.run()
    env.run()  # the snapshot takes two runs
    assert env.same("p") == 30
    for i in range(3):  # several runs in a row: no DuplicateObject, no second snapshot
        env.src(f"INSERT INTO p VALUES ({100 + i}, 'eu', 'new')", f"UPDATE p SET v = 'run{i}' WHERE id = {i + 1}")
        env.run()
    env.src("UPDATE p SET region = 'us' WHERE id IN (2, 4)", "UPDATE p SET region = 'eu' WHERE id = 1",
            "DELETE FROM p WHERE id = 7")
    env.run()
    assert env.same("p") == 32
    with psycopg.connect(env.sink_url) as conn:
        others = conn.execute("SELECT to_regclass('p_eu'), to_regclass('p_us')").fetchone()
    assert others == (None, None)
    assert_ledger_consistent(env.sink_url, env.source_id)


def test_inheritance_parent_snapshot_holds_only_its_own_rows(env):
    env.src("CREATE TABLE parent (id int PRIMARY KEY, v text)",
            "CREATE TABLE child (extra text) INHERITS (parent)",
            "INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 5) g",
            "INSERT INTO child SELECT g, 'c' || g, 'x' FROM generate_series(101, 105) g")
    env.config(["parent"])
    env.run()
    env.same("ONLY parent", sink_table="parent")
    env.src("INSERT INTO parent VALUES (6, 'p6')", "INSERT INTO child VALUES (106, 'c106', 'x')",
            "UPDATE parent SET v = v || '+'")  # touches child rows too: not sent for parent
    env.run()
    assert env.same("ONLY parent", sink_table="parent") == 6


# ---------------------------------------------------------------------------------------------- 6. table set


def test_table_added_later_is_snapshotted_while_the_other_keeps_flowing(env):
    env.src("CREATE TABLE a (id int PRIMARY KEY, v text)", "CREATE TABLE b (id int PRIMARY KEY, v text)",
            "INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 10) g",
            "INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 10) g")
    env.config(["a"])
    env.run()
    env.src("UPDATE a SET v = 'a-run2' WHERE id <= 3", "INSERT INTO a VALUES (11, 'a11')",
            "UPDATE b SET v = 'b-before-added' WHERE id <= 2", "DELETE FROM b WHERE id = 10")
    env.config(["a", "b"])
    env.run()
    env.src("UPDATE a SET v = 'a-run3' WHERE id = 4", "UPDATE b SET v = 'b-after-added' WHERE id = 5",
            "INSERT INTO b VALUES (20, 'b20')")
    env.run()
    assert env.same("a") == 11
    assert env.same("b") == 10
    assert_ledger_consistent(env.sink_url, env.source_id)


def test_editing_tables_mid_snapshot_skips_no_table(env):
    for name in ("a", "b", "c"):
        env.src(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)",
                f"INSERT INTO {name} SELECT g, '{name}' || g FROM generate_series(1, 25) g")
    env.config(["a", "c"], batch_size=10)
    env.run()  # a: rows 1-10
    env.config(["b", "a", "c"], batch_size=10)  # a table inserted before the one being read
    for _ in range(12):
        env.run()
        if "snapshot" not in position(env.source_id):
            break
    env.src("UPDATE a SET v = 'x'", "UPDATE b SET v = 'x' WHERE id = 1", "UPDATE c SET v = 'x' WHERE id = 25")
    env.run()
    for name in ("a", "b", "c"):
        assert env.same(name) == 25


def test_table_removed_from_config_stops_flowing(env):
    env.src("CREATE TABLE a (id int PRIMARY KEY, v text)", "CREATE TABLE b (id int PRIMARY KEY, v text)",
            "INSERT INTO a VALUES (1, 'a1')", "INSERT INTO b VALUES (1, 'b1')")
    env.config(["a", "b"])
    env.run()
    env.config(["a"])
    env.src("UPDATE a SET v = 'a-later'", "UPDATE b SET v = 'b-later'", "INSERT INTO b VALUES (2, 'b2')")
    env.run()
    env.same("a")
    assert table_rows(env.sink_url, "b", columns=["id", "v"]) == [("1", "b1")]
    assert "public.b" not in publication_tables(env.source_url, env.pub), "the publication was not narrowed"


def test_dropped_source_table_does_not_stop_the_other(env):
    env.src("CREATE TABLE a (id int PRIMARY KEY, v text)", "CREATE TABLE b (id int PRIMARY KEY, v text)",
            "INSERT INTO a VALUES (1, 'a1')", "INSERT INTO b VALUES (1, 'b1')")
    env.config(["a", "b"])
    env.run()
    env.src("UPDATE b SET v = 'b-last'", "UPDATE a SET v = 'a-before-drop'")
    env.src("DROP TABLE b")
    env.src("UPDATE a SET v = 'a-after-drop'", "INSERT INTO a VALUES (2, 'a2')")
    env.run()
    env.src("INSERT INTO a VALUES (3, 'a3')")
    env.run()
    assert env.same("a") == 3


def test_user_publication_for_all_tables_captures_only_configured_tables(env):
    env.src("CREATE TABLE a (id int PRIMARY KEY, v text)", "CREATE TABLE other (id int PRIMARY KEY, v text)",
            "INSERT INTO a VALUES (1, 'a1')", "INSERT INTO other VALUES (1, 'o1')")
    autocommit(env.source_url, "CREATE PUBLICATION mypub FOR ALL TABLES")
    env.config(["a"], extra="options: {publication_name: mypub, create_publication: false}\n")
    env.run()
    env.src("UPDATE a SET v = 'a2'", "INSERT INTO a VALUES (2, 'a2')", "UPDATE other SET v = 'o2'",
            "INSERT INTO other VALUES (2, 'o2')")
    env.run()
    assert env.same("a") == 2
    assert scalar(env.sink_url, "SELECT to_regclass('public.other')::text") is None
    assert_ledger_consistent(env.sink_url, env.source_id)


# ---------------------------------------------------------------------------------------------------- 7. names

LONG_COLUMN = "c" * 63
LONG_TABLE = "t" * 63


def test_awkward_names_all_land(pg_database_factory, tmp_path, monkeypatch):
    env = Env(pg_database_factory(), pg_database_factory(), f"Shop_A1_{uuid.uuid4().hex[:6]}", tmp_path / "config",
              monkeypatch)
    env.src(f'CREATE TABLE weird (id int PRIMARY KEY, _op text, _seq int, _position text, _unchanged text, '
            f'"before.x" text, "Mixed Case" text, {LONG_COLUMN} text, "select" text, '
            f'"x""; DROP TABLE weird; --" text)',
            "INSERT INTO weird SELECT g, 'op' || g, g, 'pos' || g, 'u' || g, 'bx' || g, 'mc' || g, 'l' || g, "
            "'sel' || g, 'inj' || g FROM generate_series(1, 5) g",
            'CREATE TABLE "Orders" (id int PRIMARY KEY, v text)', """INSERT INTO "Orders" VALUES (1, 'upper')""",
            f"CREATE TABLE {LONG_TABLE} (id int PRIMARY KEY, v text)", f"INSERT INTO {LONG_TABLE} VALUES (1, 'long')",
            "CREATE TABLE клиенты (id int PRIMARY KEY, имя text)", "INSERT INTO клиенты VALUES (1, 'Анна')",
            "CREATE TABLE заказы (id int PRIMARY KEY, сумма numeric)", "INSERT INTO заказы VALUES (1, 10.5)")
    env.config(["weird", LONG_TABLE, "клиенты", "заказы", "Orders"])
    env.run()
    env.src("UPDATE weird SET _op = 'changed', \"Mixed Case\" = 'MC', \"before.x\" = NULL WHERE id = 1",
            "DELETE FROM weird WHERE id = 2", "INSERT INTO weird (id, _seq) VALUES (9, 99)",
            f"UPDATE {LONG_TABLE} SET v = 'longer'", "INSERT INTO клиенты VALUES (2, 'Борис')",
            "UPDATE заказы SET сумма = 11", """UPDATE weird SET "x""; DROP TABLE weird; --" = 'still here'""",
            """UPDATE "Orders" SET v = 'UPPER'""")
    env.run()
    assert env.same('"Orders"') == 1
    assert env.same("weird") == 5
    assert env.same(LONG_TABLE) == 1
    assert env.same("клиенты") == 2
    assert env.same("заказы") == 1
    assert position(env.source_id) is not None


def test_column_in_the_bookkeeping_namespace_is_refused_clearly(env):
    env.src("CREATE TABLE t (id int PRIMARY KEY, _cdc_x text)", "INSERT INTO t VALUES (1, 'x')")
    env.config(["t"])
    assert_failed_clearly(env, "_cdc_x")


# ------------------------------------------------------------------------------------------ 8. values and text


@pytest.fixture
def latin1_url(pg_server):
    dbname = f"cdc_latin1_{uuid.uuid4().hex[:12]}"
    with pg_server.connect("postgres") as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
                     .format(sql.Identifier(dbname)))
    yield pg_server.url(dbname)
    _drop_database(pg_server, dbname)


def test_latin1_source_lands_as_utf8(latin1_url, pg_database_factory, tmp_path, monkeypatch):
    env = Env(latin1_url, pg_database_factory(), unique_id("latin1"), tmp_path / "config", monkeypatch)
    env.src("CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (1, 'café'), (2, 'naïve')")
    env.config(["t"])
    dags_test_cli(env.source_id, env.config_dir)  # `airflow dags test`
    env.src("INSERT INTO t VALUES (3, 'crème brûlée')", "UPDATE t SET v = 'déjà vu' WHERE id = 2")
    dags_test_cli(env.source_id, env.config_dir)
    assert env.same("t") == 3
    with psycopg.connect(env.sink_url) as conn:
        assert dict(conn.execute("SELECT id, v FROM t").fetchall()) == {1: "café", 2: "déjà vu", 3: "crème brûlée"}


TYPED_VALUES = ("true, 'ab', '192.168.0.1/24', 12.500, '2024-03-01 12:34:56.789+05:30', "
                "ARRAY[1, NULL, 3], '1 year 2 mons 3 days 04:05:06.5', ARRAY['a b', 'c\"d', NULL]::text[]")


def test_snapshot_text_equals_stream_text(env):
    env.src("CREATE TABLE v (id int PRIMARY KEY, b boolean, c char(5), ip inet, n numeric, ts timestamptz, "
            "arr int[], iv interval, tarr text[])",
            f"INSERT INTO v VALUES (1, {TYPED_VALUES})")
    dbname = psycopg.conninfo.conninfo_to_dict(env.source_url)["dbname"]
    autocommit(env.source_url, f"ALTER DATABASE {dbname} SET TimeZone = 'America/New_York'",
               f"ALTER DATABASE {dbname} SET IntervalStyle = 'iso_8601'")
    env.config(["v"])
    env.run()  # row 1 by the snapshot
    env.src(f"INSERT INTO v VALUES (2, {TYPED_VALUES})")  # the same values, by the stream

    from airflow_provider_cdc.hooks.cdc import CdcHook

    source = CdcHook(env.source_id, str(env.config_dir)).get_source()
    try:
        source.prepare()
        stored = {k: v for k, v in position(env.source_id).items() if k not in ("batch_id", "updated_at")}
        streamed = source.capture(stored, 1000).tables["public.v"].to_pylist()
        snapshot = source.capture({**stored, "seq": 0, "schemas": {}, "snapshot": {"table": 0, "after": None}},
                                  1000).tables["public.v"].to_pylist()
    finally:
        source.close()
    values = ("b", "c", "ip", "n", "ts", "arr", "iv", "tarr")
    from_stream = {k: v for k, v in next(r for r in streamed if str(r["id"]) == "2").items() if k in values}
    from_snapshot = {k: v for k, v in next(r for r in snapshot if str(r["id"]) == "2").items() if k in values}
    assert from_stream == from_snapshot

    env.run()
    # Our own comparison reads the source in this database's (odd) default style: back to the server's.
    autocommit(env.source_url, f"ALTER DATABASE {dbname} RESET TimeZone",
               f"ALTER DATABASE {dbname} RESET IntervalStyle")
    env.same("v")
    with psycopg.connect(env.sink_url) as conn:
        cols = ", ".join(f"{c}::text" for c in values)
        rows = conn.execute(f"SELECT {cols} FROM v ORDER BY id").fetchall()
    assert rows[0] == rows[1]


# ------------------------------------------------------------------------------------------------ 9. positions


def test_deleted_variable_after_heartbeat_only_runs_resumes_from_the_ledger(env):
    from airflow_provider_cdc.hooks.cdc import CdcHook
    from airflow_provider_cdc.positions import PositionStore

    env.src("CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (1, 'a')")
    env.config(["t"], heartbeat_interval=0.5)
    env.run()
    env.src("INSERT INTO t VALUES (2, 'b')")
    env.run()
    for _ in range(2):  # idle runs: only heartbeats advance the slot
        source = CdcHook(env.source_id, str(env.config_dir)).get_source()
        try:
            source.heartbeat()
        finally:
            source.close()
        env.run()
    PositionStore().delete(env.source_id)
    env.src("INSERT INTO t VALUES (3, 'c')", "UPDATE t SET v = 'a2' WHERE id = 1")
    env.run()
    assert env.same("t") == 3
    assert_ledger_consistent(env.sink_url, env.source_id)


def test_dropped_slot_fails_with_position_lost_and_is_not_recreated(env):
    from airflow_provider_cdc.errors import PositionLostError

    env.src("CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (1, 'a')")
    env.config(["t"])
    env.run()
    autocommit(env.source_url, f"SELECT pg_drop_replication_slot('{env.slot}')")
    env.src("INSERT INTO t VALUES (2, 'lost')")
    error = env.error()
    assert isinstance(error, PositionLostError), repr(error)
    env.run(expect="failed")
    assert re.search(r"re-?snapshot", str(error)), str(error)
    assert scalar(env.source_url, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                  (env.slot,)) == 0, "the slot was silently re-created"


@pytest.mark.parametrize("tamper", ["lsn_ahead", "system_id"])
def test_foreign_position_fails_with_position_lost(env, tamper):
    from airflow_provider_cdc.errors import PositionLostError
    from airflow_provider_cdc.positions import PositionStore

    env.src("CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (1, 'a')")
    env.config(["t"])
    env.run()
    env.src("INSERT INTO t VALUES (2, 'b')")
    env.run()
    doc = position(env.source_id)
    stored = {k: v for k, v in doc.items() if k not in ("batch_id", "updated_at")}
    if tamper == "lsn_ahead":
        stored["lsn"] = "FF/0"
    else:
        stored["system_id"] = "1234567890123456789"
    PositionStore().set(env.source_id, stored, batch_id=doc["batch_id"])
    env.src("INSERT INTO t VALUES (3, 'c')")
    error = env.error()
    assert isinstance(error, PositionLostError), repr(error)
    assert re.search(r"re-?snapshot", str(error)), str(error)
    env.run(expect="failed")


@pytest.mark.parametrize("overlap", ["same_range", "superset"])
def test_overlapping_staged_runs_apply_nothing_twice(env, overlap):
    from airflow_provider_cdc import pipeline
    from airflow_provider_cdc.hooks.cdc import CdcHook

    env.src("CREATE TABLE t (id int PRIMARY KEY, n int)", "INSERT INTO t SELECT g, 0 FROM generate_series(1, 20) g")
    env.config(["t"])
    env.run()
    env.src("UPDATE t SET n = n + 1 WHERE id <= 10", "INSERT INTO t VALUES (21, 1)")
    hook = CdcHook(env.source_id, str(env.config_dir))

    def capture(run_id):
        source, sink = hook.get_source(), hook.get_sink()
        try:
            return pipeline.capture_stage(source, sink, hook.positions, hook.store, max_changes=1000, run_id=run_id)
        finally:
            source.close()
            sink.close()

    def load_and_commit(summary, run_id):
        source, sink = hook.get_source(), hook.get_sink()
        try:
            loaded = pipeline.load_stage(summary["manifest_uri"], sink, run_id=run_id, policy=hook.schema_policy)
            pipeline.commit_stage(summary["manifest_uri"], source, sink, hook.positions, hook.store,
                                  newly_held=loaded.get("newly_held"))
        finally:
            source.close()
            sink.close()

    a = capture("overlap_a")
    if overlap == "superset":
        env.src("UPDATE t SET n = n + 10 WHERE id <= 5", "DELETE FROM t WHERE id = 20")
    b = capture("overlap_b")
    load_and_commit(a, "overlap_a")
    load_and_commit(b, "overlap_b")
    env.src("UPDATE t SET n = n + 100 WHERE id = 1")
    env.run()
    env.same("t")
    assert_ledger_consistent(env.sink_url, env.source_id)


# ----------------------------------------------------------------------------------------------------- 10. keys


KEYS_EQUAL_BY_VALUE = {
    # key type: (first row, statements writing one key in other text, the count of that key in the sink)
    "numeric": ("5, 'five'", ["INSERT INTO k VALUES (1.0, 'first')",
                              "UPDATE k SET id = 1.00, v = 'second' WHERE id = 1",
                              "UPDATE k SET v = 'third' WHERE id = 1.000"],
                "SELECT count(*) FROM k WHERE id = 1"),
    "citext": ("'zzz', 'z'", ["INSERT INTO k VALUES ('Abc', 'first')",
                              "UPDATE k SET id = 'abc', v = 'second' WHERE id = 'ABC'",
                              "UPDATE k SET v = 'third' WHERE id = 'aBc'"],
               "SELECT count(*) FROM k WHERE lower(id::text) = 'abc'"),
}


@pytest.mark.parametrize("key_type", sorted(KEYS_EQUAL_BY_VALUE))
def test_a_key_written_two_ways_is_one_row(env, key_type):
    first, statements, count = KEYS_EQUAL_BY_VALUE[key_type]
    if key_type == "citext":
        autocommit(env.source_url, "CREATE EXTENSION IF NOT EXISTS citext")
    env.src(f"CREATE TABLE k (id {key_type} PRIMARY KEY, v text)", f"INSERT INTO k VALUES ({first})")
    env.config(["k"])
    env.run()
    for statement in statements:  # one transaction each
        env.src(statement)
    env.run()
    assert env.same("k") == 2
    assert scalar(env.sink_url, count) == 1


# ------------------------------------------------------------------------------------ 11. one large transaction


def test_large_transaction_drains_over_several_runs(env):
    env.src("CREATE TABLE big (id int PRIMARY KEY, n int)",
            "INSERT INTO big SELECT g, 0 FROM generate_series(1, 60000) g")
    env.config(["big"], batch_size=100000)
    env.run()  # snapshot in one run
    ledger_before = len(ledger_rows(env.sink_url, env.source_id))
    env.config(["big"], batch_size=5000)
    env.src("UPDATE big SET n = n + 1")
    for _ in range(20):
        env.run()
        if scalar(env.sink_url, "SELECT count(*) FROM big WHERE n = 1") == 60000:
            break
    stream_batches = len(ledger_rows(env.sink_url, env.source_id)) - ledger_before
    assert stream_batches > 1, f"the 60,000-row transaction was loaded in {stream_batches} batch(es)"
    assert env.same("big") == 60000
    assert_ledger_consistent(env.sink_url, env.source_id)


# -------------------------------------------------------------------------- airflow dags test (a real CLI run)


def test_cli_runs_ddl_and_partitions(env):
    env.src("CREATE TABLE p (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region)",
            "CREATE TABLE p_eu PARTITION OF p FOR VALUES IN ('eu')",
            "CREATE TABLE p_us PARTITION OF p FOR VALUES IN ('us')",
            "INSERT INTO p VALUES (1, 'eu', 'a'), (2, 'us', 'b')",
            "CREATE TABLE t (id int PRIMARY KEY, a text, b text)", "INSERT INTO t VALUES (1, 'a', 'b')")
    env.config(["p", "t"])
    dags_test_cli(env.source_id, env.config_dir)
    env.src("UPDATE p SET region = 'us' WHERE id = 1", "INSERT INTO p VALUES (3, 'eu', 'c')",
            "UPDATE t SET a = 'a-before'", "ALTER TABLE t ADD COLUMN d int DEFAULT 7",
            "INSERT INTO t VALUES (2, 'a2', 'b2', 2)")
    dags_test_cli(env.source_id, env.config_dir)
    assert env.same("p") == 3
    assert env.same("t") == 2


EXTREME_VALUES = [
    "1, 'NaN', '0.0000000000000000000000001', '-infinity', 'infinity', '0044-03-15 BC', '10000-01-01', "
    "'nan'::float8, '\\x00ff'::bytea",
    "2, 'Infinity', '1e-20', 'infinity', '-infinity', '1899-12-31', '9999-12-31', '-0'::float8, ''::bytea",
]


def test_extreme_values_round_trip_whatever_the_sink_session_time_zone(env):
    """NaN and infinities, timestamps at infinity, dates BC and after 9999, float -0, bytea: exactly the same in a
    PostgreSQL sink, by snapshot and by stream, while the sink database runs in another time zone."""
    sink_db = psycopg.conninfo.conninfo_to_dict(env.sink_url)["dbname"]
    autocommit(env.sink_url, f"ALTER DATABASE {sink_db} SET TimeZone = 'Asia/Tokyo'")
    env.src("CREATE TABLE x (id int PRIMARY KEY, n numeric, n2 numeric(30,25), ts timestamptz, t timestamp, "
            "d date, d2 date, f float8, b bytea)",
            f"INSERT INTO x VALUES ({EXTREME_VALUES[0]})")
    env.config(["x"])
    env.run()  # row 1 by the snapshot
    env.src(f"INSERT INTO x VALUES ({EXTREME_VALUES[1]})", "UPDATE x SET n = '-Infinity' WHERE id = 1")
    env.run()  # row 2 and the update by the stream
    env.same("x")
    assert scalar(env.sink_url, "SELECT d::text FROM x WHERE id = 1") == "0044-03-15 BC"


def test_huge_and_deeply_nested_values_arrive_whole(env):
    """A 32 MB text value and a JSON document nested 1,000 deep, by snapshot and by stream (including an update
    that leaves the big value unchanged, so it is not resent)."""
    nested = "(SELECT repeat('{\"a\": ', 1000) || '1' || repeat('}', 1000))::jsonb"
    env.src("CREATE TABLE h (id int PRIMARY KEY, big text, doc jsonb, n int)",
            f"INSERT INTO h VALUES (1, repeat('x', 32 * 1024 * 1024), {nested}, 0)")
    env.config(["h"])
    env.run()
    env.src(f"INSERT INTO h VALUES (2, repeat('y', 32 * 1024 * 1024) || 'end', {nested}, 0)",
            "UPDATE h SET n = n + 1")
    env.run()
    with psycopg.connect(env.source_url) as src, psycopg.connect(env.sink_url) as dst:
        query = "SELECT id, length(big), md5(big), md5(doc::text), n FROM h ORDER BY id"
        assert dst.execute(query).fetchall() == src.execute(query).fetchall()


def test_sink_down_during_load_fails_clearly_and_acknowledges_nothing(env):
    """The sink is unreachable when the batch is loaded: the run fails naming the sink, neither the position nor
    the slot moves, and once the sink is back the same changes land exactly once."""
    from airflow_provider_cdc.hooks.cdc import CdcHook

    env.src("CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (1, 'one')")
    env.config(["t"])
    env.run()
    stored = position(env.source_id)
    slot_before = slot_lsn(env.source_url, env.slot)
    env.src("INSERT INTO t VALUES (2, 'two')", "UPDATE t SET v = 'uno' WHERE id = 1")
    real_sink = env.sink_url
    env.sink_url = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2"  # nothing listens on port 1
    env.config(["t"])
    with pytest.raises(Exception, match="sink 'warehouse'.*cannot connect"):
        staged_run(CdcHook(env.source_id, str(env.config_dir)), unique_id("down"))
    assert position(env.source_id)["lsn"] == stored["lsn"] and slot_lsn(env.source_url, env.slot) == slot_before
    env.sink_url = real_sink
    env.config(["t"])
    env.run()
    env.same("t")
    assert_ledger_consistent(env.sink_url, env.source_id)
