"""The Durable Streams request path: ``/ds/...`` answered before FastAPI's own stack.

`DurableStreamsApp` is the API's FastAPI app with one difference: a request below
``/ds/`` goes to `api.ds.routes.handle` through the same access log, CORS and body
limit middleware as every other route, but not through FastAPI's routing (the /ds/
catch-all is its last route), dependency solving, exception and telemetry middleware:
by py-spy, two thirds of an append's CPU time before this path existed (issue 15).

Errors keep their semantics (`api.ds.routes.failed`): a `ProtocolError` gets the status
the protocol prescribes; a `RunRelayError` (401, 503) is rendered as on every other
route; anything else is logged and answered 500 like the app's last-resort handler does.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import ApiState
from api.ds import routes
from api.middleware import AccessLog, BodyLimit, Cors

PREFIX = "/ds/"


class DurableStreams:
    """The ASGI app of ``/ds/``: one request, one handler call, one answer."""

    def __init__(self, state: ApiState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await routes.handle(request, self.state)
        except Exception as exc:
            response = routes.failed(exc, scope)
        await response(scope, receive, send)


class DurableStreamsApp(FastAPI):
    """FastAPI, with ``/ds/`` served by `DurableStreams` once `serve_durable_streams` ran."""

    durable_streams: ASGIApp | None = None

    def serve_durable_streams(self, state: ApiState) -> None:
        settings = state.runtime.settings
        app: ASGIApp = BodyLimit(DurableStreams(state), limit=settings.max_body_bytes)
        if settings.cors_origins:
            app = Cors(app, origins=settings.cors_origins)
        self.durable_streams = AccessLog(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ds = self.durable_streams
        if ds is not None and scope["type"] == "http" and scope["path"].startswith(PREFIX):
            scope["app"] = self
            await ds(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
