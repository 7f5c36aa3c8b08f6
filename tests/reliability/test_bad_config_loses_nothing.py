"""A config broken between two runs stops the pipeline with a clear error, and loses nothing.

The catalogue's config rows (malformed YAML, an unknown key with the nearest one suggested, an unknown or duplicate
id, a missing ``${ENV}``, a Jinja syntax error) each have a unit test in ``tests/config/test_loader.py`` and
``tests/transform/test_check.py``. Here they happen to a pipeline that is running: its changes made meanwhile wait at
the source. Each broken file fails the run at once (terminal) naming the file, the key and the reason, and moves
neither the position nor the sink; a rule that reads a field the table lacks quarantines every row with the rule and
the field named. Once the config is fixed (and the quarantined rows replayed), every change is in the sink exactly
once.
"""

from __future__ import annotations

import psycopg
import pytest
from cdc_testing import (
    assert_ledger_consistent,
    assert_same_rows,
    create_shop,
    drain,
    slot_lsn,
    staged_run,
    table_rows,
    unique_id,
    write_config,
)

from airflow_provider_cdc.__main__ import main
from airflow_provider_cdc.config import ConfigError
from airflow_provider_cdc.errors import is_terminal
from airflow_provider_cdc.positions import PositionStore

pytestmark = [pytest.mark.timeout(300), pytest.mark.parametrize("pg_server", ["pg15"], indirect=True)]

GOOD_RULE = """\
rules:
  - rule_id: mask_email
    rule_type: map
    tables: [users]
    source_fields: [email]
    target_field: masked_email
    expression: "{{ email[:2] ~ '***' }}"
"""

# (file, how to break it, what the error must name)
BREAKAGES = [
    ("cdc.yaml", lambda t: t.replace("    tables: [users, orders]", "    tables: [users, orders"),
     ["cdc.yaml: line", "invalid YAML"]),
    ("cdc.yaml", lambda t: t.replace("    batch_size:", "    batchsize:"),
     ["cdc.yaml: sources[0].batchsize: unknown key; did you mean 'batch_size'?"]),
    ("cdc.yaml", lambda t: t.replace("    sink: warehouse", "    sink: wharehouse"),
     ["cdc.yaml: sources[0].sink: unknown connector 'wharehouse'; did you mean 'warehouse'?"]),
    ("connectors.yaml", lambda t: t.replace("id: source_db", "id: warehouse"),
     ["connectors.yaml: connectors[1].id: duplicate id 'warehouse'"]),
    ("connectors.yaml", lambda t: t.replace("connection_string: postgresql", "connection_string: ${CDC_NOT_SET_X}"
                                            "postgresql", 1),
     ["connectors.yaml: connectors[0].connection_string: environment variable CDC_NOT_SET_X not set"]),
    ("transformations.yaml", lambda t: t.replace("{{ email[:2] ~ '***' }}", "{{ email[:2] ~ }}"),
     ["transformations.yaml", "rule 'mask_email', key expression"]),
]


def test_a_config_broken_between_runs_stops_clearly_and_loses_nothing(pg_database_factory, tmp_path, monkeypatch):
    from airflow_provider_cdc.hooks.cdc import CdcHook

    monkeypatch.setenv("CDC_STAGING_URL", f"file://{tmp_path}/staging")
    monkeypatch.delenv("CDC_NOT_SET_X", raising=False)
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=20, orders=30)
    source_id = unique_id("badcfg")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users", "orders"])
    (config_dir / "transformations.yaml").write_text(GOOD_RULE)
    drain(CdcHook(source_id, str(config_dir)), "first")
    with psycopg.connect(source_url, autocommit=True) as conn:  # changes that must survive the broken config
        conn.execute("INSERT INTO users (id, email, name) VALUES (100, 'new@example.com', 'New')")
        conn.execute("UPDATE orders SET status = 'paid' WHERE id <= 10")
        conn.execute("DELETE FROM users WHERE id = 3")
    position, slot = PositionStore().get_document(source_id), slot_lsn(source_url, f"cdc_{source_id}".lower())
    sink_before = table_rows(sink_url, "users")

    for file, breaks, named in BREAKAGES:
        good = (config_dir / file).read_text()
        (config_dir / file).write_text(breaks(good))
        with pytest.raises(ConfigError) as broken:
            staged_run(CdcHook(source_id, str(config_dir)), unique_id("broken"))
        for words in named:
            assert words in str(broken.value), str(broken.value)
        assert is_terminal(broken.value)
        assert PositionStore().get_document(source_id) == position
        (config_dir / file).write_text(good)
    assert slot_lsn(source_url, f"cdc_{source_id}".lower()) == slot and table_rows(sink_url, "users") == sink_before

    # A rule on a field the table lacks: the config loads (no table is known offline), every row it touches is
    # quarantined naming the rule and the field, the other table flows, and the position moves past the batch.
    (config_dir / "transformations.yaml").write_text(GOOD_RULE.replace("[email]", "[e_mail]")
                                                     .replace("email[:2]", "e_mail[:2]"))
    staged_run(CdcHook(source_id, str(config_dir)), unique_id("missing_field"))
    with psycopg.connect(sink_url) as conn:
        reasons = conn.execute("SELECT rule_id, field, reason FROM _cdc_quarantine").fetchall()
    assert reasons and all(rule == "mask_email" and field == "e_mail" for rule, field, _ in reasons), reasons
    assert all("e_mail" in reason for _, _, reason in reasons), reasons
    assert_same_rows(source_url, sink_url, "orders")

    # Fixed, and the quarantined rows replayed as the error's command says: source and sink are equal again.
    (config_dir / "transformations.yaml").write_text(GOOD_RULE)
    drain(CdcHook(source_id, str(config_dir)), "fixed")
    assert main(["quarantine", "replay", source_id, "--config-dir", str(config_dir), "--yes"]) == 0
    assert assert_same_rows(source_url, sink_url, "users") == 20
    assert assert_same_rows(source_url, sink_url, "orders") == 30
    assert_ledger_consistent(sink_url, source_id)
