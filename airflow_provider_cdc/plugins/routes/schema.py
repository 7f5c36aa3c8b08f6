"""``/api/v1/schema/...``: a compatibility check against the registry (writes nothing) and the schema gate's accept
action (:mod:`airflow_provider_cdc.api.schema`)."""

from __future__ import annotations

from fastapi import APIRouter

from airflow_provider_cdc.api import schema as api_schema
from airflow_provider_cdc.api.write_models import AcceptAnswer, AcceptRequest, CompatibilityAnswer, CompatibilityRequest
from airflow_provider_cdc.api.writes import actor_of
from airflow_provider_cdc.plugins.auth import CdcEditor, CdcReader
from airflow_provider_cdc.plugins.deps import ConfigDep
from airflow_provider_cdc.plugins.responses import WRITE_ERRORS

router = APIRouter(tags=["schema"])


@router.post("/api/v1/schema/check-compatibility", response_model=CompatibilityAnswer, responses=WRITE_ERRORS,
             summary="Whether an Avro schema is compatible with a subject's registered versions (writes nothing)")
def check_compatibility(body: CompatibilityRequest, config: ConfigDep, _user: CdcReader) -> CompatibilityAnswer:
    return api_schema.check_compatibility(config, body)


@router.post("/api/v1/schema/accept", response_model=AcceptAnswer, responses=WRITE_ERRORS,
             summary="Accept the held schema change of a table and replay its held changes (schema accept)")
def accept(body: AcceptRequest, config: ConfigDep, user: CdcEditor) -> AcceptAnswer:
    return api_schema.accept(config, body, actor=actor_of(user))
