"""Compatibility levels on the changes a source makes, with Apache Avro's checker: the Confluent matrix, transitive
levels, and results that name the column and the version."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from airflow_provider_cdc.schema.avro import avro_schema
from airflow_provider_cdc.schema.compatibility import LEVELS, check
from airflow_provider_cdc.tables import Column, TableSchema

ID = Column("id", "bigint", "integer", nullable=False, primary_key=True, ordinal=1)
NAME = Column("name", "text", "text", nullable=True, ordinal=2)
QTY = Column("qty", "integer", "integer", nullable=False, ordinal=3)
TOTAL = Column("total", "bigint", "integer", nullable=False, ordinal=4)
SCORE = Column("score", "real", "float", nullable=False, ordinal=5)
V1 = TableSchema("public", "items", (ID, NAME, QTY, TOTAL, SCORE), "postgresql")


def with_columns(*columns: Column) -> TableSchema:
    return dataclasses.replace(V1, columns=(ID, *columns))


def retyped(column: Column, source_type: str, logical: str | None = None) -> Column:
    return dataclasses.replace(column, source_type=source_type, logical_type=logical or column.logical_type)


# Each change of V1, and what Avro says of it: (new table, BACKWARD ok, FORWARD ok).
CHANGES: dict[str, tuple[TableSchema, bool, bool]] = {
    "add nullable column": (with_columns(NAME, QTY, TOTAL, SCORE, Column("note", "text", "text", ordinal=6)),
                            True, True),
    "add NOT NULL column without default": (
        with_columns(NAME, QTY, TOTAL, SCORE, Column("code", "text", "text", nullable=False, ordinal=6)), False, True),
    "add NOT NULL column with default": (
        with_columns(NAME, QTY, TOTAL, SCORE, Column("code", "text", "text", nullable=False, ordinal=6,
                                                     backfill="none")), True, True),
    "drop nullable column": (with_columns(QTY, TOTAL, SCORE), True, True),
    "drop NOT NULL column": (with_columns(NAME, TOTAL, SCORE), True, False),
    "rename nullable column": (with_columns(dataclasses.replace(NAME, name="label"), QTY, TOTAL, SCORE), True, True),
    "rename NOT NULL column": (with_columns(NAME, dataclasses.replace(QTY, name="quantity"), TOTAL, SCORE),
                               True, False),
    "widen int to long": (with_columns(NAME, retyped(QTY, "bigint"), TOTAL, SCORE), True, False),
    "narrow long to int": (with_columns(NAME, QTY, retyped(TOTAL, "integer"), SCORE), False, True),
    "string to int": (with_columns(retyped(NAME, "integer", "integer"), QTY, TOTAL, SCORE), False, False),
    "float to double": (with_columns(NAME, QTY, TOTAL, retyped(SCORE, "double precision")), True, False),
}
# The column each failing direction names (backward: the new schema's column; forward: the old one's).
NAMED: dict[str, dict[str, str]] = {
    "add NOT NULL column without default": {"backward": "code"},
    "drop NOT NULL column": {"forward": "qty"},
    "rename NOT NULL column": {"forward": "qty"},
    "widen int to long": {"forward": "qty"},
    "narrow long to int": {"backward": "total"},
    "string to int": {"backward": "name", "forward": "name"},
    "float to double": {"forward": "score"},
}


def doc(table: TableSchema, previous: TableSchema | None = None, previous_doc: dict[str, Any] | None = None
        ) -> dict[str, Any]:
    return avro_schema(table, source_id="shop", previous=previous, previous_doc=previous_doc)


V1_DOC = doc(V1)


def new_doc(change: str) -> dict[str, Any]:
    return doc(CHANGES[change][0], V1, V1_DOC)


def expected(level: str, backward: bool, forward: bool) -> bool:
    if level == "NONE":
        return True
    if level.startswith("BACKWARD"):
        return backward
    if level.startswith("FORWARD"):
        return forward
    return backward and forward


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("change", CHANGES)
def test_the_confluent_matrix_on_each_change(change: str, level: str) -> None:
    _, backward, forward = CHANGES[change]
    result = check(new_doc(change), [(1, V1_DOC)], level)
    assert result.compatible is expected(level, backward, forward), result.describe()
    assert result.level == level
    assert (result.problems == ()) is result.compatible


def test_levels_are_the_seven_confluent_ones() -> None:
    assert sorted(LEVELS) == sorted(["BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL",
                                     "FULL_TRANSITIVE", "NONE"])


@pytest.mark.parametrize("change", NAMED)
def test_each_problem_names_its_column_version_and_direction(change: str) -> None:
    result = check(new_doc(change), [(7, V1_DOC)], "FULL")
    assert not result.compatible
    named = {(problem.direction, problem.column, problem.against_version) for problem in result.problems}
    assert named == {(direction, column, 7) for direction, column in NAMED[change].items()}
    for problem in result.problems:
        assert f"column {problem.column!r}" in problem.describe()
        assert "version 7" in problem.describe()


def test_describe_reads_as_a_sentence() -> None:
    result = check(new_doc("add NOT NULL column without default"), [(1, V1_DOC)], "BACKWARD")
    assert result.describe() == ("not BACKWARD compatible: column 'code': the new schema cannot read data written "
                                 "with version 1 (field code has no default value)")
    forward = check(new_doc("narrow long to int"), [(3, new_doc("add nullable column"))], "FORWARD")
    assert forward.compatible and forward.describe() == "compatible (FORWARD)"
    backward = check(new_doc("narrow long to int"), [(3, V1_DOC)], "BACKWARD")
    assert backward.describe() == ("not BACKWARD compatible: column 'total': the new schema cannot read data written "
                                   "with version 3 (reader type: int not compatible with writer type: long)")


def test_a_column_made_not_null_is_named_although_avro_reports_it_at_the_record() -> None:
    """Avro's checker gives a writer union (a nullable column) no location below the record; the result still says
    which column it is."""
    v2 = with_columns(dataclasses.replace(NAME, nullable=False), QTY, TOTAL, SCORE)
    result = check(doc(v2, V1, V1_DOC), [(1, V1_DOC)], "BACKWARD")
    assert not result.compatible
    assert [(problem.column, problem.direction) for problem in result.problems] == [("name", "backward")]
    assert "NULL" in result.problems[0].reason
    # and the other way round: dropping NOT NULL is not FORWARD compatible, on the column it drops it from
    made_nullable = with_columns(NAME, dataclasses.replace(QTY, nullable=True), TOTAL, SCORE)
    forward = check(doc(made_nullable, V1, V1_DOC), [(1, V1_DOC)], "FORWARD")
    assert [(problem.column, problem.direction) for problem in forward.problems] == [("qty", "forward")]


def test_two_failing_columns_each_get_their_own_reason() -> None:
    v2 = with_columns(retyped(NAME, "integer", "integer"), QTY, TOTAL, SCORE,
                      Column("code", "text", "text", nullable=False, ordinal=6))
    result = check(doc(v2, V1, V1_DOC), [(1, V1_DOC)], "BACKWARD")
    reasons = {problem.column: problem.reason for problem in result.problems}
    assert set(reasons) == {"name", "code"}
    assert reasons["code"] == "field code has no default value"
    assert reasons["name"] == "reader union lacking writer type: STRING"  # nullable integer reading nullable text


def test_a_problem_names_the_source_column_not_the_avro_field() -> None:
    v2 = with_columns(NAME, QTY, TOTAL, SCORE, Column("Order Date", "date", "date", nullable=False, ordinal=6))
    result = check(doc(v2, V1, V1_DOC), [(1, V1_DOC)], "BACKWARD")
    assert [problem.column for problem in result.problems] == ["Order Date"]
    assert result.problems[0].reason == "field Order_Date has no default value"


def test_a_record_level_problem_names_the_record() -> None:
    renamed_table = dataclasses.replace(V1, name="articles")
    result = check(doc(renamed_table), [(1, V1_DOC)], "BACKWARD")
    assert not result.compatible
    assert [problem.column for problem in result.problems] == [None]
    assert result.problems[0].describe().startswith("the record: the new schema cannot read data written with "
                                                    "version 1")


# --- transitive levels ------------------------------------------------------------------------------------------

def history(*tables: TableSchema) -> list[tuple[int, dict[str, Any]]]:
    """Each table as the next version, with the aliases the registry would give it."""
    out: list[tuple[int, dict[str, Any]]] = []
    previous: TableSchema | None = None
    for number, table in enumerate(tables, start=1):
        out.append((number, doc(table, previous, out[-1][1] if out else None)))
        previous = table
    return out


def test_re_adding_a_not_null_column_without_default_fails_backward_against_the_version_without_it() -> None:
    """v1 has NOT NULL x, v2 drops it, v3 re-adds it NOT NULL without default. Avro: v3 cannot read v2's data (no x,
    no default) but reads v1's; so BACKWARD refuses, and BACKWARD_TRANSITIVE refuses for version 2 only. Forward,
    both older versions read v3's data (v2 ignores x, v1 finds it): FORWARD and FORWARD_TRANSITIVE accept."""
    x = Column("x", "text", "text", nullable=False, ordinal=6)
    v1, v2 = with_columns(NAME, x), with_columns(NAME)
    v3 = with_columns(NAME, dataclasses.replace(x, ordinal=7))
    versions = history(v1, v2, v3)
    new, previous = versions[-1][1], versions[:-1]
    backward = check(new, previous, "BACKWARD")
    transitive = check(new, previous, "BACKWARD_TRANSITIVE")
    assert not backward.compatible and not transitive.compatible
    assert [(p.column, p.against_version) for p in backward.problems] == [("x", 2)]
    assert [(p.column, p.against_version) for p in transitive.problems] == [("x", 2)]
    assert check(new, previous, "FORWARD").compatible
    assert check(new, previous, "FORWARD_TRANSITIVE").compatible


def test_backward_transitive_refuses_what_backward_accepts() -> None:
    """v1 x text, v2 drops x, v3 adds x as a nullable integer: v3 reads v2 (x defaults to null) but not v1 (text
    into an integer)."""
    v1 = with_columns(NAME, Column("x", "text", "text", nullable=False, ordinal=6))
    v2 = with_columns(NAME)
    v3 = with_columns(NAME, Column("x", "integer", "integer", nullable=True, ordinal=7))
    versions = history(v1, v2, v3)
    new, previous = versions[-1][1], versions[:-1]
    assert check(new, previous, "BACKWARD").compatible
    transitive = check(new, previous, "BACKWARD_TRANSITIVE")
    assert not transitive.compatible
    assert [(p.column, p.against_version, p.direction) for p in transitive.problems] == [("x", 1, "backward")]
    assert "version 1" in transitive.describe() and "version 2" not in transitive.describe()


def test_forward_and_full_transitive_refuse_what_the_plain_levels_accept() -> None:
    v1 = with_columns(NAME, Column("x", "text", "text", nullable=True, ordinal=6))
    v2 = with_columns(NAME)
    v3 = with_columns(NAME, Column("x", "integer", "integer", nullable=True, ordinal=7))
    versions = history(v1, v2, v3)
    new, previous = versions[-1][1], versions[:-1]
    assert check(new, previous, "FORWARD").compatible
    assert check(new, previous, "FULL").compatible
    forward = check(new, previous, "FORWARD_TRANSITIVE")
    assert [(p.column, p.against_version, p.direction) for p in forward.problems] == [("x", 1, "forward")]
    full = check(new, previous, "FULL_TRANSITIVE")
    assert sorted((p.column, p.against_version, p.direction) for p in full.problems) == [
        ("x", 1, "backward"), ("x", 1, "forward")]


# --- edges ------------------------------------------------------------------------------------------------------

def test_a_first_version_is_compatible_at_every_level() -> None:
    for level in LEVELS:
        assert check(V1_DOC, [], level).compatible


def test_an_unknown_level_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown compatibility level 'SIDEWAYS'; one of BACKWARD, .*NONE"):
        check(V1_DOC, [(1, V1_DOC)], "SIDEWAYS")


def test_to_dict_is_json_and_carries_each_message() -> None:
    result = check(new_doc("string to int"), [(4, V1_DOC)], "FULL")
    data = json.loads(json.dumps(result.to_dict()))
    assert data["level"] == "FULL" and data["compatible"] is False
    assert {(p["column"], p["against_version"], p["direction"]) for p in data["problems"]} == {
        ("name", 4, "backward"), ("name", 4, "forward")}
    assert all(p["message"].startswith("column 'name': ") for p in data["problems"])
