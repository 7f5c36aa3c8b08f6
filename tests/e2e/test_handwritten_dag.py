"""A CDC DAG written by hand without YAML (dags/examples/cdc_handwritten_shop.py), run with ``dag.test()`` against
real PostgreSQL servers: the inline config, Airflow Connections for source and sink, the stage operators wired with
``.output`` XComArgs, and a SQL step after the commit. Source and sink are equal row for row after the snapshot and
after a second run over inserts, updates and deletes; a bad inline config fails naming its document and key."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import psycopg
import pytest
from cdc_testing import ON_PG15_ONLY, assert_ledger_consistent, assert_same_rows, create_shop

EXAMPLE = Path(__file__).resolve().parents[2] / "dags" / "examples" / "cdc_handwritten_shop.py"


def load_example(monkeypatch, source_url: str, sink_url: str, tmp_path: Path):
    """The example module, with its Connections (env ``AIRFLOW_CONN_*``) on the test's databases and no YAML config
    anywhere (``CDC_CONFIG_DIR`` an empty directory)."""
    suffix = uuid.uuid4().hex[:8]
    source_conn, sink_conn = f"cdc_example_source_{suffix}", f"cdc_example_sink_{suffix}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{source_conn.upper()}", source_url)
    monkeypatch.setenv(f"AIRFLOW_CONN_{sink_conn.upper()}", sink_url)
    monkeypatch.setenv("CDC_EXAMPLE_SOURCE_CONN", source_conn)
    monkeypatch.setenv("CDC_EXAMPLE_SINK_CONN", sink_conn)
    monkeypatch.setenv("CDC_EXAMPLE_HANDWRITTEN_SOURCE", f"handwritten_{suffix}")  # its own slot on the server
    empty = tmp_path / "no_yaml"
    empty.mkdir()
    monkeypatch.setenv("CDC_CONFIG_DIR", str(empty))
    spec = importlib.util.spec_from_file_location(f"cdc_handwritten_shop_{suffix}", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, f"handwritten_{suffix}"


def return_value(dag_run, task_id: str):
    """A task's XCom return value in a finished run, from the metadata DB."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id,
                                              XComModel.task_id == task_id, XComModel.key == "return_value").one()
        return XComModel.deserialize_value(row)


@ON_PG15_ONLY  # the subject is Airflow wiring, not PostgreSQL (see cdc_testing.ON_PG15_ONLY)
def test_the_handwritten_dag_captures_transforms_loads_and_runs_its_sql_step(pg_database_factory, tmp_path,
                                                                              monkeypatch):
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=20, orders=40)
    module, source_id = load_example(monkeypatch, source_url, sink_url, tmp_path)
    dag = module.dag
    assert dag.dag_id == "cdc_handwritten_shop" and [task.task_id for task in dag.topological_sort()] == [
        "wait_for_changes", "capture", "transform", "validate", "load", "commit", "orders_by_status", "batch_report"]

    first = dag.test()
    assert first.state == "success"
    report = return_value(first, "batch_report")
    assert report["upserted"] == 60 and report["deleted"] == 0 and report["position_stored"] is True
    for table in ("users", "orders"):
        assert_same_rows(source_url, sink_url, table)
    with psycopg.connect(sink_url) as conn:
        assert conn.execute("SELECT masked_email FROM users WHERE id = 1").fetchone() == ("use***@example.com",)
        assert conn.execute("SELECT sum(orders) FROM orders_by_status").fetchone() == (40,)

    with psycopg.connect(source_url, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (user_id, amount, status) VALUES (1, 5, 'paid'), (2, 7, 'paid')")
        conn.execute("UPDATE users SET email = 'renamed@example.org' WHERE id = 3")
        conn.execute("DELETE FROM orders WHERE id <= 4")
    second = dag.test()
    assert second.state == "success"
    assert return_value(second, "batch_report")["deleted"] == 4
    for table in ("users", "orders"):
        assert_same_rows(source_url, sink_url, table)
    with psycopg.connect(sink_url) as conn:
        assert conn.execute("SELECT masked_email FROM users WHERE id = 3").fetchone() == ("ren***@example.org",)
        assert conn.execute("SELECT orders FROM orders_by_status WHERE status = 'paid'").fetchone() == (2,)
        assert conn.execute("SELECT sum(orders) FROM orders_by_status").fetchone() == (38,)
    assert_ledger_consistent(sink_url, source_id)


def test_a_bad_inline_config_names_its_document_and_key():
    from airflow_provider_cdc.config import ConfigError, load_config
    from airflow_provider_cdc.config.inline import cdc_config

    documents = cdc_config(source_id="shop", source_conn_id="src", tables=["users"], sink_conn_id="wh",
                           batch_sise=10, rules=[{"rule_id": "r", "rule_type": "map", "source_fields": ["email"],
                                                  "target_field": "x", "expression": "{{ email "}])
    with pytest.raises(ConfigError) as raised:
        load_config(documents=documents)
    text = str(raised.value)
    assert "cdc.yaml" in text and "batch_sise" in text and "batch_size" in text  # the nearest valid key
    assert "transformations.yaml" in text and "rules[0]" in text
    assert "<inline config>" in text


def test_rules_and_suites_may_come_from_files(tmp_path):
    from airflow_provider_cdc.config import load_config
    from airflow_provider_cdc.config.inline import cdc_config

    (tmp_path / "rules.yaml").write_text("rules:\n  - rule_id: upper_name\n    rule_type: map\n"
                                         "    source_fields: [name]\n    target_field: name_upper\n"
                                         "    expression: \"{{ name | upper }}\"\n")
    (tmp_path / "quality.yaml").write_text("suites:\n  - id: users_checks\n    rules:\n"
                                           "      - {type: not_null, column: email, policy: quarantine}\n")
    config = load_config(documents=cdc_config(source_id="shop", source_conn_id="src", tables=["users"],
                                              sink_conn_id="wh", rules=tmp_path / "rules.yaml",
                                              suites=str(tmp_path / "quality.yaml")))
    assert [rule.rule_id for rule in config.rules] == ["upper_name"]
    assert [suite.id for suite in config.suites] == ["users_checks"]
    assert config.source("shop").sink == "wh" and config.connector("wh").conn_id == "wh"


MAPPED = Path(__file__).resolve().parents[2] / "dags" / "examples" / "cdc_mapped_sources.py"


@ON_PG15_ONLY
def test_dynamic_task_mapping_over_sources(pg_database_factory, monkeypatch, tmp_path):
    """dags/examples/cdc_mapped_sources.py: one fused task mapped over two sources, each with its inline config
    (expand_kwargs): both land, each in its own target schema of one sink, exactly once (a second run over new
    changes applies only those)."""
    import json

    sink_url = pg_database_factory()
    sources = {name: pg_database_factory() for name in ("east", "west")}
    for url in sources.values():
        create_shop(url, users=10, orders=15)
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setenv("CDC_EXAMPLE_SINK_CONN", f"mapped_sink_{suffix}")
    monkeypatch.setenv(f"AIRFLOW_CONN_MAPPED_SINK_{suffix.upper()}", sink_url)
    for name, url in sources.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_MAPPED_{name.upper()}_{suffix.upper()}", url)
    monkeypatch.setenv("CDC_EXAMPLE_MAPPED_SOURCES", json.dumps(
        [[f"{name}_{suffix}", f"mapped_{name}_{suffix}", name] for name in sources]))
    monkeypatch.setenv("CDC_CONFIG_DIR", str(tmp_path))  # no YAML anywhere
    spec = importlib.util.spec_from_file_location(f"cdc_mapped_sources_{suffix}", MAPPED)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    assert module.dag.test().state == "success"
    with psycopg.connect(sources["west"], autocommit=True) as conn:
        conn.execute("UPDATE users SET name = 'moved' WHERE id = 2")
        conn.execute("DELETE FROM orders WHERE id = 1")
    assert module.dag.test().state == "success"
    for name, url in sources.items():
        for table in ("users", "orders"):
            assert_same_rows(url, sink_url, table, sink_table=f"{name}.{table}")
        # the ledger lives beside the tables, in the target schema
        assert_ledger_consistent(f"{sink_url}?options=-csearch_path%3D{name}", f"{name}_{suffix}")
