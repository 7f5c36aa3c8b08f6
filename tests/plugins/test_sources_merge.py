"""Sources registered through the REST API merge with cdc.yaml (airflow_provider_cdc/config/api_sources.py): added
after the YAML's, checked like them, a conflicting id reported; no Variable store, no API sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cdc_testing import write_config

from airflow_provider_cdc.config import ConfigError, load_config
from airflow_provider_cdc.config.api_sources import ORIGIN, registered_as

SOURCE_URL = "postgresql://u:source-pw@127.0.0.1:1/src"
SINK_URL = "postgresql://u:sink-pw@127.0.0.1:1/sink"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config", source_id="shop", source_url=SOURCE_URL, sink_url=SINK_URL,
                        tables=["users", "orders"])


def api_source(source_id: str, **changes) -> dict:
    entry = {"id": source_id, "type": "postgresql", "conn_id": f"cdc_source_{source_id}", "tables": ["users"],
             "sink": "warehouse", "target_schema": source_id, **changes}
    return {"source": entry, "registered_by": "admin", "registered_at": "2026-01-01T00:00:00+00:00"}


def test_an_api_source_is_added_after_the_yaml_ones(config_dir):
    with registered_as({"pg2": api_source("pg2", poll_interval=1)}):
        config = load_config(config_dir)
    assert [source.id for source in config.sources] == ["shop", "pg2"]
    added = config.source("pg2")
    assert added.conn_id == "cdc_source_pg2" and added.target_schema == "pg2" and added.dag_id == "cdc_pg2"


def test_the_same_id_with_the_same_content_is_the_yamls(config_dir):
    yaml_entry = load_config(config_dir).source("shop").model_dump(exclude_defaults=True)
    with registered_as({"shop": {"source": yaml_entry}}):
        config = load_config(config_dir)
    assert [source.id for source in config.sources] == ["shop"]


def test_the_same_id_with_other_content_is_a_problem_not_a_choice(config_dir):
    with registered_as({"shop": api_source("shop")}), pytest.raises(ConfigError) as raised:
        load_config(config_dir)
    (problem,) = raised.value.problems
    assert problem.file == ORIGIN and problem.key == "shop"
    assert "also in cdc.yaml (sources[0]) with different content" in problem.reason
    assert "source-pw" not in str(raised.value)


def test_problems_of_an_api_source_point_at_the_variable(config_dir):
    records = {"pg2": api_source("pg2", sink="nowhere"), "pg3": api_source("pg3", target_schema="public",
                                                                             tables=["users"])}
    with registered_as(records), pytest.raises(ConfigError) as raised:
        load_config(config_dir)
    found = {(p.file, p.key): p.reason for p in raised.value.problems}
    assert "unknown connector 'nowhere'" in found[(ORIGIN, "pg2.sink")]
    # pg3 would load public.users, which the YAML's source loads already
    assert "would both load" in found[(ORIGIN, "pg3.tables")]
    assert not [p for p in raised.value.problems if p.file == "cdc.yaml"], raised.value.problems


def test_a_bad_entry_is_reported_with_its_key(config_dir):
    with registered_as({"pg2": api_source("pg2", batch_size=0)}), pytest.raises(ConfigError) as raised:
        load_config(config_dir)
    assert [(p.file, p.key) for p in raised.value.problems] == [(ORIGIN, "pg2.batch_size")]


def test_without_airflow_there_are_no_api_sources(config_dir):
    """``config check`` in plain Python (no Airflow imported): the YAML alone, quietly."""
    code = ("import sys; from airflow_provider_cdc.config import load_config; "
            f"c = load_config({str(config_dir)!r}); print([s.id for s in c.sources]); "
            "print('airflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["['shop']", "False"], out
    assert out.stderr == ""
