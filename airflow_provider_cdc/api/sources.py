"""Sources of the REST API: ``sources/connect`` (register a source) and ``sources/{id}/start|stop`` of single tables.

**Connect.** The seed's body (``id``, ``type``, ``connection_string``, ``config: {poll_interval, tables, ...}``)
becomes a cdc.yaml entry whose connection is the ``conn_id`` of an Airflow Connection (``cdc_source_<id>``): the
plugin writes the connection string there and nowhere else (not in the Variable, not in an answer, not in a log).
The entry goes into the Variable ``cdc.api.sources`` (:mod:`airflow_provider_cdc.config.api_sources`), which the
config loader merges with cdc.yaml, so the DAG factory makes ``cdc_<id>`` at its next parse. Two defaults differ from
cdc.yaml's, because an API user did not choose them: ``sink`` is the sink most of the YAML's sources load into, and
``target_schema`` is the source id (its sink tables cannot then collide with another source's ``public.users``).
A registration is checked with the whole config first (:func:`check_candidate`); one that would break it is refused.

**Stop and start tables.** Stopping a table holds it in the sink exactly as the schema gate holds a table whose
schema change it refused (``_cdc_held``, reason "stopped through the REST API ..."): from the next batch on, its
changes leave the batch into ``_cdc_held_changes``, in the transaction of the ledger row, while the other tables
flow and the position moves on. Nothing is lost. Starting it replays them through the sink's
:meth:`~airflow_provider_cdc.connectors.base.Sink.accept_table`: one ledger batch
``<source>:accept:<table>:<seq range>``, exactly once, guarded per row by ``_cdc_position``. A table the gate holds
for a schema change is not started here (that is the schema accept's decision), nor one that had a schema change
while stopped.

Every sink holds a table on request through the :class:`~airflow_provider_cdc.connectors.base.Sink` protocol's
``hold_table`` (the gate's own mark, written outside a batch), so single tables stop and start alike in PostgreSQL,
MySQL/MariaDB, MongoDB and Delta sinks. A Parquet change log never holds a table: stopping one there is refused (409).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from airflow_provider_cdc.api.errors import ApiError, InvalidQuestionError, NotFoundError, known_names
from airflow_provider_cdc.api.models import DagAction
from airflow_provider_cdc.config import api_sources
from airflow_provider_cdc.config.models import DEFAULT_TABLE_SCHEMA, SourceConfig, qualify_table

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig
    from airflow_provider_cdc.connectors.base import Sink

CONN_ID_PREFIX = "cdc_source_"
STOP_REASON = "stopped through the REST API"
CONN_TYPES = {"postgresql": "postgres", "mysql": "mysql", "mongodb": "mongo"}
"""The Airflow connection type of a connector type (the provider hooks' ``conn_type``)."""


class ConflictError(ApiError):
    """The request contradicts what exists (HTTP 409): a source id of cdc.yaml, a table the schema gate holds."""


# --- models ---------------------------------------------------------------------------------------------------------


class SourceSettings(BaseModel):
    """``config`` of a connect: the cdc.yaml keys of a source (tables required; the others have defaults)."""

    model_config = ConfigDict(extra="forbid")

    tables: list[str] = Field(min_length=1, description="table, schema.table, or a MongoDB (db.)collection")
    poll_interval: float | None = Field(None, gt=0, description="seconds between checks for changes")
    snapshot: Literal["initial", "never"] | None = None
    batch_size: int | None = Field(None, gt=0)
    sink: str | None = Field(None, min_length=1, description="a connector id of connectors.yaml; omitted: the sink "
                                                             "most sources of cdc.yaml load into")
    target_schema: str | None = Field(None, min_length=1, description="omitted: the source id")
    delete_mode: Literal["hard", "soft"] | None = None
    transformations: list[str] | None = None
    quality: list[str] | None = None
    schedule: str | None = None
    mode: Literal["staged", "fused"] | None = None
    options: dict[str, Any] | None = Field(None, description="the connector's own options (slot name, ...)")


class ConnectRequest(BaseModel):
    """The seed's body of ``POST sources/connect``. Give the connection as ``connection_string`` (stored in a new
    Airflow Connection) or as the ``conn_id`` of an existing one."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_]+$", max_length=200, description="the DAG becomes cdc_<id>")
    type: str = Field(min_length=1, description="postgresql, mysql or mongodb")
    connection_string: str | None = Field(None, min_length=1, description="a driver URL; kept in an Airflow "
                                                                          "Connection only", repr=False)
    conn_id: str | None = Field(None, min_length=1, description="an existing Airflow Connection instead")
    config: SourceSettings

    @model_validator(mode="after")
    def _one_connection(self) -> ConnectRequest:
        if (self.connection_string is None) == (self.conn_id is None):
            raise ValueError("give exactly one of connection_string and conn_id")
        return self


class ConnectResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_id: str
    dag_id: str
    conn_id: str = Field(description="the Airflow Connection that holds the connection")
    connection_created: bool
    replaced: bool = Field(description="true when the API had registered this id before")
    source: dict[str, Any] = Field(description="the registered cdc.yaml entry (no secret: a conn_id)")
    registered_by: str
    registered_at: str
    problems: list[str] = Field(default_factory=list, description="what could not be done beside the registration "
                                                                  "(e.g. its audit entry)")


class TableAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: str
    held: bool
    changed: bool = Field(description="false when the table already was in that state")
    replayed_events: int = Field(default=0, description="held changes applied on start")
    batch_id: str | None = Field(default=None, description="the ledger batch of the replay")


class SourceActionResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source_id: str
    action: Literal["start", "stop"]
    dag: DagAction | None = Field(default=None, description="without a table list: the DAG paused or unpaused")
    tables: list[TableAction] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)


# --- connect ---------------------------------------------------------------------------------------------------------


def conn_id_for(source_id: str) -> str:
    return f"{CONN_ID_PREFIX}{source_id}"


def default_sink(config: CdcConfig) -> str | None:
    """The sink most sources of the config load into (None: no source, or a tie)."""
    counts = Counter(source.sink for source in config.sources).most_common(2)
    if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def source_entry(request: ConnectRequest, config: CdcConfig) -> dict[str, Any]:
    """The cdc.yaml entry of a connect (no secret: the connection is a ``conn_id``). Raises ``ValidationError`` of
    :class:`SourceConfig` (locations within the entry) or :class:`InvalidQuestionError` without a sink to choose."""
    entry: dict[str, Any] = {"id": request.id, "type": request.type,
                             "conn_id": request.conn_id or conn_id_for(request.id),
                             **request.config.model_dump(exclude_none=True)}
    if "sink" not in entry:
        sink = default_sink(config)
        if sink is None:
            sinks = {connector.id for connector in config.connectors}
            raise InvalidQuestionError(f"config.sink is required: the config's sources name no single sink to "
                                       f"default to; connectors: {known_names(sinks)}")
        entry["sink"] = sink
    entry.setdefault("target_schema", request.id)
    SourceConfig.model_validate(entry)
    return entry


def check_candidate(directory: str, registered: Mapping[str, Mapping[str, Any]], entry: dict[str, Any]) -> list[str]:
    """The config problems registering ``entry`` would add (empty: it may be stored), checked with the whole config
    before anything is stored. Problems the config has without it are not its business."""
    from airflow_provider_cdc.config import ConfigError, load_config

    def problems(records: Mapping[str, Mapping[str, Any]]) -> set[str]:
        try:
            with api_sources.registered_as(records):
                load_config(directory)
        except ConfigError as exc:
            return {str(problem) for problem in exc.problems}
        return set()

    return sorted(problems({**registered, entry["id"]: {"source": entry}}) - problems(registered))


def record(entry: dict[str, Any], actor: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """The Variable's record of a registered source."""
    return {"source": entry, "registered_by": actor,
            "registered_at": (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")}


# --- start and stop tables -------------------------------------------------------------------------------------------


def qualified_tables(source: SourceConfig, tables: list[str]) -> list[str]:
    """``schema.table`` of each requested table (``users`` is ``public.users``), which must be the source's."""
    known = source.qualified_names(DEFAULT_TABLE_SCHEMA)
    wanted = []
    for name in tables:
        qualified = qualify_table(name, DEFAULT_TABLE_SCHEMA)
        if qualified not in known:
            raise NotFoundError("table", name, f"source {source.id!r} captures no table {name!r}; its tables: "
                                               f"{known_names(known)}")
        if qualified not in wanted:
            wanted.append(qualified)
    return wanted


def stop_reason(actor: str, source_id: str, table: str, now: dt.datetime | None = None) -> str:
    at = (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")
    short = table.partition(".")[2] or table
    return (f"{STOP_REASON} by {actor} at {at}: its changes are kept in the sink, not lost, and replayed on "
            f"POST /cdc/api/v1/sources/{source_id}/start [\"{short}\"]")


def stopped_by_api(reason: str) -> bool:
    return reason.startswith(STOP_REASON)


def stop_tables(sink: Sink, source: SourceConfig, tables: list[str], actor: str) -> list[TableAction]:
    """Hold each of ``tables`` in the sink (see the module docstring); a table held already stays as it is."""
    held = dict(sink.held_tables(source.id))
    actions = []
    for table in tables:
        if table in held:
            actions.append(TableAction(table=table, held=True, changed=False))
            continue
        changed = hold_table(sink, source.id, table, stop_reason(actor, source.id, table))
        actions.append(TableAction(table=table, held=True, changed=changed))
    return actions


def start_tables(sink: Sink, source: SourceConfig, tables: list[str], config: CdcConfig) -> list[TableAction]:
    """Replay and release each of ``tables`` that the API stopped (see the module docstring)."""
    held = dict(sink.held_tables(source.id))
    for table in tables:  # refuse before changing anything
        reason = held.get(table)
        if reason is not None and not stopped_by_api(reason):
            raise ConflictError(f"table {table} of source {source.id!r} is held by the schema gate, not stopped: "
                                f"{reason}. Accept the schema change (POST /cdc/api/v1/schema/accept) or re-snapshot "
                                "the table")
        if reason is not None and any(chunk.changes for chunk in sink.held_changes(source.id, table)):
            raise ConflictError(f"table {table} of source {source.id!r} had a schema change while it was stopped; "
                                "review it and accept it with POST /cdc/api/v1/schema/accept (which also replays "
                                "the held changes), or re-snapshot the table")
    actions = []
    for table in tables:
        if table not in held:
            actions.append(TableAction(table=table, held=False, changed=False))
            continue
        if not sink.held_changes(source.id, table) and not registered(sink, source.id, table):
            # Stopped before any batch loaded it: no sink table, no version to accept, nothing to replay.
            sink.release_table(source.id, table)
            actions.append(TableAction(table=table, held=False, changed=True))
            continue
        # With nothing held, the accept only clears the mark (no replay batch, no migration: the version it
        # follows is the one already in effect).
        result = sink.accept_table(source.id, table, policy=config.schema_policy(source.id))
        actions.append(TableAction(table=table, held=False, changed=True, replayed_events=result.replayed_events,
                                   batch_id=result.batch_id))
    return actions


def registered(sink: Sink, source_id: str, table: str) -> bool:
    """Whether the sink's schema registry has a version of ``table`` (a batch of it was loaded, or held)."""
    from airflow_provider_cdc.schema.registry import subject_of

    subject = subject_of(source_id, table)
    return any(version.subject == subject for version in sink.schema_versions(source_id))


def hold_table(sink: Sink, source_id: str, table: str, reason: str) -> bool:
    """Hold ``table`` of ``source_id`` in ``sink`` from the next batch on; True when it was not held. A sink that
    cannot hold a table (a Parquet change log) is a :class:`ConflictError`."""
    from airflow_provider_cdc.errors import SinkError

    try:
        return sink.hold_table(source_id, table, reason)
    except SinkError as exc:
        if not exc.terminal:
            raise
        raise ConflictError(f"table {table} of source {source_id!r} cannot be stopped in sink {sink.sink_id!r}: "
                            f"{exc}; stop the whole source instead (no body)") from exc


def validation_problems(exc: ValidationError, prefix: tuple[str | int, ...]) -> list[dict[str, Any]]:
    """FastAPI-shaped 422 details of a :class:`SourceConfig` error, located in the request body."""
    mapped = {"id": ("id",), "type": ("type",), "conn_id": ("conn_id",)}
    details = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        where = mapped.get(str(loc[0])) if loc else None
        full = (*prefix, *(where or ("config", *loc)))
        details.append({"loc": list(full), "msg": error["msg"].removeprefix("Value error, "), "type": error["type"]})
    return details
