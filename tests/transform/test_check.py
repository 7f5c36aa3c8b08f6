"""Bad rules are reported before any row runs, each problem naming the rule, the key, the field (and the table)."""

from __future__ import annotations

import pytest

from airflow_provider_cdc.transform import RuleConfigError
from transform.util import USERS, rules, table_of


def one_problem(config, schema=USERS) -> str:
    ruleset = rules(config)
    problems = ruleset.check(schema)
    assert len(problems) == 1, problems
    return problems[0]


def test_a_jinja_syntax_error_names_rule_key_and_line():
    config = {"rule_id": "broken", "rule_type": "map", "target_field": "x", "expression": "{{ email.split('@' }}"}
    ruleset = rules(config)
    assert len(ruleset.problems()) == 1
    problem = ruleset.problems()[0]
    assert problem.startswith("rule 'broken', key expression: does not compile:") and "(line 1)" in problem
    expected = "rule 'broken', table public.users, key expression: does not compile"
    with pytest.raises(RuleConfigError, match=expected) as info:
        ruleset.apply(table_of(USERS, []), USERS)
    assert info.value.terminal and info.value.table == "public.users"


def test_an_unknown_field_names_rule_table_key_field_and_the_columns():
    problem = one_problem({"rule_id": "m", "rule_type": "map", "target_field": "x", "expression": "{{ emial }}"})
    assert problem == ("rule 'm', table public.users, key expression, field 'emial': unknown field (columns of "
                       "public.users: id, email, phone, price, tax, status)")


def test_an_unknown_source_field_names_its_position():
    problem = one_problem({"rule_id": "s", "rule_type": "aggregate", "source_fields": ["price", "taxes"],
                           "target_field": "t", "parameters": {"type": "sum"}})
    assert problem.startswith("rule 's', table public.users, key source_fields[1], field 'taxes': unknown source "
                              "field")


@pytest.mark.parametrize("expression", ["{{ shout(email) }}", "{{ email | shout }}"])
def test_an_unknown_function_is_named(expression):
    problems = rules({"rule_id": "f", "rule_type": "map", "target_field": "x", "expression": expression}).problems()
    assert len(problems) == 1 and problems[0].startswith("rule 'f', key expression: unknown function 'shout'")


@pytest.mark.parametrize(("config", "expected"), [
    ({"rule_type": "map", "target_field": "x", "expression": "{{ hash(email) }}"},
     "rule 'r', key parameters.salt: hash() needs a salt"),
    ({"rule_type": "map", "target_field": "x", "expression": "{{ 1 }}", "target_type": "money"},
     "rule 'r', key target_type: unknown type 'money'"),
    ({"rule_type": "map", "target_field": "x", "expression": "{{ 1 }}", "target_typ": "text"},
     "rule 'r', key target_typ: unknown key"),
    ({"rule_type": "map", "expression": "{{ 1 }}"}, "rule 'r', key target_field: a map needs target_field"),
    ({"rule_type": "map", "target_field": "x"}, "rule 'r', key expression: a map needs exactly one of"),
    ({"rule_type": "filter", "expression": "{{ true }}", "target_field": "x"},
     "rule 'r', key target_field: a filter writes no field"),
    ({"rule_type": "aggregate", "source_fields": ["price"], "target_field": "x", "parameters": {"type": "median"}},
     "rule 'r', key parameters.type: must be one of sum, avg, min, max, count (got 'median')"),
    ({"rule_type": "join", "target_field": "x"}, "rule 'r', key target_field: a join writes parameters.fields"),
    ({"rule_type": "filter", "expression": "  "}, "rule 'r', key expression: is empty"),
    ({"rule_type": "map", "target_field": "_cdc_op", "expression": "{{ 1 }}"},
     "rule 'r', key target_field, field '_cdc_op': fields starting with '_cdc_' are bookkeeping"),
])
def test_bad_shapes_are_reported(config, expected):
    problems = rules({"rule_id": "r", **config}).problems()
    assert any(p.startswith(expected) for p in problems), problems


def test_duplicate_rule_ids_are_reported():
    config = {"rule_id": "r", "rule_type": "filter", "expression": "{{ true }}"}
    assert rules(config, config).problems() == ["rule 'r', key rule_id: is defined twice; rule ids must be unique"]


@pytest.mark.parametrize(("config", "expected"), [
    ({"rule_type": "map", "rename_from": "nick", "target_field": "x"},
     "rule 'r', table public.users, key rename_from, field 'nick': no such column to rename"),
    ({"rule_type": "map", "rename_from": "email", "target_field": "phone"},
     "rule 'r', table public.users, key target_field, field 'phone': a column of that name exists already"),
    ({"rule_type": "filter", "expression": "{{ true }}", "drop_fields": ["id"]},
     "rule 'r', table public.users, key drop_fields[0], field 'id': is a key column"),
    ({"rule_type": "map", "target_field": "id", "expression": "{{ 1 }}"},
     "rule 'r', table public.users, key target_field, field 'id': is a key column"),
    ({"rule_type": "aggregate", "source_fields": ["price", "status"], "target_field": "t",
      "parameters": {"type": "sum"}},
     "rule 'r', table public.users, key source_fields: sum needs numbers; not numeric: status"),
    ({"rule_type": "map", "target_field": "x", "expression": "{{ mask(1) }}", "source_fields": ["mask"]},
     "rule 'r', table public.users, key source_fields[0], field 'mask': unknown source field"),
])
def test_table_problems_are_reported(config, expected):
    problems = rules({"rule_id": "r", **config}).check(USERS)
    assert any(p.startswith(expected) for p in problems), problems


def test_a_chain_is_checked_with_the_columns_each_rule_sees():
    ruleset = rules(
        {"rule_id": "total", "rule_type": "map", "target_field": "total", "expression": "{{ price + tax }}"},
        {"rule_id": "big", "rule_type": "filter", "expression": "{{ total > 100 }}"},
        {"rule_id": "sum", "rule_type": "aggregate", "source_fields": ["total", "price"], "target_field": "s",
         "parameters": {"type": "sum"}},
        {"rule_id": "ren", "rule_type": "map", "rename_from": "email", "target_field": "mail",
         "drop_fields": ["phone"]},
        {"rule_id": "late", "rule_type": "map", "target_field": "x", "expression": "{{ email ~ phone ~ mail }}"},
    )
    problems = ruleset.check(USERS)
    assert [p.split(":")[0] for p in problems] == [
        "rule 'late', table public.users, key expression, field 'email'",
        "rule 'late', table public.users, key expression, field 'phone'",
    ]
    orders = USERS.__class__("public", "orders", USERS.columns)
    assert ruleset.check(orders) == [p.replace("public.users", "public.orders") for p in problems]


def test_a_good_rule_set_has_no_problems():
    ruleset = rules({"rule_id": "m", "rule_type": "map", "target_field": "x", "expression": "{{ mask(email) }}"},
                    {"rule_id": "h", "rule_type": "map", "target_field": "y", "expression": "{{ email | hash }}",
                     "parameters": {"salt": "cdc_salt"}})
    assert ruleset.problems() == [] and ruleset.check(USERS) == []
