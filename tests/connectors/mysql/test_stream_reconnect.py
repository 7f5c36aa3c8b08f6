"""The binlog reader when its connection breaks mid-read, on a real MariaDB (connectors/mysql/stream.py).

mysql-replication reconnects by itself. By file and offset it resumes right after the last event read: the read
goes on and gives the batch a read without the break gives. By GTID it would ask again from the GTID the read
started at, so the read stops with a transient SourceError, and the next read from the same position gives the
whole batch. A GTID read to the end of a large backlog does not break at all (the reader sends MariaDB's dump
command at its true length; the library's count was one byte short, which broke such reads at their end).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pymysql
import pytest
from pymysqlreplication import BinLogStreamReader

from airflow_provider_cdc.connectors.mysql.connection import connect_kwargs
from airflow_provider_cdc.errors import SourceError, is_terminal
from connectors.mysql.test_source import Capture, run

pytestmark = pytest.mark.timeout(300)

# About 26 MB of row images in one transaction: still being sent when the connection is killed 40 events in, so the
# read really breaks in the middle (a small backlog would already sit whole in the reader's socket buffer).
BIG = ("BEGIN; INSERT INTO docs (id, body) SELECT seq, repeat(md5(seq), 2048) FROM seq_1_to_400; COMMIT;"
       "INSERT INTO docs VALUES (1001, 'a'); UPDATE docs SET body = 'b' WHERE id = 1001;"
       "UPDATE docs SET body = 'changed' WHERE id <= 3; DELETE FROM docs WHERE id = 4")


@pytest.fixture
def db(mariadb_database: str) -> str:
    run(mariadb_database, "CREATE TABLE docs (id BIGINT PRIMARY KEY, body LONGTEXT)")
    return mariadb_database


def kill_stream_at(monkeypatch: pytest.MonkeyPatch, url: str, call: int) -> list[int]:
    """Kill the reader's binlog connection (KILL CONNECTION, from another session) just before its fetchone call
    number ``call``; returns a list that gets one item once it did."""
    original: Callable[..., Any] = BinLogStreamReader.fetchone
    calls: list[int] = []
    killed: list[int] = []

    def fetchone(reader: BinLogStreamReader) -> Any:
        calls.append(1)
        if len(calls) == call:
            conn = pymysql.connect(**connect_kwargs(url), autocommit=True)
            with conn, conn.cursor() as cur:
                cur.execute("KILL CONNECTION %s", (reader._stream_connection.thread_id(),))
            killed.append(1)
        return original(reader)

    monkeypatch.setattr(BinLogStreamReader, "fetchone", fetchone)
    return killed


def summary(batch: Any) -> dict[str, Any]:
    return {"batch_id": batch.batch_id, "changes": batch.change_count, "ops": batch.op_totals(),
            "seq_to": batch.seq_to, "position_to": {k: v for k, v in batch.position_to.items() if k != "schemas"}}


def test_by_file_and_offset_the_read_goes_on_after_a_break_and_gives_the_same_batch(db, monkeypatch, caplog):
    cap = Capture(db, ["docs"], snapshot="never")
    run(db, BIG)
    clean = cap.source.capture(cap.position, 100_000)
    assert clean.change_count == 406

    killed = kill_stream_at(monkeypatch, db, 40)
    with caplog.at_level(logging.WARNING, logger="airflow_provider_cdc.source.mysql"):
        broken = cap.source.capture(cap.position, 100_000)
    assert killed and "reads on from" in caplog.text, caplog.text  # the break happened, mid-read
    assert summary(broken) == summary(clean)
    assert [e.to_dict() for e in broken.events()] == [e.to_dict() for e in clean.events()]


def test_by_gtid_a_break_fails_the_read_transiently_and_the_next_read_gives_the_batch(db, monkeypatch):
    cap = Capture(db, ["docs"], snapshot="never", position_mode="gtid")
    run(db, BIG)
    clean = cap.source.capture(cap.position, 100_000)  # to the end of a large backlog, unbroken
    assert clean.change_count == 406

    killed = kill_stream_at(monkeypatch, db, 40)
    with pytest.raises(SourceError) as caught:
        cap.source.capture(cap.position, 100_000)
    assert killed
    message = str(caught.value)
    assert not is_terminal(caught.value), message
    assert message.startswith(f"source {cap.source.source_id!r}: the binlog connection broke"), message
    assert f"from the GTID the read started at ({cap.position['gtid']})" in message, message
    assert "nothing was stored or acknowledged" in message, message
    monkeypatch.undo()

    again = cap.source.capture(cap.position, 100_000)
    assert summary(again) == summary(clean)
    assert [e.to_dict() for e in again.events()] == [e.to_dict() for e in clean.events()]
