"""Schemas through the API: a subject's versions, a compatibility check of a candidate Avro schema against them (it
writes nothing), a schema registered ahead of its change (an approval the gate honours:
:mod:`airflow_provider_cdc.schema.policy`), and the schema gate's accept action. The check and the accept are the
``schema check`` and ``schema accept`` commands' own logic (:mod:`airflow_provider_cdc.schema_commands`), called
with the source's sink opened as a task opens it (:class:`~airflow_provider_cdc.hooks.cdc.CdcHook`).

An accept changes the sink, so like the command it is refused while a run of ``cdc_<source_id>`` is running (a load
at the same time could hold changes the accept does not replay), unless ``force``.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow_provider_cdc.api.errors import NotFoundError, UnavailableError
from airflow_provider_cdc.api.write_models import (
    AcceptAnswer,
    AcceptRequest,
    CompatibilityAnswer,
    CompatibilityRequest,
    RegisterAnswer,
    RegisterRequest,
    SchemaVersionsAnswer,
)
from airflow_provider_cdc.api.writes import ConflictError, RejectedError, describe_error
from airflow_provider_cdc.errors import CdcError

if TYPE_CHECKING:
    from airflow_provider_cdc.config import CdcConfig
    from airflow_provider_cdc.connectors.base import Sink
    from airflow_provider_cdc.hooks.cdc import CdcHook
    from airflow_provider_cdc.schema_commands import SubjectRef


def subject_ref(config: CdcConfig, subject: str) -> SubjectRef:
    """The configured source table ``subject`` names, or 404 naming the source's subjects (or the sources)."""
    from airflow_provider_cdc.schema_commands import SchemaCommandError, resolve_subject

    try:
        return resolve_subject(config, subject)
    except SchemaCommandError as exc:
        raise NotFoundError("subject", subject, str(exc)) from None


def _hook(config: CdcConfig, source_id: str) -> CdcHook:
    from airflow_provider_cdc.hooks.cdc import CdcHook

    hook = CdcHook(source_id, str(config.directory))
    hook.config = config  # the cached_property, primed: the request's config, loaded once
    return hook


@contextmanager
def _sink(hook: CdcHook) -> Iterator[Sink]:
    try:
        sink = hook.get_sink()
    except Exception as exc:
        raise UnavailableError(f"the sink of source {hook.source_id!r} cannot be opened ({describe_error(exc)})"
                               ) from None
    try:
        yield sink
    finally:
        sink.close()


def _avro(schema: Mapping[str, Any]) -> dict[str, Any]:
    from airflow_provider_cdc.schema.avro import parse

    try:
        parse(schema)
    except Exception as exc:  # avro raises several kinds; each means the same here
        raise RejectedError([(("body", "schema"), f"not a valid Avro schema: {describe_error(exc)}")]) from None
    if schema.get("type") != "record":
        raise RejectedError([(("body", "schema"), "an Avro record schema is expected (\"type\": \"record\")")])
    return dict(schema)


def check_compatibility(config: CdcConfig, request: CompatibilityRequest) -> CompatibilityAnswer:
    """Whether ``request.schema`` is compatible with the subject's registered versions at its level (the source's
    ``schema_changes:``) or ``request.level``; nothing is written."""
    from airflow_provider_cdc.schema_commands import check_schema

    ref = subject_ref(config, request.subject)
    schema = _avro(request.schema_)
    hook = _hook(config, ref.source_id)
    level = request.level or hook.schema_policy.level(ref.table)
    try:
        with _sink(hook) as sink:
            found = check_schema(sink, ref, schema, level)
    except (UnavailableError, RejectedError):
        raise
    except Exception as exc:
        raise UnavailableError(f"the schema registry of source {ref.source_id!r} cannot be read "
                               f"({describe_error(exc)})") from None
    result = found.result.to_dict()
    return CompatibilityAnswer(subject=found.subject, level=found.level, compatible=found.compatible,
                               against_versions=found.against, problems=result["problems"],
                               reasons=[problem.describe() for problem in found.result.problems])


def versions(config: CdcConfig, subject: str) -> SchemaVersionsAnswer:
    """The sink registry's versions of ``subject`` (``schema versions``) and the schemas the API registered ahead."""
    from airflow_provider_cdc.api.registered import read_registered
    from airflow_provider_cdc.schema_commands import versions_report

    ref = subject_ref(config, subject)
    hook = _hook(config, ref.source_id)
    try:
        with _sink(hook) as sink:
            report = versions_report(sink, ref.source_id, ref.table)
    except UnavailableError:
        raise
    except Exception as exc:
        raise UnavailableError(f"the schema registry of source {ref.source_id!r} cannot be read "
                               f"({describe_error(exc)})") from None
    found = list(report["subjects"].get(ref.subject, []))
    ahead = [{"version": item.version, "shape": item.shape, "schema": item.schema, "registered_at":
              item.registered_at, "actor": item.actor} for item in read_registered().schema_versions(ref.subject)]
    return SchemaVersionsAnswer(subject=ref.subject, level=hook.schema_policy.level(ref.table), versions=found,
                                registered=ahead)


def register(config: CdcConfig, request: RegisterRequest, *, actor: str) -> RegisterAnswer:
    """Register ``request.schema`` for its subject ahead of the change it describes: from the next batch on, a change
    of the table to a schema of that shape is applied (the sink migrated as under ``evolve``), not held. One that is
    not compatible at the subject's level is a 409 unless ``force``. Audited as ``schema_approved``."""
    from airflow_provider_cdc.api import registered as api_registered
    from airflow_provider_cdc.api.writes import record_write
    from airflow_provider_cdc.connectors.audit import SCHEMA_APPROVED
    from airflow_provider_cdc.schema.avro import shape_key

    ref = subject_ref(config, request.subject)
    schema = _avro(request.schema_)
    found = check_compatibility(config, CompatibilityRequest(subject=ref.subject, schema=schema, level=None))
    if not found.compatible and not request.force:
        raise ConflictError(f"the schema is not {found.level} compatible with {ref.subject}'s versions "
                            f"{found.against_versions}: {'; '.join(found.reasons)}. Send \"force\": true to register "
                            "it anyway: the change it describes will then be applied to the sink, not held")
    shape = shape_key(schema)
    base = api_registered.read_registered()
    candidate, version, changed = base.with_schema(ref.subject, schema, shape, actor=actor)
    if changed:
        api_registered.store(candidate, base=base, schemas=True)
    problems: list[str] = []
    if changed:
        _, notes = record_write(config, [ref.source_id], SCHEMA_APPROVED, actor=actor, details={
            "via": "rest", "subject": ref.subject, "version": version, "shape": shape, "level": found.level,
            "compatible": found.compatible, "forced": bool(request.force and not found.compatible)})
        problems += notes
    what = "registered" if changed else "was registered already"
    message = (f"{ref.subject}: schema {shape} {what} as version {version}; a change of {ref.table} to this schema is "
               "applied to the sink, not held" + ("" if found.compatible else
                                                   f" (it is not {found.level} compatible: registered with force)")
               + ". A type the sink cannot widen to without loss still holds the table until schema accept converts "
                 "the sink's values")
    return RegisterAnswer(subject=ref.subject, version=version, shape=shape, registered=changed, level=found.level,
                          compatible=found.compatible, against_versions=found.against_versions, reasons=found.reasons,
                          message=message, problems=problems)


def accept(config: CdcConfig, request: AcceptRequest, *, actor: str) -> AcceptAnswer:
    """``schema accept <subject>``: accept the held versions of a held table, replay its held changes exactly once,
    and record ``schema_accepted`` by ``actor`` in the audit trail. 409 when the table is not held, or while a run
    of the source's DAG is running (without ``force``)."""
    from airflow_provider_cdc.resnapshot import CommandError, refuse_while_running
    from airflow_provider_cdc.schema_commands import (
        SchemaCommandError,
        accept_plan,
        accept_subject,
        accepted_text,
    )

    ref = subject_ref(config, request.subject)
    hook = _hook(config, ref.source_id)
    warnings = io.StringIO()
    with _sink(hook) as sink:
        try:
            accept_plan(sink, ref)
            refuse_while_running(config.source(ref.source_id).dag_id, "a load running meanwhile could hold changes "
                                 "of the table that the accept does not replay", yes=request.force, err=warnings)
        except (SchemaCommandError, CommandError) as exc:
            message = str(exc).replace("pass --yes", 'send "force": true')
            raise ConflictError(message) from None
        try:
            result = accept_subject(sink, ref, hook.schema_policy, actor=actor)
        except CdcError as exc:  # the sink refused it (a value its new type cannot hold): one transaction, undone
            raise ConflictError(f"the accept of {ref.subject} failed and changed nothing: {describe_error(exc)}"
                                ) from None
        except Exception as exc:
            raise UnavailableError(f"the accept of {ref.subject} failed and changed nothing (the sink: "
                                   f"{describe_error(exc)})") from None
    return AcceptAnswer(subject=result.subject, table=result.table, accepted_versions=result.accepted_versions,
                        batch_id=result.batch_id, replayed_events=result.replayed_events, upserted=result.upserted,
                        deleted=result.deleted, applied=result.applied, message=accepted_text(result),
                        warnings=[line for line in warnings.getvalue().splitlines() if line.strip()],
                        accepted_at=dt.datetime.now(dt.timezone.utc))
