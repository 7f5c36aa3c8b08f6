"""End to end through Airflow with a MariaDB source into PostgreSQL: what a new user tries (``airflow dags test
cdc_<id>``: snapshot, inserts, updates, deletes, a TRUNCATE, a 1,500-row transaction and an ADD COLUMN), and
exactly-once under SIGKILL at every stage boundary, inside the sink transaction and at random moments.

The source is a fresh database on the private MariaDB (``mariadb_database_factory``); the sink a fresh database on
PostgreSQL 15 (the contract suite covers PostgreSQL 18 sinks). Source and sink are compared row for row as Python
values (:func:`contract.pairs.mysql_columns` says what each MariaDB type becomes).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pymysql
import pytest
from cdc_testing import assert_ledger_consistent, dags_test, drain, ledger_rows, unique_id
from contract.pairs import mysql_columns, mysql_rows, pg_rows
from pymysql.constants import CLIENT

from airflow_provider_cdc.connectors.mysql.connection import connect_kwargs, database_of

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.parametrize("pg_server", ["pg15"], indirect=True),
]

KILL_RUNNER = Path(__file__).with_name("kill_runner.py")

SHOP_DDL = """
CREATE TABLE users (
    id bigint PRIMARY KEY, email varchar(200), name varchar(200), balance decimal(12,2),
    created_at timestamp(6) NULL DEFAULT CURRENT_TIMESTAMP(6), bio mediumtext, active tinyint(1) DEFAULT 1
);
CREATE TABLE orders (
    id bigint AUTO_INCREMENT PRIMARY KEY, user_id bigint, amount decimal(12,2), status varchar(20),
    placed_at datetime(6) DEFAULT CURRENT_TIMESTAMP(6), note json
);
"""


# --------------------------------------------------------------------------------------------------- helpers


def execute(url: str, script: str, params=None) -> None:
    """Run ``script`` (several statements separated by ``;`` when there are no params) on the source, autocommit."""
    with pymysql.connect(**connect_kwargs(url), database=database_of(url), charset="utf8mb4", autocommit=True,
                         client_flag=CLIENT.MULTI_STATEMENTS) as conn, conn.cursor() as cur:
        cur.execute(script, params)
        while cur.nextset():
            pass


def create_shop(url: str, users: int = 100, orders: int = 200) -> None:
    execute(url, SHOP_DDL)
    execute(url, f"INSERT INTO users (id, email, name, balance) SELECT seq, concat('user', seq, '@example.com'), "
                 f"concat('User ', seq), seq * 1.25 FROM seq_1_to_{users}")
    execute(url, f"INSERT INTO orders (user_id, amount, status, note) SELECT 1 + seq % {users}, seq * 0.5, 'new', "
                 f"json_object('n', seq) FROM seq_1_to_{orders}")


def write_mysql_config(directory: Path, *, source_id: str, source_url: str, sink_url: str, tables: list[str],
                       batch_size: int = 50000, mode: str = "staged") -> Path:
    """connectors.yaml and cdc.yaml for a ``type: mysql`` source (``cdc_testing.write_config`` writes PostgreSQL
    sources only)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "connectors.yaml").write_text(textwrap.dedent(f"""\
        connectors:
          - id: source_db
            type: mysql
            connection_string: {source_url}
          - id: warehouse
            type: postgresql
            connection_string: {sink_url}
        """))
    (directory / "cdc.yaml").write_text(textwrap.dedent(f"""\
        sources:
          - id: {source_id}
            type: mysql
            connector: source_db
            tables: [{", ".join(tables)}]
            snapshot: initial
            batch_size: {batch_size}
            poll_interval: 0.2
            sink: warehouse
            target_schema: public
            delete_mode: hard
            mode: {mode}
        """))
    return directory


def assert_same(source_url: str, sink_url: str, table: str) -> int:
    """The sink table holds the source table's rows on the source's current columns, value for value."""
    columns = mysql_columns(source_url, database_of(source_url), table)
    source = sorted(mysql_rows(source_url, database_of(source_url), table, columns), key=repr)
    sink = sorted(pg_rows(sink_url, "public", table, columns), key=repr)
    if source != sink:
        missing = [r for r in source if r not in sink]
        extra = [r for r in sink if r not in source]
        raise AssertionError(f"{table}: {len(source)} source rows, {len(sink)} sink rows; missing in sink "
                             f"{missing[:3]}, extra in sink {extra[:3]}")
    return len(source)


def position(source_id: str) -> dict:
    from airflow_provider_cdc.positions import PositionStore

    stored = PositionStore().get_document(source_id)
    assert stored is not None, f"no position stored for {source_id}"
    return stored



@pytest.fixture
def shop(mariadb_database_factory, pg_database_factory, tmp_path):
    source_url, sink_url = mariadb_database_factory("e2e_src"), pg_database_factory()
    create_shop(source_url)
    return unique_id("maria"), source_url, sink_url, tmp_path / "config"


# -------------------------------------------------------------------------------------------- airflow dags test


@pytest.mark.parametrize("mode", ["staged", "fused"])
def test_airflow_dags_test_moves_snapshot_and_every_kind_of_change(shop, mode):
    source_id, source_url, sink_url, config_dir = shop
    write_mysql_config(config_dir, source_id=source_id, source_url=source_url, sink_url=sink_url,
                       tables=["users", "orders"], mode=mode)

    dags_test(source_id, config_dir)
    assert assert_same(source_url, sink_url, "users") == 100
    assert assert_same(source_url, sink_url, "orders") == 200
    stored = position(source_id)
    assert stored["batch_id"].startswith(f"{source_id}:") and "snapshot" not in stored

    execute(source_url, """
        INSERT INTO users (id, email, name, balance) VALUES (1001, 'new@example.com', 'New', 0.10);
        UPDATE users SET balance = balance + 0.01, name = 'Tab\tand\nnewline', active = 0 WHERE id <= 10;
        UPDATE users SET bio = repeat('0123456789abcdef', 8000) WHERE id = 20;
        UPDATE users SET email = 'changed@example.com' WHERE id = 20;
        DELETE FROM users WHERE id BETWEEN 50 AND 59;
        UPDATE users SET id = 5000 WHERE id = 60;
        TRUNCATE orders;
        INSERT INTO orders (user_id, amount, status, note) VALUES (1, 99.99, 'after truncate', '{"k": [1, 2]}');
        START TRANSACTION;
        INSERT INTO users (id, email, name, balance) SELECT 10000 + seq, concat('bulk', seq, '@example.com'),
            'Bulk', seq FROM seq_1_to_1000;
        UPDATE users SET balance = balance * 2 WHERE id > 10000 AND id <= 10500;
        COMMIT;
        ALTER TABLE users ADD COLUMN tier int NOT NULL DEFAULT 3;
        UPDATE users SET tier = 9 WHERE id % 7 = 0;
        INSERT INTO users (id, email, tier) VALUES (1002, 'tiered@example.com', 1);
    """)
    dags_test(source_id, config_dir)

    assert assert_same(source_url, sink_url, "users") == 100 + 1 - 10 + 1000 + 1
    assert assert_same(source_url, sink_url, "orders") == 1
    rows = ledger_rows(sink_url, source_id)
    assert_ledger_consistent(sink_url, source_id)
    assert len(rows) == 2, rows  # the snapshot's batch, then one batch with all the changes (one run each)
    stored = position(source_id)
    assert stored["seq"] == rows[-1][2] and stored["file"] and stored["pos"] > 0


# ----------------------------------------------------------------------------------------------- kill -9 tests

KILL_POINTS = [
    "capture:before-staging",
    "capture:after-staging",
    "load:after-first-merge",
    "load:after-ledger-insert",
    "load:before-commit",
    "load:after-commit",
    "commit:after-position",
    "commit:after-ack",
    "random",
]
CASES = 16  # each point once, then points drawn at random (seeded per case)
FLAVOURS = ["plain", "add_column", "big_transaction", "truncate"]

# kill_runner.py with the MySQL source's acknowledgement as the after-ack point (its own table names PgSource's).
CHILD = f"""
import sys
sys.path.insert(0, {str(KILL_RUNNER.parent)!r})
import kill_runner
from airflow_provider_cdc.connectors.mysql.source import MySqlSource
kill_runner.KILL_POINTS["commit:after-ack"] = lambda: kill_runner.after(MySqlSource, "acknowledge")
sys.argv = ["kill_runner.py", *sys.argv[1:]]
kill_runner.main()
"""


def random_changes(url: str, rng: random.Random, transactions: int) -> None:
    """Random inserts, updates, deletes (and rarely a truncate of orders) on the shop tables, in transactions."""
    with pymysql.connect(**connect_kwargs(url), database=database_of(url), charset="utf8mb4") as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT coalesce(max(id), 0) + 1 FROM users")
            next_user = cur.fetchone()[0]
            for _ in range(transactions):
                for _ in range(rng.randint(1, 30)):
                    kind = rng.random()
                    lo = rng.randint(1, max(1, next_user - 1))
                    if kind < 0.35:
                        cur.execute("INSERT INTO users (id, email, name, balance) VALUES (%s, %s, %s, %s)",
                                    (next_user, f"u{next_user}@example.com", f"User {next_user}",
                                     round(rng.random() * 1000, 2)))
                        cur.execute("INSERT INTO orders (user_id, amount, status) VALUES (%s, %s, 'new')",
                                    (next_user, round(rng.random() * 100, 2)))
                        next_user += 1
                    elif kind < 0.75:
                        cur.execute("UPDATE users SET balance = balance + 1, name = concat(name, '+') "
                                    "WHERE id BETWEEN %s AND %s", (lo, lo + rng.randint(0, 5)))
                        cur.execute("UPDATE orders SET status = 'paid' WHERE user_id = %s", (lo,))
                    elif kind < 0.98:
                        cur.execute("DELETE FROM users WHERE id BETWEEN %s AND %s", (lo, lo + rng.randint(0, 3)))
                        cur.execute("DELETE FROM orders WHERE user_id = %s", (lo,))
                    else:
                        conn.commit()
                        cur.execute("TRUNCATE orders")
                conn.commit()


def flavour_changes(url: str, flavour: str, rng: random.Random, step: int) -> None:
    if flavour == "add_column" and step == 1:
        execute(url, f"UPDATE users SET name = concat(name, '-') WHERE id % 5 = {rng.randint(0, 4)};"
                     "ALTER TABLE users ADD COLUMN tier int DEFAULT 3;"
                     "ALTER TABLE orders ADD COLUMN memo varchar(20) NOT NULL DEFAULT 'n';"
                     f"UPDATE users SET tier = 9 WHERE id % 3 = {rng.randint(0, 2)}")
    elif flavour == "add_column":
        execute(url, "UPDATE users SET tier = tier + 1 WHERE id % 4 = 0; UPDATE orders SET memo = 'paid' "
                     "WHERE status = 'paid'")
    elif flavour == "big_transaction":
        base = 100_000 * step
        execute(url, f"START TRANSACTION; INSERT INTO users (id, email, name, balance) SELECT {base} + seq, "
                     f"concat('big', seq), 'Big', seq FROM seq_1_to_1500; UPDATE users SET balance = balance + 1 "
                     f"WHERE id > {base} AND id <= {base + 300}; COMMIT")
    elif flavour == "truncate":
        execute(url, "TRUNCATE orders; INSERT INTO orders (user_id, amount, status) VALUES (1, 1, 'after')")


def run_child(config_dir: Path, source_id: str, point: str, rng: random.Random) -> int:
    command = [sys.executable, "-c", CHILD, str(config_dir), source_id]
    if point != "random":
        proc = subprocess.run([*command, point, "3"], capture_output=True, text=True, timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
        return proc.returncode
    child = subprocess.Popen([*command, "none", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(rng.uniform(1.5, 6.0))  # imports take ~1.5 s; then somewhere inside capture, load or commit
    child.send_signal(signal.SIGKILL)
    _, err = child.communicate(timeout=60)
    assert child.returncode in (0, -signal.SIGKILL), err[-3000:]
    return child.returncode


@pytest.mark.parametrize("case", range(CASES))
def test_sigkill_then_clean_run_converges_exactly_once(case, mariadb_database_factory, pg_database_factory,
                                                       tmp_path):
    rng = random.Random(f"mariadb-{case}")
    point = KILL_POINTS[case] if case < len(KILL_POINTS) else rng.choice(KILL_POINTS)
    flavour = FLAVOURS[case % len(FLAVOURS)]
    source_url, sink_url = mariadb_database_factory("kill_src"), pg_database_factory()
    create_shop(source_url, users=rng.randint(50, 400), orders=rng.randint(50, 600))
    source_id = unique_id("mkill")
    batch_size = 1000 if flavour == "big_transaction" else rng.choice([40, 150, 1000, 50000])
    config_dir = write_mysql_config(tmp_path / "config", source_id=source_id, source_url=source_url,
                                    sink_url=sink_url, tables=["users", "orders"], batch_size=batch_size)

    # Killed during the snapshot ...
    first = run_child(config_dir, source_id, point, rng)
    # ... and, after more changes, during streaming.
    random_changes(source_url, rng, transactions=rng.randint(3, 15))
    flavour_changes(source_url, flavour, rng, step=1)
    second = run_child(config_dir, source_id, point, rng)
    random_changes(source_url, rng, transactions=rng.randint(1, 5))
    flavour_changes(source_url, flavour, rng, step=2)

    from airflow_provider_cdc.hooks.cdc import CdcHook

    drain(CdcHook(source_id, str(config_dir)), "clean", max_runs=40)
    assert_same(source_url, sink_url, "users")
    assert_same(source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)
    if point != "random":
        assert -signal.SIGKILL in (first, second), f"kill point {point} was never reached"
