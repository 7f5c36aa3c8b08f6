"""The vectorised path gives exactly what the row-by-row Jinja path gives, on random batches (seeded), including the
rows where Arrow and Python would disagree (NULLs, NaN, zero divisors, integers beyond 2**53 and int64)."""

from __future__ import annotations

import random

import pytest

from airflow_provider_cdc.transform import FunctionRegistry
from transform.util import col, rules, schema_of, table_of

SCHEMA = schema_of(
    col("id", "integer", pk=True),
    col("qty", "integer"),
    col("big", "integer"),
    col("ratio", "float"),
    col("price", "decimal", precision=12, scale=2),
    col("tax", "decimal", precision=12, scale=2),
    col("wide", "decimal", precision=38, scale=10),
    col("loose", "decimal"),
    col("email"),
    col("status"),
    col("flag", "boolean"),
    name="items",
)

MAPS = [
    "{{ price + tax }}", "{{ price - tax * 2 }}", "{{ price * tax }}", "{{ price * price * price }}",
    "{{ price * price * price * price }}", "{{ -price }}", "{{ price }}", "{{ qty + price }}", "{{ price + 1 }}",
    "{{ qty * 3 + 1 }}", "{{ qty / 4 }}", "{{ ratio * qty }}", "{{ ratio / qty }}", "{{ qty / ratio }}",
    "{{ big + 1 }}", "{{ big * 2 }}", "{{ big / 3 }}", "{{ wide + wide }}", "{{ wide + price }}", "{{ loose + 1 }}",
    "{{ price > 10 }}", "{{ qty >= ratio }}", "{{ qty == 7 }}", "{{ price == qty }}", "{{ big < ratio }}",
    "{{ price != tax }}", "{{ status == 'active' and flag }}", "{{ not flag or qty < 3 }}", "{{ flag == true }}",
    "{{ status in ['active', 'new'] }}", "{{ qty not in [1, 2, 3] }}", "{{ email ~ '/' ~ status }}",
    "{{ email + status }}", "{{ status < 'm' }}", "{{ mask(email) }}", "{{ email | mask(2, char='#') }}",
    "{{ mask(email, keep_last=0) }}", "{{ mask(qty) }}", "{{ coalesce(email, status) }}",
    "{{ coalesce(email, 'none') }}", "{{ coalesce(qty, big) }}", "{{ hash(email) }}", "{{ qty | hash }}",
    "{{ email_domain(email) }}", "{{ mask(email_domain(email), 3) }}", "{{ 1 + 2 }}", "{{ flag }}",
]
FILTERS = [
    "{{ status == 'active' }}", "{{ qty > 2 and price < 50 }}", "{{ flag }}", "{{ ratio > 0.5 }}",
    "{{ price * 2 > tax }}", "{{ not (status == 'x') }}",
]
TEXTS = ["a@b.com", "john.doe@example.com", "ünïcödé@bücher.de", "", "noat", "x@", "@", "漢字@例え.jp", "ab", "tail@@x",
         "active", "new", "inactive", "m", "mango", "a", "é"]


def random_value(rng: random.Random, name: str):
    if rng.random() < 0.12:
        return None
    if name == "qty":
        return str(rng.randint(-5, 10))
    if name == "big":
        return str(rng.choice([2**53, 2**53 + 1, -(2**53) - 3, 2**62, 2**63 - 1, -(2**63), 12, 0]))
    if name == "ratio":
        return rng.choice(["0.5", "0.0", "-0.0", "NaN", "Infinity", "-Infinity", "1e+100", "1e-07", "0.1",
                           repr(rng.uniform(-100, 100))])
    if name in ("price", "tax"):
        if rng.random() < 0.05:
            return rng.choice(["NaN", "-0.00", "1.5", "0"])
        return f"{rng.randint(-10**6, 10**6) / 100:.2f}"
    if name == "wide":
        return f"{rng.randint(-10**27, 10**27)}.{rng.randint(0, 10**10 - 1):010d}"
    if name == "loose":
        return rng.choice(["1.5", "2", "-0.000001", "123456789012345678901234567890.5", "NaN"])
    if name == "flag":
        return rng.choice(["true", "false"])
    return rng.choice(TEXTS)


def random_table(rng: random.Random, rows: int):
    events = []
    for i in range(rows):
        op = rng.choice("ccuurdt")
        row = {"id": str(i)} if op != "t" else {}
        if op in "cur":
            row.update({c: random_value(rng, c) for c in SCHEMA.column_names if c != "id"})
        unchanged = ["status"] if op == "u" and rng.random() < 0.1 else None
        events.append((op, row, unchanged))
    return table_of(SCHEMA, events)


def both(configs, table):
    registry = FunctionRegistry.default(module_paths=["airflow_provider_cdc.transform.examples"],
                                        entry_points=False)
    fast = rules(*configs, functions=registry).apply(table, SCHEMA)
    slow = rules(*configs, functions=registry, vectorise=False).apply(table, SCHEMA)
    return fast, slow


def assert_identical(fast, slow) -> None:
    assert fast.schema == slow.schema
    assert fast.table.schema == slow.table.schema
    assert fast.table.to_pylist() == slow.table.to_pylist()
    assert fast.failures == slow.failures
    assert fast.columns == slow.columns


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("expression", MAPS)
def test_maps_agree(expression, seed):
    rng = random.Random(f"{expression}/{seed}")
    config = {"rule_id": "m", "rule_type": "map", "target_field": "out", "expression": expression,
              "parameters": {"salt": "cdc_salt"}}
    fast, slow = both([config], random_table(rng, 120))
    assert_identical(fast, slow)
    assert slow.paths["m"] == "row"


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("expression", FILTERS)
def test_filters_agree(expression, seed):
    rng = random.Random(f"{expression}/{seed}")
    config = {"rule_id": "f", "rule_type": "filter", "expression": expression}
    fast, slow = both([config], random_table(rng, 120))
    assert_identical(fast, slow)


@pytest.mark.parametrize("seed", range(6))
def test_random_chains_agree(seed):
    rng = random.Random(seed)
    configs = []
    for i in range(rng.randint(2, 5)):
        if rng.random() < 0.3:
            configs.append({"rule_id": f"f{i}", "rule_type": "filter", "expression": rng.choice(FILTERS)})
        else:
            configs.append({"rule_id": f"m{i}", "rule_type": "map", "target_field": rng.choice(["out", "email", "x"]),
                            "expression": rng.choice(MAPS), "parameters": {"salt": "cdc_salt"}})
    fast, slow = both(configs, random_table(rng, 300))
    assert_identical(fast, slow)


def test_the_vectorised_path_is_used_where_it_should_be():
    rng = random.Random(1)
    table = random_table(rng, 200)
    expected = {"{{ price + tax }}": "vector+row", "{{ mask(email) }}": "vector", "{{ status == 'active' }}":
                "vector+row", "{{ wide + wide }}": "row", "{{ loose + 1 }}": "row", "{{ email.upper() }}": "row",
                "{{ big * 2 }}": "row"}
    for expression, path in expected.items():
        config = {"rule_id": "m", "rule_type": "map", "target_field": "out", "expression": expression}
        fast, slow = both([config], table)
        assert fast.paths["m"] == path, expression
        assert_identical(fast, slow)
    assert fast.counts["jinja_rows"] == slow.counts["jinja_rows"]
