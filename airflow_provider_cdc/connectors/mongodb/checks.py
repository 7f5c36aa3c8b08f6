"""Checks shared by the MongoDB source and its probe: the server can serve change streams, the position belongs to
this replica set, and whether the stream has something after a position.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from airflow_provider_cdc.connectors.mongodb.options import MongoSourceOptions
from airflow_provider_cdc.connectors.mongodb.stream import Scope, next_change, open_stream, token_time
from airflow_provider_cdc.errors import PositionLostError, SourceError

# The oldest server with show_expanded_events (DDL events) and pre-images.
MIN_VERSION = (6, 0)
# An idle source's position is refreshed when the stream's resume point is this far ahead of it, so that it never
# falls off the oplog (oplog windows are hours or days).
ADVANCE_IDLE_SECONDS = 300


def server_state(client: MongoClient, source_id: str) -> dict[str, Any]:
    """The replica set name and server version; a standalone server or one older than 6.0 is refused clearly."""
    try:
        hello = client.admin.command("hello")
        version = client.server_info()["version"]
    except PyMongoError as exc:
        raise SourceError(source_id, f"cannot connect: {exc}") from exc
    if not hello.get("setName"):
        raise SourceError(source_id, "the server is not a replica set member: change streams need a replica set "
                          "(a single node is enough: start mongod with --replSet rs0, then rs.initiate())")
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts < MIN_VERSION:
        raise SourceError(source_id, f"MongoDB {version} is too old: change streams with DDL events "
                          "(show_expanded_events) need 6.0 or later")
    return {"set_name": hello["setName"], "version": version}


def check_position(position: Mapping[str, Any], state: Mapping[str, Any], source_id: str) -> None:
    """A position read from another replica set is lost, never reused (a resume token means nothing there)."""
    if position.get("set_name") and position["set_name"] != state["set_name"]:
        raise PositionLostError(source_id, dict(position), f"the server is another replica set ({state['set_name']}, "
                                f"the position was read from {position['set_name']})")


def stream_has_changes(client: MongoClient, scope: Scope, position: Mapping[str, Any], options: MongoSourceOptions,
                       *, source_id: str, advance: bool = False, budget_s: float = 1.0) -> bool:
    """Whether a capture after ``position`` would read an event, or (for an idle source) move the position: the
    stream's resume point is ``ADVANCE_IDLE_SECONDS`` ahead, or merely ahead when ``advance`` (a heartbeat)."""
    if not position.get("resume_token"):
        return True
    deadline = time.monotonic() + budget_s
    with open_stream(client, scope, position, options, source_id=source_id, max_await_ms=10, slim=True) as stream:
        last: Any = None
        while True:
            if next_change(stream, position, source_id) is not None:
                return True
            token = stream.resume_token
            if token == last or time.monotonic() > deadline:
                break
            last = token  # an empty getMore may have scanned only part of the oplog: ask until it stops moving
    now, then = token_time(stream.resume_token), token_time(position.get("resume_token"))
    if now is None or then is None or now <= then:
        return False
    return advance or now[0] - then[0] >= ADVANCE_IDLE_SECONDS
