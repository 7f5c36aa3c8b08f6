"""EDGE_CASES.md rows that reach the validate stage, on a real PostgreSQL source and sink (15 and 18), with real GX:
a column a suite checks dropped at the source (the run stops naming the suite, rule and column; nothing is lost and
fixing quality.yaml resumes), unchanged TOAST values (not judged), names that need quoting, NaN and infinities under
range rules, a primary-key update judged on its new row, and a delete then re-insert of a key in one batch."""

from __future__ import annotations

from typing import Any

import pytest
from cdc_testing import StageRun, stage_runs

from airflow_provider_cdc.config import SuiteConfig
from airflow_provider_cdc.quality.errors import QualityConfigError
from airflow_provider_cdc.quality.stage import ValidateStage

pytestmark = pytest.mark.timeout(300)


class Run(StageRun):
    """A PostgreSQL source table, a PostgreSQL sink, and the validate stage of ``rules`` (one suite) between them."""

    def __init__(self, pg_database_factory, ddl: str, table: str, rules: list[dict[str, Any]]) -> None:
        super().__init__(pg_database_factory, ddl, table, "qedge")
        self.suite(rules)

    def suite(self, rules: list[dict[str, Any]]) -> None:
        self.stages = [ValidateStage([SuiteConfig(id="checks", rules=rules)])]

    def waiting(self) -> list[tuple]:
        if self.rows("SELECT to_regclass('public._cdc_quarantine')") == [(None,)]:
            return []
        return self.rows("SELECT row->>'id', rule_id, field, reason FROM public._cdc_quarantine "
                         "WHERE replayed_batch_id IS NULL ORDER BY seq")


@pytest.fixture
def make_run(pg_database_factory):
    yield from stage_runs(lambda ddl, table, rules: Run(pg_database_factory, ddl, table, rules))


def test_a_checked_column_dropped_at_the_source_stops_the_run_clearly_until_the_suite_is_fixed(make_run):
    run = make_run("CREATE TABLE t (id int PRIMARY KEY, code text, n int)", "t",
                   [{"type": "length", "column": "code", "max": 3}, {"type": "range", "column": "n", "min": 0}])
    run.sql("INSERT INTO t VALUES (1, 'abc', 1), (2, 'toolong', 2)")
    run.run()
    assert run.rows("SELECT id FROM public.t ORDER BY id") == [(1,)]
    run.sql("ALTER TABLE t DROP COLUMN code; INSERT INTO t VALUES (3, 3), (4, -4)")
    with pytest.raises(QualityConfigError, match=r"suite 'checks' rules\[0\]\.column: table public\.t has no "
                                                 r"column 'code'"):
        run.run()
    assert run.rows("SELECT id FROM public.t ORDER BY id") == [(1,)]  # nothing loaded, the position did not move
    run.suite([{"type": "range", "column": "n", "min": 0}])  # quality.yaml fixed
    run.run()
    assert run.rows("SELECT id FROM public.t ORDER BY id") == [(1,), (3,)]
    assert [row[:3] for row in run.waiting()] == [("2", "length_code", "code"), ("4", "range_n", "n")]


def test_an_unchanged_toast_value_is_not_judged(make_run):
    run = make_run("CREATE TABLE docs (id int PRIMARY KEY, body text, n int);"
                   "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL", "docs",
                   [{"type": "not_null", "column": "body"}, {"type": "length", "column": "body", "min": 10}])
    run.sql("INSERT INTO docs SELECT 1, string_agg(md5(g::text), ''), 1 FROM generate_series(1, 4000) g")
    run.run()
    run.sql("UPDATE docs SET n = 2 WHERE id = 1")  # body is not resent: NULL in the event, not judged
    run.sql("UPDATE docs SET id = 5 WHERE id = 1")  # a key update over the TOAST value
    run.run()
    assert run.rows("SELECT id, length(body), n FROM public.docs") == [(5, 128000, 2)]
    assert run.waiting() == []


def test_names_that_need_quoting_are_checked(make_run):
    run = make_run('CREATE TABLE "Odd Täble" (id int PRIMARY KEY, "Mixed Case" text, "ünï cödé" text, '
                   '"select" int)', "Odd Täble",
                   [{"type": "in_set", "column": "Mixed Case", "values": ["a", "b"]},
                    {"type": "pattern", "column": "ünï cödé", "pattern": "^[a-zß]+$"},
                    {"type": "range", "column": "select", "max": 10}])
    run.sql('INSERT INTO "Odd Täble" VALUES (1, \'a\', \'straße\', 1), (2, \'c\', \'x\', 2), '
            '(3, \'b\', \'ÜBER\', 3), (4, \'b\', \'ok\', 11)')
    run.run()
    assert run.rows('SELECT id FROM public."Odd Täble" ORDER BY id') == [(1,)]
    assert [row[:3] for row in run.waiting()] == [("2", "in_set_Mixed Case", "Mixed Case"),
                                                  ("3", "pattern_ünï cödé", "ünï cödé"),
                                                  ("4", "range_select", "select")]
    assert "'ÜBER'" in run.waiting()[1][3]


def test_nan_and_infinities_under_range_rules(make_run):
    """NaN is not a number a range can judge: like NULL it passes (use not_null or an expectation to refuse it);
    a decimal Infinity is above every maximum; a timestamp's infinity is not judged either."""
    run = make_run("CREATE TABLE m (id int PRIMARY KEY, x numeric, f float8, at timestamptz)", "m",
                   [{"type": "range", "column": "x", "max": 100}, {"type": "range", "column": "f", "min": 0},
                    {"type": "range", "column": "at", "min": "2000-01-01T00:00:00Z"}])
    run.sql("INSERT INTO m VALUES (1, 'NaN', 'NaN', 'infinity'), (2, 'Infinity', 1, '2024-01-01'), "
            "(3, 5, '-Infinity', '-infinity'), (4, 50, 2, '1999-01-01')")
    run.run()
    assert run.rows("SELECT id FROM public.m ORDER BY id") == [(1,)]
    assert [row[:2] for row in run.waiting()] == [("2", "range_x"), ("3", "range_f"), ("4", "range_at")]
    assert run.rows("SELECT x::text, f::text, at::text FROM public.m") == [("NaN", "NaN", "infinity")]


def test_delete_then_reinsert_and_a_key_update_are_judged_on_their_final_rows(make_run):
    run = make_run("CREATE TABLE k (id int PRIMARY KEY, email text)", "k",
                   [{"type": "pattern", "column": "email", "pattern": "@"}, {"type": "unique", "column": "email"}])
    run.sql("INSERT INTO k VALUES (1, 'a@x'), (2, 'b@x')")
    run.run()
    run.sql("BEGIN; DELETE FROM k WHERE id = 1; INSERT INTO k VALUES (1, 'a@x'); UPDATE k SET email = 'c@x' "
            "WHERE id = 1; UPDATE k SET id = 20, email = 'bad' WHERE id = 2; COMMIT")
    run.run()
    assert run.rows("SELECT id, email FROM public.k ORDER BY id") == [(1, "c@x")]  # 2 moved to 20: refused
    assert [row[:2] for row in run.waiting()] == [("20", "pattern_email")]
