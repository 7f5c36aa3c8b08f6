"""What the CDC API reads of Airflow's metadata database, and its one write (pausing and unpausing DAGs).

It runs in the API server, which owns the metadata database, through Airflow's ORM models (the same ones the core
API's DAG endpoints use). Values leave this module as the plain :class:`~airflow_provider_cdc.api.status.DagState`.
"""

from __future__ import annotations

from typing import Any

from airflow.models.dag import DagModel
from airflow.models.dagrun import DagRun
from airflow.utils.session import create_session
from sqlalchemy import select

from airflow_provider_cdc.api.status import RECENT_RUNS, DagState, RunRecord


def _state(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def dag_states(dag_ids: list[str]) -> dict[str, DagState]:
    """``dag_id`` -> its paused flag and recent runs (newest first); a DAG Airflow does not know is unregistered."""
    states: dict[str, DagState] = {}
    with create_session() as session:
        models = {m.dag_id: m for m in session.scalars(select(DagModel).where(DagModel.dag_id.in_(dag_ids)))}
        for dag_id in dag_ids:
            model = models.get(dag_id)
            runs = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc())
                                   .limit(RECENT_RUNS)).all()
            states[dag_id] = DagState(
                dag_id=dag_id, registered=model is not None, paused=None if model is None else bool(model.is_paused),
                runs=tuple(RunRecord(run_id=r.run_id, state=_state(r.state), run_type=_state(r.run_type),
                                     start_date=r.start_date, end_date=r.end_date) for r in runs))
    return states


def set_paused(dag_ids: list[str], paused: bool) -> dict[str, bool | None]:
    """Pause or unpause ``dag_ids``: ``dag_id`` -> whether it was paused before (None: Airflow does not know it)."""
    before: dict[str, bool | None] = dict.fromkeys(dag_ids)
    with create_session() as session:
        for model in session.scalars(select(DagModel).where(DagModel.dag_id.in_(dag_ids))):
            before[model.dag_id] = bool(model.is_paused)
            model.is_paused = paused
    return before


def engine_health() -> dict[str, str | None]:
    """Airflow's own health (metadatabase, scheduler, triggerer, DAG processor): component -> status."""
    from airflow.api.common.airflow_health import get_airflow_health

    return {name: (part or {}).get("status") for name, part in get_airflow_health().items()}
