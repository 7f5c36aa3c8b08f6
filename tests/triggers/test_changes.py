"""ChangesAvailableTrigger: exact serialization, its use of the ChangeProbe contract alone, and its wait against real
PostgreSQL sources (15 and 18).

The trigger's async generator is driven by hand, the way the triggerer drives it: pending means ``anext()`` has not
returned within a timeout; firing means it returned one ``TriggerEvent`` and the generator is then exhausted.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cdc_testing import create_shop, slot_lsn, unique_id, write_config

from airflow_provider_cdc.connectors.base import ChangeProbe
from airflow_provider_cdc.errors import PositionLostError, SourceError
from airflow_provider_cdc.hooks.cdc import CdcHook
from airflow_provider_cdc.triggers.changes import ChangesAvailableTrigger

CLASSPATH = "airflow_provider_cdc.triggers.changes.ChangesAvailableTrigger"
PENDING_FOR = 1.5  # seconds a trigger must stay quiet to count as pending
FIRES_WITHIN = 15.0  # seconds a trigger may take to fire once its condition holds


# --- serialization (no server) -------------------------------------------------------------------------------


def test_serialize_returns_classpath_and_exactly_the_constructor_kwargs():
    position = {"lsn": "0/16B3748", "seq": 7, "schemas": {"public.users": "0123456789abcdef"}}
    trigger = ChangesAvailableTrigger(
        source_id="shop", position=position, config_dir="/opt/cdc/config", poll_interval=0.5, heartbeat_interval=30.0
    )

    classpath, kwargs = trigger.serialize()

    assert classpath == CLASSPATH
    assert kwargs == {
        "source_id": "shop",
        "position": position,
        "config_dir": "/opt/cdc/config",
        "poll_interval": 0.5,
        "heartbeat_interval": 30.0,
        "cdc_config": None,
    }
    assert json.loads(json.dumps(kwargs)) == kwargs  # JSON-safe: the triggerer stores kwargs in the metadata DB


def test_serialize_with_defaults_names_every_constructor_argument():
    classpath, kwargs = ChangesAvailableTrigger(source_id="shop", position=None).serialize()
    assert classpath == CLASSPATH
    assert kwargs == {
        "source_id": "shop",
        "position": None,
        "config_dir": None,
        "poll_interval": 1.0,
        "heartbeat_interval": 0.0,
        "cdc_config": None,
    }


def test_trigger_rebuilt_from_its_serialization_serializes_identically():
    original = ChangesAvailableTrigger(
        source_id="orders_db", position={"lsn": "1/0", "seq": 0, "schemas": {}}, config_dir="/cfg", poll_interval=2.0,
        heartbeat_interval=5.0,
    )
    classpath, kwargs = original.serialize()

    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))

    assert type(rebuilt) is ChangesAvailableTrigger
    assert rebuilt.serialize() == (classpath, kwargs)


# --- the ChangeProbe contract: all the trigger uses of a source (no server) ---------------------------------------


class ScriptedProbe:
    """A ChangeProbe whose answers are scripted: True/False per probe, or an exception to raise."""

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    async def has_changes_after(self, position):
        self.calls.append(f"has_changes_after {position}")
        answer = self.answers.pop(0) if self.answers else False
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def heartbeat(self) -> None:
        self.calls.append("heartbeat")

    async def aclose(self) -> None:
        self.calls.append("aclose")


def with_probe(monkeypatch, probe: ScriptedProbe) -> None:
    assert isinstance(probe, ChangeProbe)
    monkeypatch.setattr(CdcHook, "get_probe", lambda hook: probe)


def run_trigger(trigger: ChangesAvailableTrigger) -> list:
    async def scenario():
        return [event async for event in trigger.run()]

    return asyncio.run(asyncio.wait_for(scenario(), FIRES_WITHIN))


def test_trigger_probes_until_changes_then_closes_the_probe_before_its_one_event(monkeypatch):
    probe = ScriptedProbe([False, False, True])
    with_probe(monkeypatch, probe)

    events = run_trigger(ChangesAvailableTrigger(source_id="shop", position={"pos": 1}, poll_interval=0.01))

    assert [e.payload for e in events] == [{"status": "ready", "source_id": "shop", "polls": 2}]
    assert probe.calls == ["has_changes_after {'pos': 1}"] * 3 + ["aclose"]


def test_trigger_emits_a_heartbeat_through_the_probe_when_idle(monkeypatch):
    probe = ScriptedProbe([False] * 30 + [True])
    with_probe(monkeypatch, probe)

    events = run_trigger(ChangesAvailableTrigger(source_id="shop", position=None, poll_interval=0.01,
                                                 heartbeat_interval=0.05))

    assert events[0].payload["status"] == "ready"
    assert "heartbeat" in probe.calls and probe.calls[-1] == "aclose"


@pytest.mark.parametrize(("error", "terminal"), [
    (PositionLostError("shop", {"pos": 1}, "its log was removed"), True),
    (SourceError("shop", "cannot connect: connection refused"), False),
])
def test_a_probe_error_becomes_one_error_event_saying_whether_it_is_terminal(monkeypatch, error, terminal):
    probe = ScriptedProbe([False, error])
    with_probe(monkeypatch, probe)

    events = run_trigger(ChangesAvailableTrigger(source_id="shop", position={"pos": 1}, poll_interval=0.01))

    assert [e.payload for e in events] == [
        {"status": "error", "source_id": "shop", "message": str(error), "terminal": terminal}
    ]
    assert probe.calls[-1] == "aclose"


# --- against a real source -----------------------------------------------------------------------------------


@dataclass
class Source:
    source_id: str
    url: str
    config_dir: str
    slot: str
    position: dict

    def trigger(self, **kwargs) -> ChangesAvailableTrigger:
        return ChangesAvailableTrigger(
            source_id=self.source_id, position=self.position, config_dir=self.config_dir,
            **{"poll_interval": 0.1, **kwargs},
        )


@pytest.fixture
def source(pg_database_factory, tmp_path: Path) -> Source:
    """A shop database with its publication and slot prepared, and a position at the slot's LSN (nothing new)."""
    source_url, sink_url = pg_database_factory(), pg_database_factory()
    create_shop(source_url, users=5, orders=5)
    source_id = unique_id("trg")
    config_dir = write_config(tmp_path / "config", source_id=source_id, source_url=source_url, sink_url=sink_url,
                              tables=["users", "orders"])
    with CdcHook(source_id, str(config_dir)).get_source() as pg_source:
        pg_source.prepare()
        lsn = pg_source.slot_state()["confirmed_flush_lsn"]
    return Source(source_id, source_url, str(config_dir), f"cdc_{source_id}",
                  {"lsn": lsn, "seq": 0, "schemas": {}})


def insert_user(url: str, user_id: int = 1000) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, name, balance) VALUES (%s, 'new@example.com', 'New', 1)",
                     (user_id,))


def drop_slot(url: str, slot: str) -> None:
    """Drop ``slot``, retrying while a probe of the trigger holds it for the length of one peek."""
    deadline = time.monotonic() + 10
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                return
            except psycopg.errors.ObjectInUse:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


def heartbeat_messages(url: str, slot: str, publication: str) -> int:
    """How many logical messages with the heartbeat prefix the slot holds (peeked: nothing is consumed)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1', "
            "'publication_names', %s, 'messages', 'true')",
            (slot, publication),
        ).fetchall()
    return sum(1 for (data,) in rows if data[0] == ord("M") and b"cdc_heartbeat" in bytes(data))


async def assert_pending(task: asyncio.Task, seconds: float = PENDING_FOR) -> None:
    # shield: the timeout must not cancel the trigger, which keeps waiting afterwards
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), seconds)


async def assert_exhausted(gen) -> None:
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(gen), 5)


def test_stays_pending_while_idle_then_fires_ready_after_an_insert(source: Source):
    async def scenario():
        gen = source.trigger().run()
        task = asyncio.ensure_future(anext(gen))
        await assert_pending(task)
        await asyncio.to_thread(insert_user, source.url)
        event = await asyncio.wait_for(task, FIRES_WITHIN)
        await assert_exhausted(gen)  # one event, then the generator returns
        return event

    event = asyncio.run(scenario())

    assert event.payload["status"] == "ready"
    assert event.payload["source_id"] == source.source_id
    assert event.payload["polls"] >= 1  # it did wait: the first probes found nothing
    # Probing peeks: the slot is not consumed, so the capture task will still find the insert.
    assert slot_lsn(source.url, source.slot) == source.position["lsn"]


def test_fires_at_once_when_changes_are_already_there(source: Source):
    insert_user(source.url)

    async def scenario():
        gen = source.trigger().run()
        return await asyncio.wait_for(anext(gen), FIRES_WITHIN)

    event = asyncio.run(scenario())
    assert event.payload == {"status": "ready", "source_id": source.source_id, "polls": 0}


def test_a_pending_snapshot_counts_as_changes(source: Source):
    trigger = ChangesAvailableTrigger(
        source_id=source.source_id, position={**source.position, "snapshot": {"table": 0, "after": None}},
        config_dir=source.config_dir, poll_interval=0.1,
    )

    async def scenario():
        return await asyncio.wait_for(anext(trigger.run()), FIRES_WITHIN)

    assert asyncio.run(scenario()).payload["status"] == "ready"


def test_idle_source_emits_a_heartbeat_which_makes_it_fire(source: Source):
    publication = f"cdc_{source.source_id}_pub"
    assert heartbeat_messages(source.url, source.slot, publication) == 0

    async def scenario():
        gen = source.trigger(poll_interval=0.1, heartbeat_interval=0.5).run()
        started = time.monotonic()
        event = await asyncio.wait_for(anext(gen), FIRES_WITHIN)
        return event, time.monotonic() - started

    event, waited = asyncio.run(scenario())

    assert event.payload["status"] == "ready"
    assert waited >= 0.5  # not before the source was idle for heartbeat_interval
    assert event.payload["polls"] >= 1
    # The heartbeat is a transactional logical message on the slot: the commit the run will advance the slot to.
    assert heartbeat_messages(source.url, source.slot, publication) >= 1
    with psycopg.connect(source.url) as conn:  # and no row changed
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (5,)


def test_without_heartbeat_an_idle_source_stays_pending(source: Source):
    async def scenario():
        gen = source.trigger(poll_interval=0.1, heartbeat_interval=0).run()
        task = asyncio.ensure_future(anext(gen))
        await assert_pending(task, 2.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert heartbeat_messages(source.url, source.slot, f"cdc_{source.source_id}_pub") == 0


def test_dropped_slot_yields_an_error_event_naming_the_slot(source: Source):
    async def scenario():
        gen = source.trigger().run()
        task = asyncio.ensure_future(anext(gen))
        await assert_pending(task, 1.0)
        await asyncio.to_thread(drop_slot, source.url, source.slot)
        event = await asyncio.wait_for(task, FIRES_WITHIN)  # reported, not a silent loop
        await assert_exhausted(gen)
        return event

    event = asyncio.run(scenario())

    assert event.payload["status"] == "error"
    assert event.payload["source_id"] == source.source_id
    assert event.payload["terminal"] is True  # the sensor fails at once: no retries of a lost slot
    message = event.payload["message"]
    assert f"replication slot {source.slot!r} was dropped" in message
    assert f"resnapshot {source.source_id}" in message  # says what to do next: re-snapshot


def test_dropped_slot_before_the_first_probe_is_reported_too(source: Source):
    drop_slot(source.url, source.slot)

    async def scenario():
        return await asyncio.wait_for(anext(source.trigger().run()), FIRES_WITHIN)

    event = asyncio.run(scenario())
    assert event.payload["status"] == "error"
    assert source.slot in event.payload["message"]


def test_unknown_source_yields_an_error_event(tmp_path: Path):
    config_dir = write_config(tmp_path / "config", source_id="shop", source_url="postgresql://u@127.0.0.1:1/src",
                              sink_url="postgresql://u@127.0.0.1:1/sink", tables=["users"])
    trigger = ChangesAvailableTrigger(source_id="nope", position={"lsn": "0/0", "seq": 0}, config_dir=str(config_dir))

    async def scenario():
        return await asyncio.wait_for(anext(trigger.run()), FIRES_WITHIN)

    event = asyncio.run(scenario())
    assert event.payload["status"] == "error"
    assert event.payload["source_id"] == "nope"
    assert "unknown source 'nope'" in event.payload["message"]
