"""Errors with intent, at the Airflow edge: a terminal error fails the task at once, the rest are retried.

The library raises :class:`~airflow_provider_cdc.errors.CdcError` subclasses that say whether retrying can help
(``terminal``). Airflow knows only "retry" (any exception, while retries are left) and "fail now"
(``AirflowFailException``), so every operator and the sensor pass their work through :func:`fail_terminal_errors`:
a lost position or a bad config fails the task on its first try, with the same message, while a dropped
connection or a lock timeout keeps the DAG's retries with exponential backoff.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_cdc.errors import is_terminal


@contextmanager
def fail_terminal_errors() -> Iterator[None]:
    """Re-raise a terminal error as ``AirflowFailException`` (no retries); let every other error through."""
    try:
        yield
    except AirflowFailException:
        raise
    except Exception as exc:
        if is_terminal(exc):
            raise AirflowFailException(str(exc)) from exc
        raise
