"""Upstream, downstream (table and column level, with max_depth) and impact analysis."""

from __future__ import annotations

import json

import pytest

from airflow_provider_cdc.lineage import downstream, impact, upstream
from lineage.util import COUNTRIES, LAKE, SHOP, WAREHOUSE, graph

QUARANTINE = f"{WAREHOUSE}._cdc_quarantine"


def ids(result: dict) -> set[str]:
    return {n["id"] for n in result["nodes"]}


def test_the_impact_of_users_email():
    result = impact(graph(), "users.email")
    assert result["node"] == f"{SHOP}.users#email" and result["kind"] == "column"
    assert {f"{WAREHOUSE}.users#masked_email", f"{WAREHOUSE}.users#masked_data", f"{WAREHOUSE}.users#email",
            f"{LAKE}/users#masked_email", f"{LAKE}/users#email"} == set(result["columns"])
    assert result["rules"] == ["mask_email", "mask_pii"]
    assert result["suites"] == ["users_checks"]
    assert result["dags"] == ["cdc_shop", "cdc_warehouse_lake"]
    assert {"cdc_shop.capture", "cdc_shop.load", "cdc_warehouse_lake.capture"} <= set(result["tasks"])
    # The email check quarantines, and mask_email's failures would too.
    assert result["datasets"] == sorted([f"{WAREHOUSE}.users", QUARANTINE, f"{LAKE}/users"])
    assert result["severity"] == "high"
    assert any("masked_email" in r and "mask_email" in r for r in result["reasons"])
    assert len(result["critical_path"]) == 3 and result["critical_path"][0] == f"{SHOP}.users#email"
    assert result["critical_path"][-1].startswith(f"{LAKE}/users#")
    json.dumps(result)


def test_severity_levels():
    g = graph()
    key = impact(g, "users.id")
    assert key["severity"] == "high" and any("key columns" in r for r in key["reasons"])
    price = impact(g, "users.price")
    assert price["severity"] == "medium" and price["rules"] == ["total"]
    assert f"{WAREHOUSE}.users#total" in price["columns"]
    assert impact(g, f"{LAKE}/users#email")["severity"] == "low"  # nothing downstream of the lake


def test_the_impact_of_a_dataset():
    result = impact(graph(), "users")
    assert result["kind"] == "dataset"
    assert {f"{WAREHOUSE}.users", QUARANTINE, f"{LAKE}/users"} <= set(result["datasets"])
    assert {"mask_email", "mask_pii", "total", "active_only", "enrich_country"} <= set(result["rules"])
    assert result["suites"] == ["users_checks"]
    assert result["dags"] == ["cdc_shop", "cdc_warehouse_lake"]
    assert result["critical_path"] == [f"{SHOP}.users", f"{WAREHOUSE}.users", f"{LAKE}/users"]
    assert result["severity"] == "high"  # its key column is affected


def test_table_level_depth():
    g = graph()
    one = downstream(g, "users", max_depth=1)
    assert one["level"] == "table" and ids(one) == {f"{WAREHOUSE}.users", QUARANTINE}
    two = downstream(g, "users", max_depth=2)
    assert ids(two) == {f"{WAREHOUSE}.users", QUARANTINE, f"{LAKE}/users"}
    assert {n["id"]: n["depth"] for n in two["nodes"]}[f"{LAKE}/users"] == 2
    assert ids(upstream(g, f"{LAKE}/users", max_depth=1)) == {f"{WAREHOUSE}.users"}
    assert ids(upstream(g, f"{LAKE}/users", max_depth=2)) == {f"{WAREHOUSE}.users", f"{SHOP}.users", COUNTRIES}
    assert ids(downstream(g, "users", max_depth=0)) == set()
    assert ids(downstream(g, "users")) == ids(two)  # no limit: everything


def test_column_level_depth():
    g = graph()
    one = downstream(g, "users.email", max_depth=1)
    assert one["level"] == "column"
    assert ids(one) == {f"{WAREHOUSE}.users#email", f"{WAREHOUSE}.users#masked_email",
                        f"{WAREHOUSE}.users#masked_data"}
    two = downstream(g, "users.email", max_depth=2)
    assert ids(two) - ids(one) == {f"{LAKE}/users#email", f"{LAKE}/users#masked_email"}
    masked = next(e for e in one["edges"] if e["target"] == f"{WAREHOUSE}.users#masked_email")
    assert (masked["rule_id"], masked["masking"]) == ("mask_email", True)
    lake = f"{LAKE}/users#masked_email"
    assert ids(upstream(g, lake, max_depth=1)) == {f"{WAREHOUSE}.users#masked_email"}
    # Two steps up: email, through mask_email, and the filter deciding which rows exist at all.
    assert ids(upstream(g, lake, max_depth=2)) == {f"{WAREHOUSE}.users#masked_email", f"{SHOP}.users#email",
                                                   f"{SHOP}.users#status"}


def test_a_filter_input_reaches_the_sink_table():
    result = downstream(graph(), "users.status", max_depth=1)
    assert f"{WAREHOUSE}.users" in ids(result)
    edge = next(e for e in result["edges"] if e["target"] == f"{WAREHOUSE}.users")
    assert (edge["kind"], edge["type"], edge["subtype"], edge["rule_id"]) == ("filter", "INDIRECT", "FILTER",
                                                                              "active_only")


def test_a_join_reference_is_upstream_of_its_targets():
    g = graph()
    column = upstream(g, f"{WAREHOUSE}.users#country_name", max_depth=1)
    assert {f"{COUNTRIES}#name", f"{SHOP}.users#country_code"} <= ids(column)
    assert COUNTRIES in column["datasets"]
    assert COUNTRIES in ids(upstream(g, f"{WAREHOUSE}.users", max_depth=1))
    assert f"{LAKE}/users#country_name" in ids(downstream(g, f"{COUNTRIES}#name"))


def test_bad_questions_are_refused():
    g = graph()
    with pytest.raises(ValueError, match="max_depth"):
        downstream(g, "users", max_depth=-1)
    with pytest.raises(ValueError, match="dataset or a column"):
        upstream(g, "rule:mask_email")
    with pytest.raises(ValueError, match="dataset or a column"):
        impact(g, "dag:cdc_shop")


def test_the_graph_answers_the_same_questions():
    g = graph()
    assert g.impact("users.email") == impact(g, "users.email")
    assert g.upstream("users", 2) == upstream(g, "users", 2)
    assert g.downstream("users.email", 1) == downstream(g, "users.email", 1)
