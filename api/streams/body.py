"""The body of an event-stream response: its bytes, plus what the response does with it.

    body = event_stream(hub, settings, key, cursor, until_terminal=True)
    return EventStreamResponse(body, on_close=release)

`EventBody` is the one implementation; the response sees it as a `StreamBody`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from starlette.types import Send

from api.streams.direct_write import DirectWrite
from api.streams.format import NATIVE, StreamFormat
from api.streams.state import StreamState
from api.tail import TailHub
from shared.settings import Settings


class StreamBody(Protocol):
    """What `api.streams.response.EventStreamResponse` needs of a stream's body."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def bind(self, send: Send) -> None:
        """The server's own `send`, which the body may write to directly while it waits."""

    async def aclose(self) -> None:
        """Stop the stream (unsubscribe, count it closed); safe to call more than once."""


class EventBody:
    """The bytes of one stream (`StreamState.run`), bindable to the server's `send`."""

    __slots__ = ("_gen", "_state")

    def __init__(self, state: StreamState) -> None:
        self._state = state
        self._gen: AsyncGenerator[bytes, None] = state.run()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen

    @property
    def ended(self) -> bool:
        """True once the stream ended by itself (terminal event, age, error, shutdown)."""
        return self._state.ended

    def bind(self, send: Send) -> None:
        if self._state.fmt.native:  # only the hub's own bytes can go out as they are
            self._state.direct = DirectWrite(self._state, send).write

    async def aclose(self) -> None:
        self._state.direct = None
        await self._gen.aclose()


def event_stream(
    hub: TailHub,
    settings: Settings,
    key: str,
    cursor: int,
    *,
    until_terminal: bool,
    fmt: StreamFormat = NATIVE,
    before: bytes = b"",
) -> EventBody:
    """The bytes of one SSE response over log `key` from `cursor` (see `api.streams`).

    `before` goes out once, right after the ``retry:`` line (a dialect's opening frames).
    """
    return EventBody(StreamState(hub, settings, key, cursor, until_terminal, fmt, before))
