"""Replication slots left behind by sources that are no longer in ``cdc.yaml``.

A logical replication slot keeps every WAL segment from its ``restart_lsn`` on until it is advanced or dropped. A
source removed from the config leaves its slot behind, and nobody advances it again: the server retains WAL
forever, until its disk fills. ``config check`` therefore looks, in every PostgreSQL database that a configured
source reads, for slots named like ours (``cdc_<source_id>``, the default slot name) that belong to
no configured source, and prints how much WAL each one holds and the SQL that drops it. It is a warning: the exit
status of the check does not change. The connector factory's ``inspect`` runs it.

No ``airflow`` import at module level: a source given as an Airflow Connection (``conn_id``) is resolved lazily,
and skipped when that Connection is not defined where the check runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from airflow_provider_cdc.config.models import mask_url
from airflow_provider_cdc.connectors.postgres.options import SLOT_PREFIX, PgSourceOptions

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig, SourceConfig

CONNECT_TIMEOUT = 5  # seconds: an unreachable source must not hang the check

_SLOTS_SQL = """
SELECT s.slot_name,
       s.active,
       pg_size_pretty(pg_wal_lsn_diff(
           CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END,
           s.restart_lsn)),
       p.pubname
FROM pg_replication_slots s
LEFT JOIN pg_publication p ON p.pubname = s.slot_name || '_pub'
WHERE s.database = current_database() AND s.slot_type = 'logical' AND starts_with(s.slot_name, %s)
ORDER BY s.slot_name
"""


@dataclass(frozen=True)
class LeftoverSlot:
    """A ``cdc_*`` slot in a source database that no configured source uses."""

    slot_name: str
    database: str
    server: str  # host:port, never credentials
    retained_wal: str | None  # pg_size_pretty of the WAL the slot holds; None when the slot was invalidated
    active: bool
    publication: str | None  # ``<slot>_pub`` when it exists: the publication such a source created
    seen_from: str  # the configured source whose connection found it

    @property
    def drop_sql(self) -> str:
        literal = self.slot_name.replace("'", "''")
        statements = [f"SELECT pg_drop_replication_slot('{literal}');"]
        if self.publication is not None:
            identifier = self.publication.replace('"', '""')
            statements.append(f'DROP PUBLICATION IF EXISTS "{identifier}";')
        return " ".join(statements)

    def __str__(self) -> str:
        held = f"retains {self.retained_wal} of WAL" if self.retained_wal is not None else "was invalidated"
        active = " (active: a consumer is connected to it)" if self.active else ""
        return (
            f"warning: replication slot {self.slot_name} in database {self.database} on {self.server} belongs to no "
            f"source in cdc.yaml{active}; it {held}, and the server keeps WAL for it until it is dropped. "
            f"If that source is gone for good, drop it there: {self.drop_sql}"
        )


@dataclass
class SlotReport:
    leftovers: list[LeftoverSlot] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)  # one line per source whose database was not reached

    def lines(self) -> list[str]:
        return [str(slot) for slot in self.leftovers] + self.unreachable


def configured_slot_names(config: CdcConfig) -> set[str]:
    return {PgSourceOptions.model_validate(source.options).effective_slot_name(source.id)
            for source in config.sources if source.type == "postgresql"}


def source_dsn(config: CdcConfig, source: SourceConfig) -> str | None:
    """The source's URL, or None when it is an Airflow Connection that is not defined here."""
    if source.connection_string:
        return source.connection_string
    from airflow_provider_cdc.hooks.cdc import entry_dsn  # lazily: imports Airflow only for a conn_id

    try:
        return entry_dsn(config, source)
    except Exception as exc:
        if type(exc).__name__ == "AirflowNotFoundException":
            return None
        raise


def _redact(text: str, dsn: str | None) -> str:
    """Keep a password out of an error message that quotes the connection string."""
    if dsn:
        password = urlsplit(dsn).password if "://" in dsn else None
        if dsn in text:
            text = text.replace(dsn, mask_url(dsn))
        if password:
            text = text.replace(password, "***")
    return text


def find_leftover_slots(config: CdcConfig) -> SlotReport:
    """Every ``cdc_*`` slot no configured source uses, in each PostgreSQL database a configured source reads."""
    import psycopg

    report = SlotReport()
    ours = configured_slot_names(config)
    seen: set[tuple[str, int, str]] = set()  # (host, port, database): each database once
    for source in config.sources:
        if source.type != "postgresql":
            continue
        dsn = None
        try:
            dsn = source_dsn(config, source)
            if dsn is None:
                continue
            with psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
                where = (conn.info.host, conn.info.port, conn.info.dbname)
                if where in seen:
                    continue
                seen.add(where)
                rows = conn.execute(_SLOTS_SQL, (SLOT_PREFIX,)).fetchall()
        except Exception as exc:
            reason = _redact(" ".join(str(exc).split()) or type(exc).__name__, dsn)
            report.unreachable.append(
                f"warning: source {source.id}: cannot reach its database to look for leftover replication slots "
                f"({reason}); skipped"
            )
            continue
        host, port, database = where
        server = f"{host}:{port}"
        for slot_name, active, retained, publication in rows:
            if slot_name in ours:
                continue
            report.leftovers.append(LeftoverSlot(slot_name, database, server, retained, bool(active), publication,
                                                 source.id))
    return report
