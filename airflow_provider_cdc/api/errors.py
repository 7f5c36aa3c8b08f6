"""What a REST answer can fail with, as :class:`~airflow_provider_cdc.errors.CdcError` subclasses that name what
exists. The plugin maps them to HTTP statuses (404, 400, 503); nothing parses their messages."""

from __future__ import annotations

from collections.abc import Iterable

from airflow_provider_cdc.errors import CdcError

MAX_NAMED = 20  # known names listed in a message; the rest are counted


def known_names(names: Iterable[str]) -> str:
    """``a, b, c`` (at most :data:`MAX_NAMED`, then ``and N more``), or ``none``."""
    items = sorted(set(names))
    if not items:
        return "none"
    shown = ", ".join(items[:MAX_NAMED])
    return shown + (f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


class ApiError(CdcError):
    """Base of the API's answerable errors."""

    terminal = True


class NotFoundError(ApiError):
    """An unknown source or asset (HTTP 404): ``kind`` and ``name`` of what was asked, the message names what
    exists."""

    def __init__(self, kind: str, name: str, message: str) -> None:
        self.kind, self.name = kind, name
        super().__init__(message)

    @classmethod
    def unknown_source(cls, source_id: str, known: Iterable[str]) -> NotFoundError:
        return cls("source", source_id, f"unknown source {source_id!r}; the config has: {known_names(known)}")


class InvalidQuestionError(ApiError):
    """A well-formed request the data cannot answer (HTTP 400): downstream of a rule node, SVG without Graphviz."""


class UnavailableError(ApiError):
    """The answer needs something that is not there now (HTTP 503): an invalid config, an unreachable sink."""
