"""What the OpenAPI schema says about answers a route's signature cannot: errors, SSE, 204.

    @router.get(
        "/v1/x/{x_id}/events",
        response_class=Response,  # no JSON default: every answer is listed in `responses`
        responses=SSE | STREAM_ENDED | errors(400, 401, 404, 429, 503),
        openapi_extra=CURSOR,  # read by the handler, declared for clients
    )

Every error answer is `ErrorBody` (``api.responses.error_response``), the 422 of a
request FastAPI could not validate included: declaring 422 on a route keeps FastAPI
from adding its own ``HTTPValidationError``, which this API never sends.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

Responses = dict[int | str, dict[str, Any]]

_WHY = {
    400: "Bad input (a body that does not parse, a malformed cursor...), naming the field",
    401: "No or bad credentials",
    403: "An operator route, and the caller is not in RUNRELAY_ADMIN_OWNERS",
    404: "Unknown, or not the caller's (no existence leak)",
    409: "Conflicts with the current state",
    413: "Request body larger than RUNRELAY_MAX_BODY_BYTES",
    422: "Invalid request, naming the field",
    429: "Too many runs or open streams for this owner",
    503: "A backend (Redis, RabbitMQ) is unavailable, or the feature is not configured",
}


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. not_found, bad_cursor")
    message: str
    field: str | None = Field(default=None, description="the input at fault (400/422)")


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"code", "message"[, "field"]}}``."""

    error: ErrorDetail


def errors(*statuses: int) -> Responses:
    """`responses=` entries for error `statuses`, each with the one error shape."""
    return {status: {"model": ErrorBody, "description": _WHY[status]} for status in statuses}


# One event of the stream, as OpenAPI 3.2 (and FastAPI's own SSE routes) write it.
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "the cursor to resume after this event"},
        "event": {"type": "string"},
        "data": {"type": "string", "description": "one line of JSON"},
        "retry": {"type": "integer", "minimum": 0},
    },
}

SSE: Responses = {
    200: {
        "description": "Server-Sent Events: `retry:`, then `id:`/`event:`/`data:` frames "
        "and `: ping` heartbeats; the server closes after the end or at connection age",
        "content": {"text/event-stream": {"itemSchema": _SSE_EVENT}},
    }
}

# `api.cursors.requested_cursor` reads the cursor off the request itself, so that a bad
# one is a 400 naming where it came from: these declare it (``openapi_extra=CURSOR``).
_EVENT_ID = {"type": "integer", "minimum": 0}
CURSOR: dict[str, Any] = {
    "parameters": [
        {
            "name": "Last-Event-ID",
            "in": "header",
            "schema": _EVENT_ID,
            "description": "resume after this event id (wins over the query)",
        },
        *(
            {"name": name, "in": "query", "schema": _EVENT_ID, "description": "resume after"}
            for name in ("after", "since_id", "last_event_id")
        ),
    ]
}

STREAM_ENDED: Responses = {
    204: {"description": "The cursor is at the last event of an ended run: nothing to send"}
}
