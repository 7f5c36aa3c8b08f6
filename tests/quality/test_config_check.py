"""quality.yaml at config-check time: rule problems at DAG parse (no GX), expectation names and kwargs by
``config check`` (GX), each naming the file, the suite, the rule and the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from config.test_check_cli import run, write

from airflow_provider_cdc.config import ConfigError, load_config

CONNECTORS = """
    connectors:
      - id: warehouse
        type: postgresql
        connection_string: postgresql://postgres@127.0.0.1:1/nowhere
"""
SOURCES = """
    sources:
      - id: shop
        type: postgresql
        connection_string: postgresql://postgres@127.0.0.1:1/nowhere
        tables: [users]
        sink: warehouse
"""


def config_dir(tmp_path: Path, quality: str) -> Path:
    return write(tmp_path / "cfg", {"connectors.yaml": CONNECTORS, "cdc.yaml": SOURCES,
                                    "quality.yaml": textwrap.dedent(quality)})


def test_rule_problems_are_config_problems_at_parse_naming_suite_rule_and_key(tmp_path):
    directory = config_dir(tmp_path, """
        suites:
          - id: users_checks
            rules:
              - {type: rnage, column: price, min: 0}
              - {type: range, column: price, min: 10, max: 1}
              - {type: pattern, column: email, pattern: '(unclosed'}
              - {type: in_set, column: status}
              - expectation: expect_column_mean_to_be_between
                kwargs: {column: price, min_value: 0}
                policy: quarantine
        """)
    with pytest.raises(ConfigError) as caught:
        load_config(directory)
    lines = [str(problem) for problem in caught.value.problems]
    assert any(line.startswith("quality.yaml: suites[0]") and "rules[0].type" in line and "'rnage'" in line
               and "did you mean 'range'" in line for line in lines), lines
    assert any("rules[1]" in line and "min" in line for line in lines), lines
    assert any("rules[2].pattern" in line for line in lines), lines
    assert any("rules[3]" in line and "values" in line for line in lines), lines
    assert any("rules[4].policy" in line and "use policy warn or fail" in line for line in lines), lines


def test_a_bad_policy_is_refused_by_the_config_model(tmp_path):
    directory = config_dir(tmp_path, """
        suites:
          - id: users_checks
            rules:
              - {type: not_null, column: email, policy: sometimes}
        """)
    with pytest.raises(ConfigError) as caught:
        load_config(directory)
    assert [str(p) for p in caught.value.problems] == [
        "quality.yaml: suites[0].rules[0]: policy 'sometimes' is not one of warn, quarantine, fail"]


def test_config_check_asks_gx_about_expectations(tmp_path):
    directory = config_dir(tmp_path, """
        suites:
          - id: users_checks
            rules:
              - expectation: expect_column_values_to_be_betwen
                kwargs: {column: price, min_value: 0}
              - expectation: ExpectColumnValuesToBeInSet
                kwargs: {column: status, value_set: 3}
              - expectation: expect_column_values_to_not_be_null
                kwargs: {column: email}
        """)
    load_config(directory)  # at DAG parse: nothing wrong without GX
    result = run("check", "--offline", str(directory), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert any(line.startswith("quality.yaml: suites[0]: suite 'users_checks' rules[0].expectation")
               and "expect_column_values_to_be_between" in line for line in lines), result.stderr
    assert any("rules[1].kwargs" in line and "value_set" in line for line in lines), result.stderr
    assert not any("rules[2]" in line for line in lines), result.stderr
    assert lines[-1].startswith("2 problems in ")
