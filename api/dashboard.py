"""The dashboard at ``/``: one plain HTML page with its script and stylesheet, no build step.

The files live in ``api/static/`` (package data) and are read once at import. The
page talks only to the public API (``/v1/runs``, ``/v1/status``, the run's SSE
stream) with the token the user typed, like any other client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from starlette.responses import Response

from shared.errors import NotFound

router = APIRouter(include_in_schema=False)

_STATIC = Path(__file__).parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Revalidate every time: a page cached across an upgrade would speak an old protocol.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
_ASSETS = {path.name: path.read_bytes() for path in _STATIC.iterdir() if path.suffix in _TYPES}


def _asset(name: str) -> Response:
    body = _ASSETS.get(name)
    if body is None:
        raise NotFound(f"no dashboard asset {name!r}")
    return Response(body, media_type=_TYPES[Path(name).suffix], headers=_HEADERS)


@router.get("/")
async def dashboard() -> Response:
    return _asset("dashboard.html")


@router.get("/favicon.ico")
async def favicon() -> Response:
    return _asset("favicon.svg")


@router.get("/_dashboard/{name}")
async def dashboard_asset(name: str) -> Response:
    return _asset(name)
