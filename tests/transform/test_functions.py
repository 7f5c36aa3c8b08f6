"""Custom functions: from modules and entry points, as globals and filters, with Arrow variants."""

from __future__ import annotations

import sys
import textwrap

import pytest

from airflow_provider_cdc.transform import FunctionError, FunctionRegistry
from airflow_provider_cdc.transform.functions import ENTRY_POINT_GROUP
from transform.util import col, column, rules, schema_of, table_of

PEOPLE = schema_of(col("id", "integer", pk=True), col("name"), col("email"), name="people")
ANN = {"id": "1", "name": "Ada Lovelace", "email": "ada@math.org"}


def test_the_example_module_loads_by_path_and_is_usable_as_function_and_filter():
    registry = FunctionRegistry.default(module_paths=["airflow_provider_cdc.transform.examples"],
                                        entry_points=False)
    assert {"email_domain", "initials"} <= set(registry.names())
    assert registry.origin("initials") == "module airflow_provider_cdc.transform.examples"
    ruleset = rules({"rule_id": "d", "rule_type": "map", "target_field": "domain",
                     "expression": "{{ email_domain(email) }}"},
                    {"rule_id": "i", "rule_type": "map", "target_field": "ini", "expression": "{{ name | initials }}"},
                    functions=registry)
    result = ruleset.apply(table_of(PEOPLE, [("c", ANN), ("c", {"id": "2", "email": "nobody"})]), PEOPLE)
    assert column(result, "domain") == ["math.org", None]
    assert column(result, "ini") == ["A.L.", None]
    assert result.paths == {"d": "vector", "i": "row"}


def write_module(tmp_path, monkeypatch, name, source):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)


def test_a_module_without_cdc_functions_exposes_its_own_public_functions(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "cdc_funcs_plain", """
        from json import dumps
        def shout(value):
            return value.upper() + "!"
        def _helper():
            pass
        class Thing:
            pass
        CONSTANT = 3
    """)
    registry = FunctionRegistry.default(module_paths=["cdc_funcs_plain"], entry_points=False)
    assert "shout" in registry
    assert not {"dumps", "_helper", "Thing", "CONSTANT"} & set(registry.names())


def test_entry_points_register_functions_and_modules(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "cdc_funcs_ep", """
        def twice(value):
            return value * 2
        def thrice(value):
            return value * 3
        CDC_FUNCTIONS = {"thrice": thrice}
    """)
    dist = tmp_path / "cdc_funcs_ep-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cdc-funcs-ep\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntwice = cdc_funcs_ep:twice\n"
                                           f"bundle = cdc_funcs_ep\n")
    registry = FunctionRegistry.default()
    assert registry["twice"](2) == 4 and registry["thrice"](2) == 6
    assert registry.origin("twice") == "entry point twice = cdc_funcs_ep:twice"
    assert "twice" not in FunctionRegistry.default(entry_points=False)


def test_load_errors_name_the_module_or_entry_point(tmp_path, monkeypatch):
    with pytest.raises(FunctionError, match="custom function module 'no_such_cdc_module' cannot be imported: "
                                            "ModuleNotFoundError"):
        FunctionRegistry.default(module_paths=["no_such_cdc_module"], entry_points=False)
    write_module(tmp_path, monkeypatch, "cdc_funcs_clash", """
        def mask(value):
            return value
    """)
    with pytest.raises(FunctionError, match="'mask' from module cdc_funcs_clash clashes with 'mask' from built-in"):
        FunctionRegistry.default(module_paths=["cdc_funcs_clash"], entry_points=False)
    write_module(tmp_path, monkeypatch, "cdc_funcs_bad", """
        CDC_FUNCTIONS = ["not", "a", "dict"]
    """)
    with pytest.raises(FunctionError, match="CDC_FUNCTIONS must be a dict"):
        FunctionRegistry.default(module_paths=["cdc_funcs_bad"], entry_points=False)
    with pytest.raises(FunctionError, match="not usable in expressions"):
        FunctionRegistry({"_hidden": len})


def test_a_custom_arrow_variant_is_used_and_falls_back_when_it_cannot(tmp_path, monkeypatch):
    write_module(tmp_path, monkeypatch, "cdc_funcs_arrow", """
        import pyarrow as pa
        import pyarrow.compute as pc
        def plus_one(value):
            return None if value is None else value + 1
        def _arrow(values):
            if not pa.types.is_integer(values.type):
                raise TypeError("integers only")
            return pc.add_checked(values, 1)
        plus_one.arrow = _arrow
    """)
    registry = FunctionRegistry.default(module_paths=["cdc_funcs_arrow"], entry_points=False)
    schema = schema_of(col("id", "integer", pk=True), col("n", "integer"), col("f", "float"))
    ruleset = rules({"rule_id": "i", "rule_type": "map", "target_field": "a", "expression": "{{ plus_one(n) }}"},
                    {"rule_id": "f", "rule_type": "map", "target_field": "b", "expression": "{{ plus_one(f) }}"},
                    functions=registry)
    result = ruleset.apply(table_of(schema, [("c", {"id": "1", "n": "41", "f": "0.5"})]), schema)
    assert (column(result, "a"), column(result, "b")) == (["42"], ["1.5"])
    assert result.paths == {"i": "vector", "f": "row"}
    assert result.schema.column("a").logical_type == "integer"
