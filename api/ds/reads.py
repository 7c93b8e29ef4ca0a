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
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.ds import protocol
from api.server_assumptions import DETACH, RAW_SEND
from api.streams.heartbeat import heartbeats
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

    __slots__ = ("chunk", "future", "sse", "tick")

    def __init__(self, future: asyncio.Future[View | None]) -> None:
        self.tick = next(_TICKS)
        self.future = future
        self.sse: bytes | None = None  # its messages as SSE data events, encoded once
        # The last SSE write made of it, data + control, for the next reader whose control
        # says the same: (offset, cursor, up to date, closed) -> bytes.
        self.chunk: tuple[tuple[int, str, bool, bool], bytes] | None = None


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


class _Parked:
    """A reader waiting in the server's ``receive()``: `wake` (news, or its time is up)
    resumes it by cancelling that wait, taken back with ``Task.uncancel`` as
    ``asyncio.timeout`` does (api.server_assumptions, point 3). Its time is kept by the
    loop's ticker (api.streams.heartbeat), not a timer of its own."""

    __slots__ = ("heartbeat_s", "task", "wake_at", "woken")

    def __init__(self, task: asyncio.Task[object], wake_at: float, heartbeat_s: float) -> None:
        self.task = task
        self.wake_at = wake_at
        self.heartbeat_s = heartbeat_s
        self.woken = False

    def wake(self) -> None:
        if not self.woken:
            self.woken = True
            self.task.cancel()


# The ticker wakes a parked reader up to a quarter of this late (and at most 1 s).
_TICK_S = 4.0


async def _park(sub: Subscription, receive: Receive, within_s: float) -> bool:
    """Wait for news of `sub`, or about `within_s` (up to 1 s more); False once the client
    has left.

    An idle reader so holds its subscription, its place in the ticker and this frame: no
    task, future, timer or async generator of its own (``asyncio.wait_for`` made a task
    and two futures). `api.streams.state.StreamState.idle` parks the same way, inline in
    its own frame: a helper both called would be one more coroutine frame per idle
    stream."""
    if sub.batches or sub.overflowed or sub.closed:
        return True
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    parked = _Parked(task, loop.time() + within_s, max(0.04, min(_TICK_S, within_s)))
    sub.waker = parked.wake
    ticker = heartbeats(loop)
    ticker.add(parked)
    left = False
    try:
        while (await receive())["type"] != "http.disconnect":
            pass  # the request's (empty) body: nothing to read
        left = True
    except asyncio.CancelledError:
        # Ours (`wake`) unless someone else cancelled the task too: then theirs wins.
        if not parked.woken or task.uncancel() > 0:
            raise
    finally:
        ticker.discard(parked)
        sub.waker = None
    if left and parked.woken:
        # Woken as the client left: the wake's cancellation is still on its way.
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            if task.uncancel() > 0:
                raise
    return not left


async def _wait(
    hub: TailHub, source: Source, sub: Subscription, after: int, within_s: float, receive: Receive
) -> tuple[Subscription, News] | None:
    """Wait for news of the source (or `within_s`); the subscription to keep using, and
    what the next read must include. None: the client has left."""
    if not await _park(sub, receive, within_s):
        return None
    # The frames only say "news": the reader reads from its own offset.
    told = max((batch.last for batch in sub.take()), default=0)
    if sub.overflowed or sub.closed:
        hub.unsubscribe(sub)
        sub, since = await _subscribe(hub, source, after)
        return sub, News(since=since)
    return sub, News(told=told, seen=next(_TICKS))


async def long_poll(
    hub: TailHub,
    source: Source,
    after: int,
    timeout_s: float,
    receive: Receive,
    first: View | None = None,
) -> View | None:
    """The first view with messages, or the end of a closed stream, or (at timeout, or
    once the client has left) empty.

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
            waited = await _wait(hub, source, sub, after, remaining, receive)
            if waited is None:
                return view  # nobody to answer: the (empty) view will do
            sub, news = waited
    finally:
        hub.unsubscribe(sub)


class SSE(Response):
    """A ``live=sse`` response: its start through the middleware (the access log has the
    status, CORS its headers), then `serve` writes the events to the server's `send` once
    the handler's frames are gone (api.server_assumptions.DETACH) — an idle SSE reader
    holds this object, its subscription, its place in the ticker and `serve`'s frames."""

    def __init__(
        self,
        raw_headers: list[tuple[bytes, bytes]],
        hub: TailHub,
        source: Source,
        after: int,
        client_cursor: str | None,
        max_s: float,
    ) -> None:
        # Not Response.__init__: no body, no header list of its own to build.
        self.status_code = 200
        self.background = None
        self.raw_headers = raw_headers
        self._args = (hub, source, after, client_cursor, max_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": list(self.raw_headers)}
        await send(start)
        detach = scope.get(DETACH)
        if detach is not None:
            detach(self)  # `serve` runs in AccessLog once the handler returns
            return
        await self.serve(receive, scope.get(RAW_SEND, send))

    def abandon(self) -> None:
        """The app failed after detaching: nothing was subscribed yet."""

    async def serve(self, receive: Receive, send: Send) -> None:
        try:
            await sse(*self._args, receive, send)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write


async def sse(
    hub: TailHub,
    source: Source,
    after: int,
    client_cursor: str | None,
    max_s: float,
    receive: Receive,
    send: Send,
) -> None:
    """``data`` + ``control`` events from `after` on, written to `send`; returns when the
    stream is closed, gone, after `max_s` (the client reconnects from the last control's
    offset) or once the client has left."""
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
                # Readers of one read mostly write the same pair: it is built once.
                said = (after, cursor, view.at_end, ended)
                chunk = read.chunk
                if chunk is None or chunk[0] != said:
                    control = protocol.sse_control(
                        after, cursor, up_to_date=view.at_end, closed=ended
                    )
                    chunk = read.chunk = (said, data + control)
                await send({"type": "http.response.body", "body": chunk[1], "more_body": True})
                announced = True
            if ended:
                return
            if not view.at_end:
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            waited = await _wait(hub, source, sub, after, remaining, receive)
            if waited is None:
                return
            sub, news = waited
    finally:
        hub.unsubscribe(sub)
