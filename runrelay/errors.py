"""The SDK's exceptions, branched by what the caller can do about them.

    RunRelayClientError
    ├── APIConnectionError     the API could not be reached, even after retries
    ├── APIError               the API answered with an error (.status, .code, .message)
    │   ├── BadRequestError    400/413/422: fix the request (bad input, bad cursor)
    │   ├── AuthError          401/403: fix the token
    │   ├── NotFoundError      404: unknown run, or not yours
    │   ├── ConflictError      409: the request clashes with the run's state
    │   └── ServerError        5xx: the service is unwell; retrying later may help
    ├── StreamError            an event stream broke and could not be resumed in max_retries
    └── EventParseError        a frame's data is not a JSON object (also a ValueError)

Catch ``RunRelayClientError`` to handle everything the SDK raises.
"""

from __future__ import annotations

from typing import Any

import orjson


class RunRelayClientError(Exception):
    """Root of every error the SDK raises."""


class APIConnectionError(RunRelayClientError):
    """The API could not be reached (connection refused, DNS, timeouts), even after retries."""


class APIError(RunRelayClientError):
    """The API answered with an error status and a ``{"error": {"code", "message"}}`` body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class BadRequestError(APIError):
    """400/413/422: the request is invalid; the message names the field."""


class AuthError(APIError):
    """401/403: missing or wrong token."""


class NotFoundError(APIError):
    """404: the run does not exist, or belongs to someone else."""


class ConflictError(APIError):
    """409: the request clashes with the run's current state."""


class ServerError(APIError):
    """5xx: the service or one of its backends is unavailable."""


class StreamError(RunRelayClientError):
    """The event stream broke and could not be resumed within ``max_retries`` attempts.

    ``last_event_id`` is the cursor to resume from later with ``since_id=``.
    """

    def __init__(self, message: str, last_event_id: int | None) -> None:
        super().__init__(message)
        self.last_event_id = last_event_id


def api_error(status: int, body: bytes) -> APIError:
    """The typed error for an error response, tolerating bodies that are not our JSON shape."""
    code, message = _status_code_name(status), body.decode("utf-8", "replace")[:500]
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        code = str(payload["error"].get("code", code))
        message = str(payload["error"].get("message", message))
    elif isinstance(payload, dict) and "detail" in payload:
        # Framework-level errors (e.g. FastAPI's own 422) use {"detail": ...}.
        message = str(payload["detail"])
    cls: type[APIError]
    if status in (400, 413, 422):
        cls = BadRequestError
    elif status in (401, 403):
        cls = AuthError
    elif status == 404:
        cls = NotFoundError
    elif status == 409:
        cls = ConflictError
    elif status >= 500:
        cls = ServerError
    else:
        cls = APIError
    return cls(status, code, message)


def _status_code_name(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        409: "conflict",
        413: "too_large",
        422: "invalid",
        429: "rate_limited",
        503: "unavailable",
    }.get(status, f"http_{status}")


class EventParseError(RunRelayClientError, ValueError):
    """An SSE frame's data is not a JSON object (or its id is not an integer)."""
