"""What the snapshot-visibility tests of both connectors share: a sink database on the machine's PostgreSQL 15 (their
sources run on private servers with server-wide replication settings), and a way to see, from any thread, that the
capture logged that it waits."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cdc_testing import unique_id
from conftest import PG15_URL_DEFAULT, PgServer, _drop_database, _probe


class _Seen(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@contextmanager
def seen_in_log(logger: str, text: str) -> Iterator[threading.Event]:
    """An event set once ``logger`` logs a warning containing ``text`` (from any thread)."""
    handler = _Seen(text)
    logging.getLogger(logger).addHandler(handler)
    try:
        yield handler.event
    finally:
        logging.getLogger(logger).removeHandler(handler)


@contextmanager
def fresh_pg15_database(prefix: str) -> Iterator[str]:
    """The URL of a new database on the machine's PostgreSQL 15, dropped afterwards."""
    server = PgServer("pg15", os.environ.get("CDC_TEST_PG15_URL", PG15_URL_DEFAULT))
    _probe(server)
    name = unique_id(prefix)
    with server.connect() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield server.url(name)
    finally:
        _drop_database(server, name)


def run_until_it_waits(work: Callable[[], object], waiting: threading.Event, release: Callable[[], None]) -> None:
    """Start ``work`` (a capture) in a thread; call ``release`` (the held commit completes) once the capture logged
    that it waits, or once ``work`` ended without waiting (the bug these tests guard: the comparison afterwards then
    fails). Re-raises what ``work`` raised."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # re-raised below
            failure.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    deadline = time.monotonic() + 120
    while worker.is_alive() and not waiting.is_set():
        assert time.monotonic() < deadline, "the capture neither finished nor waited"
        time.sleep(0.05)
    release()
    worker.join(120)
    assert not worker.is_alive(), "the capture still waits after the commit became visible"
    if failure:
        raise failure[0]
