"""``CdcChangesSensor``: succeeds when a source has changes to capture (a pending snapshot counts).

Deferrable by default: it checks once in the worker, then hands the wait to :class:`ChangesAvailableTrigger`.
A terminal error (the position is gone at the source, a bad config) fails the task at once, whether the worker's
check or the trigger found it; a transient one is retried.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout, AirflowSkipException

from airflow_provider_cdc.connectors.base import Position
from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.operators.intent import fail_terminal_errors
from airflow_provider_cdc.pipeline import start_position
from airflow_provider_cdc.triggers.changes import ChangesAvailableTrigger


class CdcChangesSensor(BaseSensorOperator):
    """Waits for changes of ``source_id`` after its stored position.

    :param source_id: id of the source in cdc.yaml
    :param config_dir: config directory (default: ``CDC_CONFIG_DIR`` or ``include/config``)
    :param cdc_config: the config given inline instead (:func:`~airflow_provider_cdc.config.inline.cdc_config`)
    :param heartbeat_interval: seconds of idleness after which the trigger emits a heartbeat (0: never)
    :param deferrable: wait in the triggerer (default) instead of occupying a worker slot
    :param skip_on_timeout: when ``timeout`` passes without changes, skip the task (and so the run) instead of
        failing it. Unlike Airflow's ``soft_fail``, errors still fail the task: a lost position is never skipped.
    """

    template_fields: Sequence[str] = ("source_id", "config_dir")
    ui_color = "#d6eaf8"

    def __init__(
        self,
        *,
        source_id: str,
        config_dir: str | None = None,
        cdc_config: Mapping[str, Any] | None = None,
        heartbeat_interval: float = 0.0,
        deferrable: bool = True,
        skip_on_timeout: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source_id = source_id
        self.config_dir = config_dir
        self.cdc_config = cdc_config
        self.heartbeat_interval = heartbeat_interval
        self.deferrable = deferrable
        self.skip_on_timeout = skip_on_timeout

    def _check(self) -> tuple[bool, Position | None]:
        with fail_terminal_errors():
            hook = CdcHook(self.source_id, self.config_dir, documents=self.cdc_config)
            with hook.connected() as (source, sink):
                # The Variable, or the sink ledger when that is later or the Variable is lost: with either, the
                # source ran before and what holds its position must not be recreated.
                position = start_position(source, sink, hook.positions)
                source.prepare(position)
                if position is not None:
                    # The Variable is written only after the sink committed, so acknowledging it is always safe;
                    # it finishes a commit step that stopped between storing the position and acknowledging it.
                    source.acknowledge(position)
                return source.has_changes(position), position

    def poke(self, context: Any) -> bool:
        ready, _ = self._check()
        return ready

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            with self._skipping_on_timeout():
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
                cdc_config=self.cdc_config,
                poll_interval=self.poke_interval,
                heartbeat_interval=self.heartbeat_interval,
            ),
            method_name="execute_complete",
            timeout=dt.timedelta(seconds=self.timeout) if self.timeout else None,
        )

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        with self._skipping_on_timeout():
            return super().resume_execution(next_method, next_kwargs, context)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        if not event or event.get("status") != "ready":
            message = (
                f"task {self.task_id}: waiting for changes of source {self.source_id!r} failed: "
                f"{(event or {}).get('message', 'no event')}"
            )
            if event and event.get("terminal"):
                raise AirflowFailException(message)
            raise CdcError(message)
        self.log.info("source %s has changes to capture (after %s polls)", self.source_id, event.get("polls"))

    @contextmanager
    def _skipping_on_timeout(self) -> Iterator[None]:
        """With ``skip_on_timeout``, an idle source's timeout skips the task; anything else still fails it."""
        try:
            yield
        except AirflowSensorTimeout as exc:
            if not self.skip_on_timeout:
                raise
            raise AirflowSkipException(
                f"no changes of source {self.source_id!r} within {self.timeout:g}s: run skipped"
            ) from exc
