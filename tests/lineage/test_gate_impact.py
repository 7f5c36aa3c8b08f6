"""The impact of a held table in the schema gate's message: what the table feeds, and how severe a change is."""

from __future__ import annotations

import pytest

from airflow_provider_cdc.lineage.gate_impact import HoldImpact, impact_in_hold_messages
from airflow_provider_cdc.schema import gate
from airflow_provider_cdc.schema.policy import SchemaPolicy
from lineage.util import PASSWORD, SCHEMAS, USER, WAREHOUSE, config


def test_a_held_tables_impact_names_its_sink_tables_rules_suites_and_dags():
    text = HoldImpact(config(), schemas=lambda: SCHEMAS)("shop", "public.users")
    assert text is not None
    assert text.startswith("impact: severity high (key columns affected: ")
    assert "masked_email is fed only through masking (mask_email)" in text
    assert "rules: active_only, enrich_country, mask_email, mask_pii, total" in text
    assert "quality suites: users_checks" in text
    assert text.endswith("DAGs: cdc_shop, cdc_warehouse_lake")
    assert "tables downstream: " in text and "warehouse.public.users" in text
    assert USER not in text and PASSWORD not in text


def test_without_schemas_the_impact_is_table_level():
    text = HoldImpact(config())("shop", "public.payments")
    assert text is not None and text.startswith("impact: severity medium (sink tables affected: ")
    assert f"{WAREHOUSE}.payments" in text and "DAGs: cdc_shop" in text


def test_the_gate_message_carries_the_impact_only_while_a_load_holds_it_open():
    policy = SchemaPolicy(mode="evolve")
    args = ("shop.public.users", "email type text -> integer", policy, "BACKWARD", "not compatible", "public.users",
            "shop")
    with impact_in_hold_messages(config(), schemas=lambda: SCHEMAS) as hook:
        assert hook in gate.IMPACT_HOOKS
        message = gate._hold_message(*args)
    assert "schema accept shop.public.users" in message
    assert ". impact: severity high" in message and "DAGs: cdc_shop, cdc_warehouse_lake" in message
    assert hook not in gate.IMPACT_HOOKS
    assert "impact:" not in gate._hold_message(*args)


def test_an_impact_that_cannot_be_told_leaves_the_hold_as_it_is(caplog: pytest.LogCaptureFixture):
    def broken() -> dict[str, str]:
        raise RuntimeError("no connection")

    assert HoldImpact(config(), urls=broken)("shop", "public.users") is None
    assert "the impact of held table public.users cannot be told (RuntimeError); the hold stands" in caplog.text
    assert HoldImpact(config())("shop", "public.nope") is None  # not a captured table: nothing to say
