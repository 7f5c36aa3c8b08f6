"""``config check`` online: the fields rules read, checked against the table schemas the sink's registry knows."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from cdc_testing import unique_id
from contract.test_contract import MemoryPositions

from airflow_provider_cdc import pipeline
from airflow_provider_cdc.config import load_config
from airflow_provider_cdc.connectors.registry import make_sink, make_source
from airflow_provider_cdc.stages import build_stages
from config.test_check_cli import run, write

pytestmark = pytest.mark.timeout(300)

GOOD_RULE = ("rules:\n  - {rule_id: mask_email, rule_type: map, tables: [users], source_fields: [email], "
             "target_field: masked, expression: \"{{ email[:2] }}***\"}\n")


def _config(tmp_path: Path, source_url: str, sink_url: str, rules: str) -> tuple[Path, str]:
    source_id = unique_id("fields")
    directory = write(tmp_path / "cfg", {
        "connectors.yaml": f"""
            connectors:
              - id: warehouse
                type: postgresql
                connection_string: {sink_url}
        """,
        "cdc.yaml": f"""
            sources:
              - id: {source_id}
                type: postgresql
                connection_string: {source_url}
                tables: [users, orders]
                sink: warehouse
        """,
        "transformations.yaml": rules,
    })
    return directory, source_id


def _capture_once(directory: Path, source_id: str) -> None:
    config = load_config(directory)
    source_config = config.source(source_id)
    source = make_source(source_config, source_config.connection_string or "")
    sink = make_sink(config.connector("warehouse"), config.connector("warehouse").connection_string or "",
                     source_config)
    try:
        pipeline.run_fused(source, sink, MemoryPositions(), max_changes=1000,
                           stages=build_stages(source_config, config))
    finally:
        source.close()
        sink.close()


def test_rule_fields_are_checked_against_the_registered_schemas(tmp_path, pg_database_factory):
    source_url, sink_url = pg_database_factory("fields_src"), pg_database_factory("fields_sink")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, email text); INSERT INTO users VALUES (1, 'ab@x.io');"
                     "CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
    directory, source_id = _config(tmp_path, source_url, sink_url, GOOD_RULE)
    before = run("check", str(directory), cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    assert "not captured yet, checked at their first batch: users, orders" in before.stdout

    _capture_once(directory, source_id)
    good = run("check", str(directory), cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert f"source {source_id!r}: fields checked against 2 registered table schemas\n" in good.stdout
    assert "first batch" not in good.stdout

    (directory / "transformations.yaml").write_text(
        GOOD_RULE + "  - {rule_id: total_tax, rule_type: map, tables: [users], source_fields: [email], "
                    "target_field: t, expression: \"{{ emial | upper }}\"}\n"
                    "  - {rule_id: by_phone, rule_type: filter, tables: [users], source_fields: [phone], "
                    "expression: \"{{ phone }}\"}\n")
    bad = run("check", str(directory), cwd=tmp_path)
    assert bad.returncode == 1
    lines = bad.stderr.splitlines()
    assert any(line.startswith("transformations.yaml: rules[1]: rule 'total_tax'") and "'emial'" in line
               and "public.users" in line for line in lines), bad.stderr
    assert any(line.startswith("transformations.yaml: rules[2]: rule 'by_phone'") and "'phone'" in line
               and "source_fields" in line for line in lines), bad.stderr
    assert lines[-1] == "2 problems with the table schemas the sinks know"

    offline = run("check", "--offline", str(directory), cwd=tmp_path)
    assert offline.returncode == 0, offline.stderr


def test_a_sink_that_cannot_be_read_is_a_warning(tmp_path):
    directory, source_id = _config(tmp_path, "postgresql://postgres@127.0.0.1:1/nowhere",
                                   "postgresql://postgres:pw@127.0.0.1:1/nowhere", GOOD_RULE)
    result = run("check", str(directory), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"warning: source {source_id!r}: its sink 'warehouse' could not be read" in result.stdout
    assert ":pw@" not in result.stdout


def test_suite_columns_are_checked_against_the_registered_schemas_after_the_rules(tmp_path, pg_database_factory):
    source_url, sink_url = pg_database_factory("fields_src"), pg_database_factory("fields_sink")
    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, email text); INSERT INTO users VALUES (1, 'ab@x.io');"
                     "CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
    directory, source_id = _config(tmp_path, source_url, sink_url, GOOD_RULE)
    _capture_once(directory, source_id)
    (directory / "quality.yaml").write_text(
        "suites:\n"
        "  - id: users_checks\n"
        "    tables: [users]\n"
        "    rules:\n"
        "      - {type: not_null, column: masked}\n"  # the rule's target: there after the rules
        "      - {type: pattern, column: phone, pattern: '^[0-9]+$'}\n"
        "      - {type: range, column: id, min: 'ten'}\n")
    bad = run("check", str(directory), cwd=tmp_path)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = bad.stderr.splitlines()
    assert any(line.startswith("quality.yaml: suites[0]: suite 'users_checks' rules[1].column") and "'phone'" in line
               and "public.users" in line for line in lines), bad.stderr
    assert any("rules[2].min" in line for line in lines), bad.stderr
    assert not any("rules[0]" in line for line in lines), bad.stderr
    assert lines[-1] == "2 problems with the table schemas the sinks know"
