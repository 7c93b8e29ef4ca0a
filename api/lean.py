"""Event-stream GETs served before FastAPI: no routing, dependency injection or middleware
closures per connection.

    app = LeanApp(...)                      # api.app.create_app
    app.streams = LeanStreams(app, state)

An idle stream is most of what an API process holds, and connecting one cost ~0.9 ms
of CPU in FastAPI's stack (routing, dependencies, six middleware layers, a scope copy,
a response object) against ~0.15 ms for a bare ASGI server (docs/benchmarks.md, "Idle
followers"). So the stream routes of `ROUTES` are recognised here first, and served by
the same functions the FastAPI routes call, with the same answers:

- auth: `Authenticator.owner_of` (header or ``?access_token=``), before anything else;
- errors: the app's own exception handlers (401, 404 before any replay, 400, 429, 503);
- the access log line (`api.middleware.log_access`) and CORS (`api.middleware.Cors`,
  when configured) exactly as the middleware stack writes them;
- the stream itself: `api.streams`, written in this task to the server's `send`.

Whatever is not the plain case goes to FastAPI as before: another method, a request
with a body (the body limits apply there), a query parameter FastAPI validates
(``limit``, a missing ``topic``), a JSON page (``Accept: application/json``), a
``root_path``, or tracing on (its request spans are FastAPI's).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import ApiState
from api.dialects import chat, topics
from api.ds.front import DurableStreamsApp
from api.headers import in_query
from api.middleware import Cors, access_log, log_access
from api.routes import runs, sessions
from api.server_assumptions import RAW_SEND
from api.streams import EventStreamResponse
from shared import tracing

log = logging.getLogger(__name__)

# (state, owner, request, the path's one parameter) -> the answer (a stream, 204, ...)
Open = Callable[[ApiState, str, Request, str], Awaitable[Response]]

_MATCHED = "runrelay.lean"  # scope key: the route this dispatcher matched, until served


def _always(request: Request) -> bool:
    return True


def _run_events_lean(request: Request) -> bool:
    # `limit` only shapes a JSON page, but FastAPI validates it on every request.
    return not in_query(request, "limit") and not runs.wants_json(request)


def _topic_lean(request: Request) -> bool:
    return "topic" in request.query_params  # missing: FastAPI's 422


async def _topic(state: ApiState, owner: str, request: Request, _: str) -> Response:
    return await topics.topic_event_stream(state, owner, request, request.query_params["topic"])


async def _chat_task(state: ApiState, owner: str, request: Request, task_id: str) -> Response:
    last = request.query_params.get("last_message_id")
    return await chat.task_event_stream(state, owner, request, task_id, last)


class Route(NamedTuple):
    path: re.Pattern[str]  # as FastAPI matches it: a parameter is one segment, `[^/]+`
    open: Open
    lean: Callable[[Request], bool]  # False: FastAPI serves this request


ROUTES = (
    Route(re.compile(r"/v1/runs/([^/]+)/events"), runs.run_event_stream, _run_events_lean),
    Route(re.compile(r"/v1/sessions/([^/]+)/events"), sessions.session_event_stream, _always),
    Route(re.compile(r"/api/chat/tasks/([^/]+)/stream"), _chat_task, _always),
    Route(re.compile(r"/stream()"), _topic, _topic_lean),
)
_BODY_HEADERS = (b"content-length", b"transfer-encoding")


class LeanStreams:
    """Recognises the stream GETs of `ROUTES` and serves them (see the module doc)."""

    def __init__(self, app: FastAPI, state: ApiState) -> None:
        self._app = app
        self._state = state
        origins = state.runtime.settings.cors_origins
        # CORS as the middleware stack applies it: the start gets its headers.
        self._core: ASGIApp = Cors(self._serve, origins) if origins else self._serve

    def match(self, scope: Scope) -> bool:
        """Whether this dispatcher serves `scope` (then call it); False: FastAPI does."""
        if scope["method"] != "GET" or scope.get("root_path") or tracing.enabled():
            return False
        path = scope["path"]
        for route in ROUTES:
            found = route.path.fullmatch(path)
            if found is not None:
                break
        else:
            return False
        for name, value in scope["headers"]:
            if name in _BODY_HEADERS and value != b"0":
                return False
        request = Request(scope)
        if not route.lean(request):
            return False
        scope[_MATCHED] = (route.open, found.group(1), request)
        return True

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        scope[RAW_SEND] = send  # the stream writes its body to the server's own `send`
        return self._core(scope, receive, send)  # no frame of this one per idle stream

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        open_, param, request = scope.pop(_MATCHED)
        state = self._state
        failure: Exception | None = None
        try:
            owner = state.auth.owner_of(request)
            response = await open_(state, owner, request, param)
        except Exception as exc:
            response, failure = await self._answer(request, exc)
        del request, open_, param  # only the response and its stream live on
        status = response.status_code
        try:
            if isinstance(response, EventStreamResponse):
                # Only its body's coroutine lives on, so an idle stream holds no frame of
                # the response's own, nor the response. The start goes out with the first
                # bytes, in one write: one system call per connect, not two.
                serving = response.serve(receive, scope[RAW_SEND], start_through=send)
                del response
                await serving
            else:
                await response(scope, receive, send)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                log_access(scope, status, started)
        if failure is not None:
            raise failure  # as Starlette's ServerErrorMiddleware: answered 500, then raised

    async def _answer(self, request: Request, exc: Exception) -> tuple[Response, Exception | None]:
        """The app's own handler's answer to `exc`, and `exc` again if it was unexpected."""
        handlers = self._app.exception_handlers
        for cls in type(exc).__mro__:
            handler = handlers.get(cls)
            if handler is not None:
                answer = handler(request, exc)
                response = await answer if isinstance(answer, Awaitable) else answer
                assert isinstance(response, Response)
                return response, exc if cls is Exception else None
        raise exc


class LeanApp(DurableStreamsApp):
    """The API's app: the stream GETs of `api.lean.ROUTES` served by `streams` first, then
    ``/ds/`` by `api.ds.front`, then everything else by FastAPI."""

    streams: LeanStreams | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streams = self.streams
        if scope["type"] == "http" and streams is not None and streams.match(scope):
            await streams(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
