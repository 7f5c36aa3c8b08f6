"""File connector (``type: file``): :class:`DeltaSink` merges batches into Delta Lake tables exactly once through
Delta's own log; :class:`ParquetChangeLogSink` writes an append-only Parquet change log for readers without Delta."""

from __future__ import annotations

from airflow_provider_cdc.connectors.delta.parquet_log import ParquetChangeLogSink
from airflow_provider_cdc.connectors.delta.sink import DeltaSink

__all__ = ["DeltaSink", "ParquetChangeLogSink"]
