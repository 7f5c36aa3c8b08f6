"""What the API's writes share: their refusals, the sources a change concerns, the field checks against the table
schemas the sinks' registries know, and the audit entry every write records.

- :class:`RejectedError` (HTTP 422): the request fits the models but what it asks is not valid (a rule whose Jinja
  does not compile, a field the table lacks): ``problems`` are ``(loc, message)`` pairs, as FastAPI lists its own.
- :class:`ConflictError` (HTTP 409): the request is valid but the state refuses it (a rule id the YAML owns, a table
  that is not held, a run of the DAG running).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.api.errors import ApiError
from airflow_provider_cdc.config.models import mask_url

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig, SourceConfig
    from airflow_provider_cdc.tables import TableSchema

log = logging.getLogger("airflow_provider_cdc.api")

Loc = tuple[str | int, ...]


class RejectedError(ApiError):
    """A request whose content is not valid (HTTP 422): ``problems`` are ``(loc, message)``."""

    def __init__(self, problems: Sequence[tuple[Loc, str]], *, checked: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        self.checked = list(checked)  # the tables (schema.table) whose schemas the request was checked against
        super().__init__("; ".join(message for _, message in self.problems))

    def detail(self) -> list[dict[str, Any]]:
        return [{"loc": list(loc), "msg": message, "type": "value_error"} for loc, message in self.problems]


class ConflictError(ApiError):
    """A valid request the current state refuses (HTTP 409); the message says why and what to do."""


def describe_error(exc: BaseException) -> str:
    """An error's class and first line, URLs masked (for notes in an answer)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {' '.join(mask_url(word) for word in text.split())}" if text else type(exc).__name__


def schemas_by_source(config: CdcConfig, sources: Iterable[SourceConfig],
                      read: Callable[[CdcConfig, SourceConfig], dict[str, TableSchema]] | None = None,
                      ) -> tuple[dict[str, dict[str, TableSchema]], list[str]]:
    """``source_id`` -> ``schema.table`` -> the latest schema its sink's registry knows; sinks that cannot be read
    are notes (their tables are checked at their first batch instead)."""
    if read is None:
        from airflow_provider_cdc.config.fields import registered_schemas

        read = registered_schemas
    found: dict[str, dict[str, TableSchema]] = {}
    notes: list[str] = []
    for source in sources:
        try:
            found[source.id] = read(config, source)
        except Exception as exc:
            notes.append(f"source {source.id!r}: its sink {source.sink!r} could not be read for the table schemas "
                         f"({describe_error(exc)}); the fields are checked at the first batch instead")
    return found, notes


def field_problems(lines: Iterable[str], prefix: str, loc: Loc) -> list[tuple[Loc, str]]:
    """The problem lines of :mod:`airflow_provider_cdc.config.fields` about one rule or suite (``prefix``: ``rule
    'x'`` or ``suite 'x'``), without the file and key the YAML would have (the API's rule is not in a file)."""
    out: list[tuple[Loc, str]] = []
    for line in lines:
        at = line.find(prefix)
        if at >= 0:
            out.append((loc, line[at:]))
    return list(dict.fromkeys(out))


def record_write(config: CdcConfig, source_ids: Sequence[str], action: str, *, actor: str,
                 details: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Record ``action`` by ``actor`` in the audit trail of each source (its sink's ``_cdc_audit``): (sources
    recorded, notes for those that could not be). The write itself is done by then, so a sink that does not answer
    is a note, not a failure."""
    from airflow_provider_cdc.audit import record

    done: list[str] = []
    notes: list[str] = []
    for source_id in source_ids:
        try:
            record(config, source_id, action, actor=actor, details=details)
            done.append(source_id)
        except Exception as exc:
            log.warning("audit entry %s of source %s not recorded: %s", action, source_id, describe_error(exc))
            notes.append(f"the audit entry was not recorded in the sink of source {source_id!r} "
                         f"({describe_error(exc)})")
    return done, notes


def actor_of(user: Any) -> str:
    """The Airflow user's name, as the audit trail's actor."""
    try:
        name = user.get_name()
    except Exception:
        name = None
    return str(name) if name else "unknown"
