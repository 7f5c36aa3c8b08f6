"""Join rules in the engine, with a lookup that is a plain function over a dict (the readers have their own tests
against real servers): one lookup per batch, the TTL cache on an injected clock, NULL keys, missing rows as NULL or
quarantined, composite keys, typed targets, deletes, config problems and lineage."""

from __future__ import annotations

import decimal
from typing import Any

import pytest

from airflow_provider_cdc.transform import FunctionRegistry, RuleConfigError, RuleSet
from airflow_provider_cdc.transform.errors import JoinLookupError

from .util import col, column, data_rows, schema_of, table_of

ORDERS = schema_of(col("id", "integer", pk=True, ordinal=1), col("country_code", ordinal=2),
                   col("region", "integer", ordinal=3), col("amount", "decimal", precision=10, scale=2, ordinal=4),
                   name="orders")

COUNTRIES = {
    ("FR",): {"code": "FR", "name": "France", "population": 68_000_000, "vat": decimal.Decimal("0.20")},
    ("DE",): {"code": "DE", "name": "Germany", "population": 84_000_000, "vat": decimal.Decimal("0.19")},
}

JOIN = {"rule_id": "enrich", "rule_type": "join", "tables": ["public.orders"],
        "parameters": {"table": "public.countries", "on": {"country_code": "code"},
                       "fields": {"name": "country_name", "vat": "vat_rate"}}}


class FakeLookup:
    """A reference table in memory; records every call."""

    def __init__(self, rows: dict[tuple[Any, ...], dict[str, Any]]) -> None:
        self.rows = rows
        self.calls: list[tuple[str | None, str, list[str], list[tuple[Any, ...]]]] = []

    def __call__(self, connector: str | None, table: str, key_columns: list[str],
                 keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], dict[str, Any]]:
        self.calls.append((connector, table, key_columns, list(keys)))
        return {key: self.rows[key] for key in keys if key in self.rows}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ruleset(*configs: dict[str, Any], lookup: Any, clock: Clock | None = None,
            connectors: list[str] | None = None) -> RuleSet:
    return RuleSet.from_config(list(configs), functions=FunctionRegistry(), lookup=lookup, clock=clock,
                               connectors=connectors)


def with_params(**parameters: Any) -> dict[str, Any]:
    return {**JOIN, "parameters": {**JOIN["parameters"], **parameters}}


def orders(*events: tuple[Any, ...]):
    return table_of(ORDERS, events)


def test_rows_get_the_reference_fields_typed_and_deletes_keep_their_keys():
    lookup = FakeLookup(COUNTRIES)
    result = ruleset(JOIN, lookup=lookup).apply(orders(
        ("c", {"id": "1", "country_code": "FR", "amount": "10.00"}),
        ("u", {"id": "2", "country_code": "DE", "amount": "5.00"}),
        ("r", {"id": "3", "country_code": "FR"}),
        ("d", {"id": "4", "country_code": "FR"}),
    ), ORDERS)
    assert column(result, "country_name") == ["France", "Germany", "France", None]
    assert column(result, "vat_rate") == ["0.2", "0.19", "0.2", None] or \
        column(result, "vat_rate") == ["0.20", "0.19", "0.20", None]
    assert column(result, "_cdc_op") == ["c", "u", "r", "d"] and column(result, "id") == ["1", "2", "3", "4"]
    types = {c.name: c for c in result.schema.columns}
    assert types["country_name"].logical_type == "text" and types["country_name"].derived
    assert types["vat_rate"].logical_type == "decimal" and types["vat_rate"].derived
    # one call, distinct keys only, the key as the value contract's Python values
    assert len(lookup.calls) == 1
    connector, table, key_columns, keys = lookup.calls[0]
    assert (connector, table, key_columns) == (None, "public.countries", ["code"])
    assert sorted(keys) == [("DE",), ("FR",)]
    assert result.failures == [] and result.paths["enrich"] == "lookup"


def test_one_lookup_per_batch_and_the_cache_lives_ttl_seconds():
    lookup = FakeLookup(COUNTRIES)
    clock = Clock()
    rules = ruleset(with_params(ttl_seconds=60), lookup=lookup, clock=clock)
    batch = orders(*[("c", {"id": str(i), "country_code": "FR" if i % 2 else "DE"}) for i in range(1, 101)])
    first = rules.apply(batch, ORDERS)
    assert len(lookup.calls) == 1 and len(lookup.calls[0][3]) == 2
    assert first.counts["join_keys_looked_up"] == 2

    clock.now += 59  # within the TTL: no lookup at all, a new key alone is looked up
    again = rules.apply(orders(("c", {"id": "1", "country_code": "FR"}), ("c", {"id": "2", "country_code": "XX"})),
                        ORDERS)
    assert len(lookup.calls) == 2 and lookup.calls[1][3] == [("XX",)]
    assert column(again, "country_name") == ["France", None] and again.counts["join_cache_hits"] == 1

    rules.apply(orders(("c", {"id": "1", "country_code": "XX"})), ORDERS)  # a miss is cached too
    assert len(lookup.calls) == 2

    lookup.rows = {("FR",): {**COUNTRIES[("FR",)], "name": "République française"}}
    clock.now += 2  # FR's entry (from t=1000) expired: looked up again, and the new value is seen
    later = rules.apply(orders(("c", {"id": "1", "country_code": "FR"})), ORDERS)
    assert len(lookup.calls) == 3 and column(later, "country_name") == ["République française"]


def test_ttl_zero_caches_within_the_batch_only():
    lookup = FakeLookup(COUNTRIES)
    rules = ruleset(with_params(ttl_seconds=0), lookup=lookup, clock=Clock())
    batch = orders(("c", {"id": "1", "country_code": "FR"}), ("c", {"id": "2", "country_code": "FR"}))
    rules.apply(batch, ORDERS)
    rules.apply(batch, ORDERS)
    assert [len(call[3]) for call in lookup.calls] == [1, 1]


def test_a_null_key_gets_null_targets_without_a_lookup():
    lookup = FakeLookup(COUNTRIES)
    result = ruleset(JOIN, lookup=lookup).apply(orders(("c", {"id": "1"}), ("c", {"id": "2"})), ORDERS)
    assert column(result, "country_name") == [None, None] and lookup.calls == []
    assert result.failures == []


@pytest.mark.parametrize("policy", [None, "null"])
def test_an_unmatched_row_gets_null_targets_by_default(policy):
    params = {} if policy is None else {"missing": policy}
    result = ruleset(with_params(**params), lookup=FakeLookup(COUNTRIES)).apply(
        orders(("c", {"id": "1", "country_code": "FR"}), ("c", {"id": "2", "country_code": "ZZ"})), ORDERS)
    assert column(result, "country_name") == ["France", None] and result.failures == []


def test_missing_quarantine_makes_unmatched_rows_failures():
    result = ruleset(with_params(missing="quarantine"), lookup=FakeLookup(COUNTRIES)).apply(
        orders(("c", {"id": "1", "country_code": "FR"}), ("c", {"id": "2", "country_code": "ZZ"}),
               ("c", {"id": "3"})), ORDERS)
    assert [r["id"] for r in data_rows(result)] == ["1", "3"]  # a NULL key is not "unmatched"
    [failure] = result.failures
    assert (failure.row, failure.rule_id, failure.field) == (1, "enrich", "country_code")
    assert "ZZ" in failure.reason and "public.countries" in failure.reason


def test_composite_keys_match_whole_tuples_across_types():
    # the batch's region is an integer; the reference holds it as a decimal: 2 == 2.00
    rates = {("FR", decimal.Decimal("2.00")): {"code": "FR", "region": decimal.Decimal("2.00"), "rate": 7},
             ("FR", decimal.Decimal("3.00")): {"code": "FR", "region": decimal.Decimal("3.00"), "rate": 9}}
    lookup = FakeLookup(rates)
    rule = {"rule_id": "rates", "rule_type": "join",
            "parameters": {"table": "rates", "on": {"country_code": "code", "region": "region"},
                           "fields": {"rate": "rate"}}}

    def answer(connector: str | None, table: str, key_columns: list[str], keys: list[tuple[Any, ...]]):
        lookup.calls.append((connector, table, key_columns, list(keys)))
        return dict(rates)  # a reader may answer more rows than asked: only exact key matches count

    result = ruleset(rule, lookup=answer).apply(orders(
        ("c", {"id": "1", "country_code": "FR", "region": "2"}),
        ("c", {"id": "2", "country_code": "FR", "region": "3"}),
        ("c", {"id": "3", "country_code": "DE", "region": "2"}),
        ("c", {"id": "4", "country_code": "FR"}),
    ), ORDERS)
    assert column(result, "rate") == ["7", "9", None, None]
    assert {c.name: c.logical_type for c in result.schema.columns}["rate"] == "integer"
    assert lookup.calls[0][2] == ["code", "region"]
    assert sorted(lookup.calls[0][3]) == [("DE", 2), ("FR", 2), ("FR", 3)]


def test_unchanged_key_fields_leave_the_targets_unchanged():
    lookup = FakeLookup(COUNTRIES)
    result = ruleset(JOIN, lookup=lookup).apply(orders(
        ("u", {"id": "1"}, ["country_code"]),
        ("u", {"id": "2", "country_code": "DE"}),
    ), ORDERS)
    assert column(result, "country_name") == [None, "Germany"]
    unchanged = column(result, "_cdc_unchanged")
    assert set(unchanged[0]) >= {"country_code", "country_name", "vat_rate"} and not unchanged[1]
    assert lookup.calls[0][3] == [("DE",)]


def test_later_rules_see_the_joined_fields():
    rules = ruleset(JOIN, {"rule_id": "label", "rule_type": "map", "target_field": "label",
                           "expression": "{{ country_name ~ ' ' ~ amount }}"},
                    {"rule_id": "fr", "rule_type": "filter", "expression": "{{ country_name == 'France' }}"},
                    lookup=FakeLookup(COUNTRIES))
    result = rules.apply(orders(("c", {"id": "1", "country_code": "FR", "amount": "1.50"}),
                                ("c", {"id": "2", "country_code": "DE", "amount": "2.00"})), ORDERS)
    assert column(result, "label") == ["France 1.50", None] and column(result, "_cdc_op") == ["c", "d"]


def test_a_failing_lookup_stops_the_batch_naming_rule_and_table():
    def broken(*args: Any) -> dict:
        raise ConnectionError("connection refused")

    with pytest.raises(JoinLookupError, match="rule 'enrich', table public.orders: looking up 1 keys in "
                                              "public.countries.*connection refused") as caught:
        ruleset(JOIN, lookup=broken).apply(orders(("c", {"id": "1", "country_code": "FR"})), ORDERS)
    assert not caught.value.terminal


def test_a_join_without_lookup_refuses_rows_but_types_an_empty_table():
    rules = ruleset(JOIN, lookup=None)
    empty = rules.apply(orders(), ORDERS)
    assert {"country_name", "vat_rate"} <= set(empty.schema.column_names)
    with pytest.raises(RuleConfigError, match="needs a lookup"):
        rules.apply(orders(("c", {"id": "1", "country_code": "FR"})), ORDERS)


@pytest.mark.parametrize(("parameters", "expected"), [
    ({"on": {"country_code": "code"}, "fields": {"name": "n"}},
     "rule 'enrich', key parameters.table: a join needs the reference table"),
    ({"table": "countries", "fields": {"name": "n"}}, "rule 'enrich', key parameters.on: a join needs on"),
    ({"table": "countries", "on": {"country_code": "code"}},
     "rule 'enrich', key parameters.fields: a join needs fields"),
    ({"table": "countries", "on": [], "fields": {"name": "n"}}, "rule 'enrich', key parameters.on: must be"),
    ({**JOIN["parameters"], "missing": "drop"}, "rule 'enrich', key parameters.missing: must be one of null"),
    ({**JOIN["parameters"], "ttl_seconds": -1}, "rule 'enrich', key parameters.ttl_seconds: must be a number"),
    ({**JOIN["parameters"], "tll_seconds": 5}, "rule 'enrich', key parameters.tll_seconds: unknown join parameter"),
    ({**JOIN["parameters"], "connector": "nowhere"},
     "rule 'enrich', key parameters.connector: unknown connector 'nowhere' (connectors.yaml has: sink, warehouse)"),
])
def test_bad_joins_are_problems_naming_rule_and_key(parameters, expected):
    problems = ruleset({**JOIN, "parameters": parameters}, lookup=None, connectors=["warehouse", "sink"]).problems()
    assert any(p.startswith(expected) for p in problems), problems


def test_a_good_join_has_no_problems_and_checks_its_fields_against_the_table():
    rules = ruleset(with_params(connector="warehouse"), lookup=None, connectors=["warehouse"])
    assert rules.problems() == []
    assert rules.check(ORDERS) == []
    bad = ruleset(with_params(on={"country": "code"}, fields={"name": "id"}), lookup=None)
    problems = bad.check(ORDERS)
    assert any(p.startswith("rule 'enrich', table public.orders, key parameters.on.country, field 'country': "
                            "unknown batch field") for p in problems), problems
    assert any("key parameters.fields.name, field 'id': is a key column" in p for p in problems), problems


def test_a_join_with_target_field_or_expression_is_a_problem():
    problems = ruleset({**JOIN, "target_field": "x", "expression": "{{ 1 }}"}, lookup=None).problems()
    assert any("key target_field: a join writes parameters.fields" in p for p in problems), problems
    assert any("key expression: a join looks values up" in p for p in problems), problems


def test_lineage_maps_key_fields_and_reference_columns_to_the_targets():
    result = ruleset(with_params(connector="warehouse"), lookup=FakeLookup(COUNTRIES)).apply(
        orders(("c", {"id": "1", "country_code": "FR"})), ORDERS)
    assert sorted(result.columns["enrich"]) == sorted([
        ("name", "country_name"), ("country_code", "country_name"), ("vat", "vat_rate"), ("country_code", "vat_rate")])
    direct = [e for e in result.lineage if e.rule_id == "enrich" and e.type == "DIRECT"]
    assert {(e.source, e.target, e.dataset) for e in direct} == {
        ("name", "country_name", "warehouse:public.countries"), ("vat", "vat_rate", "warehouse:public.countries")}
    indirect = [e for e in result.lineage if e.rule_id == "enrich" and e.type == "INDIRECT"]
    assert {(e.source, e.subtype, e.dataset) for e in indirect} == {("country_code", "JOIN", None)}


def test_a_reference_value_that_does_not_fit_the_target_type_fails_its_row():
    rows = {("FR",): {"code": "FR", "name": 1}, ("DE",): {"code": "DE", "name": "Germany"}}
    result = ruleset(JOIN | {"parameters": {**JOIN["parameters"], "fields": {"name": "n"}}},
                     lookup=FakeLookup(rows)).apply(
        orders(("c", {"id": "1", "country_code": "FR"}), ("c", {"id": "2", "country_code": "DE"})), ORDERS)
    # integer first: "Germany" is no integer, so that row fails, naming the target
    assert column(result, "n") == ["1"]
    assert [(f.row, f.field) for f in result.failures] == [(1, "n")]


def test_the_yaml_1_1_key_on_read_as_true_is_on():
    # PyYAML reads ``on:`` as the boolean true; the join takes it as ``on``
    config = {**JOIN, "parameters": {True: {"country_code": "code"}, "table": "public.countries",
                                      "fields": {"name": "country_name"}}}
    rules = ruleset(config, lookup=FakeLookup(COUNTRIES))
    assert rules.problems() == []
    assert column(rules.apply(orders(("c", {"id": "1", "country_code": "DE"})), ORDERS), "country_name") == ["Germany"]
