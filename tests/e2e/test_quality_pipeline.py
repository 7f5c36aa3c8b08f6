"""Quality suites end to end through ``airflow dags test``, staged and fused, PostgreSQL into PostgreSQL, with real GX:
a batch holding every kind of violation loads its valid rows and its ``warn`` rows, quarantines exactly the rows
that break a ``quarantine`` rule (with their suite, rule and reason, in the batch's transaction), records the metrics
in the ledger row; after the rule is relaxed, ``quarantine replay`` loads the quarantined rows exactly once and never
over a newer change to the same key. A ``fail`` rule stops the run naming the rule, the count and sample values."""

from __future__ import annotations

import decimal
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
from cdc_testing import assert_ledger_consistent, dags_test, unique_id, write_config

pytestmark = [pytest.mark.timeout(900), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]

DDL = """
CREATE TABLE users (
    id bigint PRIMARY KEY, email text, price numeric(12,2), status text, code text, signup date
);
INSERT INTO users VALUES
    (1, 'ann@example.com', 10.00, 'active', 'AB12', '2024-01-05'),
    (2, 'not-an-email', 20.00, 'active', 'CD34', '2024-01-06'),         -- pattern: quarantined
    (3, 'bob@example.com', -5.00, 'active', 'EF56', '2024-01-07'),      -- range, warn: loads
    (4, 'cy@example.com', 30.00, 'deleted', 'GH78', '2024-01-08'),      -- in_set: quarantined
    (5, NULL, 40.00, 'inactive', 'IJ90', '2024-01-09'),                 -- not_null: quarantined
    (6, 'dee@example.com', 50.00, 'active', 'TOOLONGCODE', '2024-01-10'), -- length: quarantined
    (7, 'eve@example.com', 60.00, 'inactive', 'KL12', '1999-12-31'),    -- expectation (date range): quarantined
    (8, 'bad', 70.00, 'zombie', 'MN34', '2024-01-11');                  -- two rules at once: quarantined once
"""

RULES = """\
rules:
  - rule_id: mask_email
    rule_type: map
    source_fields: [email]
    target_field: masked_email
    expression: "{{ email[:2] ~ '***' if email else none }}"
"""


def quality(pattern: str = r"^[^@\s]+@[^@\s]+\.[a-z]+$") -> str:
    return textwrap.dedent(f"""\
        suites:
          - id: users_checks
            tables: [users]
            rules:
              - type: pattern
                column: email
                pattern: '{pattern}'
                policy: quarantine
              - type: range
                column: price
                min: 0
                policy: warn
              - type: in_set
                column: status
                values: [active, inactive]
              - type: not_null
                column: email
              - type: length
                column: code
                max: 4
              - expectation: expect_column_values_to_be_between
                kwargs: {{column: signup, min_value: "2000-01-01"}}
                policy: quarantine
              - type: not_null
                column: masked_email
                policy: warn
              - type: unique
                column: email
                against_sink: true
              - type: type
                column: code
                expected: text
        """)



def cli(config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CDC_CONFIG_DIR": str(config_dir)}
    return subprocess.run([sys.executable, "-m", "airflow_provider_cdc", *args], env=env, capture_output=True,
                          text=True, timeout=300)


REPLAY_DAG = """\
from airflow.sdk import DAG

from airflow_provider_cdc.operators.quarantine import CdcQuarantineReplayOperator

with DAG("replay_{source_id}", schedule=None):
    CdcQuarantineReplayOperator(task_id="replay", source_id="{source_id}", config_dir="{config_dir}")
"""


def replay_task(source_id: str, config_dir: Path, dags: Path) -> str:
    """The operator in a DAG file of the user's, run by ``airflow dags test``; its log."""
    dags.mkdir()
    (dags / "replay.py").write_text(REPLAY_DAG.format(source_id=source_id, config_dir=config_dir))
    return dags_test(source_id, config_dir, dag_id=f"replay_{source_id}", env={"AIRFLOW__CORE__DAGS_FOLDER": str(dags)})


def sink_ids(sink_url: str) -> dict[int, tuple]:
    with psycopg.connect(sink_url) as conn:
        return {r[0]: r[1:] for r in conn.execute("SELECT id, email, price, status, masked_email FROM public.users")}


def waiting(sink_url: str) -> list[tuple]:
    with psycopg.connect(sink_url) as conn:
        return conn.execute("SELECT (row->>'id')::int, stage, suite, rule_id, field, reason "
                            "FROM public._cdc_quarantine WHERE replayed_batch_id IS NULL "
                            "ORDER BY (row->>'id')::int").fetchall()


@pytest.mark.parametrize("mode", ["staged", "fused"])
def test_violations_are_quarantined_the_rest_loads_and_replay_loads_them_once(mode, pg_database_factory, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(DDL)
    source_id = unique_id("quality")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users"], mode=mode)
    (config_dir / "transformations.yaml").write_text(RULES)
    (config_dir / "quality.yaml").write_text(quality())

    out = dags_test(source_id, config_dir)
    assert sorted(sink_ids(sink_url)) == [1, 3], out[-6000:]  # the valid row, and the warn-only one (negative price)
    assert sink_ids(sink_url)[3] == ("bob@example.com", decimal.Decimal("-5.00"), "active", "bo***")
    found = waiting(sink_url)
    assert [(row[0], row[1], row[2]) for row in found] == [(i, "validate", "users_checks") for i in (2, 4, 5, 6, 7, 8)]
    by_id = {row[0]: row for row in found}
    assert by_id[2][3] == "pattern_email" and by_id[2][4] == "email" and "not-an-email" in by_id[2][5]
    assert by_id[4][3] == "in_set_status" and "deleted" in by_id[4][5]
    assert by_id[5][3] == "not_null_email"
    assert by_id[6][3] == "length_code" and "TOOLONGCODE" in by_id[6][5]
    assert by_id[7][4] == "signup" and "1999-12-31" in by_id[7][5]
    assert set(by_id[8][3].split(",")) == {"pattern_email", "in_set_status"}  # one row, both reasons
    assert "bad" in by_id[8][5] and "zombie" in by_id[8][5]
    assert "range_price (warn)" in out or "range_price" in out  # the warning is in the task log

    with psycopg.connect(sink_url) as conn:
        (versions,) = conn.execute("SELECT stage_versions FROM public._cdc_ledger WHERE source_id = %s",
                                   (source_id,)).fetchone()
    metrics = versions["validate"]["metrics"]["public.users"]
    # 8 judged; 6 failed a quarantine rule; 3 only failed a warn rule (5 failed both kinds: it counts as failed)
    assert (metrics["evaluated"], metrics["failed"], metrics["warned"], metrics["passed"]) == (8, 6, 1, 1)
    assert metrics["score"] == 0.125 and metrics["rules"]["users_checks.pattern_email"] == 2
    assert set(versions["validate"]["suites"]) == {"users_checks"}

    # A newer change to a quarantined key (2: fixed at the source) flows normally; 4 changes but stays invalid.
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("UPDATE users SET email = 'fixed@example.com', price = 21.00 WHERE id = 2")
        conn.execute("UPDATE users SET price = 31.00 WHERE id = 4")
        conn.execute("INSERT INTO users VALUES (9, 'ann@example.com', 1.00, 'active', 'OP56', '2024-02-01')")
    dags_test(source_id, config_dir)
    assert sink_ids(sink_url)[2] == ("fixed@example.com", decimal.Decimal("21.00"), "active", "fi***")
    assert 4 not in sink_ids(sink_url) and 9 not in sink_ids(sink_url)
    nine = [row for row in waiting(sink_url) if row[0] == 9]
    assert [row[3:5] for row in nine] == [("unique_email", "email")]
    assert "'ann@example.com' is in the sink already, at id=1" in nine[0][5]

    # The rules are relaxed; the replay loads what passes now, once, and never over the newer change of 2.
    (config_dir / "quality.yaml").write_text(textwrap.dedent("""\
        suites:
          - id: users_checks
            tables: [users]
            rules:
              - type: in_set
                column: status
                values: [active, inactive, deleted, zombie]
        """))
    if mode == "staged":  # the command ...
        replayed = cli(config_dir, "quarantine", "replay", source_id, "--yes")
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    else:  # ... and the operator, in a DAG of the user's, through dag.test()
        log = replay_task(source_id, config_dir, tmp_path / "dags")
        assert f"source {source_id}: 8 quarantined changes replayed as batch {source_id}:quarantine:" in log
        with psycopg.connect(sink_url) as conn:  # the audit trail names who replayed: the run's triggering user
            actors = conn.execute("SELECT actor FROM public._cdc_audit WHERE action = 'quarantine_replayed'").fetchall()
        assert actors and {a for (a,) in actors} == {"dag_test"}  # what `airflow dags test` names its user
    got = sink_ids(sink_url)
    assert sorted(got) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert got[2] == ("fixed@example.com", decimal.Decimal("21.00"), "active", "fi***")  # newer change kept
    assert got[4][1] == decimal.Decimal("31.00")  # the newer quarantined row of 4 wins over its older one
    assert got[8] == ("bad", decimal.Decimal("70.00"), "zombie", "ba***")
    assert waiting(sink_url) == []
    again = cli(config_dir, "quarantine", "replay", source_id, "--yes")
    assert again.returncode == 0 and "no quarantined change to replay" in again.stdout, again.stdout + again.stderr
    assert_ledger_consistent(sink_url, source_id)


def test_a_fail_rule_stops_the_run_naming_rule_count_and_samples(pg_database_factory, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute(DDL)
    source_id = unique_id("qfail")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users"], mode="fused")
    (config_dir / "quality.yaml").write_text(textwrap.dedent("""\
        suites:
          - id: strict
            rules:
              - type: range
                column: price
                min: 0
                max: 50
                policy: fail
        """))
    out = dags_test(source_id, config_dir, ok=False)
    assert out.rstrip().endswith("Run failed"), out[-2000:]
    assert "rule 'range_price': 3 changes failed" in out, out[-3000:]
    assert "60.0" in out and "-5.0" in out
    with psycopg.connect(sink_url) as conn:  # nothing was loaded: no sink table, no ledger
        assert conn.execute("SELECT to_regclass('public.users'), to_regclass('public._cdc_ledger')"
                            ).fetchone() == (None, None)
