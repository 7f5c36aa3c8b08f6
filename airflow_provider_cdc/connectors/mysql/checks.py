"""What the MySQL source checks before it reads: the server's binlog settings, and whether a stored position can
still be read (its binlog file not purged, the same server). Capture, :meth:`MySqlSource.has_changes` and the
triggerer's probe share these checks, so they agree on what a lost position is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pymysql

from airflow_provider_cdc.errors import PositionLostError, SourceError

# (variable, required value, the statement that fixes it). SET GLOBAL applies to sessions opened after it: the
# applications' connections must reconnect; put the same setting in the server's configuration file to keep it.
REQUIRED_SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("log_bin", "ON", "start the server with log_bin (my.cnf: [mysqld] log_bin = mysql-bin) and restart it"),
    ("binlog_format", "ROW", "SET GLOBAL binlog_format = 'ROW'; and binlog_format = ROW in my.cnf"),
    ("binlog_row_image", "FULL", "SET GLOBAL binlog_row_image = 'FULL'; and binlog_row_image = FULL in my.cnf"),
    ("binlog_row_metadata", "FULL",
     "SET GLOBAL binlog_row_metadata = 'FULL'; and binlog_row_metadata = FULL in my.cnf (MariaDB 10.5+, MySQL 8.0.1+)"),
)


@dataclasses.dataclass(frozen=True)
class BinlogState:
    """The server's binlog as ``SHOW BINARY LOGS`` and its identity describe it."""

    files: dict[str, int]  # binlog file -> size, oldest first
    server_id: str  # MySQL @@server_uuid, else MariaDB @@server_id
    gtid: str  # MariaDB @@gtid_binlog_pos or MySQL @@gtid_executed ('' without GTIDs)
    mariadb: bool

    @property
    def end(self) -> tuple[str, int]:
        name = next(reversed(self.files))
        return name, self.files[name]


def check_settings(conn: pymysql.Connection, source_id: str) -> None:
    """Raise :class:`SourceError` naming every wrong setting and the statement that fixes it."""
    names = [name for name, _, _ in REQUIRED_SETTINGS]
    with conn.cursor() as cur:
        placeholders = ", ".join(["%s"] * len(names))
        cur.execute(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({placeholders})", names)
        found = {str(name).lower(): str(value).upper() for name, value in cur.fetchall()}
    wrong = []
    for name, wanted, fix in REQUIRED_SETTINGS:
        value = found.get(name)
        if value is None:
            wrong.append(f"{name} does not exist on this server (it is older than MariaDB 10.5 / MySQL 8.0.1, which "
                         f"change data capture needs: upgrade the server)")
        elif value != wanted:
            wrong.append(f"{name} is {value}, change data capture needs {wanted}: {fix}")
    if wrong:
        raise SourceError(source_id, "the server is not set up for change data capture: " + "; ".join(wrong))


def binlog_state(conn: pymysql.Connection, source_id: str) -> BinlogState:
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            files = {str(row[0]): int(row[1]) for row in cur.fetchall()}
            cur.execute("SELECT VERSION()")
            row = cur.fetchone()
            mariadb = "mariadb" in str(row[0] if row else "").lower()
            if mariadb:
                cur.execute("SELECT @@server_id, @@gtid_binlog_pos")
            else:
                cur.execute("SELECT @@server_uuid, @@gtid_executed")
            row = cur.fetchone()
    except pymysql.err.OperationalError as exc:
        if exc.args and exc.args[0] in (1227, 1381):  # access denied (needs a privilege) / binary logging off
            raise SourceError(source_id, f"cannot read the binlog list ({exc.args[1]}); the source user needs "
                              "REPLICATION CLIENT (MariaDB: BINLOG MONITOR) and REPLICATION SLAVE, and the server a "
                              "binlog") from exc
        raise SourceError(source_id, f"cannot read the binlog list: {exc}") from exc
    assert row is not None  # a SELECT without FROM returns one row
    if not files:
        raise SourceError(source_id, "the server has no binlog: start it with log_bin")
    return BinlogState(files, str(row[0]), (row[1] or "").replace("\n", ""), mariadb)


def file_index(name: str) -> int:
    """The sequence number of a binlog file (``mysql-bin.000042`` -> 42): files sort by it."""
    try:
        return int(name.rsplit(".", 1)[1])
    except (IndexError, ValueError):
        return 0


def check_position(position: dict[str, Any], state: BinlogState, source_id: str) -> None:
    """Raise :class:`PositionLostError` when ``position`` cannot be read on this server any more: its binlog file
    was purged, the server is another one (failover, restore) without a GTID position to follow, or the binlog is
    shorter than the position (the server was restored or its binlog reset)."""
    file, pos = position.get("file"), position.get("pos")
    same_server = position.get("server_id") in (None, state.server_id)
    if not same_server and not (position.get("mode") == "gtid" and position.get("gtid")):
        raise PositionLostError(
            source_id, position,
            f"the server is another one (server id {state.server_id}, the position was read from "
            f"{position.get('server_id')}): a failover or a restore; a binlog offset means nothing on another server "
            "(position_mode: gtid follows a failover)")
    if not same_server:
        return  # by GTID: the server says at the start of the dump whether it still has them
    if file not in state.files:
        oldest = next(iter(state.files))
        if file is not None and file_index(file) < file_index(oldest):
            reason = f"binlog {file} was purged (the oldest left is {oldest})"
        else:
            reason = f"binlog {file} does not exist on the server (its binlog was reset or it was restored)"
        raise PositionLostError(source_id, position, reason)
    if pos is not None and pos > state.files[file]:
        raise PositionLostError(source_id, position, f"binlog {file} is {state.files[file]} bytes, shorter than the "
                                f"position {pos} (the server was restored or its binlog reset)")


def behind_end(position: dict[str, Any], state: BinlogState) -> bool:
    """Whether the binlog has grown past ``position`` (events of any database: the reader filters them)."""
    end_file, end_pos = state.end
    return (file_index(position["file"]), position["pos"]) < (file_index(end_file), end_pos)


POSITION_LOST_CODES = (1236,)  # ER_MASTER_FATAL_ERROR_READING_BINLOG: purged file, unknown GTID...


def is_position_lost(exc: BaseException) -> bool:
    return isinstance(exc, pymysql.err.MySQLError) and bool(exc.args) and exc.args[0] in POSITION_LOST_CODES
