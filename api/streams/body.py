"""The body of an event-stream response: what the response needs of a stream.

    body = event_stream(hub, settings, key, cursor, until_terminal=True)
    return EventStreamResponse(body, on_close=release)

`StreamState` is the one implementation; the response sees it as a `StreamBody`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from starlette.types import Message, Receive, Send

from api.streams.format import NATIVE, StreamFormat
from api.streams.state import StreamState
from api.tail import TailHub
from shared.settings import Settings


class StreamBody(Protocol):
    """What `api.streams.response.EventStreamResponse` needs of a stream's body."""

    @property
    def ended(self) -> bool:
        """True once the stream ended by itself (terminal event, age, error, shutdown)."""

    async def serve(
        self,
        receive: Receive,
        send: Send,
        on_close: Callable[[], None] | None = None,
        opening: tuple[Send, Message] | None = None,
    ) -> None:
        """Write the body to `send` (the server's own) until it ends or the client leaves,
        then call `on_close`; an unexpected error is logged, not raised. `opening`: the
        response's start, not sent yet, and the `send` it goes through: it goes out with
        the first bytes."""


def event_stream(
    hub: TailHub,
    settings: Settings,
    key: str,
    cursor: int,
    *,
    until_terminal: bool,
    fmt: StreamFormat = NATIVE,
    before: bytes = b"",
    last_id: int | None = None,
) -> StreamState:
    """The bytes of one SSE response over log `key` from `cursor` (see `api.streams`).

    `before` goes out once, right after the ``retry:`` line (a dialect's opening frames).
    `last_id`: the log's last id as a record read just before said (a run's).
    """
    return StreamState(hub, settings, key, cursor, until_terminal, fmt, before, last_id)
