"""The ASGI response of an event stream: the start through the app, the body detached.

The start goes through the middleware (so the access log has the status); then the
response hands itself to `AccessLog` (`api.server_assumptions.DETACH`) and returns, so
the routing, dependency and middleware frames are freed while the stream stays open for
minutes. There the body is written by its own task to the server's `send`, while the
request's task waits for the client to leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from api import sse
from api.server_assumptions import DETACH, RAW_SEND
from api.streams.body import StreamBody

log = logging.getLogger(__name__)


class EventStreamResponse(StreamingResponse):
    """A streaming response that stops at once when the client goes away and then calls
    `on_close` (a stream slot's release), even if the body never started."""

    def __init__(
        self,
        body: StreamBody,
        *,
        on_close: Callable[[], None],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str = sse.EVENT_STREAM,
    ) -> None:
        merged = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
        super().__init__(body, status_code=status_code, headers=merged, media_type=media_type)
        self._body = body
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The start goes through the middleware, so the access log records the status.
        start = {"type": "http.response.start", "status": self.status_code}
        try:
            await send({**start, "headers": self.raw_headers})
        except BaseException:
            self._on_close()
            raise
        detach = scope.get(DETACH)
        if detach is not None:
            detach(self)  # the long phase runs in AccessLog once the app returns
            return
        await self.serve(receive, scope.get(RAW_SEND, send))

    def abandon(self) -> None:
        """The app failed after detaching: the stream never runs, its slot is given back."""
        self._on_close()

    async def serve(self, receive: Receive, send: Send) -> None:
        """Write the body to `send` (the server's own) until it ends or the client leaves."""
        # The body is written by its own task: waking a stream for each event then resumes
        # a few frames only. This task meanwhile waits for the client to leave, so an idle
        # stream lets go at once.
        current = asyncio.current_task()
        assert current is not None
        pump = asyncio.create_task(self._pump(send))
        listening = True

        def pumped(_: asyncio.Task[None]) -> None:
            if listening:
                current.cancel()

        pump.add_done_callback(pumped)
        try:
            await _disconnected(receive)
        except asyncio.CancelledError:
            if not pump.done():
                raise
            current.uncancel()
        finally:
            listening = False
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._body.aclose()
            self._on_close()

    async def _pump(self, send: Send) -> None:
        self._body.bind(send)  # parked live streams may then be written by the hub directly
        try:
            async for chunk in self._body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write
        except Exception:
            log.exception("event stream failed")


async def _disconnected(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return
