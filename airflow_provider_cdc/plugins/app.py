"""The CDC REST API's FastAPI app, mounted at ``/cdc`` by :class:`~airflow_provider_cdc.plugins.cdc_plugin.CdcPlugin`.

Its OpenAPI spec is ``/cdc/openapi.json`` (Swagger UI: ``/cdc/docs``). Errors of :mod:`airflow_provider_cdc.api`
become HTTP answers here: an unknown source or asset 404, a question the data cannot answer 400, a missing resource
(an invalid config, Graphviz for SVG) 503; a write the current state refuses 409; a request that does not fit the
models, or whose content is not valid (a rule that does not compile), 422 with a message per field.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from airflow_provider_cdc.api.errors import ApiError, InvalidQuestionError, NotFoundError, UnavailableError
from airflow_provider_cdc.api.sources import ConflictError
from airflow_provider_cdc.api.writes import ConflictError as WriteConflictError
from airflow_provider_cdc.api.writes import RejectedError
from airflow_provider_cdc.plugins.auth import get_cdc_user
from airflow_provider_cdc.plugins.routes import health, lineage, pipeline, quality, schema, sources, transformations
from airflow_provider_cdc.plugins.ui import page as ui_page

URL_PREFIX = "/cdc"
API_VERSION = "1"

_STATUS: tuple[tuple[type[ApiError], int], ...] = (
    (NotFoundError, status.HTTP_404_NOT_FOUND),
    (InvalidQuestionError, status.HTTP_400_BAD_REQUEST),
    (UnavailableError, status.HTTP_503_SERVICE_UNAVAILABLE),
    (ConflictError, status.HTTP_409_CONFLICT),
    (WriteConflictError, status.HTTP_409_CONFLICT),
)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, RejectedError):  # FastAPI's own 422 shape: a message per field
        return JSONResponse({"detail": exc.detail()}, status_code=status.HTTP_422_UNPROCESSABLE_ENTITY)
    code = next((code for kind, code in _STATUS if isinstance(exc, kind)), status.HTTP_400_BAD_REQUEST)
    return JSONResponse({"detail": str(exc)}, status_code=code)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, per field, without the ``input`` it would echo: a body may hold a connection string."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [{key: value for key, value in error.items() if key != "input"} for error in errors]
    return JSONResponse({"detail": jsonable_encoder(detail)}, status_code=status.HTTP_422_UNPROCESSABLE_ENTITY)


def create_app() -> FastAPI:
    app = FastAPI(
        title="airflow-provider-cdc REST API",
        version=API_VERSION,
        description="Change data capture pipelines served by the Airflow API server: status, batches, lineage, "
        "transformations and health. Every endpoint but /health needs an Airflow API token "
        "(POST /auth/token) as 'Authorization: Bearer <token>'; writes need edit permission on the CDC DAGs.",
    )
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for module in (health, ui_page):  # /health and the page's shell need no token (the page's API calls do)
        app.include_router(module.router)
    for module in (pipeline, lineage, transformations, sources, quality, schema):
        # Authentication first, before any other dependency (the config): a request without a token learns nothing,
        # not even that the config is broken. The routes' own permission checks reuse the authenticated user.
        app.include_router(module.router, dependencies=[Depends(get_cdc_user)])
    return app
