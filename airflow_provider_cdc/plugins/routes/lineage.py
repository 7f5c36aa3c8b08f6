"""``/api/v1/lineage/...``: upstream, downstream and impact of a dataset or a column, and the flow diagram."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from airflow_provider_cdc.api import lineage
from airflow_provider_cdc.api.models import ImpactAnswer, LineageAnswer, LineageFlow
from airflow_provider_cdc.plugins.auth import CdcReader
from airflow_provider_cdc.plugins.deps import ConfigDep

router = APIRouter(tags=["lineage"])

AssetId = Annotated[str, Path(description="a table (users, public.users, shop:users, postgres_main_users), a column "
                                          "(users.email) or a node id of the lineage graph", min_length=1)]
MaxDepth = Annotated[int | None, Query(ge=0, le=100, description="edges away at most; omitted: no limit")]


@router.get("/api/v1/lineage/asset/{asset_id:path}/downstream", response_model=LineageAnswer,
            summary="What a table or column feeds")
def downstream(asset_id: AssetId, config: ConfigDep, _user: CdcReader, max_depth: MaxDepth = None) -> LineageAnswer:
    return lineage.downstream(lineage.graph_of(config), asset_id, max_depth)


@router.get("/api/v1/lineage/asset/{asset_id:path}/upstream", response_model=LineageAnswer,
            summary="What feeds a table or column")
def upstream(asset_id: AssetId, config: ConfigDep, _user: CdcReader, max_depth: MaxDepth = None) -> LineageAnswer:
    return lineage.upstream(lineage.graph_of(config), asset_id, max_depth)


@router.get("/api/v1/lineage/impact/{asset_id:path}", response_model=ImpactAnswer,
            summary="What a change to a table or column affects")
def impact(asset_id: AssetId, config: ConfigDep, _user: CdcReader) -> ImpactAnswer:
    return lineage.impact(lineage.graph_of(config), asset_id)


@router.get("/api/v1/lineage/flow", response_model=LineageFlow, summary="The data flow diagram",
            responses={200: {"content": {media: {} for media in lineage.MEDIA_TYPES.values()}}})
def flow(config: ConfigDep, _user: CdcReader,
         format: Annotated[lineage.FlowFormat, Query(description="json, dot, mermaid or svg")] = "json",
         ) -> LineageFlow | Response:
    answer = lineage.flow(lineage.graph_of(config), format)
    if isinstance(answer, str):
        return Response(answer, media_type=lineage.MEDIA_TYPES[format])
    return answer
