"""The pgoutput decoder on hand-built messages (layouts from PostgreSQL's protocol documentation)."""

from __future__ import annotations

import struct

import pytest

from airflow_provider_cdc.connectors.postgres import pgoutput


def tuple_data(*values) -> bytes:
    out = struct.pack("!H", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is pgoutput.UNCHANGED:
            out += b"u"
        else:
            raw = v.encode()
            out += b"t" + struct.pack("!I", len(raw)) + raw
    return out


def test_lsn_text_round_trip():
    assert pgoutput.lsn_to_int("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert pgoutput.int_to_lsn(pgoutput.lsn_to_int("0/16B3748")) == "0/16B3748"


def test_begin_commit_carry_lsns_and_epoch_corrected_times():
    begin = pgoutput.decode_begin(b"B" + struct.pack("!QqI", 100, 1_000_000, 77))
    assert (begin.final_lsn, begin.ts_ms, begin.xid) == (100, 946_684_801_000, 77)
    commit = pgoutput.decode_commit(b"C" + struct.pack("!BQQq", 0, 100, 120, 2_000_000))
    assert (commit.commit_lsn, commit.end_lsn, commit.ts_ms) == (100, 120, 946_684_802_000)


def test_relation_and_row_messages():
    rel = (b"R" + struct.pack("!I", 16384) + b"public\x00users\x00" + b"f" + struct.pack("!H", 2)
           + b"\x01id\x00" + struct.pack("!Ii", 20, -1) + b"\x00email\x00" + struct.pack("!Ii", 25, -1))
    relation = pgoutput.decode_relation(rel)
    assert relation.qualified_name == "public.users" and relation.replica_identity == "f"
    assert relation.columns == ("id", "email") and relation.key_flags == (True, False)
    assert relation.type_oids == (20, 25)

    assert pgoutput.decode_insert(b"I" + struct.pack("!I", 16384) + b"N" + tuple_data("1", "é@x")) == (
        16384, ["1", "é@x"])
    relid, kind, old, new = pgoutput.decode_update(
        b"U" + struct.pack("!I", 16384) + b"O" + tuple_data("1", "a") + b"N" + tuple_data("1", pgoutput.UNCHANGED))
    assert (relid, kind, old) == (16384, "O", ["1", "a"]) and new[1] is pgoutput.UNCHANGED
    without_old = pgoutput.decode_update(b"U" + struct.pack("!I", 1) + b"N" + tuple_data(None, ""))
    assert without_old == (1, None, None, [None, ""])
    assert pgoutput.decode_delete(b"D" + struct.pack("!I", 1) + b"K" + tuple_data("5", None)) == (1, "K", ["5", None])
    assert pgoutput.decode_truncate(b"T" + struct.pack("!IB", 2, 1) + struct.pack("!II", 10, 11)) == ([10, 11], 1)


def test_logical_message_and_unknown_tuple_kind():
    msg = pgoutput.decode_message(
        b"M\x01" + struct.pack("!Q", 55) + b"cdc_heartbeat\x00" + struct.pack("!I", 2) + b"hi")
    assert (msg.transactional, msg.lsn, msg.prefix, msg.content) == (True, 55, "cdc_heartbeat", b"hi")
    with pytest.raises(ValueError, match="unexpected tuple data kind 'b'"):
        pgoutput.decode_tuple(struct.pack("!H", 1) + b"b", 0)
