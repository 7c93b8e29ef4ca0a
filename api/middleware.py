"""ASGI middleware: bounded request bodies (413), an access log that redacts tokens, and
the options of Starlette's CORS middleware."""

from __future__ import annotations

import logging
import time
from typing import Protocol
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.server_assumptions import DETACH, RAW_SEND

access_log = logging.getLogger("runrelay.api.access")

_REDACTED = "REDACTED"

# What a browser page on another origin sends: the token, a retry-safe create, a resumed
# stream (a fetch-based SSE client sends Last-Event-ID itself), JSON bodies.
CORS_REQUEST_HEADERS = ["Authorization", "Idempotency-Key", "Last-Event-ID", "Content-Type"]
# What it reads beyond the safelisted ones: the AI SDK checks the chat stream's marker;
# a 401 says how to authenticate.
CORS_EXPOSED_HEADERS = ["x-vercel-ai-ui-message-stream", "WWW-Authenticate"]


class Cors(CORSMiddleware):
    """Starlette's CORS middleware, configured for bearer tokens (never cookies)."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            # Credentials are headers or ?access_token=, never cookies: a `*` stays safe.
            allow_credentials=False,
            max_age=600,
        )


def _error_body(status: int, code: str, message: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": {"code": code, "message": message}})


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse bodies over `limit` bytes: by Content-Length up front, else by counting.

    When a streamed body goes over, the app is told the client left (so it stops
    reading) and whatever it answers is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body larger than {self.limit} bytes (RUNRELAY_MAX_BODY_BYTES)"
        length: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = 0
                if length > self.limit:
                    await _send_json(send, *_error_body(413, "payload_too_large", message))
                    return
            elif name == b"transfer-encoding":
                chunked = True
        if length is not None and not chunked:
            # The server reads exactly the declared length, which is within the limit.
            await self.app(scope, receive, send)
            return
        seen = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.disconnect"}
            return msg

        async def guarded_send(msg: Message) -> None:
            nonlocal started
            if over:
                return  # the 413 goes out instead
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _send_json(send, *_error_body(413, "payload_too_large", message))


def redacted_query(query: bytes) -> str:
    """The query string with any ``access_token`` value replaced: tokens never reach logs."""
    if not query:
        return ""
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    return urlencode([(k, _REDACTED if k == "access_token" else v) for k, v in pairs])


def log_access(scope: Scope, status: int, started: float) -> None:
    """The access log's line for a request that started at `started` (``perf_counter``)."""
    query = redacted_query(scope.get("query_string", b""))
    path = scope["path"] + (f"?{query}" if query else "")
    client = scope.get("client")
    access_log.info(
        '%s "%s %s" %d %.1fms',
        f"{client[0]}:{client[1]}" if client else "-",
        scope["method"],
        path,
        status,
        (time.perf_counter() - started) * 1000,
    )


class Detached(Protocol):
    """A response that finishes after the app returns (an event stream's long phase)."""

    async def serve(self, receive: Receive, send: Send) -> None: ...

    def abandon(self) -> None: ...


class AccessLog:
    """One line per request: method, path, redacted query, status, duration.

    Being outermost, it also runs detached responses (api.server_assumptions.DETACH): an
    event stream sends its start through the app, hands itself over here and returns, so
    the app's frames are freed while the stream stays open for minutes.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Event streams write their bodies here directly (api.server_assumptions.RAW_SEND).
        scope[RAW_SEND] = send
        detached: list[Detached] = []
        scope[DETACH] = detached.append
        if not access_log.isEnabledFor(logging.INFO):
            await self._run(scope, receive, send, send, detached)
            return
        started = time.perf_counter()
        status = 0

        async def record_send(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self._run(scope, receive, record_send, send, detached)
        finally:
            log_access(scope, status, started)

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, raw_send: Send, detached: list[Detached]
    ) -> None:
        own = tuple(scope)  # (a set of ~15 keys is 1.2 KB, held by every request in flight)
        try:
            await self.app(scope, receive, send)
        except BaseException:
            for response in detached:
                response.abandon()
            raise
        if detached:
            # What the framework left in the scope (its exit stacks, route, telemetry) is
            # done with; the scope itself lives as long as the connection.
            for key in [k for k in scope if k not in own]:
                del scope[key]
        del own  # this frame lives as long as the stream
        for response in detached:
            await response.serve(receive, raw_send)
