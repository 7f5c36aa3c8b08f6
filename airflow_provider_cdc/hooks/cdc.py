"""``CdcHook``: one source of ``cdc.yaml`` with its sink, positions and staging, resolved for a task.

Connections come from the config: an inline URL (``${ENV}`` interpolated), a connector of connectors.yaml, or an
Airflow Connection (``conn_id``). An Airflow Connection is resolved by the provider hook its connector factory
names (``PostgresHook``, ``MySqlHook``, ``MongoHook``...), looked up through the Task SDK so that secrets backends
work, and its URI is then made into the driver's URL by the factory's ``normalize_uri``: this module never rebuilds
a URL for one database. DSNs stay inside the hook: never in XCom, logs or trigger arguments.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode

from airflow.sdk import BaseHook

from airflow_provider_cdc.config import load_config
from airflow_provider_cdc.connectors import registry
from airflow_provider_cdc.errors import MissingExtraError
from airflow_provider_cdc.positions import PositionStore
from airflow_provider_cdc.staging import BatchStore

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig, ConnectorConfig, SourceConfig
    from airflow_provider_cdc.connectors.base import ChangeProbe, Sink, Source
    from airflow_provider_cdc.schema.policy import SchemaPolicy
    from airflow_provider_cdc.tables import TableSchema


def provider_hook(connector_type: str, conn_id: str) -> BaseHook | None:
    """The provider hook that owns ``connector_type``'s Connections, for ``conn_id`` (None: the factory names none).

    A provider that is not installed is a :class:`MissingExtraError` naming the extra that installs it."""
    ref = registry.factory(connector_type).airflow_hook
    if ref is None:
        return None
    module_name, _, class_name = ref.classpath.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise MissingExtraError(exc.name or module_name, ref.extra or connector_type) from exc
    hook_class = getattr(module, class_name)
    return hook_class(**{ref.conn_id_arg: conn_id})


def _with_extras(uri: str, extras: dict[str, Any]) -> str:
    """``uri`` plus the Connection's scalar extras that its query does not have yet.

    Provider hooks differ in what their URI carries: ``PostgresHook.get_uri()`` is a SQLAlchemy URL without the
    Connection's extras (``sslmode`` would be lost, and with it the refusal of an unencrypted connection), while
    ``MySqlHook`` keeps them. The connector's ``normalize_uri`` then keeps the ones its driver knows. Values are
    percent-encoded with ``%20`` for a space (libpq-style parsers do not read ``+`` as a space).
    """
    base, sep, query = uri.partition("?")
    fragment = ""
    if "#" in query:
        query, _, fragment = query.partition("#")
    pairs = parse_qsl(query, keep_blank_values=True)
    present = {key for key, _ in pairs}
    added = []
    for key, value in extras.items():
        if key in present or value is None or isinstance(value, (dict, list)):
            continue  # the hook's own value wins; nested extras configure the hook, not the driver
        added.append((key, str(value).lower() if isinstance(value, bool) else str(value)))
    if not added:
        return uri
    joined = "&".join(filter(None, [query, urlencode(added, quote_via=quote)]))
    return f"{base}?{joined}" + (f"#{fragment}" if fragment else "")


def connection_dsn(conn_id: str, connector_type: str) -> str:
    """A driver URL for the Airflow Connection ``conn_id`` of a ``connector_type`` connector (secret: never logged).

    The provider hook of the connector's factory resolves it (``get_uri()``), with the Connection's extras added;
    the factory's ``normalize_uri`` makes the driver's URL of it. A connector without a provider hook uses the
    Connection's own URI."""
    built = registry.factory(connector_type)
    hook = provider_hook(connector_type, conn_id)
    connection = BaseHook.get_connection(conn_id)
    if hook is None:
        uri = connection.get_uri()
    else:
        get_uri = getattr(hook, "get_uri", None)
        uri = get_uri() if callable(get_uri) else getattr(hook, "uri", None) or connection.get_uri()
        uri = _with_extras(uri, connection.extra_dejson)
    return built.normalize_uri(uri) if built.normalize_uri is not None else uri


def entry_dsn(config: CdcConfig, entry: SourceConfig | ConnectorConfig) -> str:
    """The driver URL of a source or connector entry: its ``connection_string``, its Airflow Connection, or (for a
    source) that of the connector it names. For the online checks of ``config check`` as much as for tasks."""
    if entry.connection_string:
        return entry.connection_string
    if entry.conn_id:
        return connection_dsn(entry.conn_id, entry.type)
    connector = getattr(entry, "connector", None)
    if connector:
        return entry_dsn(config, config.connector(connector))
    raise ValueError(f"{entry.id!r} names no connection")  # the config loader prevents this


class CdcHook(BaseHook):
    """Builds the Source, Sink, ChangeProbe, PositionStore and BatchStore of one configured source."""

    hook_name = "Change Data Capture"

    def __init__(self, source_id: str, config_dir: str | None = None, *,
                 documents: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """``config_dir``: the YAML config's directory; ``documents``: an inline config instead
        (:func:`airflow_provider_cdc.config.inline.cdc_config`), checked by the same loader."""
        super().__init__(**kwargs)
        self.source_id = source_id
        self.config_dir = config_dir
        self.documents = documents

    @cached_property
    def config(self) -> CdcConfig:
        return load_config(self.config_dir, documents=self.documents)

    @cached_property
    def source_config(self) -> SourceConfig:
        return self.config.source(self.source_id)

    @cached_property
    def sink_config(self) -> ConnectorConfig:
        return self.config.connector(self.source_config.sink)

    @cached_property
    def schema_policy(self) -> SchemaPolicy:
        """What the sink's schema gate does with this source's schema changes (``schema_changes:`` of cdc.yaml)."""
        return self.config.schema_policy(self.source_id)

    def source_dsn(self) -> str:
        return entry_dsn(self.config, self.source_config)

    def sink_dsn(self) -> str:
        return entry_dsn(self.config, self.sink_config)

    def lineage_urls(self) -> dict[str, str]:
        """Driver URLs of every source and connector of the config that resolves (for the lineage graph, which
        never shows their credentials); one that does not resolve is left out (its tables are then unnamed)."""
        urls: dict[str, str] = {}
        entries: list[SourceConfig | ConnectorConfig] = [*self.config.sources, *self.config.connectors]
        for entry in entries:
            try:
                urls[entry.id] = entry_dsn(self.config, entry)
            except Exception as exc:
                self.log.info("lineage: %s %r has no resolvable connection (%s)", type(entry).__name__, entry.id,
                              type(exc).__name__)
        return urls

    def registered_schemas(self) -> dict[tuple[str, str], TableSchema]:
        """``(source_id, schema.table)`` -> the latest schema of each table of this source in the sink's registry."""
        from airflow_provider_cdc.config.fields import registered_schemas

        return {(self.source_id, table): schema
                for table, schema in registered_schemas(self.config, self.source_config).items()}

    def get_source(self) -> Source:
        return registry.make_source(self.source_config, self.source_dsn())

    def get_sink(self) -> Sink:
        return registry.make_sink(self.sink_config, self.sink_dsn(), self.source_config)

    @contextmanager
    def connected(self) -> Iterator[tuple[Source, Sink]]:
        """The source and the sink, both closed whatever happens (the sink's failure to open closes the source)."""
        source = self.get_source()
        try:
            sink = self.get_sink()
        except BaseException:
            source.close()
            raise
        try:
            yield source, sink
        finally:
            source.close()
            sink.close()

    def get_probe(self) -> ChangeProbe:
        """The triggerer's async probe of the source (the trigger builds it from the same config)."""
        return registry.make_probe(self.source_config, self.source_dsn())

    @cached_property
    def positions(self) -> PositionStore:
        return PositionStore()

    @cached_property
    def store(self) -> BatchStore:
        return BatchStore(fmt=self.source_config.staging_format)
