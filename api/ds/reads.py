"""Reading a Durable Stream: catch-up, long-poll and SSE over any `Source`.

A `Source` is what a GET reads: an owned stream of the `StreamStore`, or a run's
(or session's) log served read-only. Live reads ride the process's tail hub: the
hub only says "this log has news"; each reader then reads from its own offset, so
nothing depends on timing and a reader that joins during an append misses nothing
(it subscribes before it reads).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from api.ds import protocol
from api.tail import Subscription, TailHub

CHUNK_BYTES = 1 << 20
CHUNK_MESSAGES = 1000


@dataclass(frozen=True, slots=True)
class View:
    """What a source holds after an offset: some messages, and where it ends."""

    messages: list[bytes]
    last: int  # sequence number of the last message returned (the offset if none)
    tail: int
    closed: bool  # the stream is closed (and so ends at `tail`)

    @property
    def at_end(self) -> bool:
        return self.last >= self.tail


@dataclass(frozen=True, slots=True)
class Source:
    content_type: str
    hub_key: str
    tail: int
    # after -> the next page (None: the stream is gone); raises ProtocolError (410).
    page: Callable[[int], Awaitable[View | None]]


def cut(messages: list[tuple[int, bytes]], after: int, tail: int, closed: bool) -> View:
    """Messages (seq, bytes) after `after`, cut to one response's worth."""
    out: list[bytes] = []
    last = after
    size = 0
    for seq, data in messages:
        if out and size + len(data) > CHUNK_BYTES:
            break
        out.append(data)
        size += len(data)
        last = seq
    return View(out, last, tail, closed)


async def _subscribe(hub: TailHub, source: Source, after: int) -> Subscription:
    return await hub.subscribe(source.hub_key, after, until_terminal=False)


async def _wait(
    hub: TailHub, source: Source, sub: Subscription, after: int, within_s: float
) -> Subscription:
    """Wait for news of the source (or `within_s`); the subscription to keep using."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(sub.wait(), within_s)
    sub.take()  # the frames only say "news": the reader reads from its own offset
    if sub.overflowed or sub.closed:
        hub.unsubscribe(sub)
        sub = await _subscribe(hub, source, after)
    return sub


async def long_poll(
    hub: TailHub, source: Source, after: int, timeout_s: float, first: View | None = None
) -> View | None:
    """The first view with messages, or the end of a closed stream, or (at timeout) empty.

    `first`: the page after `after`, already read (it is read again once subscribed)."""
    view = first if first is not None else await source.page(after)
    if view is None or view.messages or view.closed:
        return view
    sub = await _subscribe(hub, source, after)
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            # Read again now that the hub listens: an append made meanwhile is not missed.
            view = await source.page(after)
            if view is None or view.messages or view.closed:
                return view
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return view
            sub = await _wait(hub, source, sub, after, remaining)
    finally:
        hub.unsubscribe(sub)


async def sse(
    hub: TailHub, source: Source, after: int, client_cursor: str | None, max_s: float
) -> AsyncIterator[bytes]:
    """``data`` + ``control`` events from `after` on; ends when the stream is closed, gone,
    or after `max_s` (the client reconnects from the last control's offset)."""
    sub = await _subscribe(hub, source, after)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s
    announced = False
    try:
        while True:
            view = await source.page(after)
            if view is None:
                return
            cursor = protocol.cursor(client_cursor)
            ended = view.closed and view.at_end
            data = b""
            if view.messages:
                data = protocol.sse_data(source.content_type, view.messages)
                after = view.last
            if view.messages or not announced or ended:
                # One write for the pair: a reader never sees data without its control.
                yield data + protocol.sse_control(
                    after, cursor, up_to_date=view.at_end, closed=ended
                )
                announced = True
            if ended:
                return
            if not view.at_end:
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            sub = await _wait(hub, source, sub, after, remaining)
    finally:
        hub.unsubscribe(sub)
