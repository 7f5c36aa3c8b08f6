"""``/cdc/health``: can the sources and sinks be reached, is Airflow's engine up, how much memory and CPU is used.

It answers without authentication, so it says only what a load balancer or a monitor needs: connector ids,
booleans, latencies and error class names. Never a host, a user, a URL or an exception message (a driver's
message names the host it failed to reach).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from airflow_provider_cdc.api.models import Health, Reachability, Resources

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig, ConnectorConfig, SourceConfig

TIMEOUT = 3  # seconds per connection attempt: a health check must answer quickly
HEALTHY_ENGINE = "healthy"


def ping(connector_type: str, dsn: str, timeout: int = TIMEOUT) -> None:
    """Open a connection of ``connector_type`` to ``dsn`` and ask the server something trivial; raise on failure."""
    if connector_type == "postgresql":
        import psycopg

        with psycopg.connect(dsn, connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("SELECT 1")
    elif connector_type == "mysql":
        from airflow_provider_cdc.connectors.mysql.connection import connect

        conn = connect(dsn, connect_timeout=timeout)
        try:
            conn.ping(reconnect=False)
        finally:
            conn.close()
    elif connector_type == "mongodb":
        from airflow_provider_cdc.connectors.mongodb.connection import connect as mongo_connect

        client = mongo_connect(dsn, serverSelectionTimeoutMS=timeout * 1000, connectTimeoutMS=timeout * 1000)
        try:
            client.admin.command("ping")
        finally:
            client.close()
    else:
        raise NotImplementedError(connector_type)


def reachability(connector_type: str, dsn: Callable[[], str], timeout: int = TIMEOUT) -> Reachability:
    """Whether the server behind ``dsn()`` answers (``dsn`` is resolved here, so that a Connection that cannot be
    resolved is reported like an unreachable server)."""
    if connector_type == "file":
        return _file_reachability(dsn)
    started = time.perf_counter()
    try:
        ping(connector_type, dsn(), timeout)
    except NotImplementedError:
        return Reachability(type=connector_type, reachable=None)
    except Exception as exc:
        return Reachability(type=connector_type, reachable=False, error=type(exc).__name__)
    return Reachability(type=connector_type, reachable=True,
                        latency_ms=round((time.perf_counter() - started) * 1000, 2))


def _file_reachability(dsn: Callable[[], str]) -> Reachability:
    """A local Delta root must be a directory (or not exist yet: the sink makes it); object storage is not checked
    here (it would need the storage credentials' round trip)."""
    from urllib.parse import urlsplit

    try:
        url = dsn()
    except Exception as exc:
        return Reachability(type="file", reachable=False, error=type(exc).__name__)
    parts = urlsplit(url)
    if parts.scheme not in ("", "file"):
        return Reachability(type="file", reachable=None)
    path = parts.path or url
    parent = path if os.path.exists(path) else os.path.dirname(path.rstrip("/"))
    ok = os.path.isdir(parent) and os.access(parent, os.W_OK)
    return Reachability(type="file", reachable=ok, error=None if ok else "NotWritable")


def resources() -> Resources:
    import psutil

    process = psutil.Process()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return Resources(process_rss_bytes=process.memory_info().rss, memory_percent=psutil.virtual_memory().percent,
                     cpu_percent=psutil.cpu_percent(interval=0.1), cpu_count=psutil.cpu_count() or 1,
                     load_average=load)


def check_connectivity(config: CdcConfig, dsn_of: Callable[[SourceConfig | ConnectorConfig], str]
                       ) -> tuple[dict[str, Reachability], dict[str, Reachability]]:
    """Sources and the sinks they load into, checked in parallel: ``(sources, sinks)`` by config id."""
    sink_ids = sorted({source.sink for source in config.sources})
    sinks = [config.connector(sink_id) for sink_id in sink_ids]
    entries: list[SourceConfig | ConnectorConfig] = [*config.sources, *sinks]
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(entries)))) as pool:
        futures = [pool.submit(reachability, entry.type, functools.partial(dsn_of, entry)) for entry in entries]
        results = [future.result() for future in futures]
    n = len(config.sources)
    return ({s.id: r for s, r in zip(config.sources, results[:n])},
            {c.id: r for c, r in zip(sinks, results[n:])})


def overall(sources: Mapping[str, Reachability], sinks: Mapping[str, Reachability],
            engine: Mapping[str, str | None], problems: list[str]) -> str:
    """``unhealthy`` when a sink or Airflow's metadata database is down or the config is unreadable, ``degraded``
    when a source or another engine component is, else ``healthy``."""
    if problems or any(r.reachable is False for r in sinks.values()) or \
            engine.get("metadatabase") not in (None, HEALTHY_ENGINE):
        return "unhealthy"
    if any(r.reachable is False for r in sources.values()) or \
            any(state not in (None, HEALTHY_ENGINE) for state in engine.values()):
        return "degraded"
    return "healthy"


def health(config: CdcConfig | None, dsn_of: Callable[[SourceConfig | ConnectorConfig], str], *,
           engine: Mapping[str, str | None], pipelines: Mapping[str, int], problems: list[str]) -> Health:
    sources: dict[str, Reachability] = {}
    sinks: dict[str, Reachability] = {}
    if config is not None:
        sources, sinks = check_connectivity(config, dsn_of)
    return Health(status=overall(sources, sinks, engine, problems),  # type: ignore[arg-type]
                  sources=sources, sinks=sinks, engine=dict(engine), pipelines=dict(pipelines),
                  resources=resources(), problems=problems)
