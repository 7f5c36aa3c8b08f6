"""``CDCChangesSensor``: succeeds when a source has changes to capture (a pending snapshot counts).

Deferrable by default: it checks once in the worker, then hands the wait to :class:`ChangesAvailableTrigger`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator

from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.pipeline import start_position
from airflow_provider_cdc.triggers.changes import ChangesAvailableTrigger


class CDCChangesSensor(BaseSensorOperator):
    """Waits for changes of ``source_id`` after its stored position.

    :param source_id: id of the source in cdc.yaml
    :param config_dir: config directory (default: ``CDC_CONFIG_DIR`` or ``include/config``)
    :param heartbeat_interval: seconds of idleness after which the trigger emits a heartbeat (0: never)
    :param deferrable: wait in the triggerer (default) instead of occupying a worker slot
    """

    template_fields: Sequence[str] = ("source_id", "config_dir")
    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        source_id: str,
        config_dir: str | None = None,
        heartbeat_interval: float = 0.0,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source_id = source_id
        self.config_dir = config_dir
        self.heartbeat_interval = heartbeat_interval
        self.deferrable = deferrable

    def _check(self) -> tuple[bool, dict[str, Any] | None]:
        hook = CdcHook(self.source_id, self.config_dir)
        source, sink = hook.get_source(), hook.get_sink()
        try:
            # The Variable, or the sink ledger when that is later or the Variable is lost: with either, the
            # source ran before and its slot must not be recreated.
            position = start_position(source, sink, hook.positions)
            source.prepare(position)
            if position is not None:
                # The Variable is written only after the sink committed, so acknowledging it is always safe; it
                # finishes a commit step that stopped between storing the position and acknowledging it.
                source.acknowledge(position)
            return source.has_changes(position), position
        finally:
            source.close()
            sink.close()

    def poke(self, context: Any) -> bool:
        ready, _ = self._check()
        return ready

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        ready, position = self._check()
        if ready:
            self.log.info("source %s has changes to capture", self.source_id)
            return None
        self.defer(
            trigger=ChangesAvailableTrigger(
                source_id=self.source_id,
                position=position,
                config_dir=self.config_dir,
                poll_interval=self.poke_interval,
                heartbeat_interval=self.heartbeat_interval,
            ),
            method_name="execute_complete",
            timeout=dt.timedelta(seconds=self.timeout) if self.timeout else None,
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        if not event or event.get("status") != "ready":
            message = (event or {}).get("message", "no event")
            raise CdcError(f"task {self.task_id}: waiting for changes of source {self.source_id!r} failed: {message}")
        self.log.info("source %s has changes to capture (after %s polls)", self.source_id, event.get("polls"))
