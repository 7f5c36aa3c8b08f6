"""Connector type → Source and Sink classes. A new database is a module here and a line in each table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_cdc.errors import CdcError

if TYPE_CHECKING:
    from airflow_provider_cdc.config import ConnectorConfig, SourceConfig
    from airflow_provider_cdc.connectors.base import Sink, Source


def make_source(config: SourceConfig, dsn: str) -> Source:
    """The Source for one ``cdc.yaml`` entry, connected through ``dsn`` (never logged)."""
    if config.type == "postgresql":
        from airflow_provider_cdc.connectors.postgres.source import PgSource

        return PgSource(
            dsn,
            source_id=config.id,
            tables=config.qualified_tables("public"),
            slot_name=config.effective_slot_name,
            publication_name=config.effective_publication_name,
            snapshot=config.snapshot,
            create_slot=config.create_slot,
            create_publication=config.create_publication,
        )
    raise CdcError(
        f"source {config.id!r}: connector type {config.type!r} has no source in this version of "
        "airflow-provider-cdc (available: postgresql)"
    )


def make_sink(connector: ConnectorConfig, dsn: str, source: SourceConfig) -> Sink:
    """The Sink named by ``source.sink``, writing into ``source.target_schema`` with its delete mode.

    The ledger goes in ``source.ledger_schema``, by default the target schema."""
    if connector.type == "postgresql":
        from airflow_provider_cdc.connectors.postgres.sink import PgSink

        return PgSink(
            dsn,
            sink_id=connector.id,
            target_schema=source.target_schema,
            delete_mode=source.delete_mode,
            ledger_schema=source.ledger_schema,
        )
    raise CdcError(
        f"sink {connector.id!r}: connector type {connector.type!r} has no sink in this version of "
        "airflow-provider-cdc (available: postgresql)"
    )
