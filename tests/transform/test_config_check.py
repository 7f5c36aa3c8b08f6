"""``config check`` (and every DAG parse) compiles transformations.yaml in the sandbox: each problem names its file,
rule and key; a module of functions that cannot load is one problem, not a crash."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from airflow_provider_cdc.config import load_config
from airflow_provider_cdc.config.loader import ConfigError


def config_dir(tmp_path: Path, rules: str) -> Path:
    (tmp_path / "cdc.yaml").write_text(textwrap.dedent("""\
        sources:
          - id: s
            type: postgresql
            connection_string: postgresql://h/db
            tables: [users]
            sink: w
        """))
    (tmp_path / "connectors.yaml").write_text("connectors:\n  - {id: w, type: postgresql, connection_string: x}\n")
    (tmp_path / "transformations.yaml").write_text(textwrap.dedent(rules))
    return tmp_path


def test_bad_rules_are_config_problems_naming_rule_and_key(tmp_path):
    directory = config_dir(tmp_path, """\
        functions:
          modules: [airflow_provider_cdc.transform.examples]
        rules:
          - {rule_id: ok, rule_type: map, source_fields: [email], target_field: d,
              expression: "{{email_domain(email)}}" }
          - {rule_id: bad_syntax, rule_type: map, source_fields: [a], target_field: b, expression: "{{ a + }}"}
          - {rule_id: unknown_fn, rule_type: map, source_fields: [a], target_field: c, expression: "{{ nope(a) }}"}
          - {rule_id: escape, rule_type: map, source_fields: [a], target_field: e, expression: "{{ ''.__class__ }}"}
        """)
    with pytest.raises(ConfigError) as caught:
        load_config(directory)
    problems = [str(p) for p in caught.value.problems]
    assert any(p.startswith("transformations.yaml: rules[1]: rule 'bad_syntax', key expression: does not compile")
               for p in problems), problems
    assert any("rules[2]: rule 'unknown_fn'" in p and "unknown function 'nope'" in p for p in problems), problems
    assert any("rules[3]: rule 'escape'" in p and "refused by the sandbox" in p for p in problems), problems
    assert not any("rules[0]" in p for p in problems)


def test_good_rules_load_with_their_function_modules(tmp_path):
    directory = config_dir(tmp_path, """\
        functions:
          modules: [airflow_provider_cdc.transform.examples]
        rules:
          - {rule_id: ok, rule_type: map, source_fields: [email], target_field: d,
              expression: "{{email_domain(email)}}" }
        """)
    config = load_config(directory)
    assert config.functions.modules == ["airflow_provider_cdc.transform.examples"] and config.rules[0].rule_id == "ok"


def test_a_module_of_functions_that_cannot_load_is_one_problem(tmp_path):
    directory = config_dir(tmp_path, """\
        functions:
          modules: [no_such_module_anywhere]
        rules:
          - {rule_id: ok, rule_type: map, source_fields: [a], target_field: b, expression: "{{ a }}"}
        """)
    with pytest.raises(ConfigError, match=r"functions.modules: cannot load the functions"):
        load_config(directory)
