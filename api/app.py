"""The API application: ``create_app(runtime)`` returns the FastAPI app `runrelay api` serves.

    app = create_app(Runtime.build(settings))                 # owns the backends
    app = create_app(runtime, manage_runtime=False)           # `runrelay dev`: shared runtime

Routers live in their own modules and are included here, so dialects
(``api/dialects/``), the operations webhook and the dashboard plug in the same way.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import dashboard, dialects
from api.auth import Authenticator
from api.catalogue import ToolCatalogue
from api.deps import ApiState
from api.lean import LeanApp, LeanStreams
from api.middleware import AccessLog, BodyLimit, Cors
from api.responses import JSONResponse, error_response, runrelay_error
from api.routes import dead, health, operations, runs, sessions, status, tools
from api.streams import StreamSlots
from api.tail import TailHub
from shared.errors import BackendUnavailable, RunRelayError
from shared.runtime import Runtime

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _field_path(loc: Sequence[Any]) -> str:
    # ("body", "input") -> "input"; ("query", "limit") -> "limit"; nested -> "input.x".
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _on_runrelay_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RunRelayError)
    return runrelay_error(exc, request.method, request.url.path)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = _field_path(first.get("loc", ()))
    message = "; ".join(f"{_field_path(e.get('loc', ()))}: {e.get('msg')}" for e in errors)
    return error_response(422, "invalid_request", message or "invalid request", field)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = str(exc.detail) if exc.detail else code.replace("_", " ")
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path}"
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


def create_app(
    runtime: Runtime, *, allow_open: bool = False, manage_runtime: bool = True
) -> FastAPI:
    """The API app over `runtime`; `allow_open` lets an unconfigured auth run as "anonymous"."""
    settings = runtime.settings
    hub = TailHub(runtime.log, buffer=settings.subscriber_buffer)
    state = ApiState(
        runtime=runtime,
        hub=hub,
        auth=Authenticator(settings, allow_open=allow_open),
        slots=StreamSlots(settings.max_streams_per_owner),
        tools=ToolCatalogue(runtime.workers),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_runtime:
            try:
                await runtime.start()
            except BackendUnavailable as exc:
                # uvicorn would bury this in a traceback: say it plainly, then fail startup.
                log.error("cannot start the API: %s", exc)
                app.state.startup_error = exc
                await runtime.close()
                raise
        hub.start()
        try:
            yield
        finally:
            await hub.close()
            if manage_runtime:
                await runtime.close()

    app = LeanApp(
        title="runrelay",
        version="0.1.0",
        description="Runs whose output streams to clients that drop and come back.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    app.state.api = state
    app.state.startup_error = None
    app.add_exception_handler(RunRelayError, _on_runrelay_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    routers = [runs.router, sessions.router, status.router, tools.router, dead.router]
    for router in (*routers, health.router, dashboard.router):
        app.include_router(router)
    app.include_router(operations.router)
    for router in dialects.ROUTERS:
        app.include_router(router)
    # Outermost last: the access log sees every answer, including a 413 and a preflight.
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.cors_origins:
        # Inside AccessLog, which must stay outermost (it runs detached event streams):
        # a stream's start still passes through here and gets its CORS headers.
        app.add_middleware(Cors, origins=settings.cors_origins)
    app.add_middleware(AccessLog)
    app.serve_durable_streams(state)  # /ds/: the same middleware, not FastAPI's stack
    app.streams = LeanStreams(app, state)  # stream GETs skip the stack above (api.lean)
    return app
