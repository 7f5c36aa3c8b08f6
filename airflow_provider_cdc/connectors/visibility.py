"""Waiting for commits the change stream has delivered but the database does not show yet.

A source can stream a transaction before a new snapshot sees it: PostgreSQL flushes a commit record, then waits for
a synchronous standby, then makes the transaction visible; MySQL/MariaDB with semi-synchronous replication at
``AFTER_SYNC`` write the binlog, wait for a replica, then commit in the engine. A snapshot read in that window would
lose the changes the stream already delivered. Each connector says what is still invisible; this one loop waits,
logs, and gives up as a transient error after :data:`VISIBILITY_WAIT_SECONDS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from airflow_provider_cdc.errors import SourceError

VISIBILITY_WAIT_SECONDS = 300.0  # then the capture fails as transient (a retry waits again)


def wait_until_visible(source_id: str, invisible: Callable[[], str | None], *, cause: str,
                       log: logging.Logger) -> None:
    """Call ``invisible()`` until it returns None; each other answer names what the stream holds that the database
    does not show yet (logged at the first wait, then about every 10 s). ``cause``: the likely reason, for people."""
    started, waited = time.monotonic(), 0
    while (pending := invisible()) is not None:
        elapsed = time.monotonic() - started
        if elapsed > VISIBILITY_WAIT_SECONDS:
            raise SourceError(source_id, f"the snapshot waited {elapsed:.0f} s for {pending}, which the stream has "
                              f"delivered but which are still not visible ({cause}); rows read without them would "
                              "lose their changes. A retry waits again")
        if waited % 50 == 0:
            log.warning("source %s: %s committed but are not visible yet (%s); the snapshot waits for them, else "
                        "their changes would be lost (%.1f s so far)", source_id, pending, cause, elapsed)
        time.sleep(min(0.2, 0.01 * (waited + 1)))
        waited += 1
