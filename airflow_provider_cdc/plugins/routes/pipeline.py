"""``/api/v1/pipeline/...`` and ``/api/v1/batches``: the status of the CDC DAGs, their recent batches, and starting
and stopping them (unpausing and pausing the ``cdc_*`` DAGs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

from airflow_provider_cdc.api.errors import NotFoundError
from airflow_provider_cdc.api.models import (
    BatchList,
    DagAction,
    PipelineActionRequest,
    PipelineActionResult,
    PipelineStatus,
)
from airflow_provider_cdc.api.status import StatusReader
from airflow_provider_cdc.config import CdcConfig
from airflow_provider_cdc.plugins import airflow_state
from airflow_provider_cdc.plugins.auth import CdcEditor, CdcReader
from airflow_provider_cdc.plugins.deps import ConfigDep

router = APIRouter(tags=["pipeline"])

SourceIdQuery = Annotated[str | None, Query(description="one source id of cdc.yaml; omitted: every source",
                                            min_length=1, max_length=200)]


@router.get("/api/v1/pipeline/status", response_model=PipelineStatus, summary="Status of every CDC pipeline")
def pipeline_status(config: ConfigDep, _user: CdcReader, source_id: SourceIdQuery = None) -> PipelineStatus:
    return StatusReader(config, airflow_state.dag_states).status(source_id)


@router.get("/api/v1/batches", response_model=BatchList, summary="Recent batches, from the sinks' ledgers")
def batches(config: ConfigDep, _user: CdcReader, source_id: SourceIdQuery = None,
            limit: Annotated[int, Query(ge=1, le=1000, description="at most this many batches")] = 20) -> BatchList:
    return StatusReader(config, airflow_state.dag_states).batches(source_id, limit)


def _act(config: CdcConfig, body: PipelineActionRequest | None, *, start: bool) -> PipelineActionResult:
    known = {source.id: source for source in config.sources}
    wanted = body.source_ids if body is not None and body.source_ids is not None else list(known)
    for source_id in wanted:
        if source_id not in known:
            raise NotFoundError.unknown_source(source_id, known)
    dag_ids = {known[source_id].dag_id: source_id for source_id in wanted}
    before = airflow_state.set_paused(list(dag_ids), paused=not start)
    dags: list[DagAction] = []
    problems: list[str] = []
    for dag_id, source_id in dag_ids.items():
        was = before.get(dag_id)
        if was is None:
            problems.append(f"DAG {dag_id} is not registered in Airflow yet (the DAG processor has not parsed it); "
                            "nothing was changed for it")
            continue
        dags.append(DagAction(dag_id=dag_id, source_id=source_id, paused=not start, changed=was == start))
    return PipelineActionResult(action="start" if start else "stop", dags=dags, problems=problems)


ActionBody = Annotated[PipelineActionRequest | None, Body(description="which sources; omitted: every source")]


@router.post("/api/v1/pipeline/start", response_model=PipelineActionResult,
             summary="Start the CDC pipelines (unpause their DAGs)")
def pipeline_start(config: ConfigDep, _user: CdcEditor, body: ActionBody = None) -> PipelineActionResult:
    return _act(config, body, start=True)


@router.post("/api/v1/pipeline/stop", response_model=PipelineActionResult,
             summary="Stop the CDC pipelines (pause their DAGs)")
def pipeline_stop(config: ConfigDep, _user: CdcEditor, body: ActionBody = None) -> PipelineActionResult:
    return _act(config, body, start=False)
