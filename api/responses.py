"""JSON responses encoded with orjson, and the one error shape."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette import responses

from api.errors import Unauthorized
from shared.errors import BackendUnavailable, BadRequest, RunRelayError

log = logging.getLogger("api.app")


# A starlette `JSONResponse`, so FastAPI's schema says JSON (not a string) for its routes.
class JSONResponse(responses.JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """``{"error": {"code", "message"[, "field"]}}`` with `status`."""
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def runrelay_error(exc: RunRelayError, method: str, path: str) -> JSONResponse:
    """The answer to a `RunRelayError` on any route (a 5xx other than 503 is logged)."""
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    if exc.status >= 500 and not isinstance(exc, BackendUnavailable):
        log.error("%s on %s %s: %s", exc.code, method, path, exc)
    field = exc.field if isinstance(exc, BadRequest) else None
    return error_response(exc.status, exc.code, str(exc), field, headers)
