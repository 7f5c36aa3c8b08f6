"""A decoder for PostgreSQL's ``pgoutput`` logical replication protocol (version 1, text tuples).

Each row of ``pg_logical_slot_peek_binary_changes(slot, NULL, n, 'proto_version', '1', 'publication_names', p,
'messages', 'true')`` carries one message. The decoder turns them into plain tuples; :mod:`.source` turns those into
change events. It keeps no state beyond the relations announced in the current decoding session (``pgoutput``
sends a Relation message before a relation's first change in each session, so every ``peek`` repeats them).

Message layouts: https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import dataclasses
import struct

# Microseconds between 1970-01-01 and 2000-01-01, PostgreSQL's timestamp epoch.
PG_EPOCH_OFFSET_MS = 946_684_800_000

_I64_I64_I32 = struct.Struct("!QqI")  # Begin: final LSN, commit timestamp, xid
_COMMIT = struct.Struct("!BQQq")  # flags, commit LSN, end LSN, commit timestamp
_I32 = struct.Struct("!I")
_I16 = struct.Struct("!H")
_REL_COL = struct.Struct("!Ii")  # type oid, typmod


@dataclasses.dataclass(frozen=True)
class Relation:
    relid: int
    namespace: str
    name: str
    replica_identity: str  # d (default) | n (nothing) | f (full) | i (index)
    columns: tuple[str, ...]
    key_flags: tuple[bool, ...]
    type_oids: tuple[int, ...]
    typmods: tuple[int, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"


@dataclasses.dataclass(frozen=True)
class Begin:
    final_lsn: int
    ts_ms: int
    xid: int


@dataclasses.dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    ts_ms: int


@dataclasses.dataclass(frozen=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


def lsn_to_int(lsn: str) -> int:
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _cstring(buf: bytes, offset: int) -> tuple[str, int]:
    end = buf.index(b"\x00", offset)
    return buf[offset:end].decode(), end + 1


UNCHANGED = object()
"""Marks an unchanged TOAST value: the source did not send it, the sink must keep what it has."""


def decode_tuple(buf: bytes, offset: int) -> tuple[list, int]:
    """TupleData → values (``str``, ``None`` or :data:`UNCHANGED`) and the offset after it."""
    (ncols,) = _I16.unpack_from(buf, offset)
    offset += 2
    values: list = []
    append = values.append
    unpack_len = _I32.unpack_from
    for _ in range(ncols):
        kind = buf[offset]
        offset += 1
        if kind == 0x74:  # 't' text
            (length,) = unpack_len(buf, offset)
            offset += 4
            append(buf[offset : offset + length].decode())
            offset += length
        elif kind == 0x6E:  # 'n' null
            append(None)
        elif kind == 0x75:  # 'u' unchanged toast
            append(UNCHANGED)
        else:  # 'b' binary would need the binary option, which we never request
            raise ValueError(f"unexpected tuple data kind {chr(kind)!r}")
    return values, offset


def decode_relation(buf: bytes) -> Relation:
    (relid,) = _I32.unpack_from(buf, 1)
    namespace, offset = _cstring(buf, 5)
    name, offset = _cstring(buf, offset)
    replica_identity = chr(buf[offset])
    (ncols,) = _I16.unpack_from(buf, offset + 1)
    offset += 3
    columns, flags, oids, typmods = [], [], [], []
    for _ in range(ncols):
        flags.append(bool(buf[offset] & 1))
        column, offset = _cstring(buf, offset + 1)
        oid, typmod = _REL_COL.unpack_from(buf, offset)
        offset += 8
        columns.append(column)
        oids.append(oid)
        typmods.append(typmod)
    return Relation(relid, namespace or "pg_catalog", name, replica_identity, tuple(columns), tuple(flags),
                    tuple(oids), tuple(typmods))


def decode_begin(buf: bytes) -> Begin:
    final_lsn, ts_us, xid = _I64_I64_I32.unpack_from(buf, 1)
    return Begin(final_lsn, ts_us // 1000 + PG_EPOCH_OFFSET_MS, xid)


def decode_commit(buf: bytes) -> Commit:
    _flags, commit_lsn, end_lsn, ts_us = _COMMIT.unpack_from(buf, 1)
    return Commit(commit_lsn, end_lsn, ts_us // 1000 + PG_EPOCH_OFFSET_MS)


def decode_message(buf: bytes) -> LogicalMessage:
    flags = buf[1]
    (lsn,) = struct.unpack_from("!Q", buf, 2)
    prefix, offset = _cstring(buf, 10)
    (length,) = _I32.unpack_from(buf, offset)
    return LogicalMessage(bool(flags & 1), lsn, prefix, bytes(buf[offset + 4 : offset + 4 + length]))


def decode_insert(buf: bytes) -> tuple[int, list]:
    """Insert → (relid, new tuple)."""
    (relid,) = _I32.unpack_from(buf, 1)
    values, _ = decode_tuple(buf, 6)  # byte 5 is 'N'
    return relid, values


def decode_update(buf: bytes) -> tuple[int, str | None, list | None, list]:
    """Update → (relid, old kind 'K'/'O'/None, old tuple, new tuple)."""
    (relid,) = _I32.unpack_from(buf, 1)
    kind: str | None = chr(buf[5])
    old = None
    offset = 6
    if kind in ("K", "O"):
        old, offset = decode_tuple(buf, 6)
        offset += 1  # 'N'
    else:
        kind = None
    new, _ = decode_tuple(buf, offset)
    return relid, kind, old, new


def decode_delete(buf: bytes) -> tuple[int, str, list]:
    """Delete → (relid, 'K' key only or 'O' whole old row, old tuple)."""
    (relid,) = _I32.unpack_from(buf, 1)
    kind = chr(buf[5])
    old, _ = decode_tuple(buf, 6)
    return relid, kind, old


def decode_truncate(buf: bytes) -> tuple[list[int], int]:
    """Truncate → (relids, options: 1 cascade, 2 restart identity)."""
    (count,) = _I32.unpack_from(buf, 1)
    options = buf[5]
    relids = list(struct.unpack_from(f"!{count}I", buf, 6))
    return relids, options
