"""JSON responses encoded with orjson, and the one error shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette import responses


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
