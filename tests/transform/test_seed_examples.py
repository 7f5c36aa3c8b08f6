"""Every transformation example of the original spec gives exactly the expected values (as YAML users write them)."""

from __future__ import annotations

import decimal
import json

import pytest
import yaml

from airflow_provider_cdc.config.models import RuleConfig
from transform.util import USERS, col, column, data_rows, rules, schema_of, table_of

# The seed's rules, in the seed's YAML (ORIGINAL_SPEC.md, "Transformation Rules" and "Supported Transformations").
SEED_YAML = """
rules:
  - rule_id: mask_email
    name: Mask Email Addresses
    rule_type: map
    source_fields: [email]
    target_field: masked_email
    expression: "{{ email.split('@')[0][:3] }}***@{{ email.split('@')[1] }}"
  - rule_id: mask_pii
    name: Mask PII Data
    rule_type: map
    source_fields: [email, phone]
    target_field: masked_data
    expression: |
      {
        "email": "***@{{ email.split('@')[1] }}",
        "phone": "***-***-{{ phone[-4:] }}"
      }
  - rule_id: total
    rule_type: map
    source_fields: [price, tax]
    target_field: total
    expression: "{{ price + tax }}"
  - rule_id: active_only
    rule_type: filter
    source_fields: [status]
    expression: "{{ status == 'active' }}"
  - rule_id: amounts
    rule_type: aggregate
    tables: [payments]
    source_fields: [amount1, amount2]
    target_field: total
    parameters:
      type: sum  # sum, avg, min, max, count
"""


def seed_rule(rule_id: str) -> RuleConfig:
    for entry in yaml.safe_load(SEED_YAML)["rules"]:
        if entry["rule_id"] == rule_id:
            return RuleConfig.model_validate(entry)
    raise KeyError(rule_id)


JOHN = {"id": "1", "email": "john.doe@example.com", "phone": "555-123-4567", "price": "10.10", "tax": "0.20",
        "status": "active"}


@pytest.mark.parametrize("vectorise", [True, False])
def test_mask_email(vectorise):
    result = rules(seed_rule("mask_email"), vectorise=vectorise).apply(table_of(USERS, [("c", JOHN)]), USERS)
    assert column(result, "masked_email") == ["joh***@example.com"]
    assert column(result, "email") == ["john.doe@example.com"]  # the source field stays
    target = result.schema.column("masked_email")
    assert (target.logical_type, target.source_type, target.ordinal) == ("text", "text", None)
    assert result.columns == {"mask_email": [("email", "masked_email")]}
    assert result.lineage[0].masking is False and result.lineage[0].subtype == "TRANSFORMATION"


def test_mask_pii_is_a_json_object():
    result = rules(seed_rule("mask_pii")).apply(table_of(USERS, [("c", JOHN)]), USERS)
    text = column(result, "masked_data")[0]
    assert json.loads(text) == {"email": "***@example.com", "phone": "***-***-4567"}
    assert text == '{"email": "***@example.com", "phone": "***-***-4567"}'  # values.format_value's JSON form
    assert result.schema.column("masked_data").logical_type == "json"
    assert result.columns["mask_pii"] == [("email", "masked_data"), ("phone", "masked_data")]


@pytest.mark.parametrize("vectorise", [True, False])
def test_total_is_an_exact_decimal(vectorise):
    events = [
        ("c", dict(JOHN, price="10.10", tax="0.20")),
        ("c", dict(JOHN, id="2", price="0.10", tax="0.20")),  # 0.1 + 0.2: no float in sight
        ("c", dict(JOHN, id="3", price="9999999999.99", tax="0.01")),
        ("c", dict(JOHN, id="4", price="-5.5", tax="5.50")),
    ]
    result = rules(seed_rule("total"), vectorise=vectorise).apply(table_of(USERS, events), USERS)
    assert column(result, "total") == ["10.30", "0.30", "10000000000.00", "0.00"]
    assert [decimal.Decimal(v) for v in column(result, "total")] == [
        decimal.Decimal("10.30"), decimal.Decimal("0.30"), decimal.Decimal("10000000000.00"), decimal.Decimal(0)]
    total = result.schema.column("total")
    assert (total.logical_type, total.precision, total.scale, total.source_type) == ("decimal", 13, 2,
                                                                                      "decimal(13,2)")
    assert result.paths["total"] == ("vector" if vectorise else "row")


@pytest.mark.parametrize("vectorise", [True, False])
def test_status_filter_turns_inactive_rows_into_deletes(vectorise):
    events = [
        ("c", dict(JOHN, id="1", status="active")),
        ("u", dict(JOHN, id="2", status="inactive")),
        ("r", dict(JOHN, id="3", status="inactive")),
        ("u", dict(JOHN, id="4", status="active")),
    ]
    result = rules(seed_rule("active_only"), vectorise=vectorise).apply(table_of(USERS, events), USERS)
    rows = data_rows(result)
    assert [(r["_cdc_op"], r["id"]) for r in rows] == [("c", "1"), ("d", "2"), ("d", "3"), ("u", "4")]
    assert rows[1] == {"_cdc_op": "d", "id": "2", "email": None, "phone": None, "price": None, "tax": None,
                       "status": None}
    assert rows[0] == dict(JOHN, _cdc_op="c")
    assert result.counts["filtered"] == 2 and not result.failures
    assert result.schema == USERS  # a filter changes rows, not columns
    assert result.columns == {"active_only": [("status", "*")]}


def test_sum_aggregate_of_amount1_and_amount2():
    payments = schema_of(col("id", "integer", pk=True), col("amount1", "decimal", precision=10, scale=2),
                         col("amount2", "decimal", precision=10, scale=2), name="payments")
    events = [
        ("c", {"id": "1", "amount1": "100.25", "amount2": "50.50"}),
        ("c", {"id": "2", "amount1": "0.10", "amount2": "0.20"}),
        ("c", {"id": "3", "amount1": "7.00"}),  # NULLs are ignored
        ("c", {"id": "4"}),  # nothing to sum: NULL
        ("c", {"id": "5", "amount1": "99999999.99", "amount2": "99999999.99"}),
    ]
    ruleset = rules(seed_rule("amounts"))
    result = ruleset.apply(table_of(payments, events), payments)
    assert column(result, "total") == ["150.75", "0.30", "7.00", None, "199999999.98"]
    total = result.schema.column("total")
    assert (total.logical_type, total.precision, total.scale) == ("decimal", 11, 2)
    # Scoped to payments: the users table is left alone.
    assert ruleset.for_table("public.users") == []
    assert ruleset.apply(table_of(USERS, [("c", JOHN)]), USERS).schema == USERS


def test_the_seed_chain_together():
    ruleset = rules(*(seed_rule(r) for r in ("mask_email", "mask_pii", "total", "active_only")))
    events = [("c", JOHN), ("c", dict(JOHN, id="2", email="ann.lee@corp.io", status="inactive"))]
    result = ruleset.apply(table_of(USERS, events), USERS)
    rows = data_rows(result)
    assert rows[0]["masked_email"] == "joh***@example.com" and rows[0]["total"] == "10.30"
    assert rows[1]["_cdc_op"] == "d" and rows[1]["masked_email"] is None and rows[1]["id"] == "2"
    assert list(ruleset.versions()) == ["mask_email", "mask_pii", "total", "active_only"]
