"""The PostgreSQL connector's factory: options, Source, Sink, ChangeProbe, capabilities and config checks.

Imported lazily by :mod:`airflow_provider_cdc.connectors.registry` for ``type: postgresql``.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode

from airflow_provider_cdc.connectors.postgres.options import MAX_NAME_LENGTH, PgSourceOptions
from airflow_provider_cdc.connectors.postgres.sink import CAPABILITIES
from airflow_provider_cdc.connectors.registry import AirflowHookRef, ConnectorFactory, lazy

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig, ConnectorConfig, SourceConfig
    from airflow_provider_cdc.connectors.postgres.probe import PgChangeProbe
    from airflow_provider_cdc.connectors.postgres.sink import PgSink
    from airflow_provider_cdc.connectors.postgres.source import PgSource

DEFAULT_SCHEMA = "public"
_SCHEMES = {"postgres": "postgresql", "postgresql": "postgresql"}


def make_source(config: SourceConfig, connection: str, options: PgSourceOptions) -> PgSource:
    from airflow_provider_cdc.connectors.postgres.source import PgSource

    return PgSource(
        connection,
        source_id=config.id,
        tables=config.qualified_tables(DEFAULT_SCHEMA),
        slot_name=options.effective_slot_name(config.id),
        publication_name=options.effective_publication_name(config.id),
        snapshot=config.snapshot,
        create_slot=options.create_slot,
        create_publication=options.create_publication,
        snapshot_ranges=options.snapshot_ranges,
        snapshot_range_min_rows=options.snapshot_range_min_rows,
    )


def make_sink(connector: ConnectorConfig, connection: str, source: SourceConfig, options: Any) -> PgSink:
    from airflow_provider_cdc.connectors.postgres.sink import PgSink

    return PgSink(
        connection,
        sink_id=connector.id,
        target_schema=source.target_schema,
        delete_mode=source.delete_mode,
        ledger_schema=source.ledger_schema,
    )


def make_probe(config: SourceConfig, connection: str, options: PgSourceOptions) -> PgChangeProbe:
    from airflow_provider_cdc.connectors.postgres.probe import PgChangeProbe

    return PgChangeProbe(
        connection,
        source_id=config.id,
        tables=[f"{schema}.{table}" for schema, table in config.qualified_tables(DEFAULT_SCHEMA)],
        slot_name=options.effective_slot_name(config.id),
        publication_name=options.effective_publication_name(config.id),
    )


@cache
def _libpq_keywords() -> frozenset[str]:
    from psycopg import pq

    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def normalize_uri(uri: str) -> str:
    """A libpq URL from an Airflow Connection's URI: ``postgres://`` and PostgresHook's SQLAlchemy form
    ``postgresql+psycopg://`` become ``postgresql://``, and only libpq's own parameters are kept from the query
    (PostgresHook-only extras such as ``cursor``, ``iam`` or ``aws_conn_id`` would make libpq refuse the URL);
    values are percent-encoded (libpq does not read ``+`` as a space, and refuses a raw space)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    if scheme.startswith(("postgresql+", "postgres+")):
        scheme = "postgresql"
    scheme = _SCHEMES.get(scheme, scheme)
    base, _, query = rest.partition("?")
    base = base.replace(" ", "%20")
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k in _libpq_keywords()]
    return f"{scheme}{sep}{base}" + (f"?{urlencode(kept, quote_via=quote)}" if kept else "")


def check_sources(entries: list[tuple[int, SourceConfig, PgSourceOptions]]) -> list[tuple[int, str, str]]:
    """Replication slots are per server: two sources on one connection must not share one (ids that differ only in
    case would, since the default slot name is lowercased); a default slot name must fit PostgreSQL's 63 bytes."""
    problems: list[tuple[int, str, str]] = []
    first: dict[tuple[Any, ...], tuple[int, str]] = {}
    for index, source, options in entries:
        slot = options.effective_slot_name(source.id)
        if options.slot_name is None and len(slot.encode()) > MAX_NAME_LENGTH:
            problems.append((index, "options.slot_name", f"the default slot name {slot!r} is longer than "
                             f"{MAX_NAME_LENGTH} bytes; set options.slot_name"))
            continue
        key = (getattr(source, "connector", None), getattr(source, "conn_id", None),
               getattr(source, "connection_string", None), slot)
        if key in first:
            if first[key][1] != source.id:  # the same id twice is reported as a duplicate id already
                problems.append((index, "options.slot_name", f"replication slot {slot!r} is also used by "
                                 f"sources[{first[key][0]}] on the same connection; set a distinct "
                                 "options.slot_name"))
            continue
        first[key] = (index, source.id)
    return problems


def inspect(config: CdcConfig) -> list[str]:
    """Replication slots of sources no longer in cdc.yaml, in the databases the configured sources read."""
    from airflow_provider_cdc.connectors.postgres.slots import find_leftover_slots

    return find_leftover_slots(config).lines()



FACTORY = ConnectorFactory(
    type="postgresql",
    source_options=PgSourceOptions,
    capabilities=CAPABILITIES,
    airflow_hook=AirflowHookRef("airflow.providers.postgres.hooks.postgres.PostgresHook", "postgres_conn_id"),
    source=make_source,
    sink=make_sink,
    probe=make_probe,
    normalize_uri=normalize_uri,
    check_sources=check_sources,
    inspect=inspect,
    reference=lazy("airflow_provider_cdc.connectors.postgres.reference", "lookup"),
)
