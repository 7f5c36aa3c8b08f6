"""Suites as a task holds them: scopes, versions, and GX objects built once and reused for every batch."""

from __future__ import annotations

import os

from airflow_provider_cdc.config.models import SuiteConfig
from airflow_provider_cdc.quality import QualitySuites
from quality.util import USERS, col, schema_of, suite, table_of

RULES = [{"type": "pattern", "column": "email", "pattern": "@"}, {"type": "not_null", "column": "name"}]


def batch(*names: str | None, unchanged: list[str] | None = None):
    return table_of(USERS, [("c", {"id": str(i), "email": "a@b.c", "name": n}, unchanged)
                            for i, n in enumerate(names)])


def test_versions_are_a_hash_prefix_of_the_canonical_config():
    one = SuiteConfig(id="s", tables=["users"], rules=[{"type": "range", "column": "price", "min": 0, "max": 9}])
    same = SuiteConfig(id="s", tables=["users"], rules=[{"max": 9, "column": "price", "min": 0, "type": "range"}])
    other = SuiteConfig(id="s", tables=["users"], rules=[{"type": "range", "column": "price", "min": 1, "max": 9}])
    versions = [QualitySuites.from_config([config]).versions()["s"] for config in (one, same, other)]
    assert versions[0] == versions[1] != versions[2]
    assert len(versions[0]) == 16 and int(versions[0], 16) >= 0
    assert QualitySuites.from_config([one]).versions() == QualitySuites.from_config([same]).versions()


def test_scopes_match_qualified_or_bare_table_names():
    suites = QualitySuites.from_config([
        SuiteConfig(id="bare", tables=["users"]), SuiteConfig(id="qualified", tables=["sales.users"]),
        SuiteConfig(id="all"), SuiteConfig(id="orders", tables=["orders"])])
    assert [s.suite_id for s in suites.for_table("public.users")] == ["bare", "all"]
    assert [s.suite_id for s in suites.for_table("sales.users")] == ["bare", "qualified", "all"]
    assert [s.suite_id for s in suites.for_table("public.orders")] == ["all", "orders"]


def test_from_config_keeps_the_suites_scoped_to_the_given_tables():
    configs = [SuiteConfig(id="users", tables=["users"]), SuiteConfig(id="sales_users", tables=["sales.users"]),
               SuiteConfig(id="all"), SuiteConfig(id="orders", tables=["public.orders"])]
    kept = QualitySuites.from_config(configs, tables=["public.users", "orders"])
    assert list(kept.versions()) == ["users", "all", "orders"]


def test_the_context_and_each_suite_are_built_once_and_reused():
    suites = QualitySuites.from_config([suite(*RULES)])
    first = suites.validate(batch("Ann", None), USERS)
    context = suites.context
    built = suites.built_suite(suites.suites[0], USERS)
    second = suites.validate(batch(None, "Bob", "Cy"), USERS)
    assert suites.context is context and suites.built_suite(suites.suites[0], USERS) is built
    assert context.suites.all() == [built.gx_suite]
    assert [source.name for source in context.data_sources.all().values()] == ["cdc"]
    assert [v.row for v in first.violations] == [1] and [v.row for v in second.violations] == [0]


def test_a_batch_with_unchanged_values_uses_a_guarded_suite_also_built_once():
    suites = QualitySuites.from_config([suite(*RULES)])
    suites.validate(batch("Ann"), USERS)
    guarded = [suites.validate(batch(None, unchanged=["name"]), USERS) for _ in range(2)]
    suites.validate(batch("Ann"), USERS)
    assert sorted(s.name for s in suites.context.suites.all()) == ["users_checks @ public.users",
                                                                    "users_checks @ public.users guarded"]
    assert [g.violations for g in guarded] == [[], []]


def test_a_table_whose_columns_changed_gets_a_new_suite():
    suites = QualitySuites.from_config([suite(*RULES)])
    suites.validate(batch("Ann"), USERS)
    wider = schema_of(*USERS.columns, col("phone"))
    suites.validate(table_of(wider, [("c", {"id": "1", "email": "x", "name": "Ann"})]), wider)
    assert sorted(s.name for s in suites.context.suites.all()) == ["users_checks @ public.users",
                                                                    "users_checks @ public.users #2"]


def test_problems_of_all_suites_and_of_a_table():
    suites = QualitySuites.from_config([suite({"type": "not_null"}),
                                        suite({"type": "not_null", "column": "nmae"}, suite_id="other",
                                              tables=["orders"])])
    assert suites.problems() == ["suite 'users_checks' rules[0].column: is required (a not_null rule needs column)"]
    assert suites.check(USERS) == suites.problems()
    orders = schema_of(col("id", "integer", pk=True), col("name"), name="orders")
    assert suites.check(orders)[1] == ("suite 'other' rules[0].column: table public.orders has no column 'nmae' "
                                       "(its columns: id, name); did you mean 'name'?")


def test_gx_runs_without_analytics_or_progress_bars(capfd):
    suites = QualitySuites.from_config([suite(*RULES)])
    suites.validate(batch("Ann", None), USERS)
    captured = capfd.readouterr()
    assert "Calculating Metrics" not in captured.err + captured.out
    assert os.environ["GX_ANALYTICS_ENABLED"] == "False"
    assert suites.context.variables.analytics_enabled is False
    assert suites.context.progress_bars["globally"] is False


def test_two_tasks_in_one_process_keep_their_own_context():
    names = QualitySuites.from_config([suite({"type": "not_null", "column": "name"})])
    emails = QualitySuites.from_config([suite({"type": "not_null", "column": "email"}, suite_id="emails")])
    table = table_of(USERS, [("c", {"id": "1"})])
    rounds = [[v.rule_id for v in s.validate(table, USERS).violations] for s in (names, emails, names, emails)]
    assert rounds == [["not_null_name"], ["not_null_email"]] * 2
    assert names.context is not emails.context
