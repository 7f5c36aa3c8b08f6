"""Config → DAGs: one DAG ``cdc_<source_id>`` per source of ``cdc.yaml``.

Staged mode: ``wait_for_changes`` (deferrable sensor) → ``capture`` → one task per stage → ``load`` → ``commit``.
Fused mode: ``wait_for_changes`` → ``fused``. A PostgreSQL source with ``options.snapshot_ranges`` above 1 gets
``snapshot_ranges`` → ``snapshot_range`` (mapped, one task a key range) before its capture or fused task.
The stages are the source's stage list
(:func:`airflow_provider_cdc.stages.build_stages`: transform, then validate, each only where it has something to
do); each stage task reads the upstream manifest and stages a new one, and load and commit read the last. Fused
mode runs the same list in its one task.

Errors carry intent: the DAG's retries (exponential backoff) are for transient errors; a terminal one fails its
task at once (:mod:`airflow_provider_cdc.operators.intent`).

Bad config raises :class:`~airflow_provider_cdc.config.ConfigError` with every problem (file, key, reason), so the
bundle's DAG file shows it as an import error in the Airflow UI instead of silently losing DAGs.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import DAG

from airflow_provider_cdc.assets import assets_or_none
from airflow_provider_cdc.config import load_config
from airflow_provider_cdc.config.models import describe_policy
from airflow_provider_cdc.operators.cdc import (
    CdcCaptureOperator,
    CdcCommitOperator,
    CdcFusedOperator,
    CdcLoadOperator,
    CdcStageOperator,
)
from airflow_provider_cdc.operators.snapshot_ranges import CdcSnapshotRangeOperator, CdcSnapshotRangesOperator
from airflow_provider_cdc.sensors.changes import CdcChangesSensor
from airflow_provider_cdc.stages import build_stages

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig, SourceConfig

START_DATE = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
# A continuous DAG's sensor may wait as long as the source is idle; a cron run gives up (skipped) after a day.
SENSOR_TIMEOUT = {True: 365 * 24 * 3600, False: 24 * 3600}


def manifest_of(task_id: str) -> str:
    return "{{ ti.xcom_pull(task_ids='" + task_id + "')['manifest_uri'] }}"


def newly_held_of(task_id: str) -> str:
    """The tables the load task's batch held (JSON text), for the commit task: it fails the run for them once."""
    return "{{ ((ti.xcom_pull(task_ids='" + task_id + "') or {}).get('newly_held') or {}) | tojson }}"


def _doc(source: SourceConfig, stage_names: list[str], policy: str) -> str:
    stages = " → ".join(["capture", *stage_names, "load", "commit"])
    return (
        f"### CDC of source `{source.id}` ({source.type})\n\n"
        f"Tables: {', '.join(f'`{t}`' for t in source.tables)} → sink `{source.sink}`, schema "
        f"`{source.target_schema}` ({source.delete_mode} deletes), {source.batch_size} changes per run, "
        f"{source.mode} mode: {stages}.\n\n"
        f"Schema changes: {policy}. A table whose change is refused is held (its changes wait in the sink): the run "
        f"that holds it fails once; resume with `python -m airflow_provider_cdc schema accept "
        f"{source.id}.<schema>.<table>`.\n\n"
        f"Position: Variable `cdc.position.{source.id}`. Ledger: `_cdc_ledger` in the sink."
    )


def build_dag(source: SourceConfig, config: CdcConfig, config_dir: str) -> DAG:
    continuous = source.schedule == "@continuous"
    stage_names = [stage.name for stage in build_stages(source, config)]
    default_args: dict[str, Any] = {
        "owner": "cdc",
        "retries": 3,
        "retry_delay": dt.timedelta(seconds=15),
        "retry_exponential_backoff": True,
    }
    with DAG(
        dag_id=source.dag_id,
        schedule=source.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=source.max_active_runs,
        default_args=default_args,
        tags=["cdc", source.type],
        doc_md=_doc(source, stage_names, describe_policy(config.schema_policy(source.id))),
    ) as dag:
        common: dict[str, Any] = {"source_id": source.id, "config_dir": config_dir}
        # Sink tables are outlets of the task that loads them, source tables inlets of the one that reads them.
        assets = assets_or_none(config, source)
        inlets: dict[str, Any] = {"inlets": assets.inlets} if assets else {}
        outlets: dict[str, Any] = {"outlets": assets.outlets} if assets else {}
        wait = CdcChangesSensor(
            task_id="wait_for_changes",
            poke_interval=source.poll_interval,
            heartbeat_interval=source.heartbeat_interval,
            timeout=SENSOR_TIMEOUT[continuous],
            # An idle scheduled run gives up as skipped; errors still fail it (never soft_fail: it would skip a
            # lost position too).
            skip_on_timeout=not continuous,
            retries=0 if not continuous else 3,
            **common,
        )
        # A large table's snapshot is read in key ranges by mapped tasks (on every worker of the executor). With no
        # range to read the mapped task is skipped, and the capture runs on the listing's success.
        before: list[Any] = [wait]
        if parallel_snapshot_ranges(source) > 1:
            ranges = CdcSnapshotRangesOperator(task_id="snapshot_ranges", **common)
            staged = CdcSnapshotRangeOperator.partial(task_id="snapshot_range", **common).expand(
                range_index=ranges.output)
            wait >> ranges >> staged
            before = [ranges, staged]
        first: dict[str, Any] = {"trigger_rule": "none_failed_min_one_success"} if len(before) > 1 else {}
        if source.mode == "fused":
            before >> CdcFusedOperator(task_id="fused", **inlets, **outlets, **common, **first)
            return dag
        capture = CdcCaptureOperator(task_id="capture", **inlets, **common, **first)
        before >> capture
        upstream: CdcCaptureOperator | CdcStageOperator = capture
        for name in stage_names:
            stage = CdcStageOperator(task_id=name, stage=name, manifest_uri=manifest_of(upstream.task_id), **common)
            upstream >> stage
            upstream = stage
        # load also names the source tables as inlets: the UI's task-dependency view then draws source -> load -> sink.
        load = CdcLoadOperator(task_id="load", manifest_uri=manifest_of(upstream.task_id), **inlets, **outlets,
                               **common)
        commit = CdcCommitOperator(task_id="commit", manifest_uri=manifest_of(upstream.task_id),
                                   newly_held=newly_held_of(load.task_id), **common)
        upstream >> load >> commit
    return dag


def parallel_snapshot_ranges(source: SourceConfig) -> int:
    """How many key ranges a large table's snapshot is split into (PostgreSQL's ``options.snapshot_ranges``)."""
    if source.type != "postgresql":
        return 1
    return int(source.options.get("snapshot_ranges", 1) or 1)


def default_config_dir(bundle_root: str | os.PathLike[str] | None = None) -> str:
    """``CDC_CONFIG_DIR``, else ``include/config`` beside the bundle's ``dags/`` folder (absolute, so that workers
    whose working directory differs find it too)."""
    configured = os.environ.get("CDC_CONFIG_DIR")
    if configured:
        return str(Path(configured).resolve())
    root = Path(bundle_root) if bundle_root else Path.cwd()
    return str((root / "include" / "config").resolve())


def build_dags(config_dir: str | os.PathLike[str] | None = None) -> dict[str, DAG]:
    directory = str(Path(config_dir).resolve()) if config_dir else default_config_dir()
    config = load_config(directory)
    return {source.dag_id: build_dag(source, config, directory) for source in config.sources}
