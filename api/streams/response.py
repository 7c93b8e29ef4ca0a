"""The ASGI response of an event stream: its start through the app, then its body.

The start goes through the middleware (so the access log has the status and CORS its
headers). Served by `api.lean` (the usual case), the body is then written in the same
task, and the start goes out with its first bytes, in one write. Routed by FastAPI, the
response first hands itself to `AccessLog` (`api.server_assumptions.DETACH`) and
returns, so the routing, dependency and middleware frames are freed while the stream
stays open for minutes.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping

from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from api import sse
from api.server_assumptions import DETACH, RAW_SEND
from api.streams.body import StreamBody


@functools.cache
def _raw_headers(media_type: str, extra: tuple[tuple[str, str], ...]) -> list[tuple[bytes, bytes]]:
    # Starlette's own header rules (charset, lower-case names), once per kind of stream.
    merged = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **dict(extra)}
    return StreamingResponse(iter(()), headers=merged, media_type=media_type).raw_headers


class EventStreamResponse(Response):
    """A streaming response that stops at once when the client goes away and then calls
    `on_close` (a stream slot's release), even if the body never started.

    Its header list is shared by every response of the same kind (the start message gets
    a copy, since middleware may add to it): idle streams are most of a process's
    connections.
    """

    def __init__(
        self,
        body: StreamBody,
        *,
        on_close: Callable[[], None],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str = sse.EVENT_STREAM,
    ) -> None:
        # Not Response.__init__: it would build this response's own header list.
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.raw_headers = _raw_headers(media_type, tuple((headers or {}).items()))
        self._body = body
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.start(send)
        detach = scope.get(DETACH)
        if detach is not None:
            detach(self)  # the long phase runs in AccessLog once the app returns
            return
        await self.serve(receive, scope.get(RAW_SEND, send))

    async def start(self, send: Send) -> None:
        """Send the response's start (through the middleware, so the access log has it)."""
        try:
            await send(self.start_message())
        except BaseException:
            self._on_close()
            raise

    def start_message(self) -> Message:
        return {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": list(self.raw_headers),
        }

    def abandon(self) -> None:
        """The app failed after detaching: the stream never runs, its slot is given back."""
        self._on_close()

    def serve(
        self, receive: Receive, send: Send, start_through: Send | None = None
    ) -> Awaitable[None]:
        """Write the body to `send` (the server's own) until it ends or the client leaves;
        the slot is given back then. The body's own coroutine: no frame of this one.

        `start_through`: the `send` the start has not been sent through yet (the app's);
        it goes out with the body's first bytes, in one write.
        """
        opening = None if start_through is None else (start_through, self.start_message())
        return self._body.serve(receive, send, self._on_close, opening)
