"""One table of one batch through real GX: exactly which rows fail which rule, and why."""

from __future__ import annotations

import datetime as dt

import pytest

from airflow_provider_cdc.quality import QualityConfigError, QualitySuites, TableFailure
from quality.util import USERS, col, failing, run, schema_of, suite, table_of

EMAIL = r"^[^@\s]+@[^@\s]+\.[a-z]+$"
EVERY_KIND = [
    {"type": "pattern", "column": "email", "pattern": EMAIL},
    {"type": "range", "column": "price", "min": 0, "max": 1000},
    {"type": "not_null", "column": "name"},
    {"type": "unique", "column": "email"},
    {"type": "in_set", "column": "status", "values": ["active", "inactive"]},
    {"type": "length", "column": "name", "min": 2, "max": 10},
    {"type": "type", "column": "age", "expected": "integer"},
]
GOOD = {"email": "ann@example.com", "name": "Ann", "price": "10.00", "status": "active", "age": "30"}


def row(id_: int, **values: str | None) -> dict[str, str | None]:
    return {"id": str(id_), **GOOD, "email": f"user{id_}@example.com", **values}


def test_every_kind_fails_exactly_its_rows_with_its_reason():
    result = run(EVERY_KIND, [
        ("c", row(1, email="a@x.com")),
        ("c", row(2, email="bad", price="-1.00")),
        ("u", row(3, name=None, status="pending", age="x")),
        ("r", row(4, email="a@x.com", name="Dominique-Alexandra", price="1000.00")),
        ("c", row(5, name="Zoë", price="0.00", age="-7")),
    ])
    assert failing(result) == [
        (0, "unique_email", "email 'a@x.com' is not unique in the batch"),
        (1, "pattern_email", f"email 'bad' does not match pattern '{EMAIL}'"),
        (1, "range_price", "price '-1.00' is outside [0, 1000]"),
        (2, "in_set_status", "status 'pending' is not one of 'active', 'inactive'"),
        (2, "not_null_name", "name is null"),
        (2, "type_age", "age 'x' does not convert to integer"),
        (3, "length_name", "name 'Dominique-Alexandra' has 19 characters, outside 2..10"),
        (3, "unique_email", "email 'a@x.com' is not unique in the batch"),
    ]
    bad = {(v.row, v.rule_id): v for v in result.violations}
    violation = bad[(1, "range_price")]
    assert (violation.suite_id, violation.expectation, violation.column, violation.policy, violation.value) == (
        "users_checks", "expect_column_values_to_be_between", "price", "quarantine", "-1.00")
    assert bad[(2, "not_null_name")].value is None
    assert result.rows_to_quarantine() == [0, 1, 2, 3]
    assert result.table_failures == [] and result.fatal() == [] and result.warnings() == []


def test_deletes_and_truncates_are_not_judged():
    events = [("c", row(1)), ("d", row(2, email="bad", name=None, status="gone", age="x")), ("t", {}),
              ("d", {"id": "3"})]
    result = run(EVERY_KIND, events)
    assert failing(result) == []
    assert result.metrics["evaluated"] == 1


def test_a_batch_with_nothing_to_judge_runs_no_check():
    result = run([*EVERY_KIND, {"expectation": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 5},
                                "policy": "fail"}], [("d", row(1)), ("t", {})])
    assert (result.violations, result.table_failures, result.results) == ([], [], {})
    assert {k: result.metrics[k] for k in ("evaluated", "passed", "failed", "warned", "score")} == {
        "evaluated": 0, "passed": 0, "failed": 0, "warned": 0, "score": 1.0}


def test_a_value_the_source_did_not_resend_is_not_judged():
    """PostgreSQL unchanged TOAST: the column is NULL in the batch but keeps its value at the sink."""
    rules = [{"type": "not_null", "column": "name"}, {"type": "not_null", "column": "email"},
             {"type": "length", "column": "name", "min": 2}]
    result = run(rules, [
        ("u", row(1, name=None), ["name"]),
        ("u", row(2, name=None)),
        ("c", row(3, name="A")),
        ("u", row(4, name=None, email=None), ["name"]),
    ])
    assert failing(result) == [
        (1, "not_null_name", "name is null"),
        (2, "length_name", "name 'A' has 1 characters, outside at least 2"),
        (3, "not_null_email", "email is null"),
    ]
    conditions = [r["expectation_config"]["kwargs"].get("row_condition")
                  for r in result.results["users_checks"]["results"]]
    assert {"type": "comparison", "column": {"name": "_cdc_judged:name"}, "operator": "==", "parameter": True} \
        in conditions


def test_null_passes_every_kind_but_not_null():
    rules = [*EVERY_KIND, {"type": "not_null", "column": "email"}, {"type": "unique", "columns": ["email", "age"]}]
    nulls = {"email": None, "name": None, "price": None, "status": None, "age": None}
    result = run(rules, [("c", {"id": "1", **nulls}), ("c", {"id": "2", **nulls})])
    assert failing(result) == [(0, "not_null_email", "email is null"), (0, "not_null_name", "name is null"),
                               (1, "not_null_email", "email is null"), (1, "not_null_name", "name is null")]


def test_ranges_compare_typed_values_at_their_bounds():
    schema = schema_of(col("id", "integer", pk=True), col("n", "integer"),
                       col("price", "decimal", precision=12, scale=2), col("exact", "decimal"), col("ratio", "float"),
                       col("born", "date"), col("seen", "timestamptz"), col("local", "timestamp"),
                       col("opens", "time"))
    rules = [
        {"type": "range", "column": "n", "min": 10, "max": 20},
        {"type": "range", "column": "price", "min": 0.1},
        {"type": "range", "column": "exact", "max": "1000"},
        {"type": "range", "column": "ratio", "min": 0, "strict_min": True},
        {"type": "range", "column": "born", "min": "2024-01-01", "max": dt.date(2024, 12, 31)},
        {"type": "range", "column": "seen", "min": "2024-05-01T00:00:00Z"},
        {"type": "range", "column": "local", "max": dt.datetime(2024, 1, 1)},
        {"type": "range", "column": "opens", "min": "08:00:00", "max": "18:00:00"},
    ]
    passing = {"n": "10", "price": "0.10", "exact": "1000", "ratio": "1e-300", "born": "2024-12-31",
               "seen": "2024-05-01T00:00:00Z", "local": "2024-01-01T00:00:00", "opens": "18:00:00"}
    outside = {"n": "21", "price": "0.09", "exact": "1000.0000000001", "ratio": "0", "born": "2023-12-31",
               "seen": "2024-04-30T23:59:59.999999Z", "local": "2024-01-01T00:00:00.000001", "opens": "07:59:59.5"}
    result = run(rules, [("c", {"id": "1", **passing}), ("c", {"id": "2", **outside}),
                         ("c", {"id": "3", "n": "9", "born": "infinity", "seen": "-infinity"})], schema)
    assert failing(result) == [
        (1, "range_born", "born '2023-12-31' is outside [2024-01-01, 2024-12-31]"),
        (1, "range_exact", "exact '1000.0000000001' is above the maximum 1000"),
        (1, "range_local", "local '2024-01-01T00:00:00.000001' is above the maximum 2024-01-01T00:00:00"),
        (1, "range_n", "n '21' is outside [10, 20]"),
        (1, "range_opens", "opens '07:59:59.5' is outside [08:00:00, 18:00:00]"),
        (1, "range_price", "price '0.09' is below the minimum 0.1"),
        (1, "range_ratio", "ratio '0' is not above 0"),
        (1, "range_seen", "seen '2024-04-30T23:59:59.999999Z' is below the minimum 2024-05-01T00:00:00Z"),
        (2, "range_n", "n '9' is outside [10, 20]"),
    ]


def test_decimal_specials_and_broken_values_in_ranges():
    """``Infinity`` is above any maximum; ``NaN`` is missing to pandas, so it passes like NULL; a value breaking the
    column's type is left out of the range and named by a type rule."""
    schema = schema_of(col("id", "integer", pk=True), col("price", "decimal", precision=12, scale=2),
                       col("exact", "decimal"))
    rules = [{"type": "range", "column": "price", "max": 100}, {"type": "range", "column": "exact", "min": 0},
             {"type": "type", "column": "exact", "expected": "decimal"}]
    result = run(rules, [("c", {"id": "1", "price": "Infinity", "exact": "-Infinity"}),
                         ("c", {"id": "2", "price": "NaN", "exact": "abc"}),
                         ("c", {"id": "3", "price": "99.99", "exact": "NaN"})], schema)
    assert failing(result) == [
        (0, "range_exact", "exact '-Infinity' is below the minimum 0"),
        (0, "range_price", "price 'Infinity' is above the maximum 100"),
        (1, "type_exact", "exact 'abc' does not convert to decimal"),
    ]


def test_integers_keep_every_digit():
    """Ids above 2**53 stay apart (a float view would make these two equal)."""
    schema = schema_of(col("id", "integer", pk=True), col("ref", "integer"))
    result = run([{"type": "unique", "column": "ref"}, {"type": "in_set", "column": "ref",
                                                        "values": [9007199254740993, 9007199254740992]}],
                 [("c", {"id": "1", "ref": "9007199254740993"}), ("c", {"id": "2", "ref": "9007199254740992"}),
                  ("c", {"id": "3", "ref": None})], schema)
    assert failing(result) == []


def test_unicode_in_patterns_values_and_lengths():
    rules = [{"type": "pattern", "column": "name", "pattern": r"^\w+$"},
             {"type": "in_set", "column": "status", "values": ["café", "naïve"]},
             {"type": "length", "column": "email", "max": 3}]
    result = run(rules, [("c", {"id": "1", "name": "Zoë", "status": "café", "email": "ÅÄÖ"}),
                         ("c", {"id": "2", "name": "Zoë!", "status": "cafe", "email": "ÅÄÖÜ"})])
    assert failing(result) == [
        (1, "in_set_status", "status 'cafe' is not one of 'café', 'naïve'"),
        (1, "length_email", "email 'ÅÄÖÜ' has 4 characters, outside at most 3"),
        (1, "pattern_name", "name 'Zoë!' does not match pattern '^\\w+$'"),
    ]


def test_pattern_and_length_read_the_portable_text_of_any_column():
    schema = schema_of(col("id", "integer", pk=True), col("price", "decimal", precision=12, scale=2),
                       col("born", "date"))
    rules = [{"type": "pattern", "column": "price", "pattern": r"^\d+\.\d{2}$"},
             {"type": "length", "column": "born", "min": 10, "max": 10}, {"type": "range", "column": "price", "min": 0}]
    result = run(rules, [("c", {"id": "1", "price": "5.00", "born": "2024-01-01"}),
                         ("c", {"id": "2", "price": "-5.00", "born": "infinity"})], schema)
    assert failing(result) == [
        (1, "length_born", "born 'infinity' has 8 characters, outside 10..10"),
        (1, "pattern_price", "price '-5.00' does not match pattern '^\\d+\\.\\d{2}$'"),
        (1, "range_price", "price '-5.00' is below the minimum 0"),
    ]


def test_type_rules_judge_each_logical_type():
    schema = schema_of(col("id", "integer", pk=True), col("v"))
    kinds = {
        "integer": (["-42", "0"], ["4.5", "99999999999999999999", "+"]),
        "decimal": (["-1234.5600", "NaN"], ["1e5", "1,5"]),
        "float": (["1.5", "1e+100", "-Infinity"], ["one"]),
        "boolean": (["true", "false"], ["True", "1"]),
        "date": (["2024-02-29", "infinity"], ["2023-02-29", "2024-1-1x"]),
        "timestamptz": (["2024-05-01T12:00:00.25Z"], ["2024-05-01T12:00:00", "2024-05-01T25:00:00Z"]),
        "timestamp": (["2024-05-01T12:00:00.25", "2024-05-01 12:00:00"], ["2024-05-01T12:00:00Z", "2024-13-01"]),
        "time": (["12:00:00.25"], ["25:00:00"]),
        "uuid": (["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"], ["a0eebc99"]),
        "json": (['{"a": [1, 2]}', "3"], ["{a: 1}"]),
        "binary": (["deadbeef", ""], ["xyz", "abc"]),
        "text": (["anything", ""], []),
    }
    for kind, (good, bad) in kinds.items():
        events = [("c", {"id": str(i), "v": v}) for i, v in enumerate([*good, None, *bad])]
        result = run([{"type": "type", "column": "v", "expected": kind}], events, schema)
        assert failing(result) == [(len(good) + 1 + i, "type_v", f"v {v!r} does not convert to {kind}")
                                   for i, v in enumerate(bad)], kind


def test_a_value_breaking_its_column_type_is_named_by_a_type_rule_and_left_out_of_others():
    schema = schema_of(col("id", "integer", pk=True), col("age", "integer"))
    result = run([{"type": "type", "column": "age", "expected": "integer"},
                  {"type": "range", "column": "age", "min": 0}],
                 [("c", {"id": "1", "age": "x"}), ("c", {"id": "2", "age": "-1"})], schema)
    assert failing(result) == [(0, "type_age", "age 'x' does not convert to integer"),
                               (1, "range_age", "age '-1' is below the minimum 0")]


def test_unique_judges_the_latest_change_of_each_key():
    """An insert then an update of one key is one row at the sink, not a duplicate; a deleted or truncated row is
    gone."""
    result = run([{"type": "unique", "column": "email"}, {"type": "unique", "columns": ["name", "status"]}], [
        ("c", row(1, email="x@example.com", name="A")),
        ("u", row(1, email="x@example.com", name="A")),
        ("c", row(3, email="y@example.com", name="B")),
        ("d", {"id": "3"}),
        ("c", row(4, email="y@example.com", name="C")),
        ("c", row(5, email="x@example.com", name="C")),
    ])
    assert failing(result) == [
        (1, "unique_email", "email 'x@example.com' is not unique in the batch"),
        (4, "unique_name_status", "(name, status) ('C', 'active') is not unique in the batch"),
        (5, "unique_email", "email 'x@example.com' is not unique in the batch"),
        (5, "unique_name_status", "(name, status) ('C', 'active') is not unique in the batch"),
    ]
    compound = [v for v in result.violations if v.rule_id == "unique_name_status"][0]
    assert (compound.column, compound.value) == ("name, status", {"name": "C", "status": "active"})
    truncated = run([{"type": "unique", "column": "email"}],
                    [("c", row(1, email="x@example.com")), ("t", {}), ("c", row(2, email="x@example.com"))])
    assert failing(truncated) == []


def test_any_gx_expectation_by_snake_case_or_class_name():
    rules = [
        {"expectation": "expect_column_values_to_not_match_regex", "kwargs": {"column": "email", "regex": "spam"}},
        {"expectation": "ExpectColumnPairValuesToBeEqual", "kwargs": {"column_A": "email", "column_B": "name"},
         "id": "same", "policy": "warn", "mostly": 0.9},
    ]
    result = run(rules, [("c", row(1, email="spam@example.com")), ("c", row(2, email="b", name="b"))])
    assert failing(result) == [
        (0, "expect_column_values_to_not_match_regex_email",
         "email 'spam@example.com' fails expect_column_values_to_not_match_regex(regex='spam')"),
        (0, "same",
         "(email, name) ('spam@example.com', 'Ann') fails expect_column_pair_values_to_be_equal(mostly=0.9)"),
    ]
    assert [v.policy for v in result.warnings()] == ["warn"] and result.rows_to_quarantine() == [0]


def test_a_failing_table_level_expectation_is_a_table_failure():
    rules = [{"expectation": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 3}, "policy": "fail",
              "id": "enough_rows"},
             {"expectation": "ExpectColumnMeanToBeBetween", "kwargs": {"column": "price", "max_value": 5},
              "policy": "warn"},
             {"expectation": "expect_column_max_to_be_between", "kwargs": {"column": "price", "max_value": 100},
              "policy": "fail"}]
    result = run(rules, [("c", row(1, price="10.00")), ("c", row(2, price="20.00"))])
    assert result.violations == []
    assert result.table_failures == [
        TableFailure("users_checks", "enough_rows", "expect_table_row_count_to_be_between", "fail", 2,
                     "expect_table_row_count_to_be_between failed: observed 2, expected min_value=3"),
        TableFailure("users_checks", "expect_column_mean_to_be_between_price", "expect_column_mean_to_be_between",
                     "warn", 15.0, "expect_column_mean_to_be_between failed: observed 15.0, expected column='price', "
                                   "max_value=5.0"),
    ]
    assert [f.rule_id for f in result.fatal()] == ["enough_rows"]
    assert [f.rule_id for f in result.warnings()] == ["expect_column_mean_to_be_between_price"]


def test_an_expectation_gx_cannot_evaluate_fails_the_batch_under_quarantine():
    rules = [{"expectation": "expect_column_values_to_be_between", "kwargs": {"column": "status", "min_value": 1}},
             {"expectation": "expect_column_values_to_be_between", "kwargs": {"column": "email", "min_value": 1},
              "policy": "warn"}]
    result = run(rules, [("c", row(1))])
    assert [(f.rule_id, f.policy, f.error) for f in result.table_failures] == [
        ("expect_column_values_to_be_between_status", "fail", True),
        ("expect_column_values_to_be_between_email", "warn", True)]
    assert result.table_failures[0].reason == (
        "expect_column_values_to_be_between could not be evaluated: Column values, min_value, and max_value must "
        "either be None or of the same type. (under policy quarantine the batch fails: rows that could not be judged "
        "cannot pass)")
    assert result.violations == [] and len(result.fatal()) == 1


def test_mostly_lets_a_rule_pass_and_still_counts_its_failing_rows():
    rules = [{"type": "pattern", "column": "email", "pattern": EMAIL, "mostly": 0.5, "id": "lenient"},
             {"type": "pattern", "column": "email", "pattern": EMAIL, "mostly": 0.9, "id": "strict"}]
    result = run(rules, [("c", row(1)), ("c", row(2, email="bad")), ("c", row(3)), ("c", row(4))])
    assert failing(result) == [(1, "strict", f"email 'bad' does not match pattern '{EMAIL}'")]
    rules_metrics = result.metrics["suites"]["users_checks"]["rules"]
    counts = ("unexpected", "success", "policy", "assertion", "columns")
    assert [rules_metrics["lenient"][k] for k in counts] == [1, True, "quarantine", "pattern", ["email"]]
    assert [rules_metrics["strict"][k] for k in counts] == [1, False, "quarantine", "pattern", ["email"]]


def test_policies_sort_rows_into_quarantine_fatal_and_warnings_and_metrics_count_rows():
    rules = [{"type": "not_null", "column": "name", "policy": "warn"},
             {"type": "in_set", "column": "status", "values": ["active"]},
             {"type": "range", "column": "price", "min": 0, "policy": "fail"}]
    result = run(rules, [("c", row(1)), ("c", row(2, name=None)), ("c", row(3, name=None, status="x")),
                         ("c", row(4, price="-1.00")), ("c", row(5, status="y"))])
    assert result.rows_to_quarantine() == [2, 4]
    assert [(v.row, v.rule_id) for v in result.fatal()] == [(3, "range_price")]
    assert [(v.row, v.rule_id) for v in result.warnings()] == [(1, "not_null_name"), (2, "not_null_name")]
    assert {k: result.metrics[k] for k in ("evaluated", "passed", "failed", "warned", "score", "table_failures")} \
        == {"evaluated": 5, "passed": 1, "failed": 3, "warned": 1, "score": 0.2, "table_failures": 0}
    assert result.metrics["rules"] == {"users_checks.not_null_name": 2, "users_checks.in_set_status": 2,
                                       "users_checks.range_price": 1}
    assert list(result.violations_by_row()) == [1, 2, 3, 4]


def test_every_suite_scoped_to_the_table_runs_and_metrics_add_up_by_row():
    users = suite({"type": "not_null", "column": "name", "policy": "warn"}, suite_id="users_checks", tables=["users"])
    shared = suite({"type": "in_set", "column": "status", "values": ["active"]}, suite_id="everywhere")
    orders = suite({"type": "not_null", "column": "email"}, suite_id="orders_checks", tables=["public.orders"])
    suites = QualitySuites.from_config([users, shared, orders])
    table = table_of(USERS, [("c", row(1, name=None)), ("c", row(2, name=None, status="x")), ("c", row(3))])
    result = suites.validate(table, USERS)
    assert sorted(result.results) == ["everywhere", "users_checks"]
    assert {(v.suite_id, v.row) for v in result.violations} == {("users_checks", 0), ("users_checks", 1),
                                                                ("everywhere", 1)}
    per_suite = result.metrics["suites"]
    assert (per_suite["users_checks"]["warned"], per_suite["users_checks"]["failed"]) == (2, 0)
    assert (per_suite["everywhere"]["passed"], per_suite["everywhere"]["failed"]) == (2, 1)
    assert (result.metrics["passed"], result.metrics["warned"], result.metrics["failed"]) == (1, 1, 1)


def test_results_keep_gx_format_with_rule_ids_in_meta():
    result = run([{"type": "pattern", "column": "email", "pattern": EMAIL}], [("c", row(1)), ("c", row(2, email="x"))])
    document = result.results["users_checks"]
    assert document["success"] is False and document["suite_name"] == "users_checks @ public.users"
    assert document["statistics"]["evaluated_expectations"] == 1
    (one,) = document["results"]
    assert one["expectation_config"]["type"] == "expect_column_values_to_match_regex"
    assert one["expectation_config"]["meta"] == {"cdc_suite": "users_checks", "cdc_rule": "pattern_email",
                                                 "cdc_policy": "quarantine"}
    assert one["expectation_config"]["description"] == f"email matches '{EMAIL}'"
    assert one["result"]["unexpected_count"] == 1
    assert one["result"]["unexpected_index_list"] == [{"_cdc_row": [1]}]


def test_a_missing_column_stops_the_table_with_a_config_error():
    with pytest.raises(QualityConfigError) as info:
        run([{"type": "not_null", "column": "emial"}], [("c", row(1))])
    assert info.value.terminal and info.value.table == "public.users"
    assert str(info.value) == (
        "quality rules cannot run for table public.users: suite 'users_checks' rules[0].column: table public.users "
        "has no column 'emial' (its columns: id, email, name, price, status, age); did you mean 'email'?")


def test_an_unknown_expectation_stops_the_table_when_gx_first_sees_it():
    with pytest.raises(QualityConfigError, match=r"rules\[0\].expectation: unknown expectation "
                                                 r"'expect_column_values_to_be_fine'"):
        run([{"expectation": "expect_column_values_to_be_fine", "kwargs": {"column": "email"}}], [("c", row(1))])


def test_custom_gx_expectations_are_found_in_gxs_registry_and_judged_by_their_class():
    """A custom expectation's name follows no GX family, so its class says whether it can name rows."""
    from airflow_provider_cdc.quality import check_expectations, check_rules
    from airflow_provider_cdc.quality.gx import import_gx

    import_gx()
    import great_expectations.expectations as gxe

    class ExpectPriceToBePositive(gxe.ExpectColumnValuesToBeBetween):
        min_value: float = 0.0

    class ExpectEnoughUsers(gxe.ExpectTableRowCountToBeBetween):
        min_value: int = 2

    per_row = {"expectation": "ExpectPriceToBePositive", "kwargs": {"column": "price"}}
    whole = {"expectation": "expect_enough_users", "kwargs": {}}
    result = run([per_row], [("c", row(1, price="-1.00")), ("c", row(2))])
    assert failing(result) == [(0, "expect_price_to_be_positive_price",
                                "price '-1.00' fails expect_price_to_be_positive()")]
    assert check_rules(suite(whole)) == []
    expected = ("suite 'users_checks' rules[0].policy: quarantine needs an expectation that names the failing rows; "
                "expect_enough_users judges the whole batch: use policy warn or fail")
    assert check_expectations(suite(whole)) == [expected]
    with pytest.raises(QualityConfigError, match=r"rules\[0\]\.policy: quarantine needs"):
        run([whole], [("c", row(1))])
    failed = run([{**whole, "policy": "fail"}], [("c", row(1))])
    assert [f.reason for f in failed.fatal()] == [
        "expect_enough_users failed: observed 1, expected the expectation's defaults"]
