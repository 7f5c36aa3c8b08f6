"""``/api/v1/quality/...``: adding a rule to a suite (stored in the Variable ``cdc.api.quality``, merged with
quality.yaml) and checking posted records (:mod:`airflow_provider_cdc.api.quality`)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from airflow_provider_cdc.api import registered as api_registered
from airflow_provider_cdc.api.quality import add_rule, audit_quality, check_records
from airflow_provider_cdc.api.write_models import (
    QualityCheckAnswer,
    QualityCheckRequest,
    QualityRuleAdded,
    QualityRuleRequest,
)
from airflow_provider_cdc.api.writes import actor_of
from airflow_provider_cdc.plugins.auth import CdcEditor, CdcReader
from airflow_provider_cdc.plugins.deps import ConfigDep
from airflow_provider_cdc.plugins.responses import WRITE_ERRORS

router = APIRouter(tags=["quality"])


@router.post("/api/v1/quality/add-rule", response_model=QualityRuleAdded, status_code=status.HTTP_201_CREATED,
             summary="Add a quality rule to a suite (a new version of the suite)", responses=WRITE_ERRORS)
def quality_add_rule(body: QualityRuleRequest, config: ConfigDep, user: CdcEditor,
                     response: Response) -> QualityRuleAdded:
    actor = actor_of(user)
    base = api_registered.read_registered()
    answer, candidate = add_rule(config, body, base, actor=actor)
    if not answer.changed:
        response.status_code = status.HTTP_200_OK
        answer.notes.append(f"suite {body.suite_id!r} has this rule already; nothing was stored")
        return answer
    api_registered.store(candidate, base=base, quality=True)
    audit_quality(config, answer, body.rule, actor=actor)
    return answer


@router.post("/api/v1/quality/check", response_model=QualityCheckAnswer, responses=WRITE_ERRORS,
             summary="Validate posted records against a suite or posted rules; the answer is per rule")
def quality_check(body: QualityCheckRequest, config: ConfigDep, _user: CdcReader) -> QualityCheckAnswer:
    return check_records(config, body)
