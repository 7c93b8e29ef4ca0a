"""What the streams lean on in uvicorn and the app's middleware (api/server_assumptions.py).

Each test fails if an upgrade of uvicorn, Starlette or FastAPI (or a change to
`create_app`) breaks an assumption, before any stream writes half a frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import uvloop
from fastapi import FastAPI
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

from api.app import create_app
from api.middleware import AccessLog
from api.server_assumptions import DETACH, send_if_ready, send_in_one_write
from shared.settings import Settings
from tests.api.conftest import TOKENS_SETTING, build_runtime
from tests.support.http import serve_app

_CHUNK = 64 * 1024
_MAX_CHUNKS = 1024  # far more than loopback's socket buffers hold


class _FillUntilRefused:
    """A detached response that writes chunks with `send_if_ready` until one is refused."""

    def __init__(self) -> None:
        self.outcome: asyncio.Future[tuple[list[bytes], bytes]] = asyncio.Future()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        scope[DETACH](self)  # as api.streams.response does: the rest runs in AccessLog

    async def serve(self, receive: Receive, send: Send) -> None:
        written: list[bytes] = []
        for n in range(_MAX_CHUNKS):
            chunk = b"%08d" % n + b"x" * (_CHUNK - 8)
            if not send_if_ready(send, _body(chunk)):
                self.outcome.set_result((written, chunk))
                break
            written.append(chunk)
        else:
            self.outcome.set_exception(AssertionError("the server never made a write wait"))
        await send(_body(b"end", more=False))  # an ordinary write: waits for the client

    def abandon(self) -> None:
        pass


def _body(data: bytes, *, more: bool = True) -> dict[str, object]:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def _lifespan(receive: Receive, send: Send) -> None:
    """A bare app's lifespan: started at once, stopped when asked."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


def _app(make_settings: Callable[..., Settings]) -> FastAPI:
    return create_app(build_runtime(make_settings(api_tokens=TOKENS_SETTING), "memory", None))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_uvicorn_send_either_writes_at_once_or_waits_before_writing(
    make_settings: Callable[..., Settings], loop: str
) -> None:
    """The direct write's premise: a write that would wait has written nothing yet.

    A client that stops reading fills the socket; the first refused chunk must not
    reach the client, and every accepted one must, once, in order.
    """

    async def scenario() -> None:
        app = _app(make_settings)
        probe = _FillUntilRefused()
        app.router.routes.append(Mount("/probe", app=probe))
        async with (
            serve_app(app) as url,
            httpx.AsyncClient(base_url=url) as http,
            http.stream("GET", "/probe/") as response,
        ):
            async with asyncio.timeout(20):
                written, refused = await probe.outcome  # the client has not read on
            received = await response.aread()
        assert written, "the first write should not have had to wait"
        assert refused[:8] not in received, "a refused write reached the client"
        assert received == b"".join(written) + b"end"

    factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())


def test_access_log_is_the_outermost_middleware(make_settings: Callable[..., Settings]) -> None:
    """A detached stream runs in AccessLog after the app returned, writing to the `send`
    AccessLog was given: no middleware of ours may sit outside it. The framework's own
    (error handling, telemetry, body limit) do, and only await the server's `send`; the
    test above writes through them."""
    layer = _app(make_settings).build_middleware_stack()
    for _ in range(20):
        if type(layer).__module__.split(".")[0] not in {"starlette", "fastapi"}:
            break
        layer = layer.app  # type: ignore[attr-defined]
    assert isinstance(layer, AccessLog), f"outermost of ours: {type(layer).__name__}"


async def test_a_cancelled_receive_still_reports_the_client_leaving() -> None:
    """The parked stream's wake (point 3): cancelling uvicorn's `receive()` loses nothing."""
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()
    seen: asyncio.Future[str] = loop.create_future()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send(_body(b"x"))
        assert (await receive())["type"] == "http.request"  # the (empty) request body
        task = asyncio.current_task()
        assert task is not None
        for _ in range(3):  # woken three times, as a parked stream is
            loop.call_soon(task.cancel)
            try:
                await receive()
            except asyncio.CancelledError:
                assert task.uncancel() == 0
            else:
                seen.set_result("receive returned instead of being cancelled")
                return
        woken.set_result(None)
        seen.set_result((await receive())["type"])

    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as http:
        async with http.stream("GET", "/") as response:
            async for _ in response.aiter_bytes():
                break
            await asyncio.wait_for(woken, 10)
        assert await asyncio.wait_for(seen, 10) == "http.disconnect"


class _CountingTransport:
    """The connection's transport, counting its writes (they still go out)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)


async def test_a_start_and_a_body_go_out_in_one_write() -> None:
    """Point 4: `send_in_one_write` makes one write of a response's start and its first
    bytes, through uvicorn's own `send`, and the client reads them as they were sent."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[tuple[int, int]] = loop.create_future()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        cycle = send.__self__  # type: ignore[attr-defined]
        counting = cycle.transport = _CountingTransport(cycle.transport)
        start = {"type": "http.response.start", "status": 200, "headers": [(b"x-probe", b"1")]}
        sent = send_in_one_write([(send, start), (send, _body(b"first"))], send)
        cycle.transport = counting.transport
        outcome.set_result((sent, counting.writes))
        await send(_body(b"-end", more=False))

    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/")
    assert await outcome == (2, 1)
    assert response.status_code == 200 and response.headers["x-probe"] == "1"
    assert response.content == b"first-end"
