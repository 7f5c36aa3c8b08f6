"""CdcChangesSensor against real PostgreSQL sources (15 and 18) and the test Airflow DB's Variables.

Deferrable: ``execute()`` returns at once when there is work (a pending initial snapshot counts), else raises
``TaskDeferred`` with a ``ChangesAvailableTrigger`` resuming in ``execute_complete``. Non-deferrable: ``poke()``.
Errors with intent: a terminal one (a lost position) fails at once (``AirflowFailException``), a transient one is
raised as it is, for Airflow's retries; an idle timeout with ``skip_on_timeout`` skips, an error never does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout, AirflowSkipException, TaskDeferred
from cdc_testing import create_shop, slot_lsn, unique_id, write_config

from airflow_provider_cdc.errors import CdcError
from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.positions import PositionStore
from airflow_provider_cdc.sensors.changes import CdcChangesSensor
from airflow_provider_cdc.triggers.changes import ChangesAvailableTrigger


@dataclass
class Source:
    source_id: str
    url: str
    config_dir: str
    slot: str

    def sensor(self, **kwargs) -> CdcChangesSensor:
        return CdcChangesSensor(task_id="wait_for_changes", source_id=self.source_id, config_dir=self.config_dir,
                                **kwargs)

    def prepare(self) -> dict:
        """Create publication and slot; return a stream position at the slot (nothing to capture after it)."""
        with CdcHook(self.source_id, self.config_dir).get_source() as pg_source:
            pg_source.prepare()
            return {"lsn": pg_source.slot_state()["confirmed_flush_lsn"], "seq": 0, "schemas": {}}


@pytest.fixture
def source(pg_database_factory, tmp_path: Path) -> Iterator[Source]:
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=5, orders=5)
    source_id = unique_id("sen")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users", "orders"])
    yield Source(source_id, source_url, str(config_dir), f"cdc_{source_id}")
    if PositionStore().get_document(source_id) is not None:
        PositionStore().delete(source_id)


def insert_user(url: str, user_id: int = 1000) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, name, balance) VALUES (%s, 'new@example.com', 'New', 1)",
                     (user_id,))


# --- deferrable execute() ------------------------------------------------------------------------------------


def test_execute_returns_at_once_when_the_initial_snapshot_is_pending(source: Source):
    assert PositionStore().get(source.source_id) is None  # no stored position: the snapshot is still to do

    assert source.sensor().execute({}) is None  # no TaskDeferred

    # Checking prepared the source, so the snapshot and the stream that follows it are consistent.
    assert slot_lsn(source.url, source.slot) is not None


def test_execute_defers_to_the_trigger_when_there_is_nothing_to_capture(source: Source):
    position = source.prepare()
    PositionStore().set(source.source_id, position, batch_id=f"{source.source_id}:snapshot.1-10")

    sensor = source.sensor(poke_interval=0.3, heartbeat_interval=5, timeout=120)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})

    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == dt.timedelta(seconds=120)
    trigger = deferred.value.trigger
    assert isinstance(trigger, ChangesAvailableTrigger)
    # The trigger waits after the stored position, without the Variable's bookkeeping keys.
    assert trigger.serialize() == (
        "airflow_provider_cdc.triggers.changes.ChangesAvailableTrigger",
        {
            "source_id": source.source_id,
            "position": position,
            "config_dir": source.config_dir,
            "poll_interval": 0.3,
            "heartbeat_interval": 5.0,
            "cdc_config": None,
        },
    )


def test_deferred_trigger_fires_after_an_insert_and_execute_complete_returns(source: Source):
    PositionStore().set(source.source_id, source.prepare(), batch_id=None)
    sensor = source.sensor(poke_interval=0.1)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})

    async def wait():
        gen = deferred.value.trigger.run()
        task = asyncio.ensure_future(anext(gen))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 1.0)
        await asyncio.to_thread(insert_user, source.url)
        return await asyncio.wait_for(task, 15)

    event = asyncio.run(wait())

    assert event.payload["status"] == "ready"
    assert getattr(sensor, deferred.value.method_name)({}, event=event.payload) is None


def test_execute_returns_at_once_when_changes_follow_the_stored_position(source: Source):
    PositionStore().set(source.source_id, source.prepare(), batch_id=None)
    insert_user(source.url)

    assert source.sensor().execute({}) is None


def test_execute_acknowledges_a_stored_position_the_slot_has_not_reached(source: Source):
    """A commit step that stored the Variable but stopped before acknowledging: the sensor finishes it."""
    source.prepare()
    insert_user(source.url)
    with psycopg.connect(source.url) as conn:
        (lsn,) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    PositionStore().set(source.source_id, {"lsn": lsn, "seq": 1, "schemas": {}}, batch_id=None)

    with pytest.raises(TaskDeferred):  # the insert was loaded (the Variable is past it): nothing new
        source.sensor().execute({})

    assert slot_lsn(source.url, source.slot) == lsn


# --- execute_complete ----------------------------------------------------------------------------------------


def make_sensor(**kwargs) -> CdcChangesSensor:
    return CdcChangesSensor(task_id="wait_for_changes", source_id="shop", config_dir="/nowhere", **kwargs)


def test_execute_complete_fails_at_once_naming_task_and_source_on_a_terminal_error_event():
    event = {"status": "error", "source_id": "shop", "terminal": True,
             "message": "replication slot 'cdc_shop' was dropped; re-snapshot it: resnapshot shop"}

    with pytest.raises(AirflowFailException) as raised:
        make_sensor().execute_complete({}, event=event)

    message = str(raised.value)
    assert "task wait_for_changes" in message
    assert "source 'shop'" in message
    assert "replication slot 'cdc_shop' was dropped" in message


def test_execute_complete_raises_a_retryable_error_on_a_transient_error_event():
    event = {"status": "error", "source_id": "shop", "terminal": False, "message": "connection refused"}

    with pytest.raises(CdcError, match="task wait_for_changes: .*'shop'.*connection refused") as raised:
        make_sensor().execute_complete({}, event=event)
    assert not isinstance(raised.value, AirflowFailException)


def test_a_trigger_timeout_fails_the_sensor_or_skips_it_with_skip_on_timeout():
    from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR, TriggerFailureReason

    timed_out = {"error": TriggerFailureReason.TRIGGER_TIMEOUT}  # how the scheduler resumes a timed-out deferral

    with pytest.raises(AirflowSensorTimeout):
        make_sensor().resume_execution(TRIGGER_FAIL_REPR, timed_out, {})
    with pytest.raises(AirflowSkipException, match="no changes of source 'shop' within 60s"):
        make_sensor(skip_on_timeout=True, timeout=60).resume_execution(TRIGGER_FAIL_REPR, timed_out, {})


def test_skip_on_timeout_never_skips_an_error():
    event = {"status": "error", "source_id": "shop", "terminal": True, "message": "position lost"}
    with pytest.raises(AirflowFailException, match="position lost"):
        make_sensor(skip_on_timeout=True).resume_execution("execute_complete", {"event": event}, {})


def test_execute_complete_raises_without_an_event():
    with pytest.raises(CdcError, match="wait_for_changes.*'shop'.*no event"):
        make_sensor().execute_complete({}, event=None)


def test_execute_complete_returns_on_a_ready_event():
    assert make_sensor().execute_complete({}, event={"status": "ready", "source_id": "shop", "polls": 3}) is None


# --- non-deferrable poke() -----------------------------------------------------------------------------------


def test_poke_is_true_while_the_initial_snapshot_is_pending(source: Source):
    assert source.sensor(deferrable=False).poke({}) is True


def test_poke_is_false_while_idle_and_true_after_an_insert(source: Source):
    position = source.prepare()
    PositionStore().set(source.source_id, position, batch_id=None)
    sensor = source.sensor(deferrable=False)

    assert sensor.poke({}) is False
    insert_user(source.url)
    assert sensor.poke({}) is True
    assert sensor.poke({}) is True  # poking only peeks: the change is still there for capture
    assert slot_lsn(source.url, source.slot) == position["lsn"]


def test_poke_raises_when_the_stored_position_is_lost(source: Source):
    PositionStore().set(source.source_id, source.prepare(), batch_id=None)
    with psycopg.connect(source.url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (source.slot,))
    insert_user(source.url)  # lost with the slot: a re-created slot would start past it

    # Terminal: fails at once (no retries), with the message that says what to do.
    with pytest.raises(AirflowFailException, match=f"slot '{source.slot}' was dropped .*not recreated.*resnapshot"):
        source.sensor(deferrable=False).poke({})
    assert slot_lsn(source.url, source.slot) is None  # never re-created silently


def test_execute_fails_at_once_when_the_stored_position_is_lost(source: Source):
    PositionStore().set(source.source_id, source.prepare(), batch_id=None)
    with psycopg.connect(source.url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (source.slot,))

    with pytest.raises(AirflowFailException, match=f"slot '{source.slot}' was dropped"):
        source.sensor(skip_on_timeout=True).execute({})  # not skipped either
