"""Errors of the product, each saying what went wrong, where, and what to do next.

    CdcError
     ├── ConfigError          a config file is wrong (file, key, reason for every problem)
     ├── SourceError          the source cannot be read (connection, privileges, server settings)
     │    └── PositionLostError   the stored position is gone at the source: re-snapshot
     ├── SinkError            the sink rejected a batch
     └── StagingError         a staged batch is missing or unreadable

Context is kept as attributes (``source_id``, ``table``, ``position``) so that operators and the REST API can
report it without parsing messages.
"""

from __future__ import annotations

from typing import Any


class CdcError(Exception):
    """Base of every error raised by airflow-provider-cdc."""


class SourceError(CdcError):
    def __init__(self, source_id: str, message: str, *, table: str | None = None) -> None:
        self.source_id, self.table = source_id, table
        where = f"source {source_id!r}" + (f", table {table}" if table else "")
        super().__init__(f"{where}: {message}")


def _brief(position: dict[str, Any]) -> dict[str, Any]:
    """The parts of a position a person reads (not the remembered schemas)."""
    return {k: v for k, v in position.items() if k not in ("schemas", "tables")}


class PositionLostError(SourceError):
    def __init__(self, source_id: str, position: dict[str, Any], reason: str) -> None:
        self.position = position
        super().__init__(
            source_id,
            f"position {_brief(position)} is gone at the source ({reason}); re-snapshot it: "
            f"python -m airflow_provider_cdc resnapshot {source_id} (README: re-snapshot)",
        )


class SinkError(CdcError):
    def __init__(self, sink_id: str, message: str, *, table: str | None = None, batch_id: str | None = None) -> None:
        self.sink_id, self.table, self.batch_id = sink_id, table, batch_id
        where = f"sink {sink_id!r}" + (f", table {table}" if table else "") + (f", batch {batch_id}" if batch_id else "")
        super().__init__(f"{where}: {message}")


class StagingError(CdcError):
    def __init__(self, uri: str, message: str) -> None:
        self.uri = uri
        super().__init__(f"staged batch {uri}: {message}")


class MissingExtraError(CdcError, ImportError):
    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"{module} is missing: pip install 'airflow-provider-cdc[{extra}]'")
