"""Reading a Durable Stream: catch-up, long-poll and SSE over any `Source`.

A `Source` is what a GET reads: an owned stream of the `StreamStore`, or a run's
(or session's) log served read-only. Live reads ride the process's tail hub: the
hub only says "this log has news"; each reader then reads from its own offset, so
nothing depends on timing and a reader that joins during an append misses nothing
(it subscribes before it reads).

Readers of one source at one offset share one read and its SSE encoding (`page`):
1,000 live readers woken by one append cost one store read and one encoding, not
1,000 of each. Sharing never loses an append: a reader just subscribed joins only a
read that started after it subscribed (appends after that wake it); a woken reader
knows the last id it was told of, and a shared page that ends before that id is read
again, fresh (the hub tells of an event only once it is stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

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


_TICKS = itertools.count(1)  # orders reads and news taken, process-wide


class _Read:
    """One store read of a source at an offset, shared by the readers that join it."""

    __slots__ = ("future", "sse", "tick")

    def __init__(self, future: asyncio.Future[View | None]) -> None:
        self.tick = next(_TICKS)
        self.future = future
        self.sse: bytes | None = None  # its messages as SSE data events, encoded once


_reads: dict[tuple[int, str, int], _Read] = {}


def _landed(key: tuple[int, str, int], read: _Read, done: asyncio.Future[View | None]) -> None:
    if _reads.get(key) is read:
        del _reads[key]
    if not done.cancelled():
        done.exception()  # retrieved: every reader may have gone


class News(NamedTuple):
    """What a reader knows when it reads: see `page`."""

    since: int = 0
    told: int = 0
    seen: int = 0


NO_NEWS = News()


async def page(
    hub: TailHub, source: Source, after: int, news: News | None = None
) -> tuple[View | None, _Read]:
    """`source.page(after)`, shared with the readers asking the same meanwhile.

    `news.since`: join only a read started after this tick (0: any read in flight).
    `news.told`, `news.seen`: the last id the hub told the caller of, and the tick it took that
    news at; a page ending before `told` started before the news, so it is read again
    by a read started after `seen` (the readers woken together share that one too)."""
    since, told, seen = news or NO_NEWS
    key = (id(hub), source.hub_key, after)
    read = _reads.get(key)
    if read is None or read.tick <= since:
        read = _start(key, source, after)
    # Shielded: one reader going away must not cancel the read the others wait for.
    view = await asyncio.shield(read.future)
    if view is not None and view.tail < told:
        read = _reads.get(key) or _start(key, source, after)
        if read.tick <= seen:
            read = _start(key, source, after)
        view = await asyncio.shield(read.future)
    return view, read


def _start(key: tuple[int, str, int], source: Source, after: int) -> _Read:
    read = _Read(asyncio.ensure_future(source.page(after)))
    _reads[key] = read
    read.future.add_done_callback(lambda done: _landed(key, read, done))
    return read


async def _subscribe(hub: TailHub, source: Source, after: int) -> tuple[Subscription, int]:
    sub = await hub.subscribe(source.hub_key, after, until_terminal=False)
    return sub, next(_TICKS)


async def _wait(
    hub: TailHub, source: Source, sub: Subscription, after: int, within_s: float
) -> tuple[Subscription, News]:
    """Wait for news of the source (or `within_s`); the subscription to keep using, and
    what the next read must include."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(sub.wait(), within_s)
    # The frames only say "news": the reader reads from its own offset.
    told = max((batch.last for batch in sub.take()), default=0)
    if sub.overflowed or sub.closed:
        hub.unsubscribe(sub)
        sub, since = await _subscribe(hub, source, after)
        return sub, News(since=since)
    return sub, News(told=told, seen=next(_TICKS))


async def long_poll(
    hub: TailHub, source: Source, after: int, timeout_s: float, first: View | None = None
) -> View | None:
    """The first view with messages, or the end of a closed stream, or (at timeout) empty.

    `first`: the page after `after`, already read (it is read again once subscribed)."""
    view = first if first is not None else (await page(hub, source, after))[0]
    if view is None or view.messages or view.closed:
        return view
    sub, since = await _subscribe(hub, source, after)
    news = News(since=since)
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            # Read again now that the hub listens: an append made meanwhile is not missed.
            view = (await page(hub, source, after, news))[0]
            if view is None or view.messages or view.closed:
                return view
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return view
            sub, news = await _wait(hub, source, sub, after, remaining)
    finally:
        hub.unsubscribe(sub)


async def sse(
    hub: TailHub, source: Source, after: int, client_cursor: str | None, max_s: float
) -> AsyncIterator[bytes]:
    """``data`` + ``control`` events from `after` on; ends when the stream is closed, gone,
    or after `max_s` (the client reconnects from the last control's offset)."""
    sub, since = await _subscribe(hub, source, after)
    news = News(since=since)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_s
    announced = False
    try:
        while True:
            view, read = await page(hub, source, after, news)
            if view is None:
                return
            cursor = protocol.cursor(client_cursor)
            ended = view.closed and view.at_end
            data = b""
            if view.messages:
                if read.sse is None:
                    read.sse = protocol.sse_data(source.content_type, view.messages)
                data = read.sse
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
            sub, news = await _wait(hub, source, sub, after, remaining)
    finally:
        hub.unsubscribe(sub)
