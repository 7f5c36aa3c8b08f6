"""Connector type → its factory, imported lazily: a DAG that uses only PostgreSQL never imports pymongo.

Each connector package has a ``factory`` module with a module-level ``FACTORY`` (:class:`ConnectorFactory`): its
options models, how to build its Source, Sink and ChangeProbe, the capabilities of its sink, and which Airflow
provider hook resolves its Connections. A new database is a package and one line in :data:`CONNECTOR_MODULES`.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from airflow_provider_cdc.errors import ConnectorUnavailableError, MissingExtraError

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig, ConnectorConfig, SourceConfig
    from airflow_provider_cdc.connectors.base import ChangeProbe, Sink, SinkCapabilities, Source

# type → (package under airflow_provider_cdc.connectors, the extra that installs its drivers; None: always there)
CONNECTOR_MODULES: dict[str, tuple[str, str | None]] = {
    "postgresql": ("postgres", None),
    "file": ("delta", "delta"),
    "mysql": ("mysql", "mysql"),
    "mongodb": ("mongodb", "mongodb"),
}


class NoOptions(BaseModel):
    """Options model of a connector that has none: any key is a typo."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclasses.dataclass(frozen=True)
class AirflowHookRef:
    """The provider hook that resolves this connector's Airflow Connections (imported by the hooks layer only)."""

    classpath: str  # "airflow.providers.postgres.hooks.postgres.PostgresHook"
    conn_id_arg: str  # its constructor's connection id keyword: "postgres_conn_id"
    extra: str | None = None  # the extra that installs the provider


@dataclasses.dataclass(frozen=True)
class ConnectorFactory:
    """How one connector type is built. ``connection`` arguments are driver URLs (secret: never logged)."""

    type: str
    # builtins.type: in this class body ``type`` is the field above
    source_options: builtins.type[BaseModel] = NoOptions
    sink_options: builtins.type[BaseModel] = NoOptions
    capabilities: SinkCapabilities | None = None
    airflow_hook: AirflowHookRef | None = None
    # (source config, connection, validated source options) -> Source
    source: Callable[[SourceConfig, str, Any], Source] | None = None
    # (connector config, connection, the source it loads, validated sink options) -> Sink
    sink: Callable[[ConnectorConfig, str, SourceConfig, Any], Sink] | None = None
    # (source config, connection, validated source options) -> ChangeProbe
    probe: Callable[[SourceConfig, str, Any], ChangeProbe] | None = None
    # The provider hook's ``get_uri()`` of an Airflow Connection -> this connector's driver URL (e.g. keep only the
    # parameters the driver knows). None: use the URI as it is.
    normalize_uri: Callable[[str], str] | None = None
    # Checks across the sources of this type (``[(index in cdc.yaml, source, validated options)]``), e.g. two
    # sources sharing one replication slot: ``[(index, key under the source, message)]``.
    check_sources: Callable[[list[tuple[int, SourceConfig, Any]]], list[tuple[int, str, str]]] | None = None
    # Online look for leftovers (``config check`` without --offline): warning lines.
    inspect: Callable[[CdcConfig], list[str]] | None = None
    # A join rule's reference reader: (connection, table, key columns, keys as tuples of the value contract's Python
    # values) -> {key tuple: {column: typed Python value}}, the matching rows in one round trip; with the keyword
    # ``missing_ok=True`` a table that does not exist holds nothing (the quality stage asks a sink table that may
    # not be created yet). None: this type cannot be a join's reference.
    reference: Callable[..., dict[tuple[Any, ...], dict[str, Any]]] | None = None


def lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported on its first call: a factory is imported at every DAG parse, the drivers and readers
    it names are needed only in tasks."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__qualname__ = call.__name__ = f"{module}.{name}"
    return call


def factory(connector_type: str) -> ConnectorFactory:
    """The factory of ``connector_type``; :class:`MissingExtraError` names the extra when its driver is missing."""
    try:
        package, extra = CONNECTOR_MODULES[connector_type]
    except KeyError:
        known = ", ".join(CONNECTOR_MODULES)
        raise ConnectorUnavailableError(f"connector type {connector_type!r} is unknown (known: {known})") from None
    try:
        module = importlib.import_module(f"airflow_provider_cdc.connectors.{package}.factory")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(f"airflow_provider_cdc.connectors.{package}"):
            raise ConnectorUnavailableError(f"connector type {connector_type!r} is not available in this version of "
                               "airflow-provider-cdc") from None
        raise MissingExtraError(exc.name or package, extra or connector_type) from exc
    return module.FACTORY


def source_options(config: SourceConfig) -> Any:
    return factory(config.type).source_options.model_validate(config.options)


def sink_options(connector: ConnectorConfig) -> Any:
    return factory(connector.type).sink_options.model_validate(connector.options)


def make_source(config: SourceConfig, connection: str) -> Source:
    """The Source for one ``cdc.yaml`` entry, connected through ``connection`` (never logged)."""
    built = factory(config.type)
    if built.source is None:
        raise ConnectorUnavailableError(f"cdc.yaml: source {config.id!r}: type {config.type!r} cannot be a source")
    return built.source(config, connection, source_options(config))


def make_sink(connector: ConnectorConfig, connection: str, source: SourceConfig) -> Sink:
    """The Sink named by ``source.sink``, writing into ``source.target_schema`` with its delete mode."""
    built = factory(connector.type)
    if built.sink is None:
        raise ConnectorUnavailableError(
            f"connectors.yaml: connector {connector.id!r}: type {connector.type!r} cannot be a sink"
        )
    return built.sink(connector, connection, source, sink_options(connector))


def make_probe(config: SourceConfig, connection: str) -> ChangeProbe:
    """The triggerer's async probe for one source."""
    built = factory(config.type)
    if built.probe is None:
        raise ConnectorUnavailableError(f"cdc.yaml: source {config.id!r}: type {config.type!r} has no change probe")
    return built.probe(config, connection, source_options(config))
