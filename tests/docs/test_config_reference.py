"""docs/configuration.md is what docs/generate_config_reference.py makes of the config models, and it describes
every key: a key added to a model without a description, or a model change without regenerating, fails here."""

from __future__ import annotations

import subprocess
import sys

from pydantic import BaseModel

from airflow_provider_cdc.config.loader import FILES
from airflow_provider_cdc.connectors.registry import CONNECTOR_MODULES, NoOptions, factory

REGENERATE = "run: python docs/generate_config_reference.py"


def documented_models(generator) -> list[type[BaseModel]]:
    models: list[type[BaseModel]] = []
    for spec in FILES:
        models += [spec.model, *(nested for _, nested in generator.nested_models(spec.model)),
                   *(model for _, model in spec.settings)]
    for connector_type in CONNECTOR_MODULES:
        built = factory(connector_type)
        models += [model for model in (built.source_options, built.sink_options) if model is not NoOptions]
    return models


def test_the_committed_reference_is_the_generated_one(reference_generator):
    committed = reference_generator.TARGET.read_text(encoding="utf-8")
    assert committed == reference_generator.render(), f"docs/configuration.md is out of date; {REGENERATE}"


def test_the_check_mode_fails_on_a_stale_file(reference_generator, tmp_path, monkeypatch):
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n", encoding="utf-8")
    monkeypatch.setattr(reference_generator, "TARGET", stale)
    assert reference_generator.main(["--check"]) == 1
    assert reference_generator.main([]) == 0 and reference_generator.main(["--check"]) == 0
    assert stale.read_text(encoding="utf-8") == reference_generator.render()


def test_every_key_of_every_model_is_described(reference_generator):
    undescribed = [f"{model.__name__}.{name}" for model in documented_models(reference_generator)
                   for name in model.model_fields if not reference_generator.description(model, name)]
    assert undescribed == [], ("keys without a description: give them Field(description=...) in their model "
                               f"(or a line in DESCRIBED_HERE), then {REGENERATE}")


def test_the_descriptions_kept_in_the_generator_are_only_those_the_models_lack(reference_generator):
    fields = {f"{model.__name__}.{name}": (model, name) for model in documented_models(reference_generator)
              for name in model.model_fields}
    unknown = sorted(set(reference_generator.DESCRIBED_HERE) - set(fields))
    assert unknown == [], "DESCRIBED_HERE names keys no model has"
    described_by_model = sorted(key for key in reference_generator.DESCRIBED_HERE
                                if reference_generator.own_description(*fields[key]))
    assert described_by_model == [], "the model describes these now: remove them from DESCRIBED_HERE"


def test_the_reference_names_each_file_key_type_and_default(reference_generator):
    text = reference_generator.render()
    for spec in FILES:
        assert f"## {spec.name}\n" in text and f"### `{spec.list_key}[]`\n" in text
    assert ("| `batch_size` | integer (> 0) | `50000` | At most this many changes per micro-batch" in text)
    assert "| `snapshot` | one of `initial`, `never` | `\"initial\"` |" in text
    assert "| `loop_seconds` | number (≥ 0, ≤ 86400) | `0` | Fused mode: seconds one run keeps" in text
    assert "Give exactly one of `connection_string`, `connector`, `conn_id`." in text
    assert "| `slot_name` | text (matches `^[a-z0-9_]{1,63}$`) or `null` | `null` |" in text
    assert "| `type` | one of `postgresql`, `file`, `mysql`, `mongodb` | required |" in text


def test_the_script_runs_from_the_command_line(reference_generator):
    result = subprocess.run([sys.executable, str(reference_generator.DOCS / "generate_config_reference.py"),
                             "--check"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
