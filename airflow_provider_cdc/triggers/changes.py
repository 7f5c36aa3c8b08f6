"""``ChangesAvailableTrigger``: waits in the triggerer until a source has changes after a position.

It talks to the source only through its :class:`~airflow_provider_cdc.connectors.base.ChangeProbe`, whatever the
database, and never blocks the event loop: config loading and the connection look-up run in a thread, and the
probe is async. The probe checks the position the same way capture does, so a position lost at the source is
reported here too. While the source is idle it emits a heartbeat every ``heartbeat_interval`` seconds, so that the
source's position still advances when other databases write to the same log (the heartbeat is a change, so the
trigger then fires and the run commits the new position).

An error ends the wait with an ``error`` event that carries the message and whether it is ``terminal``; the
sensor fails at once on a terminal one and retries otherwise. Never a silent loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_cdc.errors import is_terminal

if TYPE_CHECKING:
    from airflow_provider_cdc.connectors.base import ChangeProbe, Position


class ChangesAvailableTrigger(BaseTrigger):
    """Fires ``{"status": "ready", "source_id", "polls"}`` once ``source_id`` has changes after ``position``, or
    ``{"status": "error", "source_id", "message", "terminal"}``.

    :param source_id: id of the source in cdc.yaml
    :param position: the stored position to wait after (None: nothing stored yet)
    :param config_dir: config directory (default: ``CDC_CONFIG_DIR`` or ``include/config``)
    :param cdc_config: the config given inline instead (JSON-safe documents: connection ids, no secret)
    :param poll_interval: seconds between probes
    :param heartbeat_interval: seconds of idleness after which to emit a heartbeat (0: never)
    """

    def __init__(
        self,
        source_id: str,
        position: Position | None,
        config_dir: str | None = None,
        poll_interval: float = 1.0,
        heartbeat_interval: float = 0.0,
        cdc_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.source_id = source_id
        self.position = position
        self.config_dir = config_dir
        self.cdc_config = cdc_config
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_provider_cdc.triggers.changes.ChangesAvailableTrigger",
            {
                "source_id": self.source_id,
                "position": self.position,
                "config_dir": self.config_dir,
                "poll_interval": self.poll_interval,
                "heartbeat_interval": self.heartbeat_interval,
                "cdc_config": self.cdc_config,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from asgiref.sync import sync_to_async

        from airflow_provider_cdc.hooks.cdc import CdcHook

        probe: ChangeProbe | None = None
        polls = 0
        try:
            hook = CdcHook(self.source_id, self.config_dir, documents=self.cdc_config)
            probe = await sync_to_async(hook.get_probe)()
            idle_since = time.monotonic()
            while not await probe.has_changes_after(self.position):
                polls += 1
                if self.heartbeat_interval and time.monotonic() - idle_since >= self.heartbeat_interval:
                    self.log.info("source %s idle for %.0fs: emitting a heartbeat", self.source_id,
                                  time.monotonic() - idle_since)
                    await probe.heartbeat()
                    idle_since = time.monotonic()
                await asyncio.sleep(self.poll_interval)
            event = {"status": "ready", "source_id": self.source_id, "polls": polls}
        except Exception as exc:  # report, never loop silently on a broken source
            event = {"status": "error", "source_id": self.source_id, "message": str(exc),
                     "terminal": is_terminal(exc)}
        finally:
            # Closed before the event is yielded: the triggerer may drop the generator right after it.
            if probe is not None:
                await self._close(probe)
        yield TriggerEvent(event)

    async def _close(self, probe: ChangeProbe) -> None:
        try:
            await probe.aclose()
        except Exception as exc:  # the event matters more than a failed close
            self.log.warning("source %s: closing the change probe failed: %s", self.source_id, exc)
