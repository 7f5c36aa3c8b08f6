"""Errors of the quality checks, and the one shape of a config problem line.

A problem line names the suite, the rule's position in it, the key and the reason, so that a user can go straight to
the entry in ``quality.yaml``: ``suite 'users_checks' rules[2].type: unknown rule type 'rnage' (...)``. The loader
and ``config check`` print these lines as they are.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from airflow_provider_cdc.errors import CdcError


class QualityConfigError(CdcError):
    """Quality rules that cannot run (bad config, or a column the table lacks). Terminal: fix ``quality.yaml`` and
    rerun; the batch's position has not moved, so nothing is lost."""

    terminal = True

    def __init__(self, problems: Sequence[str], *, table: str | None = None) -> None:
        self.problems, self.table = list(problems), table
        where = f" for table {table}" if table else ""
        super().__init__(f"quality rules cannot run{where}: " + "; ".join(self.problems))


def location(suite_id: str, index: int | None = None, key: str | None = None) -> str:
    """``suite 'users_checks' rules[2].min`` (``index`` None: the suite itself, ``suite 'users_checks' tables``)."""
    where = f"suite {suite_id!r}"
    if index is not None:
        return f"{where} rules[{index}]" + (f".{key}" if key else "")
    return f"{where} {key}" if key else where


def problem(suite_id: str, index: int | None, reason: str, *, key: str | None = None) -> str:
    """One problem line: ``suite 'users_checks' rules[2].min: reason``."""
    return f"{location(suite_id, index, key)}: {reason}"


def suggest(name: str, known: Iterable[str]) -> str:
    """``; did you mean 'range'?`` for a near miss of ``known``, else nothing."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def one_of(known: Sequence[str]) -> str:
    """``type, range, ... or length``: how a closed list of choices reads in a message."""
    return ", ".join(known[:-1]) + f" or {known[-1]}" if len(known) > 1 else "".join(known)
