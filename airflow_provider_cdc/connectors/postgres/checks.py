"""The position check, shared by capture, :meth:`PgSource.has_changes` and the triggerer's :class:`PgChangeProbe`.

One function builds the queries and one interprets their rows, so the synchronous and the async paths cannot drift
apart: both refuse a lost slot, a position taken on another server or timeline, and a position the slot has passed
(:class:`~airflow_provider_cdc.errors.PositionLostError`), and both count a pending snapshot as work.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from airflow_provider_cdc.connectors.postgres import pgoutput
from airflow_provider_cdc.errors import PositionLostError

log = logging.getLogger("airflow_provider_cdc.source.postgres")

HEARTBEAT_PREFIX = "cdc_heartbeat"
HEARTBEAT_SQL = "SELECT pg_logical_emit_message(true, %s, now()::text)"
# A probe decodes only the first transactions after the slot's position (``upto_nchanges`` stops at a commit).
PROBE_CHANGES = 64
# Only commit messages reach the client: a probe that meets one huge transaction still holds a few rows.
PROBE_SQL = (
    "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, %s, 'proto_version', '1', "
    "'publication_names', %s, 'messages', 'true') WHERE get_byte(data, 0) = 67"
)
# Whether this role may read the server's identity (pg_control_*: superusers and pg_monitor by default).
IDENTITY_PRIVILEGE_SQL = (
    "SELECT has_function_privilege('pg_control_system()', 'EXECUTE')"
    " AND has_function_privilege('pg_control_checkpoint()', 'EXECUTE')"
)


class PositionBehindSlot(PositionLostError):
    """The slot is past the position: lost, unless another run of the same source just committed (overlapping
    runs), which the pipeline checks by reading the position again."""


@dataclasses.dataclass(frozen=True)
class SlotState:
    confirmed_flush_lsn: str
    restart_lsn: str | None
    plugin: str
    same_database: bool

    def __getitem__(self, key: str) -> Any:  # the dict shape callers used before
        return getattr(self, key)


def publication_option(publication_name: str) -> str:
    """``publication_names`` is parsed as a list of identifiers: quoted, so that case and commas survive."""
    return '"' + publication_name.replace('"', '""') + '"'


def position_check_sql(with_identity: bool) -> str:
    """One row: the slot (NULLs when it is gone), the server's WAL end, and its identity when readable."""
    identity = ("(SELECT system_identifier::text FROM pg_control_system()),"
                " (SELECT timeline_id FROM pg_control_checkpoint())") if with_identity else "NULL::text, NULL::int"
    return (
        "SELECT s.confirmed_flush_lsn::text, s.restart_lsn::text, s.plugin, s.database = current_database(),"
        f" pg_current_wal_lsn()::text, {identity}"
        " FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = %s"
    )


def slot_state_of(row: tuple | None) -> SlotState | None:
    if row is None or row[0] is None and row[2] is None:
        return None
    return SlotState(row[0], row[1], row[2], bool(row[3]))


def check_position(row: tuple | None, position: dict[str, Any], *, source_id: str, slot_name: str) -> SlotState:
    """Interpret :func:`position_check_sql`'s row for ``position``: the slot's state, or PositionLostError.

    A position resumed from the sink ledger (``from_ledger``) that is behind the slot moves to the slot (heartbeat
    batches leave no ledger row): ``position["lsn"]`` is updated in place."""
    state = slot_state_of(row)
    if state is None or row is None:
        raise PositionLostError(source_id, position, f"replication slot {slot_name!r} was dropped")
    current, system_id, timeline = row[4], row[5], row[6]
    if position.get("system_id") and system_id and position["system_id"] != system_id:
        raise PositionLostError(
            source_id, position, f"the position was taken on another server (system identifier "
            f"{position['system_id']}, this server is {system_id}): a restore or a move to another server")
    if position.get("timeline") and timeline and position["timeline"] != int(timeline):
        raise PositionLostError(
            source_id, position, f"the server's timeline changed from {position['timeline']} to {timeline} (a "
            "failover or a point-in-time restore): LSNs after the switch may name other changes")
    if pgoutput.lsn_to_int(position["lsn"]) > pgoutput.lsn_to_int(current):
        raise PositionLostError(
            source_id, position, f"the position is ahead of the server's WAL ({current}): it belongs to another "
            "server or to a state before a restore")
    confirmed = pgoutput.lsn_to_int(state.confirmed_flush_lsn)
    if pgoutput.lsn_to_int(position["lsn"]) < confirmed:
        if position.get("from_ledger"):
            # The Variable was lost and the ledger's last batch is behind the slot: the slot moved on only through
            # batches without changes (heartbeats, which leave no ledger row), so nothing is skipped.
            log.warning("source %s: resuming from the sink ledger at %s; the slot is at %s after batches without "
                        "changes", source_id, position["lsn"], state.confirmed_flush_lsn)
            position["lsn"] = state.confirmed_flush_lsn
            return state
        raise PositionBehindSlot(
            source_id, position, f"slot {slot_name!r} is already at {state.confirmed_flush_lsn}, past the stored "
            "position: changes in between were consumed elsewhere")
    return state


def commits_after(rows: list[tuple[bytes]], position: dict[str, Any]) -> bool:
    """Whether peeked messages hold a commit past ``position`` (earlier ones are loaded but not yet acknowledged)."""
    start = pgoutput.lsn_to_int(position["lsn"])
    return any(data[0] == 0x43 and pgoutput.decode_commit(bytes(data)).end_lsn > start for (data,) in rows)
