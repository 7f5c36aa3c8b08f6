"""The PostgreSQL connector factory: options, URI normalising and checks across sources (no server needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from airflow_provider_cdc.connectors import registry
from airflow_provider_cdc.connectors.base import Sink
from airflow_provider_cdc.connectors.postgres.factory import FACTORY, check_sources, normalize_uri
from airflow_provider_cdc.connectors.postgres.options import PgSourceOptions


def test_registry_finds_the_factory_and_its_capabilities():
    assert registry.factory("postgresql") is FACTORY
    assert FACTORY.capabilities.dialect == "postgresql" and FACTORY.capabilities.stores_other_exactly
    assert FACTORY.airflow_hook.classpath == "airflow.providers.postgres.hooks.postgres.PostgresHook"
    assert FACTORY.airflow_hook.conn_id_arg == "postgres_conn_id"


def test_options_validate_and_give_effective_names():
    options = PgSourceOptions()
    assert options.effective_slot_name("Shop") == "cdc_shop"
    assert options.effective_publication_name("Shop") == "cdc_Shop_pub"
    assert PgSourceOptions(slot_name="s1", publication_name="p").effective_slot_name("x") == "s1"
    for bad in ({"slot_name": "Bad-Slot"}, {"slot_name": "x" * 64}, {"slotname": "x"}, {"create_slot": "maybe"}):
        with pytest.raises(ValidationError):
            PgSourceOptions.model_validate(bad)


def test_normalize_uri_keeps_only_libpq_parameters():
    assert normalize_uri("postgres://u:p%40w@h:5432/db?sslmode=require&cursor=dict&iam=false") == (
        "postgresql://u:p%40w@h:5432/db?sslmode=require")
    assert normalize_uri("postgresql://h/db?application_name=a%20b") == "postgresql://h/db?application_name=a%20b"
    assert normalize_uri("postgresql://h/db") == "postgresql://h/db"


def source(id_: str, connection_string: str = "postgresql://h/db"):
    return SimpleNamespace(id=id_, connector=None, conn_id=None, connection_string=connection_string)


def test_sources_on_one_connection_need_distinct_slots_and_short_default_names():
    entries = [
        (0, source("shop"), PgSourceOptions()),
        (1, source("SHOP"), PgSourceOptions()),  # the same default slot, lowercased
        (2, source("shop", "postgresql://other/db"), PgSourceOptions()),  # another server: fine
        (3, source("b"), PgSourceOptions(slot_name="cdc_shop")),
        (4, source("x" * 60), PgSourceOptions()),
        (5, source("y" * 60), PgSourceOptions(slot_name="short")),
    ]
    problems = check_sources(entries)
    assert [(index, key) for index, key, _ in problems] == [
        (1, "options.slot_name"), (3, "options.slot_name"), (4, "options.slot_name")]
    assert "'cdc_shop' is also used by sources[0]" in problems[0][2]
    assert "longer than 63" in problems[2][2]


def test_sink_class_satisfies_the_protocol_statically():
    from airflow_provider_cdc.connectors.postgres.sink import PgSink

    assert all(hasattr(PgSink, name) for name in ("capabilities", "apply", "forget_source", "reset_table",
                                                  "held_tables", "release_table", "last_committed"))
    assert Sink is not None
