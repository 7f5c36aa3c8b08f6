"""EDGE_CASES.md rows that reach the transform stage, on a real PostgreSQL source and sink (15 and 18): unchanged
TOAST values under a rule, a primary-key update through a filter, DDL between changes (a column a rule reads
added, then dropped), names that need quoting, a target in the bookkeeping namespace, NaN and infinity through
rules. Each either reaches the sink faithfully or stops (or quarantines) clearly, never silently."""

from __future__ import annotations

import decimal
from typing import Any

import pytest
from cdc_testing import StageRun, stage_runs

from airflow_provider_cdc.config import RuleConfig
from airflow_provider_cdc.pipeline import TablesHeldError
from airflow_provider_cdc.transform.stage import TransformStage

pytestmark = pytest.mark.timeout(300)


class Run(StageRun):
    """A PostgreSQL source table, a PostgreSQL sink, and the transform stage of ``rules`` between them."""

    def __init__(self, pg_database_factory, ddl: str, table: str, rules: list[dict[str, Any]]) -> None:
        super().__init__(pg_database_factory, ddl, table, "tredge")
        self.stages = [TransformStage([RuleConfig.model_validate(rule) for rule in rules])]


@pytest.fixture
def make_run(pg_database_factory):
    yield from stage_runs(lambda ddl, table, rules: Run(pg_database_factory, ddl, table, rules))


def test_unchanged_toast_values_under_a_rule_keep_their_sink_values(make_run):
    """A rule reading an unchanged TOAST value marks its target unchanged: the sink keeps both, never NULL."""
    run = make_run("CREATE TABLE docs (id int PRIMARY KEY, body text, n int);"
                   "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL", "docs",
                   [{"rule_id": "size", "rule_type": "map", "source_fields": ["body"], "target_field": "body_len",
                     "expression": "{{ body | length }}"},
                    {"rule_id": "twice", "rule_type": "map", "source_fields": ["n"], "target_field": "n2",
                     "expression": "{{ n * 2 }}"}])
    run.sql("INSERT INTO docs SELECT 1, string_agg(md5(g::text), '') , 1 FROM generate_series(1, 4000) g")
    run.run()
    run.sql("UPDATE docs SET n = 21 WHERE id = 1")  # body is not resent: unchanged TOAST
    run.run()
    assert run.rows("SELECT length(body), body_len, n, n2 FROM public.docs") == [(128000, 128000, 21, 42)]


def test_a_primary_key_update_that_leaves_the_filter_deletes_both_keys(make_run):
    run = make_run("CREATE TABLE t (id int PRIMARY KEY, status text)", "t",
                   [{"rule_id": "active", "rule_type": "filter", "source_fields": ["status"],
                     "expression": "{{ status == 'active' }}"}])
    run.sql("INSERT INTO t VALUES (1, 'active'), (2, 'active')")
    run.run()
    run.sql("UPDATE t SET id = 10, status = 'inactive' WHERE id = 1")  # moves key and leaves the filter
    run.sql("UPDATE t SET id = 20 WHERE id = 2")  # moves key, stays in
    run.run()
    assert run.rows("SELECT id, status FROM public.t ORDER BY id") == [(20, "active")]


def test_ddl_between_changes_a_column_a_rule_reads_added_then_dropped(make_run):
    """Before the column exists the rule cannot run: its rows are quarantined naming the field (never loaded without
    it). The first batch gave the target no value to type it by, so it was made as text; once the column exists the
    results are integers, a type change the schema gate holds with a clear message (nothing lost, nothing wrong in
    the sink) until it is accepted. A vectorisable expression, or ``target_type:``, types the target up front."""
    run = make_run("CREATE TABLE t (id int PRIMARY KEY, a int)", "t",
                   [{"rule_id": "sum", "rule_type": "map", "source_fields": ["a", "b"], "target_field": "s",
                     "expression": "{{ a + (b or 0) }}"}])
    run.sql("INSERT INTO t VALUES (1, 1)")
    run.run()
    first = run.rows("SELECT row->>'id', rule_id, reason FROM public._cdc_quarantine")
    assert [q[:2] for q in first] == [("1", "sum")] and "b" in first[0][2]
    run.sql("ALTER TABLE t ADD COLUMN b int; UPDATE t SET b = 5 WHERE id = 1; INSERT INTO t VALUES (2, 2, 3)")
    with pytest.raises(TablesHeldError, match=r"s type text -> integer.*schema accept"):
        run.run()
    assert run.rows("SELECT id FROM public.t") == []  # held, not loaded wrongly


def test_ddl_with_a_declared_target_type_follows_the_column_added_and_dropped(make_run):
    run = make_run("CREATE TABLE t (id int PRIMARY KEY, a int)", "t",
                   [{"rule_id": "sum", "rule_type": "map", "source_fields": ["a", "b"], "target_field": "s",
                     "target_type": "integer", "expression": "{{ a + (b or 0) }}"}])
    run.sql("INSERT INTO t VALUES (1, 1)")
    run.run()
    run.sql("ALTER TABLE t ADD COLUMN b int; UPDATE t SET b = 5 WHERE id = 1; INSERT INTO t VALUES (2, 2, 3)")
    run.run()
    assert run.rows("SELECT id, s FROM public.t ORDER BY id") == [(1, 6), (2, 5)]
    run.sql("ALTER TABLE t DROP COLUMN b; UPDATE t SET a = 10 WHERE id = 2")
    run.run()
    assert run.rows("SELECT id, s FROM public.t ORDER BY id") == [(1, 6), (2, 5)]  # not recomputed without b
    waiting = run.rows("SELECT row->>'id', rule_id FROM public._cdc_quarantine ORDER BY seq")
    assert waiting == [("1", "sum"), ("2", "sum")]  # before b existed, and after it was dropped


def test_names_that_need_quoting_reach_rules_and_sink(make_run):
    run = make_run('CREATE TABLE "Odd Table" (id int PRIMARY KEY, "first name" text, "select" text)', "Odd Table",
                   [{"rule_id": "greet", "rule_type": "map", "source_fields": ["first name", "select"],
                     "target_field": "Greeting Text", "expression": "{{ row['first name'] }}/{{ row['select'] }}"}])
    run.sql("""INSERT INTO "Odd Table" VALUES (1, 'Ada', 'x''; DROP TABLE t; --')""")
    run.run()
    assert run.rows('SELECT "Greeting Text" FROM public."Odd Table"') == [("Ada/x'; DROP TABLE t; --",)]


def test_a_target_in_the_bookkeeping_namespace_is_refused_before_anything_runs():
    stage = TransformStage([RuleConfig.model_validate(
        {"rule_id": "bad", "rule_type": "map", "source_fields": ["a"], "target_field": "_cdc_op",
         "expression": "{{ a }}"})])
    assert any("_cdc_" in problem and "bad" in problem for problem in stage.rules.problems())


def test_nan_and_infinity_through_rules(make_run):
    """numeric NaN stays NaN through arithmetic; an infinite timestamp a rule cannot compute with is quarantined
    with its reason, and the other rows load."""
    run = make_run("CREATE TABLE t (id int PRIMARY KEY, price numeric, at timestamptz)", "t",
                   [{"rule_id": "net", "rule_type": "map", "source_fields": ["price"], "target_field": "net",
                     "expression": "{{ price * 2 }}"},
                    {"rule_id": "year", "rule_type": "map", "source_fields": ["at"], "target_field": "y",
                     "expression": "{{ at.year }}"}])
    run.sql("INSERT INTO t VALUES (1, 'NaN', '2024-05-01Z'), (2, 1.5, 'infinity'), (3, 2, '2023-01-01Z')")
    run.run()
    rows = run.rows("SELECT id, net::text, y FROM public.t ORDER BY id")
    assert rows == [(1, "NaN", 2024), (3, "4", 2023)]
    quarantined = run.rows("SELECT row->>'id', rule_id, reason FROM public._cdc_quarantine")
    assert [q[:2] for q in quarantined] == [("2", "year")] and quarantined[0][2]
    assert decimal.Decimal("NaN").is_nan()
