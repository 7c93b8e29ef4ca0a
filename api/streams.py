"""The resumable stream: replay after a cursor, then live frames from the hub, to the end.

    body = event_stream(log, hub, settings, key, cursor, until_terminal=True)
    return EventStreamResponse(body, on_close=slot.release)

Order of a response: ``retry:``; a ``stream.gap`` frame if the cursor is older than
what the log keeps; replay pages; live frames; ``: ping`` after ``heartbeat_s`` of
silence (never moving the cursor); the end after the terminal event, or at an event
boundary once the connection is older than ``max_connection_s``.

The cursor is the only state that matters. Frames at or below it are skipped; a
frame past ``cursor + 1`` means something was missed (the subscriber overflowed or
joined a follow that was ahead), so the hole is read from the log first. Hence no
loss and no repeat, whatever the hub does. Dialects reuse all of this with their
own `StreamFormat` (a framer from `StoredEvent` to bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from api import metrics, sse
from api.errors import TooManyStreams
from api.tail import Batch, Frame, Subscription, TailHub
from shared.errors import BackendUnavailable
from shared.eventlog.base import EventLog
from shared.models import TERMINAL_EVENTS, StoredEvent
from shared.settings import Settings

PAGE = 500
RAW_SEND = "runrelay.send"  # scope key: the server's own `send`, set by AccessLog
DETACH = "runrelay.detach"  # scope key: where a stream hands over its long phase (AccessLog)
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """How events become bytes. ``framer=None`` is the native format (the hub's bytes)."""

    framer: Callable[[StoredEvent], bytes] | None = None
    gap: Callable[[int, int], bytes] = sse.gap
    error: Callable[[str, str], bytes] = sse.error
    heartbeat: bytes = sse.PING
    media_type: str = sse.EVENT_STREAM

    def replayed(self, event: StoredEvent) -> bytes:
        if self.framer is not None:
            return self.framer(event)
        return sse.frame(event.id, event.type, event.json)

    def live(self, frame: Frame) -> bytes:
        return frame.data if self.framer is None else self.framer(frame.event)


NATIVE = StreamFormat()


class _Stream:
    def __init__(
        self,
        log: EventLog,
        hub: TailHub,
        settings: Settings,
        key: str,
        cursor: int,
        until_terminal: bool,
        fmt: StreamFormat,
    ) -> None:
        self.log = log
        self.hub = hub
        self.key = key
        self.cursor = cursor
        self.until_terminal = until_terminal
        self.fmt = fmt
        self.heartbeat_s = settings.heartbeat_s
        self.retry_ms = settings.retry_ms
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + settings.max_connection_s
        self.last_sent = self.loop.time()
        self.done = False
        self.wake_at = 0.0
        self.sub: Subscription | None = None
        self.send: Send | None = None  # the server's own, for `write_now`

    def aged(self) -> bool:
        return self.loop.time() >= self.deadline

    async def read_into(self, parts: list[bytes], upto: int | None = None) -> bool:
        """Append one page of frames after the cursor (up to `upto`); True once caught up."""
        limit = PAGE if upto is None else min(PAGE, upto - self.cursor)
        if limit <= 0:
            return True
        page = await self.hub.read(self.key, self.cursor, limit)
        events = page.events if upto is None else [e for e in page.events if e.id <= upto]
        if upto is not None and not events:
            # The rest of the hole is gone from the log: say so, and the live frame follows.
            self.report_gap(parts, upto)
            self.cursor = upto
            return True
        if events and events[0].id > self.cursor + 1:
            self.report_gap(parts, events[0].id - 1)
        sent = 0
        for event in events:
            parts.append(self.fmt.replayed(event))
            sent += 1
            self.cursor = event.id
            if self.until_terminal and event.type in TERMINAL_EVENTS:
                self.done = True
                break
        metrics.EVENTS_SENT.inc(sent)
        caught_up = upto is not None and self.cursor >= upto
        # At the log's last id the page was the rest: no second read just to see it empty.
        return caught_up or self.done or len(page.events) < limit or self.cursor >= page.last_id

    def report_gap(self, parts: list[bytes], last_missing: int) -> None:
        parts.append(self.fmt.gap(self.cursor + 1, last_missing))
        metrics.GAPS.inc()

    async def replay(self) -> AsyncIterator[bytes]:
        """Pages from the log until caught up (or ended, or aged out at a boundary)."""
        while True:
            parts: list[bytes] = []
            caught_up = await self.read_into(parts)
            if parts:
                self.last_sent = self.loop.time()
                yield b"".join(parts)
            if caught_up or self.done or self.aged():
                return

    async def run(self) -> AsyncIterator[bytes]:
        metrics.OPEN_STREAMS.inc()
        try:
            yield sse.retry(self.retry_ms)
            if self.cursor > 0:
                metrics.RESUMES.inc()
            async for chunk in self.replay():
                yield chunk
            if self.done or self.aged():
                return
            async for chunk in self.follow():
                yield chunk
        except BackendUnavailable as exc:
            yield self.fmt.error("backend_unavailable", str(exc))
        finally:
            metrics.OPEN_STREAMS.dec()

    async def follow(self) -> AsyncIterator[bytes]:
        sub = await self.hub.subscribe(self.key, self.cursor, until_terminal=self.until_terminal)
        try:
            while True:
                if sub.overflowed:
                    # Too slow for the live pace (the hub counted it): read the log at our
                    # own pace, then rejoin.
                    self.hub.unsubscribe(sub)
                    async for chunk in self.replay():
                        yield chunk
                    if self.done or self.aged():
                        return
                    sub = await self.hub.subscribe(
                        self.key, self.cursor, until_terminal=self.until_terminal
                    )
                    continue
                if not sub.batches:
                    if sub.error is not None:
                        yield self.fmt.error("backend_unavailable", str(sub.error))
                        return
                    if sub.closed or self.aged():
                        return
                    quiet = await self.idle(sub)
                    if quiet:
                        self.last_sent = self.loop.time()
                        yield self.fmt.heartbeat
                    continue
                chunk = await self.live(sub.take())
                if chunk:
                    self.last_sent = self.loop.time()
                    yield chunk
                if self.done or self.aged():
                    return
        finally:
            self.sub = None
            self.hub.unsubscribe(sub)

    async def idle(self, sub: Subscription) -> bool:
        """Wait for frames; True when a heartbeat is due instead."""
        due = self.last_sent + self.heartbeat_s
        wake_at = min(due, self.deadline)
        if self.loop.time() < wake_at:
            self.wake_at = wake_at
            self.sub = sub
            beats = _heartbeats(self.loop)
            beats.add(self)
            if self.send is not None:
                sub.direct = self.write_now
            try:
                await sub.wait()
            finally:
                sub.direct = None
                beats.discard(self)
            if sub.batches or sub.overflowed or sub.closed:
                return False
            due = self.last_sent + self.heartbeat_s  # `write_now` may have written meanwhile
        return self.loop.time() >= due and not self.aged()

    def write_now(self, batch: Batch) -> bool:
        """Write a batch from the hub's loop while this stream is parked; False: queue it.

        Only the plain case: native format, right after the cursor, no terminal event,
        not aged out, and the connection takes it without waiting (the server's `send`
        completes without suspending unless the client's buffer is full; then the
        attempt is dropped before anything was written and the stream's task takes over,
        so a slow client still falls back to the log).
        """
        if (
            self.send is None
            or self.fmt.framer is not None
            or batch.first != self.cursor + 1
            or not batch.contiguous
            or batch.terminal_at >= 0
            or self.aged()
        ):
            return False
        message = {"type": "http.response.body", "body": batch.data, "more_body": True}
        step = self.send(message).__await__()
        try:
            step.send(None)
        except StopIteration:
            pass
        except Exception:
            return False  # the task's own write will meet (and report) the same
        else:
            step.close()  # it would wait for the client to drain
            return False
        self.cursor = batch.last
        self.last_sent = self.loop.time()
        self.wake_at = min(self.last_sent + self.heartbeat_s, self.deadline)
        metrics.EVENTS_SENT.inc(len(batch.frames))
        return True

    def wake(self) -> None:
        if self.sub is not None:
            self.sub.wake()

    async def live(self, batches: list[Batch]) -> bytes:
        # Everything queued goes out as one chunk: one write for a burst.
        parts: list[bytes] = []
        sent = 0
        native = self.fmt.framer is None
        for batch in batches:
            if (
                native
                and batch.first == self.cursor + 1
                and batch.contiguous
                and (not self.until_terminal or batch.terminal_at in (-1, len(batch.frames) - 1))
            ):
                # The common case: the hub's bytes for the whole batch, as they are.
                parts.append(batch.data)
                sent += len(batch.frames)
                self.cursor = batch.last
                self.done = self.until_terminal and batch.terminal_at >= 0
            else:
                sent += await self.live_frames(batch.frames, parts)
            if self.done:
                break
        metrics.EVENTS_SENT.inc(sent)
        return b"".join(parts)

    async def live_frames(self, frames: list[Frame], parts: list[bytes]) -> int:
        """Frame by frame: skip what the cursor has seen, fill holes from the log first."""
        sent = 0
        for frame in frames:
            event_id = frame.event.id
            if event_id <= self.cursor:
                continue
            while event_id > self.cursor + 1 and not self.done:
                if await self.read_into(parts, upto=event_id - 1):
                    break
            if self.done:
                break
            parts.append(self.fmt.live(frame))
            sent += 1
            self.cursor = event_id
            if self.until_terminal and frame.event.type in TERMINAL_EVENTS:
                self.done = True
                break
        return sent


class _Heartbeats:
    """One ticker per event loop wakes the waiting streams whose heartbeat (or maximum
    age) is due: no timer per connection, and nothing at all while no stream waits."""

    def __init__(self) -> None:
        self._waiting: dict[_Stream, None] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, stream: _Stream) -> None:
        self._waiting[stream] = None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, stream: _Stream) -> None:
        self._waiting.pop(stream, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                # A quarter of the shortest period (at most 1 s): pings are that late at most.
                period = min(stream.heartbeat_s for stream in self._waiting)
                await asyncio.sleep(min(1.0, period / 4))
                now = loop.time()
                for stream in [s for s in self._waiting if s.wake_at <= now]:
                    stream.wake()
        finally:
            self._task = None


_HEARTBEATS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Heartbeats] = (
    weakref.WeakKeyDictionary()
)


def _heartbeats(loop: asyncio.AbstractEventLoop) -> _Heartbeats:
    beats = _HEARTBEATS.get(loop)
    if beats is None:
        beats = _HEARTBEATS[loop] = _Heartbeats()
    return beats


def event_stream(
    log: EventLog,
    hub: TailHub,
    settings: Settings,
    key: str,
    cursor: int,
    *,
    until_terminal: bool,
    fmt: StreamFormat = NATIVE,
) -> AsyncIterator[bytes]:
    """The bytes of one SSE response over log `key` from `cursor` (see the module doc)."""
    return _Body(_Stream(log, hub, settings, key, cursor, until_terminal, fmt))


class _Body:
    """The stream's bytes as an async iterator that can also be given the server's `send`."""

    __slots__ = ("_gen", "_stream")

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        self._gen = stream.run()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen

    async def __anext__(self) -> bytes:
        return await self._gen.__anext__()

    def bind(self, send: Send) -> None:
        self._stream.send = send

    async def aclose(self) -> None:
        self._stream.send = None
        await self._gen.aclose()  # type: ignore[attr-defined]


class StreamSlots:
    """Open streams per owner, bounded by ``max_streams_per_owner`` (429 beyond)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, owner: str) -> Callable[[], None]:
        """Take a slot; returns the function that gives it back (call it exactly once)."""
        count = self._open.get(owner, 0)
        if count >= self._limit:
            raise TooManyStreams(f"at most {self._limit} open streams per caller")
        self._open[owner] = count + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._open.get(owner, 1) - 1
            if left > 0:
                self._open[owner] = left
            else:
                self._open.pop(owner, None)

        return release


class EventStreamResponse(StreamingResponse):
    """A streaming response that stops at once when the client goes away and then calls
    `on_close` (a stream slot's release), even if the body never started."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
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
            # The long phase runs in the outermost middleware (api.middleware.AccessLog)
            # once the app returns: the routing, dependency and middleware frames this
            # call sits under are freed instead of held by every open stream (~10 KB).
            detach(self)
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
                await self._body.aclose()  # type: ignore[attr-defined]
            self._on_close()

    async def _pump(self, send: Send) -> None:
        bind = getattr(self._body, "bind", None)
        if bind is not None:
            bind(send)  # parked live streams may then be written by the hub directly
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
