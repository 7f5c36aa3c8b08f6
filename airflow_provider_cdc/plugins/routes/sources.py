"""``/api/v1/sources/...``: register a source (``connect``), and start or stop one source or some of its tables.

What the answers are is built in :mod:`airflow_provider_cdc.api.sources`; this router authenticates, writes the
Airflow side (the Connection that holds the secret, the Variable ``cdc.api.sources``, the DAG's paused flag) and
records the audit entry of a start or stop with the Airflow user.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, status
from fastapi.exceptions import RequestValidationError
from pydantic import StringConstraints, ValidationError

from airflow_provider_cdc.api import sources as api
from airflow_provider_cdc.api.errors import NotFoundError
from airflow_provider_cdc.api.models import PipelineActionRequest
from airflow_provider_cdc.config import CdcConfig, SourceConfig
from airflow_provider_cdc.config import api_sources as stored
from airflow_provider_cdc.plugins.auth import CdcEditor
from airflow_provider_cdc.plugins.deps import ConfigDep

log = logging.getLogger("airflow_provider_cdc.plugins.sources")

router = APIRouter(tags=["sources"])

SourceIdPath = Annotated[str, Path(description="a source id of the config", min_length=1, max_length=200)]
TablesBody = Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=500)]] | None,
                       Body(description='tables to stop or start, e.g. ["users", "orders"]; omitted: the whole '
                                        "source (its DAG paused or unpaused)")]


@router.post("/api/v1/sources/connect", response_model=api.ConnectResult, status_code=status.HTTP_201_CREATED,
             summary="Connect a data source: an Airflow Connection and a registered source (its DAG cdc_<id>)")
def connect(request: api.ConnectRequest, config: ConfigDep, user: CdcEditor) -> api.ConnectResult:
    actor = user.get_name()
    if any(source.id == request.id and source.id not in _registered() for source in config.sources):
        raise api.ConflictError(f"source {request.id!r} is defined in cdc.yaml, which stays primary: change it "
                                "there, or connect another id")
    try:
        entry = api.source_entry(request, config)
    except ValidationError as exc:
        raise RequestValidationError(api.validation_problems(exc, ("body",))) from None
    if request.conn_id is not None and not _connection_exists(request.conn_id):
        raise RequestValidationError([{"loc": ["body", "conn_id"], "type": "value_error",
                                       "msg": f"no Airflow Connection {request.conn_id!r}"}])
    registered = _registered()
    problems = api.check_candidate(str(config.directory), {k: v for k, v in registered.items() if k != request.id},
                                   entry)
    if problems:
        raise RequestValidationError([{"loc": ["body"], "type": "config_problem", "msg": problem}
                                      for problem in problems])
    created = False
    if request.connection_string is not None:
        created = _store_connection(entry["conn_id"], request.type, request.connection_string, request.id)
    record = api.record(entry, actor)
    records = {**registered, request.id: record}
    _store_registered(records, base=registered)
    log.info("source %s registered through the REST API by %s (Connection %s); DAG cdc_%s follows at the next "
             "parse", request.id, actor, entry["conn_id"], request.id)
    result = api.ConnectResult(source_id=request.id, dag_id=f"cdc_{request.id}", conn_id=entry["conn_id"],
                               connection_created=created, replaced=request.id in registered, source=entry,
                               registered_by=actor, registered_at=record["registered_at"])
    problem = _audit_connect(config, records, request.id, actor, entry, result)
    if problem:
        result.problems.append(problem)
    return result


def _audit_connect(config: CdcConfig, records: dict[str, dict[str, Any]], source_id: str, actor: str,
                   entry: dict[str, Any], result: api.ConnectResult) -> str | None:
    """Record ``source_connected`` in the new source's audit trail (its sink's ``_cdc_audit``), with the config as
    it now is; a trail that cannot be written is a problem in the answer (the source is registered by then)."""
    from airflow_provider_cdc.api.writes import describe_error, record_write
    from airflow_provider_cdc.config import load_config
    from airflow_provider_cdc.connectors.audit import SOURCE_CONNECTED

    try:
        with stored.registered_as(records):
            now = load_config(str(config.directory))
    except Exception as exc:
        return f"the audit entry was not recorded (the config: {describe_error(exc)}); the source is registered"
    _, notes = record_write(now, [source_id], SOURCE_CONNECTED, actor=actor, details={
        "via": "rest", "conn_id": entry["conn_id"], "type": entry["type"], "sink": entry["sink"],
        "tables": entry["tables"], "replaced": result.replaced, "connection_created": result.connection_created})
    return notes[0] if notes else None


@router.post("/api/v1/sources/{source_id}/start", response_model=api.SourceActionResult,
             summary="Start CDC for a source (unpause its DAG), or release stopped tables (replaying their changes)")
def start(source_id: SourceIdPath, config: ConfigDep, user: CdcEditor,
          tables: TablesBody = None) -> api.SourceActionResult:
    return _act(config, _source(config, source_id), tables, user.get_name(), start=True)


@router.post("/api/v1/sources/{source_id}/stop", response_model=api.SourceActionResult,
             summary="Stop CDC for a source (pause its DAG), or hold some tables (their changes kept in the sink)")
def stop(source_id: SourceIdPath, config: ConfigDep, user: CdcEditor,
         tables: TablesBody = None) -> api.SourceActionResult:
    return _act(config, _source(config, source_id), tables, user.get_name(), start=False)


# --- the work -----------------------------------------------------------------------------------------------------


def _source(config: CdcConfig, source_id: str) -> SourceConfig:
    for source in config.sources:
        if source.id == source_id:
            return source
    raise NotFoundError.unknown_source(source_id, [source.id for source in config.sources])


def _act(config: CdcConfig, source: SourceConfig, tables: list[str] | None, actor: str, *,
         start: bool) -> api.SourceActionResult:
    from airflow_provider_cdc.plugins.routes.pipeline import _act as pipeline_act

    action: Literal["start", "stop"] = "start" if start else "stop"
    if tables is None:
        done = pipeline_act(config, PipelineActionRequest(source_ids=[source.id]), start=start)
        result = api.SourceActionResult(source_id=source.id, action=action, dag=done.dags[0] if done.dags else None,
                                        problems=list(done.problems))
    else:
        wanted = api.qualified_tables(source, tables)
        sink = _sink(config, source.id)
        try:
            actions = (api.start_tables(sink, source, wanted, config) if start
                       else api.stop_tables(sink, source, wanted, actor))
        finally:
            sink.close()
        result = api.SourceActionResult(source_id=source.id, action=action, tables=actions)
    details: dict[str, Any] = {"via": "rest", "tables": [t.table for t in result.tables] or None}
    if result.tables:
        details["replayed_events"] = sum(t.replayed_events for t in result.tables)
    problem = audit(config, source.id, start=start, actor=actor, details=details)
    if problem:
        result.problems.append(problem)
    return result


def audit(config: CdcConfig, source_id: str, *, start: bool, actor: str, details: dict[str, Any]) -> str | None:
    """Record the start or stop in the source's audit trail; a trail that cannot be written is a problem in the
    answer, not a failed action (the action is done)."""
    from airflow_provider_cdc.api.writes import record_write
    from airflow_provider_cdc.connectors.audit import PIPELINE_STARTED, PIPELINE_STOPPED

    _, notes = record_write(config, [source_id], PIPELINE_STARTED if start else PIPELINE_STOPPED, actor=actor,
                            details=details)
    return notes[0] if notes else None


def _sink(config: CdcConfig, source_id: str) -> Any:
    from airflow_provider_cdc.hooks.cdc import CdcHook

    hook = CdcHook(source_id, config_dir=str(config.directory))
    hook.config = config  # the cached_property's slot: no second load
    return hook.get_sink()


# --- the Airflow side ----------------------------------------------------------------------------------------------


def _registered() -> dict[str, dict[str, Any]]:
    return stored.read_registered()


def _store_registered(records: dict[str, dict[str, Any]], *, base: dict[str, dict[str, Any]]) -> None:
    """Store ``records`` if the Variable still holds ``base``: of two connects at the same time, the second is a 409
    (send it again) instead of overwriting the first one's source."""
    from airflow_provider_cdc.api.registered import store_documents

    store_documents([(stored.VARIABLE, records, base,
                      "CDC sources registered through the REST API (POST /cdc/api/v1/sources/connect); merged with "
                      "cdc.yaml, which stays primary. No secrets: connections are Airflow Connections.")])


def _connection_exists(conn_id: str) -> bool:
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return False
    return True


def _store_connection(conn_id: str, connector_type: str, connection_string: str, source_id: str) -> bool:
    """Create or update the Airflow Connection ``conn_id`` from ``connection_string``; True when created. The string
    reaches no log and no answer: a malformed one is a 422 that does not echo it."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    try:
        parsed = Connection(conn_id=conn_id, uri=connection_string)
    except Exception:
        raise RequestValidationError([{"loc": ["body", "connection_string"], "type": "value_error",
                                       "msg": "not a connection URL (scheme://user:password@host:port/database)"}]
                                     ) from None
    parsed.conn_type = api.CONN_TYPES.get(connector_type, parsed.conn_type)
    parsed.description = f"CDC source {source_id}, registered through the REST API"
    with create_session() as session:
        existing = session.scalar(select(Connection).where(Connection.conn_id == conn_id))
        if existing is None:
            session.add(parsed)
            return True
        for name in ("conn_type", "description", "host", "schema", "login", "port"):
            setattr(existing, name, getattr(parsed, name))
        existing.set_password(parsed.password)
        existing.set_extra(parsed.extra)
        return False
