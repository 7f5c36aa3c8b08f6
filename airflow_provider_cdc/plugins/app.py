"""The CDC REST API's FastAPI app, mounted at ``/cdc`` by :class:`~airflow_provider_cdc.plugins.cdc_plugin.CdcPlugin`.

Its OpenAPI spec is ``/cdc/openapi.json`` (Swagger UI: ``/cdc/docs``). Errors of :mod:`airflow_provider_cdc.api`
become HTTP answers here: an unknown source or asset 404, a question the data cannot answer 400, a missing resource
(an invalid config, Graphviz for SVG) 503; a request that does not fit the models is FastAPI's 422, per field.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from airflow_provider_cdc.api.errors import ApiError, InvalidQuestionError, NotFoundError, UnavailableError
from airflow_provider_cdc.plugins.routes import health, lineage, pipeline, transformations

URL_PREFIX = "/cdc"
API_VERSION = "1"

_STATUS: tuple[tuple[type[ApiError], int], ...] = (
    (NotFoundError, status.HTTP_404_NOT_FOUND),
    (InvalidQuestionError, status.HTTP_400_BAD_REQUEST),
    (UnavailableError, status.HTTP_503_SERVICE_UNAVAILABLE),
)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    code = next((code for kind, code in _STATUS if isinstance(exc, kind)), status.HTTP_400_BAD_REQUEST)
    return JSONResponse({"detail": str(exc)}, status_code=code)


def create_app() -> FastAPI:
    app = FastAPI(
        title="airflow-provider-cdc REST API",
        version=API_VERSION,
        description="Change data capture pipelines served by the Airflow API server: status, batches, lineage, "
        "transformations and health. Every endpoint but /health needs an Airflow API token "
        "(POST /auth/token) as 'Authorization: Bearer <token>'; writes need edit permission on the CDC DAGs.",
    )
    app.add_exception_handler(ApiError, _api_error)
    for module in (health, pipeline, lineage, transformations):
        app.include_router(module.router)
    return app
