"""quality.yaml rules compile to checks, and every bad rule is reported naming suite, rule index, key and reason."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from airflow_provider_cdc.quality import check_columns, check_expectations, check_rules, compile_rules
from quality.util import USERS, suite

P = "suite 'users_checks' rules[0]"


def one_problem(rule: dict) -> str:
    problems = check_rules(suite(rule))
    assert len(problems) == 1, problems
    return problems[0]


# --- compiling -------------------------------------------------------------------------------------------------


def test_each_kind_compiles_to_its_gx_expectation_and_kwargs():
    checks, problems = compile_rules(suite(
        {"type": "type", "column": "age", "expected": "integer"},
        {"type": "range", "column": "price", "min": 0, "max": 100, "strict_max": True},
        {"type": "pattern", "column": "email", "pattern": "^.+@.+$"},
        {"type": "not_null", "column": "email"},
        {"type": "unique", "column": "id"},
        {"type": "unique", "columns": ["email", "name"], "against_sink": True},
        {"type": "in_set", "column": "status", "values": ["active", "inactive"]},
        {"type": "length", "column": "name", "min": 2},
        {"expectation": "ExpectTableRowCountToBeBetween", "kwargs": {"min_value": 1}, "policy": "warn"},
    ))
    assert problems == []
    assert [(c.rule_id, c.expectation, dict(c.kwargs), c.columns, c.per_row) for c in checks] == [
        ("type_age", "expect_column_values_to_be_null", {"column": "age"}, ("age",), True),
        ("range_price", "expect_column_values_to_be_between",
         {"column": "price", "min_value": 0, "max_value": 100, "strict_max": True}, ("price",), True),
        ("pattern_email", "expect_column_values_to_match_regex", {"column": "email", "regex": "^.+@.+$"},
         ("email",), True),
        ("not_null_email", "expect_column_values_to_not_be_null", {"column": "email"}, ("email",), True),
        ("unique_id", "expect_column_values_to_be_unique", {"column": "id"}, ("id",), True),
        ("unique_email_name", "expect_compound_columns_to_be_unique", {"column_list": ["email", "name"]},
         ("email", "name"), True),
        ("in_set_status", "expect_column_values_to_be_in_set",
         {"column": "status", "value_set": ["active", "inactive"]}, ("status",), True),
        ("length_name", "expect_column_value_lengths_to_be_between", {"column": "name", "min_value": 2,
                                                                     "max_value": None}, ("name",), True),
        ("expect_table_row_count_to_be_between", "expect_table_row_count_to_be_between", {"min_value": 1}, (),
         False),
    ]
    assert [c.against_sink for c in checks] == [False] * 5 + [True] + [False] * 3
    assert [c.expected_type for c in checks][0] == "integer"
    assert [c.policy for c in checks] == ["quarantine"] * 8 + ["warn"]
    assert [c.index for c in checks] == list(range(9))


def test_descriptions_say_what_each_rule_expects():
    checks, _ = compile_rules(suite(
        {"type": "type", "column": "age", "data_type": "date"},
        {"type": "range", "column": "price", "min": 0, "inclusive": False, "max": 10},
        {"type": "range", "column": "price", "min": dt.date(2024, 1, 1)},
        {"type": "pattern", "column": "email", "pattern": r"^\S+$"},
        {"type": "in_set", "column": "status", "values": ["a", "b"]},
        {"type": "length", "column": "name", "max": 5},
        {"type": "not_null", "column": "email", "description": "every user has an email"},
    ))
    assert [c.description for c in checks] == [
        "age is (or converts to) date", "price in (0, 10)", "price in >= 2024-01-01", r"email matches '^\S+$'",
        "status is one of 'a', 'b'", "name has at most 5 characters", "every user has an email"]


def test_inclusive_false_makes_both_bounds_strict():
    checks, _ = compile_rules(suite({"type": "range", "column": "price", "min": 0, "max": 1, "inclusive": False}))
    assert checks[0].kwargs["strict_min"] is True and checks[0].kwargs["strict_max"] is True


def test_default_ids_are_made_unique_in_the_suite_and_explicit_ids_kept():
    checks, problems = compile_rules(suite(
        {"type": "not_null", "column": "email"},
        {"type": "not_null", "column": "email", "policy": "warn"},
        {"type": "not_null", "column": "email", "id": "not_null_email_3"},
        {"type": "not_null", "column": "email"},
    ))
    assert problems == []
    assert [c.rule_id for c in checks] == ["not_null_email", "not_null_email_2", "not_null_email_3",
                                           "not_null_email_4"]


def test_mostly_goes_to_the_expectation():
    checks, _ = compile_rules(suite({"type": "pattern", "column": "email", "pattern": "@", "mostly": 0.9}))
    assert checks[0].kwargs["mostly"] == 0.9


def test_expectation_names_are_taken_in_snake_case_or_as_class_names():
    checks, problems = compile_rules(suite(
        {"expectation": "expect_column_values_to_be_in_set", "kwargs": {"column": "status", "value_set": ["a"]}},
        {"expectation": "ExpectColumnValuesToBeInSet", "kwargs": {"column": "status", "value_set": ["a"]}},
        {"type": "expectation", "expectation": "ExpectColumnKLDivergenceToBeLessThan",
         "kwargs": {"column": "price"}, "policy": "fail"},
        {"expectation": "expect_column_pair_values_to_be_equal", "kwargs": {"column_A": "email", "column_B": "name"}},
    ))
    assert problems == []
    assert [(c.expectation, c.columns, c.per_row) for c in checks] == [
        ("expect_column_values_to_be_in_set", ("status",), True),
        ("expect_column_values_to_be_in_set", ("status",), True),
        ("expect_column_kl_divergence_to_be_less_than", ("price",), False),
        ("expect_column_pair_values_to_be_equal", ("email", "name"), True),
    ]
    assert [c.rule_id for c in checks][:2] == ["expect_column_values_to_be_in_set_status",
                                               "expect_column_values_to_be_in_set_status_2"]


def test_compiling_rules_does_not_import_gx_or_pandas():
    code = ("import sys\n"
            "from airflow_provider_cdc.quality import check_rules, QualitySuites\n"
            "from airflow_provider_cdc.config.models import SuiteConfig\n"
            "s = SuiteConfig(id='s', rules=[{'expectation': 'expect_column_values_to_be_in_set', "
            "'kwargs': {'column': 'a', 'value_set': [1]}}])\n"
            "assert check_rules(s) == []\n"
            "QualitySuites.from_config([s]).versions()\n"
            "print(sorted(m for m in ('great_expectations', 'pandas') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- problems without GX ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "expected"), [
    ({"type": "rnage", "column": "price", "min": 0},
     f"{P}.type: unknown rule type 'rnage' (known: type, range, pattern, not_null, unique, in_set, length, "
     "expectation; did you mean 'range'?)"),
    ({"column": "price"},
     f"{P}: give the rule's type: (type, range, pattern, not_null, unique, in_set or length) or expectation: <a GX "
     "expectation name>"),
    ({"type": "pattern", "column": "email", "patern": "^x"},
     f"{P}.patern: unknown key for a pattern rule; did you mean 'pattern'?"),
    ({"type": "not_null", "column": "email", "values": [1]},
     f"{P}.values: unknown key for a not_null rule (allowed: type, column, id, policy, mostly, description)"),
    ({"type": "pattern", "pattern": "^x"},
     f"{P}.column: is required (a pattern rule needs column and pattern)"),
    ({"type": "pattern", "column": "email", "pattern": "([a-z"},
     f"{P}.pattern: bad regex '([a-z': unterminated character set at position 1"),
    ({"type": "range", "column": "price", "min": 10, "max": 1}, f"{P}.min: min 10 is greater than max 1"),
    ({"type": "range", "column": "price", "min": "10", "max": 9.5}, f"{P}.min: min '10' is greater than max 9.5"),
    ({"type": "range", "column": "created", "min": dt.date(2024, 2, 1), "max": dt.date(2024, 1, 1)},
     f"{P}.min: min datetime.date(2024, 2, 1) is greater than max datetime.date(2024, 1, 1)"),
    ({"type": "range", "column": "price", "min": 1, "max": 1, "strict_min": True},
     f"{P}.min: min and max are both 1 and a bound is strict: no value can pass"),
    ({"type": "range", "column": "price"}, f"{P}.min: give min, max or both"),
    ({"type": "range", "column": "price", "max": [1]}, f"{P}.max: [1] should be a number, a date, a time or a string"),
    ({"type": "range", "column": "price", "min": 0, "inclusive": False, "strict_max": True},
     f"{P}.inclusive: give inclusive (for both bounds) or strict_min/strict_max, not both"),
    ({"type": "range", "column": "price", "min": 0, "strict_min": "yes"},
     f"{P}.strict_min: 'yes' should be true or false"),
    ({"type": "length", "column": "name", "min": 5, "max": 2}, f"{P}.min: min 5 is greater than max 2"),
    ({"type": "length", "column": "name", "min": -1},
     f"{P}.min: -1 should be a whole number of characters (0 or more)"),
    ({"type": "in_set", "column": "status", "values": []}, f"{P}.values: [] should be a non-empty list of values"),
    ({"type": "in_set", "column": "status", "values": ["a", None]},
     f"{P}.values: None is not a value to compare with (NULL always passes in_set: use not_null to refuse it)"),
    ({"type": "type", "column": "age", "expected": "integr"},
     f"{P}.expected: unknown logical type 'integr' (known: integer, decimal, float, boolean, text, timestamptz, "
     "timestamp, date, time, json, binary, uuid, other; did you mean 'integer'?)"),
    ({"type": "type", "column": "age"}, f"{P}.expected: give expected: <logical type>"),
    ({"type": "type", "column": "age", "expected": "date", "data_type": "date"},
     f"{P}.expected: give expected or data_type (the same key), not both"),
    ({"type": "unique"}, f"{P}.column: give column (one column) or columns (a compound key)"),
    ({"type": "unique", "column": "id", "columns": ["id"]}, f"{P}.column: give column or columns, not both"),
    ({"type": "unique", "columns": ["id", "id"]}, f"{P}.columns: lists id twice"),
    ({"type": "unique", "column": "id", "against_sink": "yes"}, f"{P}.against_sink: 'yes' should be true or false"),
    ({"type": "not_null", "column": "email", "policy": "never"},
     f"{P}.policy: 'never' is not one of warn, quarantine, fail"),
    ({"type": "not_null", "column": "email", "mostly": 1.5},
     f"{P}.mostly: 1.5 should be a number from 0 to 1 (the share of rows that must pass)"),
    ({"type": "not_null", "column": ""}, f"{P}.column: '' should be a column name"),
    ({"type": "not_null", "column": "email", "id": 5}, f"{P}.id: should be a non-empty string"),
    ({"expectation": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
     f"{P}.policy: quarantine needs an expectation that names the failing rows; expect_table_row_count_to_be_between "
     "judges the whole batch: use policy warn or fail"),
    ({"expectation": "expect column", "kwargs": {}},
     f"{P}.expectation: 'expect column' should be a GX expectation name (snake_case or ClassName)"),
    ({"expectation": "expect_column_values_to_be_null", "kwargs": ["column"]},
     f"{P}.kwargs: ['column'] should be a mapping of the expectation's arguments"),
    ({"expectation": "expect_column_values_to_be_null", "kwargs": {"column": "a", "result_format": "BOOLEAN_ONLY"}},
     f"{P}.kwargs.result_format: is set by the validate stage (it needs every failing row); leave it out"),
    ({"expectation": "expect_column_values_to_be_null", "kwargs": {"column": "a", "mostly": 0.5}, "mostly": 0.5},
     f"{P}.mostly: is given twice (here and in kwargs); keep one"),
    ({"type": "range", "column": "price", "min": 0, "expectation": "expect_column_values_to_be_null"},
     f"{P}.expectation: unknown key for a range rule (allowed: type, column, min, max, strict_min, strict_max, "
     "inclusive, id, policy, mostly, description)"),
])
def test_a_bad_rule_gives_one_problem_naming_suite_index_key_and_reason(rule, expected):
    assert one_problem(rule) == expected


def test_all_problems_of_a_rule_and_of_every_rule_are_listed():
    """A misspelt required key is named once, by its typo's line."""
    problems = check_rules(suite(
        {"type": "pattern", "column": "email"},
        {"type": "range", "colum": "price", "min": 1, "policy": "sometimes"},
    ))
    assert problems == [
        f"{P}.pattern: is required (a pattern rule needs column and pattern)",
        "suite 'users_checks' rules[1].colum: unknown key for a range rule; did you mean 'column'?",
        "suite 'users_checks' rules[1].policy: 'sometimes' is not one of warn, quarantine, fail",
    ]


def test_a_rule_that_is_not_a_mapping():
    assert check_rules(suite()) == []
    config = suite()
    object.__setattr__(config, "rules", ["not_null"])
    assert check_rules(config) == [f"{P}: should be a mapping (type: ..., column: ...)"]


def test_an_explicit_id_used_twice():
    problems = check_rules(suite({"type": "not_null", "column": "email", "id": "x"},
                                 {"type": "not_null", "column": "name", "id": "x"}))
    assert problems == ["suite 'users_checks' rules[1].id: rule id 'x' is also the id of rules[0]; ids must be "
                        "unique in a suite"]


# --- problems GX tells -----------------------------------------------------------------------------------------


def test_check_expectations_names_unknown_expectations_with_a_suggestion():
    problems = check_expectations(suite(
        {"expectation": "expect_column_values_to_be_in_sett", "kwargs": {"column": "status", "value_set": ["a"]}},
        {"expectation": "ExpectColumnValuesToBeInSet", "kwargs": {"column": "status", "value_set": ["a"]}},
    ))
    assert len(problems) == 1
    assert problems[0].startswith(f"{P}.expectation: unknown expectation 'expect_column_values_to_be_in_sett' (not "
                                  "a GX Core 1.")
    assert problems[0].endswith("expectation; did you mean 'expect_column_values_to_be_in_set'?)")


def test_check_expectations_turns_gx_kwargs_errors_into_one_line():
    problems = check_expectations(suite(
        {"expectation": "ExpectColumnValuesToBeInSet", "kwargs": {"colum": "status", "value_set": "active"}},
        {"expectation": "expect_column_values_to_be_between", "kwargs": {"column": "price", "min_value": "low"},
         "policy": "warn"},
        {"expectation": "expect_column_mean_to_be_between", "kwargs": {"column": "price", "min_value": 1},
         "policy": "fail"},
    ))
    assert problems == [
        f"{P}.kwargs: expect_column_values_to_be_in_set refuses them: column: is required; value_set: value is not "
        "a valid list; colum: unknown key; did you mean 'column'?",
        "suite 'users_checks' rules[1].kwargs: expect_column_values_to_be_between refuses them: min_value: value is "
        "not a valid float or invalid date format or invalid datetime format; kwargs: min_value and max_value cannot "
        "both be None",
    ]


def test_check_expectations_leaves_built_in_kinds_to_check_rules():
    assert check_expectations(suite({"type": "range", "column": "price", "min": "2024-01-01"})) == []


# --- problems a table tells -------------------------------------------------------------------------------------


def test_check_columns_names_missing_columns_with_the_table_columns():
    checks, _ = compile_rules(suite(
        {"type": "pattern", "column": "emial", "pattern": "@"},
        {"type": "unique", "columns": ["id", "nme"]},
        {"expectation": "expect_column_pair_values_to_be_equal", "kwargs": {"column_A": "email", "column_B": "mail"}},
        {"type": "not_null", "column": "email"},
    ))
    assert check_columns(checks, USERS) == [
        f"{P}.column: table public.users has no column 'emial' (its columns: id, email, name, price, status, age); "
        "did you mean 'email'?",
        "suite 'users_checks' rules[1].columns: table public.users has no column 'nme' (its columns: id, email, "
        "name, price, status, age); did you mean 'name'?",
        "suite 'users_checks' rules[2].kwargs.column_B: table public.users has no column 'mail' (its columns: id, "
        "email, name, price, status, age); did you mean 'email'?",
    ]


def test_check_columns_converts_bounds_and_set_values_to_the_column_type():
    from quality.util import col, schema_of

    schema = schema_of(col("id", "integer", pk=True), col("price", "decimal", precision=12, scale=2),
                       col("born", "date"), col("seen", "timestamptz"), col("local", "timestamp"),
                       col("opens", "time"), col("doc", "json"), col("code"), col("ok", "boolean"))
    checks, problems = compile_rules(suite(
        {"type": "range", "column": "price", "min": "cheap"},
        {"type": "range", "column": "born", "min": "2024-13-01"},
        {"type": "range", "column": "born", "max": dt.datetime(2024, 1, 1, 12)},
        {"type": "range", "column": "local", "min": "2024-01-01T00:00:00+02:00"},
        {"type": "range", "column": "opens", "min": 45000},
        {"type": "range", "column": "doc", "min": "a"},
        {"type": "range", "column": "code", "min": 5},
        {"type": "in_set", "column": "id", "values": [1, 2.5]},
        {"type": "in_set", "column": "ok", "values": [True, "yes"]},
        {"type": "range", "column": "seen", "min": "2024-01-01", "max": dt.datetime(2025, 1, 1)},
        {"type": "range", "column": "born", "min": dt.date(2024, 1, 1), "max": "2024-12-31"},
        {"type": "range", "column": "opens", "min": "08:00", "max": "18:00:00"},
        {"type": "range", "column": "code", "min": "A", "max": "M"},
        {"type": "in_set", "column": "price", "values": [1, "2.50"]},
    ))
    assert problems == []
    assert check_columns(checks, schema) == [
        f"{P}.min: 'cheap' is not a number; column 'price' is decimal",
        "suite 'users_checks' rules[1].min: '2024-13-01' is not a date; column 'born' is date",
        "suite 'users_checks' rules[2].max: datetime.datetime(2024, 1, 1, 12, 0) is not a date; column 'born' is date",
        "suite 'users_checks' rules[3].min: '2024-01-01T00:00:00+02:00' has a time zone; column 'local' is timestamp "
        "(without time zone)",
        "suite 'users_checks' rules[4].min: 45000 is not a time of day; column 'opens' is time (quote it: '12:30:00', "
        "or YAML reads it as a number of seconds)",
        "suite 'users_checks' rules[5].min: column 'doc' is json, which has no order to range over (range takes "
        "date, decimal, float, integer, text, time, timestamp, timestamptz columns)",
        "suite 'users_checks' rules[6].min: column 'code' is text, compared as text: write the bound 5 as a quoted "
        "string",
        "suite 'users_checks' rules[7].values: 2.5 is not a whole number; column 'id' is integer",
        "suite 'users_checks' rules[8].values: 'yes' is not true or false; column 'ok' is boolean",
    ]
