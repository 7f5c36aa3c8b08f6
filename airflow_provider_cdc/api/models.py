"""The request and response models of the CDC REST API. They make its OpenAPI spec, and FastAPI answers a request
that does not fit them with 422 and a message per field. Every answer is JSON-safe and holds no credential: sources
and sinks appear by their config ids, datasets by their lineage ids (namespaces without user or password)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- batches and status -----------------------------------------------------------------------------------------------


class BatchInfo(_Answer):
    """One applied batch, as its ``_cdc_ledger`` row records it."""

    batch_id: str
    source_id: str
    seq_from: int | None = None
    seq_to: int | None = None
    counts: dict[str, dict[str, int]] = Field(default_factory=dict,
                                              description="per table, changes per op (c u d t r s)")
    events: int = Field(0, description="changes in the batch, all tables and ops")
    rows_upserted: int = 0
    rows_deleted: int = 0
    position_from: dict[str, Any] | None = None
    position_to: dict[str, Any] | None = None
    run_id: str | None = None
    committed_at: dt.datetime | None = None
    quality_score: float | None = Field(None, description="passed / evaluated over the batch's validated tables")


class BatchList(_Answer):
    batches: list[BatchInfo]
    problems: list[str] = Field(default_factory=list, description="sinks whose ledger could not be read, and why")


class RunInfo(_Answer):
    """One DAG run, from Airflow's metadata."""

    run_id: str
    state: str | None = None
    run_type: str | None = None
    start_date: dt.datetime | None = None
    end_date: dt.datetime | None = None


class HeldTable(_Answer):
    table: str
    reason: str


class SourceStatus(_Answer):
    source_id: str
    type: str
    dag_id: str
    dag_registered: bool = Field(description="whether Airflow knows the DAG (the DAG processor parsed it)")
    paused: bool | None = None
    latest_run: RunInfo | None = None
    last_batch: BatchInfo | None = None
    position: dict[str, Any] | None = Field(None, description="the Variable cdc.position.<source_id>")
    lag_seconds: float | None = Field(None, description="now minus the commit time of the last batch in the sink")
    events_per_second: float | None = Field(
        None, description="changes of the recent batches over the run time of the DAG runs that loaded them")
    failure_rate: float | None = Field(None, description="failed / finished among the recent DAG runs")
    recent_runs: int = Field(0, description="finished DAG runs the failure rate is taken over")
    quality_score: float | None = Field(None, description="the latest batch's passed / evaluated changes")
    held_tables: list[HeldTable] = Field(default_factory=list, description="tables the sink holds back, and why")
    problems: list[str] = Field(default_factory=list)


class PipelineStatus(_Answer):
    generated_at: dt.datetime
    sources: list[SourceStatus]


class DagAction(_Answer):
    dag_id: str
    source_id: str
    paused: bool
    changed: bool = Field(description="false when the DAG was already in that state")


class PipelineActionRequest(BaseModel):
    """The optional body of ``pipeline/start`` and ``pipeline/stop``: which sources (default: every one)."""

    model_config = ConfigDict(extra="forbid")

    source_ids: list[str] | None = Field(None, description="source ids of cdc.yaml; omitted: every source")


class PipelineActionResult(_Answer):
    action: Literal["start", "stop"]
    dags: list[DagAction]
    problems: list[str] = Field(default_factory=list, description="DAGs Airflow does not know yet, and why")


# --- lineage ----------------------------------------------------------------------------------------------------------


class LineageNode(_Answer):
    id: str
    kind: str
    depth: int
    label: str
    dataset: str | None = None


class LineageAnswer(_Answer):
    """Upstream or downstream of a dataset (table level) or a column (column level)."""

    node: str
    kind: str
    level: str
    direction: str
    max_depth: int | None
    nodes: list[LineageNode]
    datasets: list[str]
    edges: list[dict[str, Any]]


class ImpactAnswer(_Answer):
    node: str
    kind: str
    datasets: list[str]
    columns: list[str]
    rules: list[str]
    suites: list[str]
    dags: list[str]
    tasks: list[str]
    critical_path: list[str]
    severity: str
    reasons: list[str]


class LineageFlow(_Answer):
    """The whole lineage graph (``format=json``)."""

    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]
    problems: list[str]


# --- transformations --------------------------------------------------------------------------------------------------


class RuleInfo(_Answer):
    rule_id: str
    name: str | None = None
    rule_type: str
    tables: list[str] | None = None
    source_fields: list[str] = Field(default_factory=list)
    target_field: str | None = None
    expression: str | None = None
    enabled: bool = True
    options: dict[str, Any] = Field(default_factory=dict, description="the rule type's own keys")
    origin: Literal["yaml", "api"] = "yaml"


class RuleList(_Answer):
    rules: list[RuleInfo]


# --- health -----------------------------------------------------------------------------------------------------------


class Reachability(_Answer):
    """Whether one source or sink answered; the error is a class name only (its message could name a host)."""

    type: str
    reachable: bool | None = Field(description="None: not checked (e.g. object storage)")
    latency_ms: float | None = None
    error: str | None = None


class Resources(_Answer):
    process_rss_bytes: int
    memory_percent: float = Field(description="of the machine's memory in use")
    cpu_percent: float = Field(description="of the machine's CPU, over a short sample")
    cpu_count: int
    load_average: list[float] | None = None


class Health(_Answer):
    status: Literal["healthy", "degraded", "unhealthy"]
    sources: dict[str, Reachability]
    sinks: dict[str, Reachability]
    engine: dict[str, str | None] = Field(description="Airflow components: metadatabase, scheduler, triggerer...")
    pipelines: dict[str, int] = Field(description="CDC DAGs: configured, registered, paused, running")
    resources: Resources
    problems: list[str] = Field(default_factory=list)
