"""Authentication and authorization of the CDC REST API: the same JWT as Airflow's REST API, checked by the
configured auth manager.

- :func:`get_cdc_user` reads the token as Airflow's ``get_user`` does (``Authorization: Bearer``, else the UI's
  session cookie or the user a trusted Airflow middleware already authenticated) and asks the auth manager to
  decode it. Unlike Airflow 3.3's own dependency, which answers 403 to a malformed token, every missing, expired or
  invalid token answers **401** with ``WWW-Authenticate: Bearer``, as RFC 6750 asks: 403 is kept for a valid user
  without the permission.
- :func:`requires_cdc_access` (``"GET"`` for reads, ``"PUT"`` for writes) asks the auth manager
  (``is_authorized_dag``) for the CDC DAGs a request concerns: the source's DAG ``cdc_<source_id>`` when the path or
  the query names one, else every DAG of the config (a status, the lineage of all pipelines, starting them all).
  With SimpleAuthManager a viewer may read and a user (or op, admin) may write; FabAuthManager and others apply
  their own per-DAG permissions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
from airflow.api_fastapi.core_api.security import (
    USER_INJECTED_BY_TRUSTED_MIDDLEWARE,
    bearer_scheme,
    oauth2_scheme,
)
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials
from jwt import ExpiredSignatureError, InvalidTokenError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from airflow.api_fastapi.auth.managers.base_auth_manager import ResourceMethod
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers=_CHALLENGE)


async def get_cdc_user(
    request: Request,
    # Declared for the OpenAPI spec (the security scheme of /docs); the bearer credentials below carry the token.
    _oauth_token: str | None = Depends(oauth2_scheme),
    bearer: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),
) -> BaseUser:
    """The Airflow user of the request's token, or 401."""
    token: str | None = None
    if bearer is not None and bearer.scheme.lower() == "bearer":
        token = bearer.credentials
    else:
        user: BaseUser | None = getattr(request.state, "user", None)
        if user is not None and getattr(request.state, "user_authenticated_via", None) is \
                USER_INJECTED_BY_TRUSTED_MIDDLEWARE:
            return user
        token = request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if not token:
        raise _unauthorized("Not authenticated: send an Airflow API token (POST /auth/token) as 'Authorization: "
                            "Bearer <token>'")
    try:
        return await get_auth_manager().get_user_from_token(token)
    except ExpiredSignatureError:
        raise _unauthorized("Token expired") from None
    except InvalidTokenError:
        raise _unauthorized("Invalid token") from None


CdcUserDep = Annotated[Any, Depends(get_cdc_user)]


def requested_dag_ids(request: Request) -> list[str] | None:
    """The CDC DAGs a request concerns: ``cdc_<source_id>`` of the path or query, else those of the config (None
    when the config cannot be read: then the check is for DAGs in general)."""
    source_id = request.path_params.get("source_id") or request.query_params.get("source_id")
    if source_id:
        return [f"cdc_{source_id}"]
    from airflow_provider_cdc.config import load_config

    try:
        return [source.dag_id for source in load_config().sources]
    except Exception:
        return None


def requires_cdc_access(method: ResourceMethod) -> Callable[[Request, Any], Coroutine[Any, Any, Any]]:
    """A dependency: the request's user may ``method`` (``GET`` read, ``PUT`` edit) the CDC DAGs it concerns, or 403.
    It returns the user (for the audit trail of writes)."""

    async def check(request: Request, user: CdcUserDep) -> Any:
        manager = get_auth_manager()
        dag_ids = requested_dag_ids(request)
        if dag_ids:
            allowed = manager.batch_is_authorized_dag(
                [{"method": method, "details": DagDetails(id=dag_id)} for dag_id in dag_ids], user=user)
        else:
            allowed = manager.is_authorized_dag(method=method, details=DagDetails(), user=user)
        if not allowed:
            verb = "read" if method == "GET" else "change"
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"Forbidden: user {user.get_name()!r} may not {verb} the CDC DAGs")
        return user

    return check


ReadAccess = Depends(requires_cdc_access("GET"))
EditAccess = Depends(requires_cdc_access("PUT"))
CdcReader = Annotated[Any, ReadAccess]
CdcEditor = Annotated[Any, EditAccess]
