"""``/api/v1/transformations``: the transformation rules."""

from __future__ import annotations

from fastapi import APIRouter

from airflow_provider_cdc.api.models import RuleList
from airflow_provider_cdc.api.transformations import list_rules
from airflow_provider_cdc.plugins.auth import CdcReader
from airflow_provider_cdc.plugins.deps import ConfigDep

router = APIRouter(tags=["transformations"])


@router.get("/api/v1/transformations", response_model=RuleList, summary="The transformation rules")
def transformations(config: ConfigDep, _user: CdcReader) -> RuleList:
    return list_rules(config)
