"""``/health``: no authentication, and nothing in it names a host, a user or a secret (see
:mod:`airflow_provider_cdc.api.health`)."""

from __future__ import annotations

from fastapi import APIRouter

from airflow_provider_cdc.api import health as cdc_health
from airflow_provider_cdc.api.models import Health
from airflow_provider_cdc.config import CdcConfig, ConfigError, load_config
from airflow_provider_cdc.plugins import airflow_state

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Health of the CDC pipelines (no authentication)")
def health() -> Health:
    from airflow_provider_cdc.hooks.cdc import entry_dsn

    problems: list[str] = []
    config: CdcConfig | None = None
    try:
        config = load_config()
    except ConfigError as exc:  # its problems name files and keys; the count is enough here
        problems.append(f"the CDC config has {len(exc.problems)} problem(s): run "
                        "python -m airflow_provider_cdc.config check")
    try:
        engine = airflow_state.engine_health()
    except Exception as exc:
        engine = {"metadatabase": "unhealthy"}
        problems.append(f"Airflow's health could not be read ({type(exc).__name__})")
    pipelines = {"configured": 0, "registered": 0, "paused": 0, "running": 0}
    if config is not None:
        pipelines["configured"] = len(config.sources)
        try:
            states = airflow_state.dag_states([source.dag_id for source in config.sources]).values()
            pipelines["registered"] = sum(state.registered for state in states)
            pipelines["paused"] = sum(bool(state.paused) for state in states)
            pipelines["running"] = sum(bool(state.runs) and state.runs[0].state == "running" for state in states)
        except Exception as exc:
            problems.append(f"the CDC DAGs' state could not be read ({type(exc).__name__})")
    return cdc_health.health(config, lambda entry: entry_dsn(config, entry) if config is not None else "",
                             engine=engine, pipelines=pipelines, problems=problems)
