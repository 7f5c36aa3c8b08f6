from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from airflow_provider_cdc.config import (
    CdcConfig,
    ConnectorConfig,
    RuleConfig,
    SourceConfig,
    SuiteConfig,
    mask_url,
)

SECRET = "s3cr3t-pw"


def source(**overrides: object) -> SourceConfig:
    fields: dict[str, object] = {
        "id": "orders",
        "type": "postgresql",
        "connector": "postgres_main",
        "tables": ["users"],
        "sink": "warehouse",
    }
    fields.update(overrides)
    return SourceConfig.model_validate(fields)


def errors_of(exc: pytest.ExceptionInfo[ValidationError]) -> dict[tuple[object, ...], str]:
    return {tuple(e["loc"]): e["msg"] for e in exc.value.errors()}


# ------------------------------------------------------------------------------------------------ connectors


def test_connector_accepts_conn_id_or_connection_string() -> None:
    by_conn = ConnectorConfig(id="pg", type="postgresql", conn_id="postgres_default")
    by_url = ConnectorConfig(id="files", type="file", connection_string="s3://bucket/prefix")
    assert (by_conn.conn_id, by_conn.connection_string, by_conn.options) == ("postgres_default", None, {})
    assert by_url.connection_string == "s3://bucket/prefix"


@pytest.mark.parametrize(
    ("fields", "got"),
    [({}, "got none"), ({"conn_id": "a", "connection_string": "postgresql://h/db"}, "got conn_id, connection_string")],
)
def test_connector_needs_exactly_one_connection(fields: dict[str, str], got: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ConnectorConfig.model_validate({"id": "pg", "type": "postgresql", **fields})
    assert errors_of(exc) == {(): f"give exactly one of conn_id, connection_string ({got})"}


def test_connector_reports_one_of_together_with_field_errors() -> None:
    with pytest.raises(ValidationError) as exc:
        ConnectorConfig.model_validate({"id": "my-db", "type": "oracle"})
    assert set(errors_of(exc)) == {("id",), ("type",), ()}


@pytest.mark.parametrize("bad_id", ["my-db", "a b", "", "x.y"])
def test_connector_id_is_identifier_like(bad_id: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ConnectorConfig(id=bad_id, type="postgresql", conn_id="c")
    assert ("id",) in errors_of(exc)


def test_connector_forbids_unknown_keys() -> None:
    with pytest.raises(ValidationError) as exc:
        ConnectorConfig.model_validate({"id": "pg", "type": "postgresql", "conn_id": "c", "connid": "c"})
    assert errors_of(exc) == {("connid",): "Extra inputs are not permitted"}


# --------------------------------------------------------------------------------------------------- sources


def test_source_defaults_and_derived_names() -> None:
    src = source(id="Orders")
    assert src.dag_id == "cdc_Orders"
    assert (src.poll_interval, src.snapshot, src.batch_size, src.target_schema) == (1.0, "initial", 50000, "public")
    assert (src.delete_mode, src.schedule, src.mode, src.max_active_runs) == ("hard", "@continuous", "staged", 1)
    assert (src.heartbeat_interval, src.options) == (60.0, {})
    assert (src.staging_format, src.staging_retention_hours) == ("parquet", 24.0)
    assert src.transformations is None
    assert src.quality is None


@pytest.mark.parametrize("key", ["slot_name", "publication_name", "create_slot", "create_publication"])
def test_connector_specific_keys_are_not_source_keys(key: str) -> None:
    """They belong under ``options:``, where the connector's own model validates them (the loader's job)."""
    with pytest.raises(ValidationError) as exc:
        source(**{key: "x"})
    assert errors_of(exc) == {(key,): "Extra inputs are not permitted"}
    assert source(options={key: "x"}).options == {key: "x"}


def test_connector_types_come_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_cdc.connectors import registry

    with pytest.raises(ValidationError) as exc:
        source(type="oracle")
    known = list(registry.CONNECTOR_MODULES)
    expected = ", ".join(repr(k) for k in known[:-1]) + f" or {known[-1]!r}"
    assert errors_of(exc) == {("type",): f"Input should be {expected}"}

    monkeypatch.setitem(registry.CONNECTOR_MODULES, "oracle", ("oracle", "oracle"))
    assert source(type="oracle").type == "oracle"


def test_qualified_tables_uses_default_schema_and_splits_at_first_dot() -> None:
    src = source(type="mongodb", tables=["users", "public.orders", "shop.events.2024"])
    assert src.qualified_tables("app") == [("app", "users"), ("public", "orders"), ("shop", "events.2024")]
    # Names with spaces and quotes are names (EDGE_CASES: names that need quoting), not typos.
    assert source(tables=["my table", 'shop.we"ird coll']).qualified_tables("app") == [
        ("app", "my table"), ("shop", 'we"ird coll')]


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"tables": []}, ("tables",)),
        ({"tables": ["public."]}, ("tables", 0)),
        ({"tables": [" users"]}, ("tables", 0)),  # outer spaces are typos; inner ones are part of a name
        ({"tables": ["users", "users"]}, ("tables",)),
        ({"poll_interval": 0}, ("poll_interval",)),
        ({"batch_size": 0}, ("batch_size",)),
        ({"snapshot": "always"}, ("snapshot",)),
        ({"type": "ftp"}, ("type",)),
        ({"options": ["slot"]}, ("options",)),
        ({"delete_mode": "soft_ish"}, ("delete_mode",)),
        ({"mode": "fast"}, ("mode",)),
        ({"staging_format": "csv"}, ("staging_format",)),
        ({"heartbeat_interval": -1}, ("heartbeat_interval",)),
        ({"schedule": "every minute"}, ("schedule",)),
        ({"schedule": "* * * *"}, ("schedule",)),
        ({"max_active_runs": 2}, ("max_active_runs",)),
        ({"sink": None}, ("sink",)),
        ({"id": "orders!"}, ("id",)),
    ],
)
def test_source_rejects(fields: dict[str, object], loc: tuple[object, ...]) -> None:
    with pytest.raises(ValidationError) as exc:
        source(**fields)
    assert loc in errors_of(exc)


def test_source_needs_exactly_one_connection() -> None:
    with pytest.raises(ValidationError) as exc:
        source(conn_id="pg_default")
    assert errors_of(exc) == {(): "give exactly one of connection_string, connector, conn_id (got connector, conn_id)"}


def test_source_accepts_cron_schedule_with_several_active_runs() -> None:
    src = source(schedule="*/5 * * * *", max_active_runs=3)
    assert (src.schedule, src.max_active_runs) == ("*/5 * * * *", 3)
    assert source(schedule="@hourly").schedule == "@hourly"


# ------------------------------------------------------------------------------------------- rules, suites


def test_rule_keeps_extra_options_for_later_rule_types() -> None:
    rule = RuleConfig.model_validate(
        {"rule_id": "mask_email", "rule_type": "map", "source_fields": ["email"], "salt_env": "MASK_SALT"}
    )
    assert rule.enabled
    assert rule.tables is None
    assert rule.model_extra == {"salt_env": "MASK_SALT"}


def test_rule_type_is_checked() -> None:
    with pytest.raises(ValidationError) as exc:
        RuleConfig(rule_id="r", rule_type="pivot")
    assert ("rule_type",) in errors_of(exc)


def test_suite_rules_are_free_dicts_with_a_checked_policy() -> None:
    suite = SuiteConfig.model_validate(
        {"id": "users_checks", "rules": [{"type": "not_null", "column": "id", "policy": "fail"}, {"type": "unique"}]}
    )
    assert suite.rules[1] == {"type": "unique"}
    with pytest.raises(ValidationError) as exc:
        SuiteConfig.model_validate({"id": "s", "rules": [{"type": "range", "policy": "fail"}, {"policy": "wran"}]})
    assert errors_of(exc) == {("rules", 1): "Value error, policy 'wran' is not one of warn, quarantine, fail"}


# ------------------------------------------------------------------------------------------------ CdcConfig


def test_cdc_config_lookups() -> None:
    warehouse = ConnectorConfig(id="warehouse", type="postgresql", conn_id="wh")
    config = CdcConfig(directory=Path("/cfg"), connectors=[warehouse], sources=[source()])
    assert config.connector("warehouse") is warehouse
    assert config.source("orders").sink == "warehouse"
    with pytest.raises(KeyError, match="unknown connector 'nope'"):
        config.connector("nope")
    with pytest.raises(KeyError, match="unknown source 'nope'"):
        config.source("nope")


# --------------------------------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:pass@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user:p@ss/w0rd@host:5432/db", "postgresql://user:***@host:5432/db"),
        ("postgresql://user:pa?ss@host/db", "postgresql://user:***@host/db"),
        ("mysql://user:pw@h/db?init=x&email=a@b.c", "mysql://user:***@h/db?init=x&email=a@b.c"),
        (
            "mongodb+srv://app:pw@cluster0.example.net/?retryWrites=true",
            "mongodb+srv://app:***@cluster0.example.net/?retryWrites=true",
        ),
        ("mysql://user:pw@h/db?ssl_ca=/ca.pem&password=pw2", "mysql://user:***@h/db?ssl_ca=/ca.pem&password=***"),
        ("host=h port=5432 password=pw dbname=d", "host=h port=5432 password=*** dbname=d"),
        ("postgresql://host/db?sslpassword=pw&token=t", "postgresql://host/db?sslpassword=***&token=***"),
        ("mysql://root@host/db", "mysql://root@host/db"),
        ("postgresql://host:5432/db", "postgresql://host:5432/db"),
        ("s3://bucket/cdc/files", "s3://bucket/cdc/files"),
        ("/data/exports/a@b.csv", "/data/exports/a@b.csv"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_repr_and_str_mask_the_password() -> None:
    url = f"postgresql://user:{SECRET}@host/db"
    connector = ConnectorConfig(id="wh", type="postgresql", connection_string=url, options={"password": SECRET})
    src = source(connector=None, connection_string=url)
    config = CdcConfig(directory=Path("/cfg"), connectors=[connector], sources=[src])
    for text in (repr(connector), str(connector), repr(src), str(src), repr(config)):
        assert SECRET not in text
        assert "user:***@host/db" in text
    assert connector.connection_string == url  # only the display is masked


def test_validation_error_does_not_echo_the_password() -> None:
    with pytest.raises(ValidationError) as exc:
        ConnectorConfig(id="wh", type="postgresql", conn_id="x", connection_string=f"postgresql://u:{SECRET}@h/db")
    assert SECRET not in str(exc.value)


# ------------------------------------------------------------------------------------------- schema changes


def test_schema_policy_defaults_to_evolve_backward_without_schema_changes() -> None:
    policy = source().schema_policy()
    assert (policy.mode, policy.compatibility, dict(policy.tables)) == ("evolve", "BACKWARD", {})


def test_schema_policy_takes_the_sources_keys_then_the_global_ones() -> None:
    from airflow_provider_cdc.config.models import SchemaChangesDefaults

    src = source(tables=["users", "sales.orders"],
                 schema_changes={"compatibility": "full_transitive",
                                 "table_compatibility": {"users": "NONE", "sales.orders": "forward"}})
    policy = src.schema_policy(SchemaChangesDefaults(mode="lenient", compatibility="FORWARD"))
    assert policy.mode == "lenient"  # not set by the source: the global one
    assert policy.compatibility == "FULL_TRANSITIVE"  # the source's own, in the registry's spelling
    assert dict(policy.tables) == {"public.users": "NONE", "sales.orders": "FORWARD"}  # keys qualified like tables
    assert policy.level("public.users") == "NONE" and policy.level("public.other") == "FULL_TRANSITIVE"
    global_only = source().schema_policy(SchemaChangesDefaults(compatibility="FULL"))
    assert (global_only.mode, global_only.compatibility) == ("evolve", "FULL")


def test_cdc_config_gives_each_sources_effective_policy() -> None:
    from airflow_provider_cdc.config.models import SchemaChangesDefaults

    config = CdcConfig(directory=Path("/cfg"), sources=[source(schema_changes={"mode": "stop"})],
                       schema_changes=SchemaChangesDefaults(compatibility="NONE"))
    policy = config.schema_policy("orders")
    assert (policy.mode, policy.compatibility) == ("stop", "NONE")


@pytest.mark.parametrize(
    ("schema_changes", "loc", "message"),
    [
        ({"mode": "strict"}, ("schema_changes", "mode"), "Input should be 'evolve', 'lenient', 'ignore' or 'stop'"),
        ({"compatibility": "BACKWRD"}, ("schema_changes", "compatibility"),
         "Input should be 'BACKWARD', 'BACKWARD_TRANSITIVE', 'FORWARD', 'FORWARD_TRANSITIVE', 'FULL', "
         "'FULL_TRANSITIVE' or 'NONE'"),
        ({"table_compatibility": {"users": "SOMETIMES"}}, ("schema_changes", "table_compatibility", "users"),
         "Input should be 'BACKWARD', 'BACKWARD_TRANSITIVE', 'FORWARD', 'FORWARD_TRANSITIVE', 'FULL', "
         "'FULL_TRANSITIVE' or 'NONE'"),
        ({"table_compatibility": {"orders": "FULL"}}, ("schema_changes", "table_compatibility", "orders"),
         "public.orders is not one of this source's tables (public.users)"),
        ({"modes": "evolve"}, ("schema_changes", "modes"), "Extra inputs are not permitted"),
    ],
)
def test_schema_changes_rejects(schema_changes: dict[str, object], loc: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        source(schema_changes=schema_changes)
    assert errors_of(exc) == {loc: message}


def test_table_compatibility_names_each_table_once() -> None:
    with pytest.raises(ValidationError) as exc:
        source(tables=["users", "orders"],
               schema_changes={"table_compatibility": {"users": "FULL", "public.users": "NONE", "stock": "NONE"}})
    assert errors_of(exc) == {
        ("schema_changes", "table_compatibility", "public.users"): "the same table as 'users': give it once",
        ("schema_changes", "table_compatibility", "stock"):
            "public.stock is not one of this source's tables (public.users, public.orders)",
    }
