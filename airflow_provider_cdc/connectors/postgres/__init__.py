"""PostgreSQL connector: :class:`PgSource` (logical decoding with pgoutput) and :class:`PgSink` (bulk merge)."""

from __future__ import annotations

from airflow_provider_cdc.connectors.postgres.source import PgSource

__all__ = ["PgSource"]
