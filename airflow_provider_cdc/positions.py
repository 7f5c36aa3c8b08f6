"""Source positions in the Airflow Variable ``cdc.position.<source_id>``: the
:class:`~airflow_provider_cdc.connectors.base.PositionStore` of a DAG.

The Variable holds the position of the last batch the sink committed, plus that batch's id and when it was
stored. It is written only by the commit step, after the sink transaction (DESIGN section 3, step 4); the source is
acknowledged after that. So the Variable is never ahead of the sink, and the source never ahead of the Variable.

Inside a task the Task SDK's ``Variable`` goes through the API server; outside one (tests, the ``config`` CLI,
benchmarks) Airflow's ORM model is used, which needs the metadata database. The pipeline takes any
``PositionStore``, so tests may keep positions in memory instead.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow_provider_cdc.connectors.base import Position

log = logging.getLogger("airflow_provider_cdc.positions")

_BOOKKEEPING = ("batch_id", "updated_at")


def position_key(source_id: str) -> str:
    return f"cdc.position.{source_id}"


def _in_task() -> bool:
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:  # pragma: no cover - Task SDK always ships with Airflow 3
        return False
    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


class PositionStore:
    """Positions in Airflow Variables (implements :class:`airflow_provider_cdc.connectors.base.PositionStore`).

    :meth:`get` strips the bookkeeping keys (batch id, time) so connectors see only positions;
    :meth:`get_document` returns the whole Variable."""

    def get(self, source_id: str) -> Position | None:
        doc = self.get_document(source_id)
        if doc is None:
            return None
        return {k: v for k, v in doc.items() if k not in _BOOKKEEPING}

    def get_document(self, source_id: str) -> dict[str, Any] | None:
        key = position_key(source_id)
        if _in_task():
            from airflow.sdk import Variable

            return Variable.get(key, default=None, deserialize_json=True)
        from airflow.models import Variable as VariableModel

        return VariableModel.get(key, default_var=None, deserialize_json=True)

    def set(self, source_id: str, position: Position, *, batch_id: str | None) -> None:
        doc = {
            **position,
            "batch_id": batch_id,
            "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        key = position_key(source_id)
        description = (f"CDC position of source {source_id}: written after each committed batch. Delete it only to "
                       "re-snapshot (see the README).")
        if _in_task():
            from airflow.sdk import Variable

            Variable.set(key, doc, description=description, serialize_json=True)
        else:
            from airflow.models import Variable as VariableModel

            VariableModel.set(key, doc, description=description, serialize_json=True)
        log.info("stored position of %s: %s", source_id, {k: v for k, v in doc.items() if k != "schemas"})

    def delete(self, source_id: str) -> None:
        key = position_key(source_id)
        if _in_task():
            from airflow.sdk import Variable

            Variable.delete(key)
        else:
            from airflow.models import Variable as VariableModel

            VariableModel.delete(key)
