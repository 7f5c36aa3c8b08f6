"""PgChangeProbe (the triggerer's async probe) checks a position exactly as PgSource.has_changes does."""

from __future__ import annotations

import asyncio
import os

import psycopg
import pytest

from airflow_provider_cdc.connectors.base import ChangeProbe
from airflow_provider_cdc.connectors.postgres.probe import PgChangeProbe
from airflow_provider_cdc.connectors.postgres.source import PgSource
from airflow_provider_cdc.errors import PositionLostError, is_terminal

TABLES = [("public", "items")]
# Slot names are cluster-wide: one per test process, so that tests running side by side never share one.
SLOT = f"cdc_probe_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"


@pytest.fixture
def items(pg_database):
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    return pg_database


def both(url: str):
    source = PgSource(url, source_id="t", tables=TABLES, slot_name=SLOT, publication_name="cdc_t_pub")
    probe = PgChangeProbe(url, source_id="t", tables=["public.items"], slot_name=SLOT,
                          publication_name="cdc_t_pub")
    return source, probe


def answers(source: PgSource, probe: PgChangeProbe, position):
    """(sync, async) answers, or the error type each raised."""
    out = []
    for ask in (lambda: source.has_changes(position), lambda: asyncio.run(probe.has_changes_after(position))):
        try:
            out.append(ask())
        except PositionLostError as exc:
            out.append(type(exc))
    return out


def test_probe_and_has_changes_agree_idle_change_snapshot_and_lost_slot(items):
    source, probe = both(items)
    assert isinstance(probe, ChangeProbe)
    try:
        source.prepare()
        position = {"lsn": source.slot_state().confirmed_flush_lsn, "seq": 0, "schemas": {},
                    "tables": ["public.items"], **source.server_identity()}
        assert answers(source, probe, position) == [False, False]  # idle
        assert answers(source, probe, {**position, "snapshot": {"pending": ["public.items"], "after": None}}) == [
            True, True]  # a pending snapshot is work
        assert answers(source, probe, None) == [True, True]
        with psycopg.connect(items, autocommit=True) as conn:
            conn.execute("INSERT INTO items VALUES (1, 'a')")
        assert answers(source, probe, position) == [True, True]
        # A heartbeat is a commit without rows: the probe reports it, so that an idle slot advances.
        batch = source.capture(position, 100)
        assert answers(source, probe, batch.position_to) == [False, False]
        asyncio.run(probe.heartbeat())
        assert answers(source, probe, batch.position_to) == [True, True]
        foreign = {**position, "system_id": "1"}
        assert answers(source, probe, foreign) == [PositionLostError, PositionLostError]
        assert source.discard_position_holder().startswith(f"replication slot {SLOT} (it was at ")
        assert not source.holds_position() and source.discard_position_holder() is None
        assert answers(source, probe, position) == [PositionLostError, PositionLostError]
        with pytest.raises(PositionLostError, match=f"replication slot '{SLOT}' was dropped") as lost:
            asyncio.run(probe.has_changes_after(position))
        assert is_terminal(lost.value)
    finally:
        source.close()
        asyncio.run(probe.aclose())


def test_recovery_positions(items):
    source, probe = both(items)
    with source:
        assert not source.holds_position()
        position = source.initial_position(snapshot=True)
        assert source.holds_position()
        assert position["snapshot"] == {"pending": ["public.items"], "after": None}
        assert "snapshot" not in source.initial_position(snapshot=False)
        streaming = {k: v for k, v in position.items() if k != "snapshot"}
        again = source.resnapshot_position(streaming, ["public.items"])
        assert again["snapshot"] == {"pending": ["public.items"], "after": None}
