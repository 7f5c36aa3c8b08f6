"""The ``type: file`` connector's factory and options model."""

from __future__ import annotations

import types

import pydantic
import pytest

from airflow_provider_cdc.connectors import registry
from airflow_provider_cdc.connectors.delta.options import DeltaSinkOptions
from airflow_provider_cdc.connectors.delta.parquet_log import ParquetChangeLogSink
from airflow_provider_cdc.connectors.delta.sink import DELTA_CAPABILITIES, DeltaSink


def test_the_registry_finds_the_file_connector():
    factory = registry.factory("file")
    assert factory.type == "file" and factory.sink_options is DeltaSinkOptions
    assert factory.capabilities == DELTA_CAPABILITIES and factory.source is None


def test_options_forbid_unknown_keys_and_default_to_delta():
    assert DeltaSinkOptions().format == "delta"
    with pytest.raises(pydantic.ValidationError):
        DeltaSinkOptions.model_validate({"formt": "parquet"})
    with pytest.raises(pydantic.ValidationError):
        DeltaSinkOptions.model_validate({"format": "csv"})


@pytest.mark.parametrize(("options", "kind"), [({}, DeltaSink), ({"format": "parquet"}, ParquetChangeLogSink)])
def test_the_factory_builds_the_sink_the_options_ask_for(tmp_path, options, kind):
    connector = types.SimpleNamespace(id="lake", type="file", options=options)
    source = types.SimpleNamespace(target_schema="sales", delete_mode="hard")
    sink = registry.factory("file").sink(connector, str(tmp_path), source, DeltaSinkOptions.model_validate(options))
    assert isinstance(sink, kind) and sink.sink_id == "lake" and sink.target_schema == "sales"


def test_without_deltalake_the_registry_names_the_extra(monkeypatch):
    import sys

    from airflow_provider_cdc.errors import MissingExtraError

    for name in [m for m in sys.modules if m == "deltalake" or m.startswith("airflow_provider_cdc.connectors.delta")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "deltalake", None)
    with pytest.raises(MissingExtraError, match=r"airflow-provider-cdc\[delta\]"):
        registry.factory("file")
