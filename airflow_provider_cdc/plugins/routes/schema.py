"""``/api/v1/schema/...``: a subject's versions, a compatibility check against the registry (writes nothing), a
schema registered ahead of its change, and the schema gate's accept action (:mod:`airflow_provider_cdc.api.schema`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, status

from airflow_provider_cdc.api import schema as api_schema
from airflow_provider_cdc.api.write_models import (
    AcceptAnswer,
    AcceptRequest,
    CompatibilityAnswer,
    CompatibilityRequest,
    RegisterAnswer,
    RegisterRequest,
    SchemaVersionsAnswer,
)
from airflow_provider_cdc.api.writes import actor_of
from airflow_provider_cdc.plugins.auth import CdcEditor, CdcReader
from airflow_provider_cdc.plugins.deps import ConfigDep
from airflow_provider_cdc.plugins.responses import WRITE_ERRORS

router = APIRouter(tags=["schema"])

SubjectPath = Annotated[str, Path(description="<source_id>.<schema>.<table>", min_length=1, max_length=500)]


@router.get("/api/v1/schema/subjects/{subject}/versions", response_model=SchemaVersionsAnswer,
            responses=WRITE_ERRORS, summary="A subject's registered versions (the Avro documents) and the schemas "
                                            "registered ahead through the API")
def subject_versions(subject: SubjectPath, config: ConfigDep, _user: CdcReader) -> SchemaVersionsAnswer:
    return api_schema.versions(config, subject)


@router.post("/api/v1/schema/register", response_model=RegisterAnswer, status_code=status.HTTP_201_CREATED,
             responses=WRITE_ERRORS, summary="Register a schema version ahead of its change: the change is then "
                                             "applied to the sink, not held")
def register(body: RegisterRequest, config: ConfigDep, user: CdcEditor) -> RegisterAnswer:
    return api_schema.register(config, body, actor=actor_of(user))


@router.post("/api/v1/schema/check-compatibility", response_model=CompatibilityAnswer, responses=WRITE_ERRORS,
             summary="Whether an Avro schema is compatible with a subject's registered versions (writes nothing)")
def check_compatibility(body: CompatibilityRequest, config: ConfigDep, _user: CdcReader) -> CompatibilityAnswer:
    return api_schema.check_compatibility(config, body)


@router.post("/api/v1/schema/accept", response_model=AcceptAnswer, responses=WRITE_ERRORS,
             summary="Accept the held schema change of a table and replay its held changes (schema accept)")
def accept(body: AcceptRequest, config: ConfigDep, user: CdcEditor) -> AcceptAnswer:
    return api_schema.accept(config, body, actor=actor_of(user))
