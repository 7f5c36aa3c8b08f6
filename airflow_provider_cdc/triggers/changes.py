"""``ChangesAvailableTrigger``: waits in the triggerer until a source has changes after a position.

It never blocks the event loop: config loading and the connection look-up run in a thread, and the probe uses the
source's async driver. While the source is idle it emits a heartbeat every ``heartbeat_interval`` seconds, so that
a slot still advances when other databases write WAL (the heartbeat is a change, so the trigger then fires and the
run commits the new position).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class ChangesAvailableTrigger(BaseTrigger):
    def __init__(
        self,
        source_id: str,
        position: dict[str, Any] | None,
        config_dir: str | None = None,
        poll_interval: float = 1.0,
        heartbeat_interval: float = 0.0,
    ) -> None:
        super().__init__()
        self.source_id = source_id
        self.position = position
        self.config_dir = config_dir
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
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from asgiref.sync import sync_to_async

        from airflow_provider_cdc.hooks.cdc import CdcHook

        source = None
        try:
            hook = CdcHook(self.source_id, self.config_dir)
            source = await sync_to_async(hook.get_source)()
            idle_since = time.monotonic()
            polls = 0
            while not await source.has_changes_async(self.position):
                polls += 1
                if self.heartbeat_interval and time.monotonic() - idle_since >= self.heartbeat_interval:
                    self.log.info("source %s idle for %.0fs: emitting a heartbeat", self.source_id,
                                  time.monotonic() - idle_since)
                    await source.heartbeat_async()
                    idle_since = time.monotonic()
                await asyncio.sleep(self.poll_interval)
        except Exception as exc:  # report, never loop silently on a broken source
            yield TriggerEvent({"status": "error", "source_id": self.source_id, "message": str(exc)})
            return
        finally:
            if source is not None:
                await source.aclose()
        yield TriggerEvent({"status": "ready", "source_id": self.source_id, "polls": polls})
