"""``/api/v1/transformations``: the transformation rules (YAML's and the API's, with versions), and registering one
(:mod:`airflow_provider_cdc.api.transformations`: checked before it is stored in the Variable ``cdc.api.rules``)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from airflow_provider_cdc.api import registered as api_registered
from airflow_provider_cdc.api.transformations import audit_rule, list_rules, register_rule
from airflow_provider_cdc.api.write_models import TransformationRegistered, TransformationRequest, VersionedRuleList
from airflow_provider_cdc.api.writes import actor_of
from airflow_provider_cdc.plugins.auth import CdcEditor, CdcReader
from airflow_provider_cdc.plugins.deps import ConfigDep
from airflow_provider_cdc.plugins.responses import WRITE_ERRORS

router = APIRouter(tags=["transformations"])


@router.get("/api/v1/transformations", response_model=VersionedRuleList, summary="The transformation rules")
def transformations(config: ConfigDep, _user: CdcReader) -> VersionedRuleList:
    answer = list_rules(config, api_registered.read_registered())
    assert isinstance(answer, VersionedRuleList)
    return answer


@router.post("/api/v1/transformations", response_model=TransformationRegistered, status_code=status.HTTP_201_CREATED,
             summary="Register a transformation rule (a new version of its rule_id)", responses=WRITE_ERRORS)
def add_transformation(body: TransformationRequest, config: ConfigDep, user: CdcEditor,
                       response: Response) -> TransformationRegistered:
    actor = actor_of(user)
    base = api_registered.read_registered()
    answer, candidate = register_rule(config, body, base, actor=actor)
    if not answer.changed:
        response.status_code = status.HTTP_200_OK
        answer.notes.append(f"version {answer.version} has this content already; nothing was stored")
        return answer
    api_registered.store(candidate, base=base, rules=True)
    audit_rule(config, answer, actor=actor)
    return answer
