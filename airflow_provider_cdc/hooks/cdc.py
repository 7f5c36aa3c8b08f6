"""``CdcHook``: one source of ``cdc.yaml`` with its sink, positions and staging, resolved for a task.

Connections come from the config: an inline URL (``${ENV}`` interpolated), a connector of connectors.yaml, or an
Airflow Connection (``conn_id``) looked up through the Task SDK, so secrets backends work. DSNs stay inside the hook:
never in XCom, logs or trigger arguments.
"""

from __future__ import annotations

from functools import cache, cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode

from airflow.sdk import BaseHook

from airflow_provider_cdc.config import load_config
from airflow_provider_cdc.connectors.registry import make_sink, make_source
from airflow_provider_cdc.positions import PositionStore
from airflow_provider_cdc.staging import BatchStore

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig, ConnectorConfig, SourceConfig
    from airflow_provider_cdc.connectors.base import Sink, Source

_URI_SCHEMES = {"postgres": "postgresql", "postgresql": "postgresql"}


@cache
def _libpq_keywords() -> frozenset[str]:
    from psycopg import pq

    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def connection_dsn(conn_id: str) -> str:
    """A driver URL for an Airflow Connection (``postgres://`` becomes ``postgresql://``).

    For PostgreSQL only libpq's own parameters are kept from the extras: PostgresHook-only extras (``cursor``,
    ``iam``, ``aws_conn_id``) would make libpq refuse the URL, and values are percent-encoded (libpq does not read
    ``+`` as a space).
    """
    uri = BaseHook.get_connection(conn_id).get_uri()
    scheme, sep, rest = uri.partition("://")
    scheme = _URI_SCHEMES.get(scheme, scheme)
    if scheme == "postgresql":
        base, _, query = rest.partition("?")
        kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k in _libpq_keywords()]
        rest = base + (f"?{urlencode(kept, quote_via=quote)}" if kept else "")
    return f"{scheme}{sep}{rest}"


class CdcHook(BaseHook):
    """Builds the Source, Sink, PositionStore and BatchStore of one configured source."""

    hook_name = "Change Data Capture"

    def __init__(self, source_id: str, config_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source_id = source_id
        self.config_dir = config_dir

    @cached_property
    def config(self) -> CdcConfig:
        return load_config(self.config_dir)

    @cached_property
    def source_config(self) -> SourceConfig:
        return self.config.source(self.source_id)

    @cached_property
    def sink_config(self) -> ConnectorConfig:
        return self.config.connector(self.source_config.sink)

    def _dsn(self, *, connection_string: str | None, connector: str | None, conn_id: str | None) -> str:
        if connection_string:
            return connection_string
        if conn_id:
            return connection_dsn(conn_id)
        if connector:
            ref = self.config.connector(connector)
            return self._dsn(connection_string=ref.connection_string, connector=None, conn_id=ref.conn_id)
        raise ValueError(f"source {self.source_id!r} names no connection")  # the config loader prevents this

    def source_dsn(self) -> str:
        cfg = self.source_config
        return self._dsn(connection_string=cfg.connection_string, connector=cfg.connector, conn_id=cfg.conn_id)

    def sink_dsn(self) -> str:
        cfg = self.sink_config
        return self._dsn(connection_string=cfg.connection_string, connector=None, conn_id=cfg.conn_id)

    def get_source(self) -> Source:
        return make_source(self.source_config, self.source_dsn())

    def get_sink(self) -> Sink:
        return make_sink(self.sink_config, self.sink_dsn(), self.source_config)

    @cached_property
    def positions(self) -> PositionStore:
        return PositionStore()

    @cached_property
    def store(self) -> BatchStore:
        return BatchStore(fmt=self.source_config.staging_format)
