"""Property tests (hypothesis): whatever the input, nothing but the product's own errors escapes.

Three entry points take input nobody controls: the config loader (four YAML files a person edits), rule compilation
and application (expressions and rows), and the value contract (text from every source). For generated input each
either succeeds or raises one of the product's errors, which says where the problem is: a
:class:`~airflow_provider_cdc.config.ConfigError` naming a config file, a
:class:`~airflow_provider_cdc.transform.RuleConfigError` naming the rule, a row failure naming its rule, an
:class:`~airflow_provider_cdc.values.UntypedValueError` naming the column and the value. Anything else (a pydantic
``ValidationError``, a ``decimal.InvalidOperation``, an ``IndexError``) would reach the task as a crash with no
context, and would be retried although retrying cannot help.

The runs are derandomized (the same examples every time, so CI cannot flake) and keep no example database.
"""

from __future__ import annotations

import atexit
import datetime as dt
import decimal
import math
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from transform.util import USERS, rules, table_of

from airflow_provider_cdc.config import ConfigError, load_config
from airflow_provider_cdc.config.api_sources import without_registrations
from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.tables import Column
from airflow_provider_cdc.transform import RuleConfigError
from airflow_provider_cdc.values import (
    LOGICAL_TYPES,
    UntypedValueError,
    arrow_type,
    format_value,
    parse_value,
    typed_column,
)

# Generated expressions such as ``{{ 1[0] }}`` compile to Python that CPython warns about: noise, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore::SyntaxWarning")
# Hypothesis caches what it learns of the code under test in ./.hypothesis even without an example database: keep
# that out of the checkout.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="cdc-hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, True)
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# --- config files ------------------------------------------------------------------------------------------------

FILES = {"connectors.yaml": ("connectors", ["id", "type", "conn_id", "connection_string", "options"]),
         "cdc.yaml": ("sources", ["id", "type", "connection_string", "connector", "conn_id", "tables", "sink",
                                  "snapshot", "batch_size", "poll_interval", "target_schema", "delete_mode",
                                  "transformations", "quality", "schedule", "mode", "schema_changes", "options"]),
         "transformations.yaml": ("rules", ["rule_id", "rule_type", "tables", "source_fields", "target_field",
                                            "expression", "parameters", "enabled"]),
         "quality.yaml": ("suites", ["id", "tables", "rules", "type", "column", "policy", "expectation", "kwargs"])}
WORDS = ["postgresql", "mysql", "mongodb", "file", "map", "filter", "join", "warn", "quarantine", "initial", "hard",
         "soft", "fused", "warehouse", "users", "public.users", "${CDC_PROP_SET}", "${CDC_PROP_UNSET}", "${", "$${X}",
         "{{ email }}", "{{", "@daily", "not_null", "range", "BACKWARD", "evolve", "a b", "x.y.z", "../etc"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10 ** 20), 10 ** 20), st.floats(),
                    st.text(max_size=12), st.sampled_from(WORDS))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)


@st.composite
def config_file(draw: st.DrawFn, name: str) -> str | bytes:
    """One file: an entry list with near-valid keys, any YAML document, any text, or bytes that are no UTF-8."""
    list_key, keys = FILES[name]
    entry = st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=6)), VALUES, max_size=8)
    document = st.one_of(st.fixed_dictionaries({list_key: st.lists(entry, max_size=3)}), VALUES,
                         st.dictionaries(st.sampled_from([list_key, "schema_changes", "functions", "junk"]), VALUES,
                                         max_size=3))
    shape = draw(st.sampled_from(["document", "document", "text", "bytes"]))
    if shape == "text":
        return draw(st.text(max_size=60))
    if shape == "bytes":
        return draw(st.binary(max_size=40)) + b"\xff"
    return yaml.safe_dump(draw(document), allow_unicode=True)


@PROPERTY
@given(st.fixed_dictionaries({}, optional={name: config_file(name) for name in FILES}))
def test_config_loading_raises_only_config_error_naming_a_file(tmp_path_factory, files):
    directory = tmp_path_factory.mktemp("config")
    for name, content in files.items():
        path = directory / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    try:
        with without_registrations():
            load_config(directory)
    except ConfigError as exc:
        assert exc.problems and all(problem.file in FILES for problem in exc.problems), exc.problems
        assert all(str(problem).startswith(problem.file) for problem in exc.problems)


def test_config_loading_property_reaches_valid_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator's vocabulary builds valid files too, so the property also covers the loader's success path."""
    monkeypatch.setenv("CDC_PROP_SET", "7")
    (tmp_path / "connectors.yaml").write_text(yaml.safe_dump({"connectors": [
        {"id": "warehouse", "type": "postgresql", "connection_string": "${CDC_PROP_SET}"}]}))
    (tmp_path / "cdc.yaml").write_text(yaml.safe_dump({"sources": [
        {"id": "users", "type": "postgresql", "conn_id": "x", "tables": ["public.users"], "sink": "warehouse",
         "batch_size": "${CDC_PROP_SET}"}]}))
    with without_registrations():
        assert load_config(tmp_path).sources[0].batch_size == 7


# --- rules -------------------------------------------------------------------------------------------------------

FIELDS = ["id", "email", "phone", "price", "tax", "status", "missing"]
ATOMS = st.one_of(st.sampled_from(FIELDS), st.integers(-(10 ** 30), 10 ** 30).map(str),
                  st.sampled_from(["1.5", "'a'", "''", "none", "true", "[1, 2]", "{'a': 1}", "row", "range(3)",
                                   "1e308", "2 ** 64", "10 / 0", "1 // 0", "1 % 0", "'x' * 3"]))
OPERATORS = st.sampled_from([" + ", " - ", " * ", " / ", " // ", " % ", " ** ", " ~ ", " == ", " < ", " and ", " in "])
FUNCTIONS = st.sampled_from(["mask", "hash", "coalesce", "cast", "upper", "lower", "length", "abs", "int", "float",
                             "round", "default", "trim", "replace", "first", "sum", "string", "tojson", "now",
                             "attr", "no_such_function"])
SUFFIXES = st.sampled_from([".split('@')", "[0]", "[1:]", ".upper()", ".__class__", "['a']", ".x", ".mro()"])
EXPRESSIONS = st.recursive(ATOMS, lambda inner: st.one_of(
    st.tuples(inner, OPERATORS, inner).map(lambda t: f"({t[0]}{t[1]}{t[2]})"),
    st.tuples(inner, FUNCTIONS).map(lambda t: f"{t[0]} | {t[1]}"),
    st.tuples(FUNCTIONS, st.lists(inner, max_size=3)).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
    st.tuples(inner, SUFFIXES).map(lambda t: t[0] + t[1]),
    st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
), max_leaves=6)
TEMPLATES = st.one_of(EXPRESSIONS.map(lambda e: "{{ " + e + " }}"),
                      EXPRESSIONS.map(lambda e: "{% if " + e + " %}a{% endif %}"), st.text(max_size=20),
                      st.sampled_from(["{{", "{{ }}", "}}", "{% for x in row %}{{ x }}{% endfor %}"]))
RULES = st.fixed_dictionaries(
    {"rule_id": st.sampled_from(["r1", "r2", "", None]),
     "rule_type": st.sampled_from(["map", "filter", "aggregate", "join", "pivot"]),
     "expression": st.one_of(st.none(), TEMPLATES)},
    optional={"source_fields": st.lists(st.sampled_from(FIELDS + ["_cdc_op"]), max_size=3),
              "target_field": st.one_of(st.none(), st.sampled_from(FIELDS + ["total", "_cdc_x", ""])),
              "tables": st.lists(st.sampled_from(["users", "public.users", "other"]), max_size=2),
              "parameters": st.dictionaries(
                  st.sampled_from(["type", "salt", "on", "fields", "table", "connector", "missing", "target_type"]),
                  st.one_of(st.text(max_size=5), st.sampled_from(["sum", "avg", "count", "cdc_salt", "decimal(10,2)"]),
                            st.lists(st.sampled_from(FIELDS), max_size=2),
                            st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(FIELDS), max_size=2)),
                  max_size=3),
              "target_type": st.sampled_from(["integer", "text", "decimal(10,2)", "bogus", ""])})
ROWS = st.lists(st.fixed_dictionaries(
    {"id": st.integers(1, 5).map(str)},
    optional={"email": st.one_of(st.text(max_size=8), st.just("ann@example.com")), "phone": st.text(max_size=6),
              "price": st.sampled_from(["1.00", "-2.50", "NaN", "Infinity", "0.00", "9999999999.99"]),
              "tax": st.sampled_from(["1.00", "0.10"]), "status": st.sampled_from(["active", "inactive", ""])}),
    max_size=4)


@PROPERTY
@given(st.lists(RULES, min_size=1, max_size=3), ROWS, st.booleans(), st.sampled_from(["c", "u", "d", "r"]))
def test_rules_raise_only_rule_errors_and_fail_rows_naming_their_rule(configs, rows, vectorise, op):
    configs = [{k: v for k, v in config.items() if v is not None} for config in configs]
    try:
        ruleset = rules(*configs, vectorise=vectorise)
    except RuleConfigError as exc:  # a mapping that is no rule config at all: the rule and its keys are named
        assert str(exc).startswith("rule "), str(exc)
        return
    ids = {config["rule_id"] for config in configs}
    for line in ruleset.problems() + ruleset.check(USERS):
        assert isinstance(line, str) and any(line.startswith(f"rule {rule_id!r}") for rule_id in ids), line
    try:
        result = ruleset.apply(table_of(USERS, [(op, row) for row in rows]), USERS)
    except CdcError:
        return
    assert result.table.num_rows + len(result.failed_rows) <= len(rows)  # a row is kept, failed or filtered once
    for failure in result.failures:
        assert failure.rule_id in ids and failure.reason and 0 <= failure.row < len(rows), failure


# --- the value contract ------------------------------------------------------------------------------------------

def column_of(kind: str, precision: int | None = None, scale: int | None = None) -> Column:
    return Column("c", kind, kind, precision=precision, scale=scale)


TEXT_VALUES = st.one_of(
    st.none(), st.text(max_size=16),
    st.from_regex(r"-?[0-9]{1,45}(\.[0-9]{0,20})?([eE][-+]?[0-9]{1,4})?", fullmatch=True),
    st.from_regex(r"[0-9]{1,2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?", fullmatch=True),
    st.from_regex(r"-?[0-9]{1,6}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?Z?)?", fullmatch=True),
    st.sampled_from(["NaN", "nan", "Infinity", "-Infinity", "infinity", "-infinity", "true", "false", "", "sNaN"]))


@PROPERTY
@given(st.sampled_from(LOGICAL_TYPES), st.one_of(st.none(), st.tuples(st.integers(1, 40), st.integers(0, 12))),
       st.lists(TEXT_VALUES, max_size=4))
def test_typed_column_converts_or_names_the_value_it_refuses(kind, precision_scale, values):
    column = column_of(kind, *(precision_scale or (None, None))) if kind == "decimal" else column_of(kind)
    try:
        typed = typed_column(pa.array(values, pa.string()), column)
    except UntypedValueError as exc:
        assert exc.column == "c" and exc.logical_type == kind and exc.value in [*values, "?"], exc
        return
    assert typed.type == arrow_type(column) and len(typed) == len(values)
    assert typed.null_count == values.count(None)


UTC = dt.timezone.utc
PYTHON_VALUES = {
    "integer": st.integers(-(2 ** 63), 2 ** 63 - 1),
    "float": st.floats(allow_nan=False),
    "boolean": st.booleans(),
    "text": st.text(),
    "decimal": st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10 ** 20), max_value=10 ** 20),
    "timestamptz": st.datetimes(timezones=st.just(UTC)),
    "timestamp": st.datetimes(),
    "date": st.dates(),
    "time": st.times(),
    "binary": st.binary(max_size=20),
    "uuid": st.uuids(),
    "json": st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                         lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                     max_size=3),
                         max_leaves=6)
    # At the top: a JSON null is SQL NULL, and a str is JSON text already (what sources hand over).
    .filter(lambda v: v is not None and not isinstance(v, str)),
}


def same(kind: str, value: Any, back: Any) -> bool:
    if kind == "uuid":
        return back == value
    if kind == "float" and math.isnan(value):
        return math.isnan(back)
    return back == value


@PROPERTY
@given(st.sampled_from(sorted(PYTHON_VALUES)).flatmap(lambda kind: st.tuples(st.just(kind), PYTHON_VALUES[kind])))
def test_every_portable_form_parses_back_and_types_as_its_value(kind_value):
    kind, value = kind_value
    text = format_value(value, kind)
    assert isinstance(text, str)
    assert same(kind, value, parse_value(text, kind)), (kind, value, text)
    column = column_of(kind, 38, 4) if kind == "decimal" else column_of(kind)
    typed = typed_column(pa.array([text], pa.string()), column)[0].as_py()
    expected: Any = {"uuid": str(value), "json": text}.get(kind, value)
    if kind == "decimal":
        expected = value.quantize(decimal.Decimal("0.0001"))
    assert typed == expected, (kind, value, text, typed)


def test_the_value_contract_property_covers_every_logical_type() -> None:
    assert set(PYTHON_VALUES) == set(LOGICAL_TYPES) - {"other"}  # ``other`` is the source's own text, untouched
    assert uuid.UUID(format_value(uuid.UUID(int=1), "uuid")) == uuid.UUID(int=1)
