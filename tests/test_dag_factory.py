"""dag_factory: config → one DAG ``cdc_<id>`` per source, and the bundle's DAG file as Airflow's DagBag sees it.

Building DAGs does no I/O against the databases (it runs at every DAG parse), so these tests need no server.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from airflow_provider_cdc import stages
from airflow_provider_cdc.config import ConfigError
from airflow_provider_cdc.dag_factory import build_dags
from airflow_provider_cdc.operators.cdc import (
    CdcCaptureOperator,
    CdcCommitOperator,
    CdcFusedOperator,
    CdcLoadOperator,
    CdcStageOperator,
)
from airflow_provider_cdc.sensors.changes import CdcChangesSensor

REPO_ROOT = Path(__file__).resolve().parent.parent
DAG_FILE = REPO_ROOT / "dags" / "cdc_pipelines.py"
SECRET = "Sup3rSecretPw"

CONNECTORS = f"""\
connectors:
  - id: warehouse
    type: postgresql
    connection_string: postgresql://cdc:{SECRET}@db.example.com/warehouse
"""

TWO_SOURCES = f"""\
sources:
  - id: shop
    type: postgresql
    connection_string: postgresql://cdc:{SECRET}@db.example.com/shop
    tables: [users, public.orders]
    sink: warehouse
    poll_interval: 2.5
  - id: billing
    type: postgresql
    connection_string: postgresql://cdc:{SECRET}@db.example.com/billing
    tables: [invoices]
    sink: warehouse
    mode: fused
"""


def write(directory: Path, cdc_yaml: str, connectors_yaml: str = CONNECTORS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "connectors.yaml").write_text(textwrap.dedent(connectors_yaml))
    (directory / "cdc.yaml").write_text(textwrap.dedent(cdc_yaml))
    return directory


def edges(dag) -> set[tuple[str, str]]:
    return {(task.task_id, down) for task in dag.tasks for down in task.downstream_task_ids}


def test_one_dag_per_source_named_cdc_id(tmp_path: Path):
    dags = build_dags(write(tmp_path / "config", TWO_SOURCES))

    assert set(dags) == {"cdc_shop", "cdc_billing"}
    for dag_id, dag in dags.items():
        assert dag.dag_id == dag_id
        assert dag.schedule == "@continuous"
        assert type(dag.timetable).__name__ == "ContinuousTimetable"
        assert dag.max_active_runs == 1
        assert dag.catchup is False


def test_staged_dag_waits_then_captures_loads_and_commits(tmp_path: Path):
    config_dir = write(tmp_path / "config", TWO_SOURCES)
    dag = build_dags(config_dir)["cdc_shop"]

    assert set(dag.task_ids) == {"wait_for_changes", "capture", "load", "commit"}
    assert edges(dag) == {("wait_for_changes", "capture"), ("capture", "load"), ("load", "commit")}
    wait = dag.get_task("wait_for_changes")
    assert isinstance(wait, CdcChangesSensor)
    assert wait.deferrable is True
    assert wait.poke_interval == 2.5
    assert isinstance(dag.get_task("capture"), CdcCaptureOperator)
    load, commit = dag.get_task("load"), dag.get_task("commit")
    assert isinstance(load, CdcLoadOperator) and isinstance(commit, CdcCommitOperator)
    # Both read the manifest capture handed over in XCom.
    assert load.manifest_uri == commit.manifest_uri == "{{ ti.xcom_pull(task_ids='capture')['manifest_uri'] }}"
    for task in dag.tasks:
        assert task.source_id == "shop"
        assert task.config_dir == str(config_dir.resolve())


def test_fused_dag_waits_then_runs_everything_in_one_fused_task(tmp_path: Path):
    dag = build_dags(write(tmp_path / "config", TWO_SOURCES))["cdc_billing"]

    assert set(dag.task_ids) == {"wait_for_changes", "fused"}
    assert edges(dag) == {("wait_for_changes", "fused")}
    assert isinstance(dag.get_task("fused"), CdcFusedOperator)


class NamedStage:
    def __init__(self, name: str) -> None:
        self.name = name

    def apply(self, batch):
        return batch

    def versions(self) -> dict:
        return {}


def test_each_stage_of_the_stage_list_is_one_task_between_capture_and_load(tmp_path: Path, monkeypatch):
    # Two registered stages; the second has nothing to do for billing (its factory returns None there).
    monkeypatch.setattr(stages, "STAGE_FACTORIES", (
        ("transform", lambda source, config: NamedStage("transform")),
        ("validate", lambda source, config: NamedStage("validate") if source.id == "shop" else None),
    ))
    cdc_yaml = TWO_SOURCES.replace("    mode: fused\n", "")
    dags = build_dags(write(tmp_path / "config", cdc_yaml))

    shop, billing = dags["cdc_shop"], dags["cdc_billing"]
    assert edges(shop) == {("wait_for_changes", "capture"), ("capture", "transform"), ("transform", "validate"),
                           ("validate", "load"), ("load", "commit")}
    transform, validate = shop.get_task("transform"), shop.get_task("validate")
    assert isinstance(transform, CdcStageOperator) and transform.stage == "transform"
    # Each stage reads its upstream's manifest; load and commit read the last stage's.
    assert transform.manifest_uri == "{{ ti.xcom_pull(task_ids='capture')['manifest_uri'] }}"
    assert validate.manifest_uri == "{{ ti.xcom_pull(task_ids='transform')['manifest_uri'] }}"
    assert shop.get_task("load").manifest_uri == shop.get_task("commit").manifest_uri == \
        "{{ ti.xcom_pull(task_ids='validate')['manifest_uri'] }}"
    assert "capture → transform → validate → load → commit" in shop.doc_md
    assert edges(billing) == {("wait_for_changes", "capture"), ("capture", "transform"), ("transform", "load"),
                              ("load", "commit")}


def test_fused_dag_keeps_one_task_whatever_the_stages(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(stages, "STAGE_FACTORIES", (("transform", lambda source, config: NamedStage("transform")),))
    dag = build_dags(write(tmp_path / "config", TWO_SOURCES))["cdc_billing"]

    assert set(dag.task_ids) == {"wait_for_changes", "fused"}


def test_a_cron_schedule_is_used_as_given(tmp_path: Path):
    cdc_yaml = TWO_SOURCES.replace("    mode: fused\n", "    mode: fused\n    schedule: '*/5 * * * *'\n"
                                   "    max_active_runs: 2\n")
    dags = build_dags(write(tmp_path / "config", cdc_yaml))

    billing = dags["cdc_billing"]
    assert billing.schedule == "*/5 * * * *"
    assert type(billing.timetable).__name__ == "CronTriggerTimetable"
    assert billing.max_active_runs == 2
    # A scheduled run's sensor gives up (skipped) when idle, while a continuous one waits as long as the source is
    # idle. Neither uses soft_fail, which would skip a lost position too.
    assert billing.get_task("wait_for_changes").skip_on_timeout is True
    assert dags["cdc_shop"].get_task("wait_for_changes").skip_on_timeout is False
    assert billing.get_task("wait_for_changes").soft_fail is False
    assert dags["cdc_shop"].get_task("wait_for_changes").soft_fail is False
    assert dags["cdc_shop"].schedule == "@continuous"


BAD_SOURCES = f"""\
sources:
  - id: shop
    type: postgresql
    connection_string: postgresql://cdc:{SECRET}@db.example.com/shop
    tables: [users]
    sink: wharehouse
  - id: orders
    type: postgresql
    connection_string: postgresql://cdc:{SECRET}@db.example.com/orders
    tables: [orders]
    sink: warehouse
    batch_size: 0
    batchsize: 10
"""

BAD_CONNECTORS = """\
connectors:
  - id: warehouse
    type: postgresql
    connection_string: postgresql://cdc@db.example.com/warehouse
  - id: lake
    type: parquet
    connection_string: s3://bucket/lake
"""

EXPECTED_PROBLEMS = [
    ("connectors.yaml", "connectors[1].type", "should be 'postgresql', 'file', 'mysql' or 'mongodb'"),
    ("cdc.yaml", "sources[0].sink", "unknown connector 'wharehouse'; did you mean 'warehouse'?"),
    ("cdc.yaml", "sources[1].batch_size", "should be greater than 0"),
    ("cdc.yaml", "sources[1].batchsize", "unknown key; did you mean 'batch_size'?"),
]


def test_bad_config_raises_config_error_listing_every_problem_with_file_and_key(tmp_path: Path):
    config_dir = write(tmp_path / "config", BAD_SOURCES, BAD_CONNECTORS)

    with pytest.raises(ConfigError) as raised:
        build_dags(config_dir)

    problems = [(p.file, p.key, p.reason) for p in raised.value.problems]
    assert [(file, key) for file, key, _ in problems] == [(file, key) for file, key, _ in EXPECTED_PROBLEMS]
    for (_, _, reason), (_, _, expected) in zip(problems, EXPECTED_PROBLEMS):
        assert reason.startswith(expected)
    message = str(raised.value)
    for file, key, reason in EXPECTED_PROBLEMS:
        assert f"{file}: {key}: {reason}" in message
    assert SECRET not in message


def test_missing_config_dir_raises_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_dags(tmp_path / "nowhere")


# --- the bundle's DAG file through Airflow's DagBag ----------------------------------------------------------


def dagbag(monkeypatch, config_dir: Path):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("CDC_CONFIG_DIR", str(config_dir))
    return DagBag(dag_folder=str(DAG_FILE))


def test_dagbag_shows_a_bad_config_as_an_import_error_with_file_key_and_reason(tmp_path: Path, monkeypatch):
    bag = dagbag(monkeypatch, write(tmp_path / "config", BAD_SOURCES, BAD_CONNECTORS))

    assert bag.dag_ids == []
    assert len(bag.import_errors) == 1
    (where, error), = bag.import_errors.items()
    assert where.endswith("cdc_pipelines.py")
    assert "ConfigError" in error
    for file, key, reason in EXPECTED_PROBLEMS:
        assert f"{file}: {key}: {reason}" in error
    assert SECRET not in error


def test_dagbag_loads_the_dags_of_a_good_config(tmp_path: Path, monkeypatch):
    bag = dagbag(monkeypatch, write(tmp_path / "config", TWO_SOURCES))

    assert bag.import_errors == {}
    assert sorted(bag.dag_ids) == ["cdc_billing", "cdc_shop"]
    assert set(bag.dags["cdc_shop"].task_ids) == {"wait_for_changes", "capture", "load", "commit"}
    assert Path(bag.dags["cdc_shop"].fileloc) == DAG_FILE


def test_dags_survive_serialization_as_the_dag_processor_stores_them(tmp_path: Path):
    from airflow.serialization.serialized_objects import DagSerialization

    for dag_id, dag in build_dags(write(tmp_path / "config", TWO_SOURCES)).items():
        restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
        assert restored.dag_id == dag_id
        assert set(restored.task_ids) == set(dag.task_ids)
        assert edges(restored) == edges(dag)
        assert restored.max_active_runs == 1
        assert SECRET not in str(DagSerialization.to_dict(dag))  # connection strings stay in the config files
