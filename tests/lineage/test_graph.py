"""The lineage graph of a config: datasets, columns, rules, suites and jobs, and the edges between them."""

from __future__ import annotations

import json

import pytest

from airflow_provider_cdc.lineage import build_graph
from airflow_provider_cdc.lineage.graph import (
    APPLIES,
    CHECKS,
    COLUMN_EDGE,
    CONTAINS,
    FEEDS,
    FILTER,
    PRECEDES,
    READS,
    WRITES,
    LineageGraph,
)
from lineage.util import (
    COUNTRIES,
    LAKE,
    PASSWORD,
    SCHEMAS,
    SHOP,
    USER,
    USERS,
    WAREHOUSE,
    col,
    config,
    graph,
    short,
    table,
)


def edges_between(g: LineageGraph, source: str, target: str, kind: str = COLUMN_EDGE) -> list[dict]:
    return [e for e in g.edges(kind) if e["source"] == source and e["target"] == target]


def one_edge(g: LineageGraph, source: str, target: str, kind: str = COLUMN_EDGE) -> dict:
    found = edges_between(g, source, target, kind)
    assert len(found) == 1, (source, target, g.edges(kind))
    return found[0]


def test_masked_email_comes_from_email_through_the_masking_rule():
    g = graph()
    edge = one_edge(g, f"{SHOP}.users#email", f"{WAREHOUSE}.users#masked_email")
    assert (edge["rule_id"], edge["rule_ids"], edge["type"], edge["subtype"]) == (
        "mask_email", ["mask_email"], "DIRECT", "TRANSFORMATION")
    assert edge["masking"] is True
    rule = g.node("rule:mask_email")
    # The seed masks by slicing, which no analysis can tell from a substring: the rule's own name declares it.
    assert (rule["masking"], rule["masking_reason"], rule["rule_type"]) == (True, "declared", "map")
    assert rule["name"] == "Mask Email Addresses"
    assert one_edge(g, "rule:mask_email", f"{WAREHOUSE}.users#masked_email", "defines")


def test_a_rule_calling_mask_is_masking_by_its_expression():
    rules = [{"rule_id": "phone_tail", "rule_type": "map", "source_fields": ["phone"], "target_field": "phone_tail",
              "expression": "{{ mask(phone) }}"}]
    g = graph(config(rules=rules))
    assert g.node("rule:phone_tail")["masking_reason"] == "function"
    assert one_edge(g, f"{SHOP}.users#phone", f"{WAREHOUSE}.users#phone_tail")["masking"] is True


def test_columns_passed_through_unchanged_are_identity_edges():
    g = graph()
    edge = one_edge(g, f"{SHOP}.users#id", f"{WAREHOUSE}.users#id")
    assert (edge["rule_id"], edge["rule_ids"], edge["subtype"], edge["masking"]) == (None, [], "IDENTITY", False)
    assert g.node(f"{WAREHOUSE}.users#id")["key"] is True
    # the source field stays beside its masked copy
    assert one_edge(g, f"{SHOP}.users#email", f"{WAREHOUSE}.users#email")["rule_id"] is None


def test_seed_maps_aggregates_and_filters():
    g = graph()
    assert {short(e["source"]) for e in g.edges(COLUMN_EDGE) if e["target"] == f"{WAREHOUSE}.users#masked_data"} \
        == {"shop.public.users#email", "shop.public.users#phone"}
    total = one_edge(g, f"{SHOP}.users#price", f"{WAREHOUSE}.users#total")
    assert (total["rule_id"], total["subtype"], total["masking"]) == ("total", "TRANSFORMATION", False)
    amounts = one_edge(g, f"{SHOP}.payments#amount2", f"{WAREHOUSE}.payments#total")
    assert (amounts["rule_id"], amounts["subtype"]) == ("amounts", "AGGREGATION")
    status = one_edge(g, f"{SHOP}.users#status", f"{WAREHOUSE}.users", FILTER)
    assert (status["rule_id"], status["type"], status["subtype"]) == ("active_only", "INDIRECT", "FILTER")
    assert g.node("rule:active_only")["rule_type"] == "filter"
    assert edges_between(g, "rule:amounts", f"{WAREHOUSE}.payments", APPLIES)
    assert not edges_between(g, "rule:amounts", f"{WAREHOUSE}.users", APPLIES)  # scoped to payments


def test_rules_that_read_columns_a_table_lacks_are_reported_not_drawn():
    g = graph()
    # The seed's mask_email has no table scope, so it also runs on payments, which has no email.
    assert any("public.payments" in p and "'mask_email'" in p and "'email'" in p for p in g.problems)
    assert not [e for e in g.edges(COLUMN_EDGE) if e["target"] == f"{WAREHOUSE}.payments#masked_email"]


def test_a_join_reads_its_reference_table():
    g = graph()
    assert g.node(COUNTRIES)["roles"] == ["reference"]
    direct = one_edge(g, f"{COUNTRIES}#name", f"{WAREHOUSE}.users#country_name")
    assert (direct["rule_id"], direct["type"], direct["subtype"]) == ("enrich_country", "DIRECT", "IDENTITY")
    key = one_edge(g, f"{SHOP}.users#country_code", f"{WAREHOUSE}.users#country_name")
    assert (key["type"], key["subtype"]) == ("INDIRECT", "JOIN")
    assert one_edge(g, COUNTRIES, f"{WAREHOUSE}.users", FEEDS)["via"] == "join"
    assert one_edge(g, COUNTRIES, "task:cdc_shop.transform", READS)


def test_jobs_are_the_dag_and_its_tasks_in_order():
    g = graph()
    order = [(short(e["source"]), short(e["target"])) for e in g.edges(PRECEDES) if "cdc_shop." in e["source"]]
    assert sorted(order) == sorted([("task:cdc_shop.wait_for_changes", "task:cdc_shop.capture"),
                                    ("task:cdc_shop.capture", "task:cdc_shop.transform"),
                                    ("task:cdc_shop.transform", "task:cdc_shop.validate"),
                                    ("task:cdc_shop.validate", "task:cdc_shop.load"),
                                    ("task:cdc_shop.load", "task:cdc_shop.commit")])
    # No rules and no suites: no transform or validate task.
    lake_tasks = {e["target"] for e in g.edges(CONTAINS) if e["source"] == "dag:cdc_warehouse_lake"}
    assert lake_tasks == {f"task:cdc_warehouse_lake.{t}" for t in ("wait_for_changes", "capture", "load", "commit")}
    assert one_edge(g, f"{SHOP}.users", "task:cdc_shop.capture", READS)
    assert one_edge(g, "task:cdc_shop.load", f"{WAREHOUSE}.users", WRITES)
    assert one_edge(g, "task:cdc_shop.load", f"{WAREHOUSE}._cdc_quarantine", WRITES)
    assert one_edge(g, f"{SHOP}.users", f"{WAREHOUSE}.users", FEEDS)["dag_id"] == "cdc_shop"


def test_a_fused_source_has_one_task_doing_it_all():
    sources = [{"id": "shop", "type": "postgresql", "connection_string": "postgresql://h/shop", "tables": ["users"],
                "sink": "warehouse", "mode": "fused"}]
    g = graph(config(sources=sources))
    assert {e["target"] for e in g.edges(CONTAINS)} == {"task:cdc_shop.wait_for_changes", "task:cdc_shop.fused"}
    assert one_edge(g, "postgres://h:5432/shop.public.users", "task:cdc_shop.fused", READS)
    assert one_edge(g, "task:cdc_shop.fused", f"{WAREHOUSE}.users", WRITES)


def test_suites_check_the_sink_columns_and_failures_go_to_the_quarantine():
    g = graph()
    email = one_edge(g, "suite:users_checks", f"{WAREHOUSE}.users#email", CHECKS)
    assert (email["check"], email["policy"]) == ("pattern_email", "quarantine")
    assert one_edge(g, "suite:users_checks", f"{WAREHOUSE}.users#status", CHECKS)["policy"] == "warn"
    quarantine = f"{WAREHOUSE}._cdc_quarantine"
    assert g.node(quarantine)["roles"] == ["quarantine"]
    assert g.node(f"{WAREHOUSE}.users")["quarantine"] == quarantine
    assert one_edge(g, f"{SHOP}.users", quarantine, FEEDS)["via"] == "quarantine"
    assert not [d for d in g.datasets() if d.startswith(LAKE) and "_cdc_quarantine" in d]  # nothing can fail there


def test_a_sink_another_source_captures_is_one_dataset_with_two_roles():
    g = graph()
    assert g.node(f"{WAREHOUSE}.users")["roles"] == ["source", "sink"]
    assert g.node(f"{WAREHOUSE}.users")["source_ids"] == ["shop", "warehouse_lake"]
    assert one_edge(g, f"{WAREHOUSE}.users#masked_email", f"{LAKE}/users#masked_email")["rule_id"] is None


def test_tables_without_a_schema_appear_without_columns():
    g = graph(schemas={("shop", "public.users"): USERS})
    assert f"{SHOP}.payments" in g and f"{WAREHOUSE}.payments" in g
    assert g.columns(f"{SHOP}.payments") == [] and g.columns(f"{WAREHOUSE}.payments") == []
    assert one_edge(g, f"{SHOP}.payments", f"{WAREHOUSE}.payments", FEEDS)
    assert edges_between(g, "rule:amounts", f"{WAREHOUSE}.payments", APPLIES)


def test_conn_id_entries_take_their_url_from_urls():
    connectors = [{"id": "warehouse", "type": "postgresql", "conn_id": "warehouse_db"},
                  {"id": "lake", "type": "file", "connection_string": "/tmp/lake"},
                  {"id": "crm", "type": "mysql", "conn_id": "crm_db"}]
    unresolved = graph(config(connectors=connectors))
    assert "cdc://warehouse/public.users" in unresolved
    assert unresolved.node("cdc://warehouse/public.users")["resolved"] is False
    assert any("'warehouse'" in p and "urls" in p for p in unresolved.problems)
    resolved = graph(config(connectors=connectors),
                     urls={"warehouse": f"postgresql://{USER}:{PASSWORD}@wh.example.com/warehouse",
                           "crm": f"mysql://{USER}:{PASSWORD}@crm.example.com/crm"})
    assert f"{WAREHOUSE}.users" in resolved and COUNTRIES in resolved
    assert "file:///tmp/lake/public/users" in resolved


def test_node_ids_are_readable_stable_and_never_hold_a_credential():
    g = graph()
    assert {"rule:mask_email", "suite:users_checks", "dag:cdc_shop", "task:cdc_shop.capture",
            f"{SHOP}.users", f"{SHOP}.users#email"} <= set(g.nodes())
    text = json.dumps(g.to_dict())  # JSON-safe, whole
    assert USER not in text and PASSWORD not in text
    assert json.dumps(graph().to_dict()) == text  # the same config, the same graph


def test_short_names_resolve_preferring_source_tables():
    g = graph()
    assert g.resolve("users") == f"{SHOP}.users"
    assert g.resolve("users.email") == f"{SHOP}.users#email"
    assert g.resolve("shop.public.users.email") == f"{SHOP}.users#email"
    assert g.resolve("warehouse_lake:users") == f"{WAREHOUSE}.users"
    assert g.resolve("warehouse.public.users.masked_email") == f"{WAREHOUSE}.users#masked_email"
    with pytest.raises(LookupError, match="no column 'nope'.*email"):
        g.resolve("users.nope")
    with pytest.raises(LookupError, match="no dataset or column"):
        g.resolve("nothing")


def test_an_ambiguous_short_name_lists_the_candidates():
    sources = [{"id": "a", "type": "postgresql", "connection_string": "postgresql://h1/one", "tables": ["users"],
                "sink": "warehouse"},
               {"id": "b", "type": "postgresql", "connection_string": "postgresql://h2/two", "tables": ["users"],
                "sink": "warehouse", "target_schema": "b"}]
    g = build_graph(config(sources=sources, rules=[]), schemas=SCHEMAS)
    with pytest.raises(LookupError, match="2 source datasets"):
        g.resolve("users")
    assert g.resolve("b:users") == "postgres://h2:5432/two.public.users"


def test_rule_chains_renames_overwrites_and_drops():
    rules = [
        {"rule_id": "domain_tmp", "rule_type": "map", "tables": ["users"], "source_fields": ["email"],
         "target_field": "tmp_domain", "expression": "{{ email.split('@')[1] }}"},
        {"rule_id": "domain", "rule_type": "map", "tables": ["users"], "source_fields": ["tmp_domain"],
         "target_field": "domain", "expression": "{{ tmp_domain | upper }}", "drop_fields": ["tmp_domain"]},
        {"rule_id": "rename_phone", "rule_type": "map", "tables": ["users"], "rename_from": "phone",
         "target_field": "telephone"},
        {"rule_id": "hide_email", "rule_type": "map", "tables": ["users"], "source_fields": ["email"],
         "target_field": "email", "expression": "{{ mask(email) }}"},
    ]
    g = graph(config(rules=rules))
    assert not g.problems
    chain = one_edge(g, f"{SHOP}.users#email", f"{WAREHOUSE}.users#domain")
    assert chain["rule_ids"] == ["domain_tmp", "domain"] and chain["rule_id"] == "domain"
    assert f"{WAREHOUSE}.users#tmp_domain" not in g  # dropped: it never reaches the sink
    rename = one_edge(g, f"{SHOP}.users#phone", f"{WAREHOUSE}.users#telephone")
    assert (rename["rule_id"], rename["subtype"], rename["masking"]) == ("rename_phone", "IDENTITY", False)
    assert f"{WAREHOUSE}.users#phone" not in g
    overwritten = one_edge(g, f"{SHOP}.users#email", f"{WAREHOUSE}.users#email")  # no identity edge beside it
    assert (overwritten["rule_id"], overwritten["masking"]) == ("hide_email", True)


def test_a_mongodb_wildcard_expands_to_the_known_collections():
    sources = [{"id": "docs", "type": "mongodb", "connection_string": f"mongodb://{USER}:{PASSWORD}@m1/shop",
                "tables": ["shop.*"], "sink": "warehouse", "target_schema": "mongodb_shop"}]
    schemas = {("docs", f"shop.{name}"): table(name, col("_id", pk=True), col("email"), schema="shop")
               for name in ("users", "orders")}
    g = build_graph(config(sources=sources, rules=[], suites=[]), schemas=schemas)
    assert {"mongodb://m1:27017/shop.users", "mongodb://m1:27017/shop.orders"} <= set(g.datasets("source"))
    assert "postgres://wh.example.com:5432/warehouse.mongodb_shop.orders" in g.datasets("sink")
    assert "mongodb://m1:27017/shop.*" in build_graph(config(sources=sources, rules=[], suites=[]))
