"""The frame GX judges: judged rows indexed by their input position, typed values, text and type companions."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from airflow_provider_cdc.quality import compile_rules
from airflow_provider_cdc.quality.frame import build_frame, latest_changes, plan_frame
from airflow_provider_cdc.quality.typecheck import unconvertible
from quality.util import col, schema_of, suite, table_of

SCHEMA = schema_of(col("id", "integer", pk=True), col("n", "integer"), col("price", "decimal", precision=12, scale=2),
                   col("born", "date"), col("seen", "timestamptz"), col("doc", "json"))


def frame_of(rules, events):
    checks, problems = compile_rules(suite(*rules))
    assert problems == []
    table = table_of(SCHEMA, events)
    return build_frame(table, SCHEMA, plan_frame(checks, SCHEMA))


def test_the_frame_holds_judged_rows_indexed_by_their_input_position_with_typed_values():
    frame = frame_of(
        [{"type": "range", "column": "n", "min": 0}, {"type": "range", "column": "price", "min": 0},
         {"type": "range", "column": "born", "min": "2024-01-01"}, {"type": "range", "column": "seen", "min": "2024"},
         {"type": "not_null", "column": "id"}, {"type": "pattern", "column": "price", "pattern": "x"},
         {"type": "type", "column": "doc", "expected": "json"}],
        [("d", {"id": "1"}), ("c", {"id": "2", "n": "5", "price": "1.50", "born": "2024-02-29",
                                    "seen": "2024-05-01T12:00:00Z", "doc": "{bad"}),
         ("t", {}), ("u", {"id": "3", "n": None, "price": "NaN", "born": "infinity", "doc": "[]"})])
    data = frame.data
    assert data.index.name == "_cdc_row" and data.index.tolist() == [1, 3]
    assert str(data["id"].dtype) == "int64" and str(data["n"].dtype) == "Int64"
    assert data["n"].tolist()[0] == 5 and data["n"].isna().tolist() == [False, True]
    assert str(data["price"].dtype) == "float64" and data["price"].tolist()[0] == 1.5
    assert data["born"].tolist()[0] == dt.date(2024, 2, 29) and data["born"].isna().tolist() == [False, True]
    assert str(data["seen"].dtype) == "datetime64[us, UTC]"
    assert data["_cdc_text:price"].tolist() == ["1.50", "NaN"]
    assert data["_cdc_type:doc:json"].tolist()[0] == "{bad" and data["_cdc_type:doc:json"].isna().tolist()[1]
    assert not frame.guarded


def test_latest_changes_marks_rows_superseded_by_a_later_change_delete_or_truncate():
    schema = schema_of(col("id", "integer", pk=True), col("v"))
    table = table_of(schema, [("c", {"id": "1"}), ("u", {"id": "1"}), ("c", {"id": "2"}), ("d", {"id": "2"}),
                              ("c", {"id": "3"})])
    assert latest_changes(table, ["id"]).tolist() == [False, True, False, True, True]
    truncated = table_of(schema, [("c", {"id": "1"}), ("t", {}), ("c", {"id": "2"})])
    assert latest_changes(truncated, ["id"]).tolist() == [False, True, True]
    assert latest_changes(table, []).tolist() == [True] * 5


def test_unconvertible_is_vectorised_and_finds_every_bad_value():
    values = pa.array([str(i) for i in range(10_000)] + ["x", "99999999999999999999", None, "7"])
    assert np.flatnonzero(unconvertible(values, "integer").to_numpy(zero_copy_only=False)).tolist() == [10_000,
                                                                                                          10_001]
    dates = pa.array(["2024-02-29", "2023-02-29", "2024-04-31", "-infinity", None])
    assert unconvertible(dates, "date").to_pylist() == [False, True, True, False, False]
