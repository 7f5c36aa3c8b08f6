"""Errors of the product, each saying what went wrong, where, and what to do next.

    CdcError
     ├── ConfigError               a config file is wrong (file, key, reason for every problem)        terminal
     ├── ConnectorUnavailableError a connector type has no source, sink or probe here                 terminal
     ├── UnknownConfigEntryError   a source or connector id the config does not have                 terminal
     ├── MissingExtraError         a connector's driver is not installed (names the pip extra)        terminal
     ├── SourceError               the source cannot be read (connection, privileges, settings)       transient
     │    ├── PositionLostError    the stored position is gone at the source: re-snapshot             terminal
     │    └── TableRefusedError    a table cannot be captured faithfully (no key, reserved names...)  terminal
     ├── SinkError                 the sink rejected a batch                                          either
 │    └── TableHeld            a schema change the sink cannot follow: the table is held          terminal
     └── StagingError              a staged batch is missing or unreadable                            terminal

Errors carry **intent**: ``terminal`` ones fail the task at once (retrying cannot help and would only delay the
alert), the rest are transient (connections, locks, timeouts) and retry with backoff. Operators read the attribute
(:func:`is_terminal`); nothing parses messages. Context is kept as attributes (``source_id``, ``table``,
``position``) so that operators and the REST API can report it.
"""

from __future__ import annotations

from typing import Any


class CdcError(Exception):
    """Base of every error raised by airflow-provider-cdc. ``terminal``: retrying cannot help."""

    terminal: bool = False


def is_terminal(exc: BaseException) -> bool:
    """Whether ``exc`` should fail the task at once instead of retrying."""
    return bool(getattr(exc, "terminal", False))


class ConnectorUnavailableError(CdcError):
    terminal = True


class UnknownConfigEntryError(CdcError, KeyError):
    """A source or connector id that the config does not have (a DAG or task outlived its config entry)."""

    terminal = True

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SourceError(CdcError):
    def __init__(self, source_id: str, message: str, *, table: str | None = None) -> None:
        self.source_id, self.table = source_id, table
        where = f"source {source_id!r}" + (f", table {table}" if table else "")
        super().__init__(f"{where}: {message}")


def _brief(position: dict[str, Any]) -> dict[str, Any]:
    """The parts of a position a person reads (not the remembered schemas)."""
    return {k: v for k, v in position.items() if k not in ("schemas", "tables")}


class PositionLostError(SourceError):
    terminal = True

    def __init__(self, source_id: str, position: dict[str, Any], reason: str) -> None:
        self.position = position
        super().__init__(
            source_id,
            f"position {_brief(position)} is gone at the source ({reason}); re-snapshot it: "
            f"python -m airflow_provider_cdc resnapshot {source_id} (README: re-snapshot)",
        )


class TableRefusedError(SourceError):
    """Tables that cannot be captured faithfully (no usable key, reserved column names...): fix them, then rerun."""

    terminal = True


class SinkError(CdcError):
    def __init__(self, sink_id: str, message: str, *, table: str | None = None, batch_id: str | None = None,
                 terminal: bool = False) -> None:
        self.sink_id, self.table, self.batch_id = sink_id, table, batch_id
        self.terminal = terminal
        where = (f"sink {sink_id!r}" + (f", table {table}" if table else "")
                 + (f", batch {batch_id}" if batch_id else ""))
        super().__init__(f"{where}: {message}")


class TableHeld(SinkError):
    """A schema change a sink cannot follow exactly: that table is held back, the others keep flowing.

    Terminal where it escapes (retrying cannot make the change followable): accept it or re-snapshot the table."""

    def __init__(self, sink_id: str, message: str, *, table: str | None = None, batch_id: str | None = None) -> None:
        super().__init__(sink_id, message, table=table, batch_id=batch_id, terminal=True)


class StagingError(CdcError):
    terminal = True

    def __init__(self, uri: str, message: str) -> None:
        self.uri = uri
        super().__init__(f"staged batch {uri}: {message}")


class MissingExtraError(CdcError, ImportError):
    terminal = True

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"{module} is missing: pip install 'airflow-provider-cdc[{extra}]'")
