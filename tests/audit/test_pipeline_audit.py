"""The audit trail of a real DAG run: ``airflow dags test`` of a staged PostgreSQL → PostgreSQL pipeline with a rule
and a quality suite leaves every step of its batch in the sink's ``_cdc_audit``, and the Python API reads it."""

from __future__ import annotations

import textwrap

import psycopg
import pytest
from cdc_testing import dags_test, unique_id, write_config

from airflow_provider_cdc.audit import read_audit, record

pytestmark = [pytest.mark.timeout(900), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]

RULES = """\
rules:
  - rule_id: mask_email
    rule_type: map
    source_fields: [email]
    target_field: masked_email
    expression: "{{ email[:2] ~ '***' if email else none }}"
"""
QUALITY = textwrap.dedent("""\
    suites:
      - id: users_checks
        tables: [users]
        rules:
          - type: pattern
            column: email
            pattern: '^[^@\\s]+@[^@\\s]+\\.[a-z]+$'
            policy: quarantine
    """)


@pytest.mark.parametrize("mode", ["staged", "fused"])
def test_a_dag_run_leaves_every_step_of_its_batch_in_the_audit_trail(mode, pg_database_factory, tmp_path):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text);"
                     "INSERT INTO users VALUES (1, 'ann@example.com'), (2, 'not-an-email'), (3, 'bo@example.com')")
    source_id = unique_id("audit")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users"], mode=mode)
    (config_dir / "transformations.yaml").write_text(RULES)
    (config_dir / "quality.yaml").write_text(QUALITY)

    out = dags_test(source_id, config_dir)
    with psycopg.connect(sink_url) as conn:
        (batch_id,) = conn.execute("SELECT batch_id FROM public._cdc_ledger WHERE source_id = %s",
                                   (source_id,)).fetchone()
    entries = read_audit(config_dir, source_id, batch_id=batch_id)
    by_action = {entry.action: entry for entry in entries}
    assert {"batch_captured", "batch_transformed", "batch_validated", "batch_loaded",
            "batch_committed"} <= set(by_action), out[-4000:]
    assert entries[0].action == "batch_committed"  # newest first
    assert by_action["batch_captured"].details["changes"] == 3
    assert by_action["batch_validated"].details["quarantined"] == 1
    assert by_action["batch_transformed"].details["versions"]["rules"].keys() == {"mask_email"}
    assert by_action["batch_loaded"].details["rows_upserted"] == 2
    assert by_action["batch_loaded"].details["quarantined"] == 1
    assert {entry.actor for entry in entries} == {f"airflow:cdc_{source_id}"}
    assert len({entry.run_id for entry in entries}) == 1 and entries[0].run_id
    schema = [e for e in read_audit(config_dir, source_id, action="schema_registered")]
    assert [e.details["subject"] for e in schema] == [f"{source_id}.public.users"]
    # By the sink's id: the same entries (one source writes there), and no credential anywhere.
    assert read_audit(config_dir, "warehouse", batch_id=batch_id) == entries
    assert "@" not in repr([e.details for e in entries if e.action != "batch_validated"]).replace("@example", "")

    # An operation of the REST API or the UI: recorded with the Airflow user.
    entry = record(config_dir, source_id, "pipeline_stopped", actor="admin", details={"reason": "maintenance"})
    (stopped,) = read_audit(config_dir, source_id, action="pipeline_stopped")
    assert stopped == entry and stopped.actor == "admin"
    assert read_audit(config_dir, "warehouse", limit=1) == [stopped]

    # A re-snapshot forgets the ledger rows, not the trail; it is recorded with who ran it.
    from airflow_provider_cdc.hooks.cdc import CdcHook
    from airflow_provider_cdc.resnapshot import resnapshot

    resnapshot(CdcHook(source_id, str(config_dir)), actor="carol")
    (started,) = read_audit(config_dir, source_id, action="resnapshot_started")
    assert started.actor == "carol" and started.details["whole_source"] is True and started.details["steps"]
    assert read_audit(config_dir, source_id, batch_id=batch_id) == entries
