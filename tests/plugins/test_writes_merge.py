"""API-registered rules and suites merged with the YAML by the config loader (no server): the YAML stays primary,
a conflict is a problem at its key, the Variables are read only inside an Airflow process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from airflow.models import Variable

from airflow_provider_cdc.api.registered import QUALITY_VARIABLE, RULES_VARIABLE, Registered, read_registered
from airflow_provider_cdc.config import ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]

MASK = {"rule_id": "mask_email", "rule_type": "map", "tables": ["users"], "source_fields": ["email"],
        "target_field": "masked_email", "expression": "{{ email[:3] }}"}


def config_dir(tmp_path: Path, *, transformations: str = "", rules: str = "rules: []\n") -> Path:
    (tmp_path / "connectors.yaml").write_text(textwrap.dedent("""\
        connectors:
          - id: warehouse
            type: postgresql
            connection_string: postgresql://u@wh/dwh
        """))
    (tmp_path / "cdc.yaml").write_text(textwrap.dedent(f"""\
        sources:
          - id: shop
            type: postgresql
            connection_string: postgresql://u@src/shop
            tables: [users]
            sink: warehouse
        {transformations}"""))
    (tmp_path / "transformations.yaml").write_text(rules)
    (tmp_path / "quality.yaml").write_text(textwrap.dedent("""\
        suites:
          - id: users_checks
            tables: [users]
            rules:
              - type: not_null
                column: email
        """))
    return tmp_path


def registered(*rules: dict, suites: dict | None = None) -> Registered:
    out = Registered.empty()
    for rule in rules:
        out, _, _ = out.with_rule(rule, actor="test")
    for suite_id, (tables, suite_rules) in (suites or {}).items():
        for rule in suite_rules:
            out, _, _ = out.with_quality_rule(suite_id, rule, tables=tables, actor="test")
    return out


def test_an_api_rule_is_added_and_a_source_may_name_it(tmp_path):
    directory = config_dir(tmp_path, transformations="    transformations: [mask_email]\n")
    with pytest.raises(ConfigError, match=r"sources\[0\].transformations\[0\]: unknown rule 'mask_email'"):
        load_config(directory, registered=Registered.empty())
    config = load_config(directory, registered=registered(MASK))
    assert [rule.rule_id for rule in config.rules] == ["mask_email"]
    assert config.rules[0].expression == "{{ email[:3] }}"


def test_versions_are_kept_and_the_latest_merges(tmp_path):
    first, version, changed = Registered.empty().with_rule(MASK, actor="ann")
    assert (version, changed) == (1, True)
    same, version, changed = first.with_rule(dict(MASK), actor="bob")
    assert (version, changed) == (1, False) and same is first
    second, version, changed = first.with_rule({**MASK, "expression": "{{ email[:2] }}"}, actor="bob")
    assert (version, changed) == (2, True)
    assert [v["actor"] for v in second.rule_versions("mask_email")] == ["ann", "bob"]
    assert load_config(config_dir(tmp_path), registered=second).rules[0].expression == "{{ email[:2] }}"


def test_the_same_rule_in_yaml_and_api_is_kept_once(tmp_path):
    yaml_rule = textwrap.dedent("""\
        rules:
          - rule_id: mask_email
            rule_type: map
            tables: [users]
            source_fields: [email]
            target_field: masked_email
            expression: "{{ email[:3] }}"
        """)
    config = load_config(config_dir(tmp_path, rules=yaml_rule), registered=registered(MASK))
    assert [rule.rule_id for rule in config.rules] == ["mask_email"]


def test_a_rule_id_in_both_with_different_content_is_a_problem_at_the_yaml_key(tmp_path):
    yaml_rule = "rules:\n  - rule_id: mask_email\n    rule_type: filter\n    expression: \"{{ true }}\"\n"
    with pytest.raises(ConfigError) as caught:
        load_config(config_dir(tmp_path, rules=yaml_rule), registered=registered(MASK))
    (problem,) = caught.value.problems
    assert (problem.file, problem.key) == ("transformations.yaml", "rules[0].rule_id")
    assert "REST API" in problem.reason and "cdc.api.rules" in problem.reason and "version 1" in problem.reason


def test_a_broken_api_rule_is_reported_at_its_variable_key(tmp_path):
    broken = {**MASK, "rule_id": "broken", "expression": "{{ email "}
    with pytest.raises(ConfigError) as caught:
        load_config(config_dir(tmp_path), registered=registered(broken))
    (problem,) = caught.value.problems
    assert (problem.file, problem.key) == (f"Airflow Variable {RULES_VARIABLE}", "rules.broken")
    assert "does not compile" in problem.reason
    bad_type = Registered({"rules": {"x": {"versions": [{"version": 1, "rule": {"rule_type": "explode"}}]}}})
    with pytest.raises(ConfigError) as caught:
        load_config(config_dir(tmp_path), registered=bad_type)
    assert caught.value.problems[0].key == "rules.x.rule_type"


def test_api_quality_rules_join_the_yaml_suite_after_its_own_and_new_suites_are_added(tmp_path):
    extra = {"type": "pattern", "column": "email", "pattern": "@"}
    config = load_config(config_dir(tmp_path), registered=registered(suites={
        "users_checks": (None, [extra]), "orders_extra": (["orders"], [{"type": "not_null", "column": "id"}])}))
    suites = {suite.id: suite for suite in config.suites}
    assert suites["users_checks"].rules == [{"type": "not_null", "column": "email"}, extra]
    assert suites["users_checks"].tables == ["users"]
    assert suites["orders_extra"].tables == ["orders"]
    bad = registered(suites={"users_checks": (None, [{"type": "rnage", "column": "email"}])})
    with pytest.raises(ConfigError, match="unknown rule type 'rnage'"):
        load_config(config_dir(tmp_path), registered=bad)


def test_the_variables_are_read_inside_airflow(tmp_path):
    Variable.set(RULES_VARIABLE, registered(MASK).rules_doc, serialize_json=True)
    try:
        found = read_registered()
        assert [rule.rule_id for rule in found.rules] == ["mask_email"] and found.suites == []
        assert [rule.rule_id for rule in load_config(config_dir(tmp_path)).rules] == ["mask_email"]
    finally:
        Variable.delete(RULES_VARIABLE)
        Variable.delete(QUALITY_VARIABLE)
    assert read_registered().rules == []


def test_outside_airflow_the_yaml_alone_is_loaded_without_importing_airflow(tmp_path):
    directory = config_dir(tmp_path)
    code = ("import sys\nfrom airflow_provider_cdc.config import load_config\n"
            f"print(len(load_config({str(directory)!r}).rules), 'airflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                            capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["0", "False"] and result.stderr == ""


def test_a_store_over_a_state_it_did_not_check_is_a_conflict():
    from airflow_provider_cdc.api.registered import store
    from airflow_provider_cdc.api.writes import ConflictError

    base = read_registered()
    assert base.rules == []
    first = registered(MASK)
    second = registered({**MASK, "rule_id": "other"})
    try:
        store(first, base=base, rules=True)
        assert [rule.rule_id for rule in read_registered().rules] == ["mask_email"]
        with pytest.raises(ConflictError, match="changed by another request"):
            store(second, base=base, rules=True)  # checked against the state before the first store
        store(read_registered().with_rule({**MASK, "rule_id": "other"}, actor="t")[0], base=read_registered(),
              rules=True)
        assert [rule.rule_id for rule in read_registered().rules] == ["mask_email", "other"]
    finally:
        Variable.delete(RULES_VARIABLE)
