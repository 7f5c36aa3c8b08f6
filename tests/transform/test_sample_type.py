"""A map target's type when no row of the batch gives a value: the expression on a sample row types it.

In staged mode each task is a fresh process, so a batch of only deletes (or a schema change without rows) used to
make a non-vectorisable target text, and the first real value then changed its type, which the schema gate holds.
"""

from __future__ import annotations

import pytest

from airflow_provider_cdc.transform import TableResult
from transform.util import USERS, rules, table_of

ROW = {"id": "1", "email": "ab@example.com", "price": "2.00", "tax": "1.00", "status": "a"}


def _type_of(result: TableResult, name: str) -> str:
    return {c.name: c.logical_type for c in result.schema.columns}[name]


@pytest.mark.parametrize(("expression", "expected"), [
    ("{{ email | length }}", "integer"),
    ("{{ price if price > 0 else 0 }}", "decimal"),
    ("{{ [price, tax] | max }}", "decimal"),
    ("{{ {'masked': email[:2]} }}", "json"),
    ("{{ email.split('@')[0] }}", "text"),
])
def test_a_fresh_rule_set_types_the_target_alike_with_and_without_rows(expression: str, expected: str) -> None:
    rule = {"rule_id": "r", "rule_type": "map", "source_fields": [], "target_field": "t", "expression": expression}
    only_deletes = rules(rule).apply(table_of(USERS, [("d", {"id": "1"})]), USERS)
    with_rows = rules(rule).apply(table_of(USERS, [("c", ROW)]), USERS)
    assert _type_of(only_deletes, "t") == _type_of(with_rows, "t") == expected


def test_an_expression_failing_on_the_sample_falls_back_to_text_and_target_type_fixes_it() -> None:
    # split('@')[1] fails on the sample's word: no guess, so text (documented: declare target_type to be sure)
    guessed = {"rule_id": "r", "rule_type": "map", "source_fields": ["email"], "target_field": "t",
               "expression": "{{ email.split('@')[1] | length }}"}
    assert _type_of(rules(guessed).apply(table_of(USERS, [("d", {"id": "1"})]), USERS), "t") == "text"
    declared = {**guessed, "target_type": "integer"}
    assert _type_of(rules(declared).apply(table_of(USERS, [("d", {"id": "1"})]), USERS), "t") == "integer"
    assert _type_of(rules(guessed).apply(table_of(USERS, [("c", ROW)]), USERS), "t") == "integer"
