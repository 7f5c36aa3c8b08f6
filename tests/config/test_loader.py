from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest

from airflow_provider_cdc.config import (
    CdcConfig,
    ConfigError,
    ConfigProblem,
    load_config,
)
from airflow_provider_cdc.connectors import registry
from airflow_provider_cdc.errors import CdcError

SECRET = "s3cr3t-pw"

CONNECTORS = """
    connectors:
      - id: postgres_main
        type: postgresql
        conn_id: postgres_main
      - id: warehouse
        type: postgresql
        connection_string: postgresql://loader:pw@localhost/warehouse
"""
SOURCES = """
    sources:
      - id: postgres_main
        type: postgresql
        connector: postgres_main
        tables: [users, public.orders]
        sink: warehouse
"""
RULES = """
    rules:
      - rule_id: mask_email
        name: Mask Email Addresses
        rule_type: map
        tables: [users]
        source_fields: [email]
        target_field: masked_email
        expression: "{{ email.split('@')[0][:3] }}***@{{ email.split('@')[1] }}"
"""
SUITES = r"""
    suites:
      - id: users_checks
        tables: [users]
        rules:
          - type: pattern
            column: email
            pattern: '^[^@\s]+@[^@\s]+\.[a-z]+$'
            policy: quarantine
          - expectation: expect_column_values_to_be_in_set
            kwargs: {column: status, value_set: [active, inactive]}
            policy: quarantine
"""


def known_types() -> str:
    """The connector types of the registry as the loader lists them: ``'a', 'b' or 'c'``."""
    known = [repr(name) for name in registry.CONNECTOR_MODULES]
    return f"{', '.join(known[:-1])} or {known[-1]}"


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def problems_of(directory: Path) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as exc:
        load_config(directory)
    return exc.value.problems


def lines_of(directory: Path) -> list[str]:
    return [str(problem) for problem in problems_of(directory)]


@pytest.fixture
def full(tmp_path: Path) -> Path:
    """The four files of DESIGN.md section 2, valid."""
    sources = SOURCES + "        transformations: [mask_email]\n        quality: [users_checks]\n"
    return write(tmp_path, {"connectors.yaml": CONNECTORS, "cdc.yaml": sources, "transformations.yaml": RULES,
                            "quality.yaml": SUITES})


# ------------------------------------------------------------------------------------------------ valid


def test_minimal_config_loads_and_missing_optional_files_are_empty(tmp_path: Path) -> None:
    write(tmp_path, {"connectors.yaml": CONNECTORS, "cdc.yaml": SOURCES})
    config = load_config(tmp_path)
    assert isinstance(config, CdcConfig)
    assert config.directory == tmp_path
    assert [c.id for c in config.connectors] == ["postgres_main", "warehouse"]
    assert config.source("postgres_main").qualified_tables("public") == [("public", "users"), ("public", "orders")]
    assert config.connector("warehouse").connection_string == "postgresql://loader:pw@localhost/warehouse"
    assert (config.rules, config.suites) == ([], [])


def test_full_design_example_loads(full: Path) -> None:
    config = load_config(str(full))
    assert config.source("postgres_main").transformations == ["mask_email"]
    assert config.rules[0].expression == "{{ email.split('@')[0][:3] }}***@{{ email.split('@')[1] }}"
    assert [r["policy"] for r in config.suites[0].rules] == ["quarantine", "quarantine"]


def test_only_cdc_yaml_is_required(tmp_path: Path) -> None:
    write(tmp_path, {"cdc.yaml": "sources: []\n"})
    assert load_config(tmp_path).sources == []


def test_empty_lists_may_be_left_blank(tmp_path: Path) -> None:
    write(tmp_path, {"cdc.yaml": "sources: []\n", "connectors.yaml": "connectors:\n", "quality.yaml": ""})
    config = load_config(tmp_path)
    assert (config.connectors, config.suites) == ([], [])


def test_directory_defaults_to_env_then_include_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "from_env", {"cdc.yaml": "sources: []\n"})
    write(tmp_path / "include" / "config", {"connectors.yaml": CONNECTORS, "cdc.yaml": SOURCES})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CDC_CONFIG_DIR", str(tmp_path / "from_env"))
    assert load_config().directory == tmp_path / "from_env"
    monkeypatch.delenv("CDC_CONFIG_DIR")
    assert load_config().directory == Path("include/config")
    assert load_config().sources[0].id == "postgres_main"


# -------------------------------------------------------------------------------------------- interpolation


def test_env_interpolation_in_every_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAREHOUSE_URL", "postgresql://loader:pw@wh.internal/dwh")
    monkeypatch.setenv("PUB", "orders")
    monkeypatch.setenv("BATCH", "500")
    monkeypatch.setenv("EMPTY", "")
    monkeypatch.delenv("SCHEMA", raising=False)
    write(tmp_path, {
        "connectors.yaml": """
            connectors:
              - id: warehouse
                type: postgresql
                connection_string: ${WAREHOUSE_URL}
        """,
        "cdc.yaml": """
            sources:
              - id: orders
                type: postgresql
                connection_string: postgresql://u@${PGHOST:-localhost}:5432/app
                tables: ["${SCHEMA:-sales}.orders"]
                batch_size: ${BATCH}
                target_schema: ${EMPTY:-raw}
                sink: warehouse
                options: {publication_name: "${PUB}_pub", slot_name: "${SCHEMA:-sales}_slot"}
        """,
    })
    monkeypatch.delenv("PGHOST", raising=False)
    config = load_config(tmp_path)
    warehouse, orders = config.connector("warehouse"), config.source("orders")
    assert warehouse.connection_string == "postgresql://loader:pw@wh.internal/dwh"
    assert orders.options == {"publication_name": "orders_pub", "slot_name": "sales_slot"}
    assert orders.connection_string == "postgresql://u@localhost:5432/app"
    assert orders.tables == ["sales.orders"]
    assert orders.batch_size == 500
    assert orders.target_schema == "raw"  # default applies to an empty variable too, as in a shell


def test_literal_dollar_brace_is_escaped(tmp_path: Path) -> None:
    write(tmp_path, {
        "cdc.yaml": "sources: []\n",
        "transformations.yaml": "rules:\n  - {rule_id: r, rule_type: map, target_field: t, "
                                "expression: 'cost: $${price}'}\n",
    })
    assert load_config(tmp_path).rules[0].expression == "cost: ${price}"


def test_unset_variable_is_a_problem_at_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WAREHOUSE_URL", raising=False)
    monkeypatch.delenv("BATCH", raising=False)
    write(tmp_path, {
        "connectors.yaml": "connectors:\n"
        "  - {id: warehouse, type: postgresql, connection_string: '${WAREHOUSE_URL}'}\n",
        "cdc.yaml": SOURCES.replace("sink: warehouse", "sink: warehouse\n        batch_size: ${BATCH}")
        .replace("connector: postgres_main", "conn_id: pg"),
    })
    assert lines_of(tmp_path) == [
        "connectors.yaml: connectors[0].connection_string: environment variable WAREHOUSE_URL not set "
        "(or write ${VAR:-default})",
        # no second "should be a valid integer" problem for the unresolved ${BATCH}
        "cdc.yaml: sources[0].batch_size: environment variable BATCH not set (or write ${VAR:-default})",
    ]


def test_malformed_reference_is_a_problem(tmp_path: Path) -> None:
    write(tmp_path, {"connectors.yaml": CONNECTORS.replace("conn_id: postgres_main", "conn_id: ${PG-CONN}"),
                     "cdc.yaml": SOURCES})
    [problem] = problems_of(tmp_path)
    assert (problem.file, problem.key) == ("connectors.yaml", "connectors[0].conn_id")
    assert problem.reason.startswith("malformed ${...}")


# ------------------------------------------------------------------------------------------------ files


def test_missing_cdc_yaml(tmp_path: Path) -> None:
    write(tmp_path, {"connectors.yaml": CONNECTORS})
    assert lines_of(tmp_path) == [f"cdc.yaml: file not found in {tmp_path}"]


def test_missing_directory(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path / "nope")
    assert problem.file == "cdc.yaml"
    assert "does not exist" in problem.reason
    assert "CDC_CONFIG_DIR" in problem.reason


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, {
        "connectors.yaml": CONNECTORS,
        "cdc.yaml": f"""
            sources:
              - id: broken
                connection_string: postgresql://u:{SECRET}@h/db
                tables: [users
                sink: warehouse
        """,
    })
    [problem] = problems_of(tmp_path)
    assert (problem.file, problem.key) == ("cdc.yaml", "line 6")
    assert problem.reason.startswith("invalid YAML: ")
    assert SECRET not in str(problem)


def test_duplicate_yaml_key_is_reported_with_its_line(tmp_path: Path) -> None:
    write(tmp_path, {"connectors.yaml": CONNECTORS, "cdc.yaml": SOURCES + "        tables: [orders]\n"})
    assert lines_of(tmp_path) == ["cdc.yaml: line 8: invalid YAML: found duplicate key 'tables' (column 5)"]


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    write(tmp_path, {
        "connectors.yaml": CONNECTORS,
        "cdc.yaml": """
            sources:
              - &base {id: a, type: postgresql, connector: postgres_main, tables: [users], sink: warehouse}
              - <<: *base
                id: b
                tables: [orders]
        """,
    })
    assert [s.tables for s in load_config(tmp_path).sources] == [["users"], ["orders"]]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- id: x\n", "cdc.yaml: should be a mapping with the key 'sources'"),
        ("source: []\n", "cdc.yaml: source: unknown key; did you mean 'sources'?"),
        ("sources: {id: x}\n", "cdc.yaml: sources: should be a list of entries (each starting with '- ')"),
        ("sources:\n  - just-a-string\n", "cdc.yaml: sources[0]: should be a mapping of keys to values"),
    ],
)
def test_wrong_top_level_shape(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, {"cdc.yaml": text})
    assert expected in lines_of(tmp_path)


# ------------------------------------------------------------------------------------------- entries


def test_validation_errors_are_translated_to_keys(tmp_path: Path) -> None:
    write(tmp_path, {
        "connectors.yaml": CONNECTORS,
        "cdc.yaml": SOURCES + """
      - id: second
        type: postgresql
        connector: postgres_main
        conn_id: pg
        tables: [users]
        sink: warehouse
        batch_size: -5
        snapshot: sometimes
        batchsize: 10
""",
    })
    assert lines_of(tmp_path) == [
        "cdc.yaml: sources[1].snapshot: should be 'initial' or 'never' (got 'sometimes')",
        "cdc.yaml: sources[1].batch_size: should be greater than 0 (got -5)",
        "cdc.yaml: sources[1].batchsize: unknown key; did you mean 'batch_size'?",
        "cdc.yaml: sources[1]: give exactly one of connection_string, connector, conn_id (got connector, conn_id)",
    ]


def test_missing_required_keys(tmp_path: Path) -> None:
    write(tmp_path, {"cdc.yaml": "sources:\n  - {id: a, type: postgresql, conn_id: my}\n"})
    assert lines_of(tmp_path) == ["cdc.yaml: sources[0].tables: is required", "cdc.yaml: sources[0].sink: is required"]


def test_quality_policy_and_rule_type_are_checked(tmp_path: Path) -> None:
    write(tmp_path, {
        "cdc.yaml": "sources: []\n",
        "transformations.yaml": "rules:\n  - {rule_id: r, rule_type: pivot}\n",
        "quality.yaml": "suites:\n  - id: s\n    rules:\n      - {type: not_null, column: id, policy: wran}\n",
    })
    assert lines_of(tmp_path) == [
        "transformations.yaml: rules[0].rule_type: should be 'map', 'filter', 'aggregate' or 'join' (got 'pivot')",
        "quality.yaml: suites[0].rules[0]: policy 'wran' is not one of warn, quarantine, fail",
    ]


# ---------------------------------------------------------------------------------------------- cross-file


@pytest.mark.parametrize(
    ("file", "text", "key"),
    [
        ("connectors.yaml", CONNECTORS.replace("id: warehouse", "id: postgres_main"), "connectors[1].id"),
        ("cdc.yaml", SOURCES + SOURCES.replace("sources:", ""), "sources[1].id"),
        ("transformations.yaml", RULES + RULES.replace("rules:", ""), "rules[1].rule_id"),
        ("quality.yaml", SUITES + SUITES.replace("suites:", ""), "suites[1].id"),
    ],
)
def test_duplicate_ids(tmp_path: Path, file: str, text: str, key: str) -> None:
    write(tmp_path, {"connectors.yaml": CONNECTORS, "cdc.yaml": SOURCES, file: text})
    problems = [p for p in problems_of(tmp_path) if p.reason.startswith("duplicate id")]
    assert [(p.file, p.key) for p in problems] == [(file, key)]
    assert problems[0].reason.endswith(f"(also {key.split('[')[0]}[0])")


def test_unknown_sink_and_connector(tmp_path: Path) -> None:
    write(tmp_path, {
        "connectors.yaml": CONNECTORS,
        "cdc.yaml": SOURCES.replace("sink: warehouse", "sink: wharehouse").replace("connector: postgres_main",
                                                                                   "connector: nope"),
    })
    assert lines_of(tmp_path) == [
        "cdc.yaml: sources[0].sink: unknown connector 'wharehouse'; did you mean 'warehouse'?",
        "cdc.yaml: sources[0].connector: unknown connector 'nope'",
    ]


def test_unknown_connector_without_connectors_yaml(tmp_path: Path) -> None:
    write(tmp_path, {"cdc.yaml": SOURCES.replace("connector: postgres_main", "conn_id: pg")})
    assert lines_of(tmp_path) == [
        "cdc.yaml: sources[0].sink: unknown connector 'warehouse' (there is no connectors.yaml)"
    ]


def test_source_type_must_match_its_connector(tmp_path: Path) -> None:
    write(tmp_path, {"connectors.yaml": CONNECTORS, "cdc.yaml": SOURCES.replace("type: postgresql", "type: file")})
    assert lines_of(tmp_path)[0] == (
        "cdc.yaml: sources[0].type: 'file' does not match connector 'postgres_main' of type 'postgresql'"
    )


def test_unknown_rules_and_suites(tmp_path: Path) -> None:
    write(tmp_path, {
        "connectors.yaml": CONNECTORS,
        "cdc.yaml": SOURCES + "        transformations: [mask_email, mask_emial]\n        quality: [users_checks]\n",
        "transformations.yaml": RULES,
    })
    assert lines_of(tmp_path) == [
        "cdc.yaml: sources[0].transformations[1]: unknown rule 'mask_emial'; did you mean 'mask_email'?",
        "cdc.yaml: sources[0].quality[0]: unknown quality suite 'users_checks' (there is no quality.yaml)",
    ]


def test_reference_to_an_invalid_entry_is_not_reported_twice(tmp_path: Path) -> None:
    write(tmp_path, {
        "connectors.yaml": CONNECTORS.replace("type: postgresql\n        connection_string", "type: postgres\n"
                                                                                          "        connection_string"),
        "cdc.yaml": SOURCES,
    })
    assert lines_of(tmp_path) == [
        f"connectors.yaml: connectors[1].type: should be {known_types()} (got 'postgres')"
    ]


def test_references_of_an_invalid_source_are_still_checked(tmp_path: Path) -> None:
    write(tmp_path, {"connectors.yaml": CONNECTORS,
                     "cdc.yaml": SOURCES.replace("sink: warehouse", "sink: wharehouse\n        batch_size: 0")})
    assert [p.key for p in problems_of(tmp_path)] == ["sources[0].batch_size", "sources[0].sink"]


def test_no_reference_checks_against_an_unreadable_file(tmp_path: Path) -> None:
    write(tmp_path, {"connectors.yaml": "connectors: [\n", "cdc.yaml": SOURCES})
    assert [(p.file, p.key) for p in problems_of(tmp_path)] == [("connectors.yaml", "line 2")]


# ---------------------------------------------------------------------------------------------- all at once


def test_every_problem_is_reported_at_once_in_file_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET", raising=False)
    write(tmp_path, {
        "quality.yaml": "suites:\n  - {id: s, rules: [{policy: never}]}\n",
        "transformations.yaml": "rules: [\n",
        "cdc.yaml": SOURCES.replace("sink: warehouse", "sink: wharehouse\n        poll_interval: ${NOT_SET}"),
        "connectors.yaml": CONNECTORS + "      - {id: files, type: ftp, connection_string: /data}\n",
    })
    assert lines_of(tmp_path) == [
        f"connectors.yaml: connectors[2].type: should be {known_types()} (got 'ftp')",
        "cdc.yaml: sources[0].poll_interval: environment variable NOT_SET not set (or write ${VAR:-default})",
        "cdc.yaml: sources[0].sink: unknown connector 'wharehouse'; did you mean 'warehouse'?",
        "transformations.yaml: line 2: invalid YAML: expected the node content, but found '<stream end>' (column 1)",
        "quality.yaml: suites[0].rules[0]: policy 'never' is not one of warn, quarantine, fail",
    ]


def test_config_error_message_lists_problems_and_the_check_command(tmp_path: Path) -> None:
    write(tmp_path, {"connectors.yaml": CONNECTORS, "cdc.yaml": SOURCES.replace("sink: warehouse", "sink: nope")})
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    assert isinstance(exc.value, CdcError)
    assert str(exc.value).splitlines() == [
        f"1 problem in the CDC config in {tmp_path}:",
        "  cdc.yaml: sources[0].sink: unknown connector 'nope'",
        f"Fix them, then check again: python -m airflow_provider_cdc.config check {tmp_path}",
    ]
    copy = pickle.loads(pickle.dumps(exc.value))
    assert (copy.problems, str(copy)) == (exc.value.problems, str(exc.value))


def test_config_problem_str() -> None:
    assert str(ConfigProblem("cdc.yaml", "sources[1].sink", "unknown connector 'wharehouse'")) == (
        "cdc.yaml: sources[1].sink: unknown connector 'wharehouse'"
    )
    assert str(ConfigProblem("cdc.yaml", "", "file not found in /x")) == "cdc.yaml: file not found in /x"


# --------------------------------------------------------------------------------------------------- secrets


def test_problems_never_echo_a_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql://user:{SECRET}@host/db"
    monkeypatch.setenv("WAREHOUSE_URL", url)
    write(tmp_path, {
        "connectors.yaml": f"""
            connectors:
              - id: warehouse
                type: postgresql
                connection_string: ${{WAREHOUSE_URL}}
                conn_id: also_given
                options: {{password: {SECRET}, port: nope}}
                typo: 1
              - id: bad-id
                type: {url}
                connection_string: {url}
        """,
        "cdc.yaml": f"""
            sources:
              - id: s
                type: postgresql
                connection_string: {url}
                tables: [users]
                sink: warehouse
                snapshot: {url}
        """,
    })
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path)
    assert len(exc.value.problems) == 5
    assert SECRET not in str(exc.value)
    assert f"type: should be {known_types()} (got 'postgresql://user:***@host/db')" in str(exc.value)


def test_two_sources_loading_one_sink_table_is_a_problem(tmp_path: Path) -> None:
    other = (
        "      - id: crm\n"
        "        type: postgresql\n"
        "        connection_string: postgresql://crm@localhost/crm\n"
        "        tables: [sales.users, accounts]\n"
        "        sink: warehouse\n"
    )
    write(tmp_path, {"connectors.yaml": CONNECTORS, "cdc.yaml": SOURCES + other})
    assert lines_of(tmp_path) == [
        "cdc.yaml: sources[1].tables: sources 'postgres_main' (sources[0]) and 'crm' would both load table 'users' "
        "into schema 'public' of sink 'warehouse'; give one of them another target_schema"
    ]
    # Another target_schema keeps them apart.
    write(tmp_path, {"cdc.yaml": SOURCES + other + "        target_schema: crm\n"})
    assert [s.target_schema for s in load_config(tmp_path).sources] == ["public", "crm"]


def test_ledger_schema_is_optional(tmp_path: Path) -> None:
    write(tmp_path, {"connectors.yaml": CONNECTORS, "cdc.yaml": SOURCES})
    assert load_config(tmp_path).sources[0].ledger_schema is None
    write(tmp_path, {"cdc.yaml": SOURCES + "        ledger_schema: cdc_meta\n"})
    assert load_config(tmp_path).sources[0].ledger_schema == "cdc_meta"


# ------------------------------------------------------------------------------------------- schema changes


def test_schema_changes_global_default_and_per_source(tmp_path: Path) -> None:
    write(tmp_path, {"connectors.yaml": CONNECTORS, "cdc.yaml": SOURCES + """
        schema_changes:
          mode: lenient
          table_compatibility: {orders: NONE}
      - id: billing
        type: postgresql
        connector: postgres_main
        tables: [invoices]
        sink: warehouse
        target_schema: billing
    schema_changes:
      compatibility: FULL
"""})
    config = load_config(tmp_path)
    main, billing = config.schema_policy("postgres_main"), config.schema_policy("billing")
    assert (main.mode, main.compatibility, dict(main.tables)) == ("lenient", "FULL", {"public.orders": "NONE"})
    assert (billing.mode, billing.compatibility, dict(billing.tables)) == ("evolve", "FULL", {})


def test_schema_changes_problems_name_file_and_key(tmp_path: Path) -> None:
    write(tmp_path, {"connectors.yaml": CONNECTORS, "cdc.yaml": SOURCES + """
        schema_changes:
          mode: evolv
          table_compatibility: {stock: FULL}
    schema_changes:
      compatibility: sideways
      table_compatibility: {users: NONE}
    schema_change: {mode: stop}
"""})
    assert lines_of(tmp_path) == [
        "cdc.yaml: schema_change: unknown key; did you mean 'schema_changes'?",
        "cdc.yaml: schema_changes.compatibility: should be 'BACKWARD', 'BACKWARD_TRANSITIVE', 'FORWARD', "
        "'FORWARD_TRANSITIVE', 'FULL', 'FULL_TRANSITIVE' or 'NONE' (got 'sideways')",
        "cdc.yaml: schema_changes.table_compatibility: is set per source: put it under that source's schema_changes",
        "cdc.yaml: sources[0].schema_changes.mode: should be 'evolve', 'lenient', 'ignore' or 'stop' (got 'evolv')",
    ]
    # Once the mode is right, the table that is not the source's is reported too (after field checks pass).
    write(tmp_path, {"cdc.yaml": SOURCES + "        schema_changes: {table_compatibility: {stock: FULL}}\n"})
    assert lines_of(tmp_path) == [
        "cdc.yaml: sources[0].schema_changes.table_compatibility.stock: public.stock is not one of this source's "
        "tables (public.users, public.orders)",
    ]


def test_schema_changes_must_be_a_mapping(tmp_path: Path) -> None:
    write(tmp_path, {"connectors.yaml": CONNECTORS, "cdc.yaml": SOURCES + "    schema_changes: evolve\n"})
    assert lines_of(tmp_path) == ["cdc.yaml: schema_changes: should be a mapping of keys to values"]
