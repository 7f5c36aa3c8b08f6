"""The ``type: file`` connector: a Delta Lake sink (or a Parquet change log) under a root URL.

The connection is the root (``file:///data/lake``, ``s3://bucket/lake``, ``gs://bucket/lake`` or a local path).
Importing this module imports ``deltalake``; without the ``delta`` extra the registry turns that into
``pip install 'airflow-provider-cdc[delta]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.connectors.delta.options import DeltaSinkOptions
from airflow_provider_cdc.connectors.delta.sink import DELTA_CAPABILITIES, DeltaSink
from airflow_provider_cdc.connectors.registry import ConnectorFactory, lazy

if TYPE_CHECKING:
    from airflow_provider_cdc.config import ConnectorConfig, SourceConfig
    from airflow_provider_cdc.connectors.base import Sink


def file_sink(connector: ConnectorConfig, connection: str, source: SourceConfig, options: Any) -> Sink:
    """The sink ``options.format`` asks for: Delta tables (default) or the append-only Parquet change log."""
    kwargs = {"sink_id": connector.id, "target_schema": source.target_schema, "delete_mode": source.delete_mode,
              "options": options}
    if options.format == "parquet":
        from airflow_provider_cdc.connectors.delta.parquet_log import ParquetChangeLogSink

        return ParquetChangeLogSink(connection, **kwargs)
    return DeltaSink(connection, **kwargs)



FACTORY = ConnectorFactory(
    type="file",
    sink_options=DeltaSinkOptions,
    capabilities=DELTA_CAPABILITIES,
    sink=file_sink,
    reference=lazy("airflow_provider_cdc.connectors.delta.reference", "lookup"),
)
