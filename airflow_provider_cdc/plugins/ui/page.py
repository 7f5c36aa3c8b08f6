"""``/ui/``: the CDC page (static: it holds no data; everything it shows comes from the authenticated REST API)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

router = APIRouter(tags=["ui"])

PAGE = "index.html"


@cache
def page_html() -> str:
    return resources.files(__package__).joinpath("static", PAGE).read_text(encoding="utf-8")


@router.get("/ui/", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    # No caching: a new version of the provider must show at the next load.
    return HTMLResponse(page_html(), headers={"Cache-Control": "no-store",
                                              "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                              "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; "
                                              "frame-ancestors 'self'"})


@router.get("/ui", include_in_schema=False)
def page_without_slash() -> RedirectResponse:
    return RedirectResponse("ui/")
