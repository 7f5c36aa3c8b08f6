"""Exactly-once with quarantined rows under SIGKILL: a child process runs staged batches (capture, validate, load,
commit) whose users table always has rows that fail a quality rule, and is killed inside the sink transaction, after
it, after the position, or at a random moment. After a clean run the sink holds exactly the source rows that pass,
each refused change is in ``_cdc_quarantine`` exactly once, and no batch is twice in the ledger."""

from __future__ import annotations

import random
import signal
import textwrap

import psycopg
import pytest
from cdc_testing import (
    assert_ledger_consistent,
    assert_same_rows,
    create_shop,
    drain,
    random_changes,
    table_rows,
    unique_id,
    write_config,
)

from e2e.test_kill import run_child

pytestmark = pytest.mark.timeout(600)

KILL_POINTS = ["load:after-first-merge", "load:before-commit", "load:after-commit", "commit:after-position", "random"]

SUITES = """\
suites:
  - id: users_checks
    tables: [users]
    rules:
      - type: pattern
        column: email
        pattern: '@'
      - type: range
        column: balance
        min: 0
        policy: warn
"""


@pytest.mark.parametrize("case", range(len(KILL_POINTS)))
@pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)
def test_sigkill_with_quarantined_rows_converges_exactly_once(case, pg_server, pg_database_factory, tmp_path):
    rng = random.Random(f"quality-kill-{case}")
    point = KILL_POINTS[case]
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=rng.randint(50, 300), orders=rng.randint(50, 300))
    with psycopg.connect(source_url, autocommit=True) as conn:  # emails are never updated by random_changes
        conn.execute("UPDATE users SET email = 'bad' || id WHERE id %% %s = 0", (rng.randint(3, 7),))
    source_id = unique_id("qkill")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users", "orders"], batch_size=rng.choice([40, 150, 50000]))
    (config_dir / "quality.yaml").write_text(textwrap.dedent(SUITES))
    sink_db = psycopg.conninfo.conninfo_to_dict(sink_url)["dbname"]

    first = run_child(config_dir, source_id, point, sink_db, rng)
    random_changes(source_url, rng, transactions=rng.randint(3, 10))
    with psycopg.connect(source_url, autocommit=True) as conn:  # updates of refused rows: refused again
        conn.execute("UPDATE users SET balance = balance + 1 WHERE email NOT LIKE '%@%'")
    second = run_child(config_dir, source_id, point, sink_db, rng)

    from airflow_provider_cdc.hooks.cdc import CdcHook

    drain(CdcHook(source_id, str(config_dir)), "clean", max_runs=40)
    assert_same_rows(source_url, sink_url, "orders")
    passing = table_rows(source_url, "users", where="WHERE email LIKE '%@%'")
    with psycopg.connect(source_url) as conn:
        columns = [d.name for d in conn.execute("SELECT * FROM users LIMIT 0").description]
    assert table_rows(sink_url, "public.users", columns=columns) == passing
    with psycopg.connect(sink_url) as conn:
        refused = conn.execute("SELECT seq, row->>'id', row->>'email', stage, rule_id FROM public._cdc_quarantine "
                               "WHERE source_id = %s ORDER BY seq", (source_id,)).fetchall()
    seqs = [row[0] for row in refused]
    assert len(seqs) == len(set(seqs)), "a refused change is in the quarantine twice"
    assert refused and all(row[2].startswith("bad") and row[3:] == ("validate", "pattern_email") for row in refused)
    with psycopg.connect(source_url) as conn:
        bad_ids = {str(r[0]) for r in conn.execute("SELECT id FROM users WHERE email NOT LIKE '%@%'")}
    assert bad_ids <= {row[1] for row in refused}  # every refused row still at the source has its changes kept
    assert_ledger_consistent(sink_url, source_id)
    if point != "random":
        assert -signal.SIGKILL in (first, second), f"kill point {point} was never reached"
