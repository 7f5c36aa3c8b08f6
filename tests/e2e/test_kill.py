"""Exactly-once under SIGKILL: a child process runs the stages and is killed at a stage boundary, inside the sink
transaction, or at a random moment; a clean run afterwards must make source and sink equal row for row, with no
batch twice in the ledger. The cases are randomised (changes, batch size, kill point) from a seed per case.

Besides the shop tables, each case has a flavour from EDGE_CASES.md: primary-key updates over TOAST values, an
ADD COLUMN (with DEFAULT) mid-stream, a table in a second schema ``s2``, or a partitioned table.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from cdc_testing import (
    assert_ledger_consistent,
    assert_same_rows,
    create_shop,
    drain,
    random_changes,
    unique_id,
    write_config,
)

RUNNER = Path(__file__).with_name("kill_runner.py")
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
CASES_PER_SERVER = 12  # x 2 servers = 24 randomised cases
FLAVOURS = ["plain", "toast_pk", "add_column", "schema_s2", "partitioned"]
BIG = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g)"  # 128,000 chars: toasted


def setup_flavour(url: str, flavour: str, rng: random.Random) -> list[str]:
    """Create the flavour's extra tables or storage; returns the extra entries for ``tables``."""
    with psycopg.connect(url, autocommit=True) as conn:
        if flavour == "toast_pk":
            conn.execute("ALTER TABLE users ALTER COLUMN bio SET STORAGE EXTERNAL")
            conn.execute(f"UPDATE users SET bio = {BIG} || id WHERE id % 7 = 0")
        elif flavour == "schema_s2":
            conn.execute("CREATE SCHEMA s2")
            conn.execute("CREATE TABLE s2.items (id int PRIMARY KEY, v text, n int)")
            conn.execute("INSERT INTO s2.items SELECT g, 'i' || g, g FROM generate_series(1, %s::int) g",
                         (rng.randint(20, 200),))
            return ["s2.items"]
        elif flavour == "partitioned":
            conn.execute("CREATE TABLE parts (id int, region int, v text, PRIMARY KEY (id, region)) "
                         "PARTITION BY LIST (region)")
            conn.execute("CREATE TABLE parts_0 PARTITION OF parts FOR VALUES IN (0)")
            conn.execute("CREATE TABLE parts_1 PARTITION OF parts FOR VALUES IN (1)")
            conn.execute("INSERT INTO parts SELECT g, g %% 2, 'p' || g FROM generate_series(1, %s::int) g",
                         (rng.randint(20, 200),))
            return ["parts"]
    return []


def flavour_changes(url: str, flavour: str, rng: random.Random, step: int) -> None:
    """The flavour's own changes, a few transactions of them (``step`` is 1 after the first child, 2 after the
    second)."""
    with psycopg.connect(url) as conn:
        if flavour == "toast_pk":
            for _ in range(rng.randint(1, 4)):
                ids = [r[0] for r in conn.execute("SELECT id FROM users WHERE bio IS NOT NULL ORDER BY random() "
                                                  "LIMIT 3").fetchall()]
                for key in ids:  # the key changes, the toasted bio does not
                    conn.execute("UPDATE users SET id = (SELECT max(id) + 1000 FROM users) WHERE id = %s", (key,))
                conn.execute(f"UPDATE users SET bio = {BIG} || id WHERE id = (SELECT min(id) FROM users "
                             "WHERE bio IS NULL)")
                conn.commit()
        elif flavour == "add_column" and step == 1:
            conn.execute("UPDATE users SET name = name || '-' WHERE id %% 5 = %s", (rng.randint(0, 4),))
            conn.execute("ALTER TABLE users ADD COLUMN tier int DEFAULT 3")
            conn.execute("ALTER TABLE orders ADD COLUMN note text NOT NULL DEFAULT 'n'")
            conn.execute("UPDATE users SET tier = 9 WHERE id %% 3 = %s", (rng.randint(0, 2),))
            conn.commit()
        elif flavour == "add_column":
            conn.execute("UPDATE users SET tier = tier + 1 WHERE id % 4 = 0")
            conn.execute("UPDATE orders SET note = 'paid' WHERE status = 'paid'")
            conn.commit()
        elif flavour == "schema_s2":
            for _ in range(rng.randint(1, 5)):
                top = conn.execute("SELECT coalesce(max(id), 0) FROM s2.items").fetchone()[0]
                conn.execute("INSERT INTO s2.items SELECT g, 'new' || g, g FROM generate_series(%s::int, %s::int) g",
                             (top + 1, top + rng.randint(1, 20)))
                conn.execute("UPDATE s2.items SET n = n + 1, v = v || '+' WHERE id %% 3 = %s", (rng.randint(0, 2),))
                conn.execute("DELETE FROM s2.items WHERE id %% 11 = %s", (rng.randint(0, 10),))
                conn.commit()
        elif flavour == "partitioned":
            for _ in range(rng.randint(1, 5)):
                top = conn.execute("SELECT coalesce(max(id), 0) FROM parts").fetchone()[0]
                conn.execute("INSERT INTO parts SELECT g, g %% 2, 'new' FROM generate_series(%s::int, %s::int) g",
                             (top + 1, top + rng.randint(1, 20)))
                # Rows move between partitions (a delete from one, an insert into the other).
                conn.execute("UPDATE parts SET region = 1 - region, v = v || '>' WHERE id %% 5 = %s",
                             (rng.randint(0, 4),))
                conn.execute("DELETE FROM parts WHERE id %% 13 = %s", (rng.randint(0, 12),))
                conn.commit()


def run_child(config_dir: Path, source_id: str, point: str, sink_db: str, rng: random.Random) -> int:
    env = {**os.environ, "CDC_KILL_SINK_DB": sink_db}
    if point != "random":
        proc = subprocess.run([sys.executable, str(RUNNER), str(config_dir), source_id, point, "3"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
        return proc.returncode
    proc = subprocess.Popen([sys.executable, str(RUNNER), str(config_dir), source_id, "none", "5"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(rng.uniform(1.5, 6.0))  # imports take ~1.5 s; then somewhere inside capture, load or commit
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
    return proc.returncode


@pytest.mark.parametrize("case", range(CASES_PER_SERVER))
def test_sigkill_then_clean_run_converges_exactly_once(case, pg_server, pg_database_factory, tmp_path):
    rng = random.Random(f"{pg_server.name}-{case}")
    point = KILL_POINTS[case % len(KILL_POINTS)] if case < len(KILL_POINTS) else rng.choice(KILL_POINTS)
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    flavour = FLAVOURS[case % len(FLAVOURS)]
    create_shop(source_url, users=rng.randint(50, 400), orders=rng.randint(50, 600))
    extra_tables = setup_flavour(source_url, flavour, rng)
    source_id = unique_id("kill")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users", "orders", *extra_tables], batch_size=rng.choice([40, 150, 1000, 50000]))
    sink_db = psycopg.conninfo.conninfo_to_dict(sink_url)["dbname"]

    # Killed during the snapshot ...
    first = run_child(config_dir, source_id, point, sink_db, rng)
    # ... and, after more changes, during streaming.
    random_changes(source_url, rng, transactions=rng.randint(3, 15))
    flavour_changes(source_url, flavour, rng, step=1)
    second = run_child(config_dir, source_id, point, sink_db, rng)
    random_changes(source_url, rng, transactions=rng.randint(1, 5))
    flavour_changes(source_url, flavour, rng, step=2)

    from airflow_provider_cdc.hooks.cdc import CdcHook

    drain(CdcHook(source_id, str(config_dir)), "clean", max_runs=40)
    assert assert_same_rows(source_url, sink_url, "users") >= 0
    assert_same_rows(source_url, sink_url, "orders")
    for table in extra_tables:  # s2.items lands as <target_schema>.items
        assert_same_rows(source_url, sink_url, table, sink_table=table.rpartition(".")[2])
    assert_ledger_consistent(sink_url, source_id)
    if point != "random":
        assert -signal.SIGKILL in (first, second), f"kill point {point} was never reached"


FUSED_LOOP_POINTS = ["ahead:after-capture", "load:after-first-merge", "load:before-commit", "load:after-commit",
                     "commit:after-position", "commit:after-ack"]


@pytest.mark.parametrize("point", FUSED_LOOP_POINTS)
def test_sigkill_in_a_fused_loop_that_captures_ahead_converges_exactly_once(point, pg_server, pg_database_factory,
                                                                            tmp_path):
    """A fused loop reads the next batch while the one before it loads: killed there, or anywhere in the load and
    commit of a batch while the next one is read, a clean run afterwards still makes the sink equal, once."""
    rng = random.Random(f"{pg_server.name}-fused-{point}")
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=200, orders=200)
    source_id = unique_id("killoop")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users", "orders"], batch_size=60, mode="fused")
    sink_db = psycopg.conninfo.conninfo_to_dict(sink_url)["dbname"]
    env = {**os.environ, "CDC_KILL_SINK_DB": sink_db}

    def fused_loop(kill_point: str, nth: int) -> int:
        proc = subprocess.run([sys.executable, str(RUNNER), "--fused-loop", str(config_dir), source_id, kill_point,
                               str(nth)], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
        return proc.returncode

    assert fused_loop("none", 1) == 0  # the snapshot (never read ahead)
    random_changes(source_url, rng, transactions=40, allow_truncate=False)  # a backlog of several batches
    # The third time the point is reached: batches before it committed, and the next one is being read ahead.
    assert fused_loop(point, 3) == -signal.SIGKILL, f"kill point {point} was never reached"
    random_changes(source_url, rng, transactions=5, allow_truncate=False)
    assert fused_loop("none", 1) == 0
    assert_same_rows(source_url, sink_url, "users")
    assert_same_rows(source_url, sink_url, "orders")
    assert_ledger_consistent(sink_url, source_id)
