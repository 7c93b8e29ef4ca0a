"""One stream's state machine: replay after the cursor, then live frames from the hub.

Phases: ``retry:`` (and a dialect's `before`; when the hub brings a native stream's
backlog, the line waits to go out in the same write); replay pages until caught up;
live frames from the hub's subscription; ``: ping`` after ``heartbeat_s`` of silence
(never moving the cursor); the end after the terminal event, or at an event boundary
once the connection is older than ``max_connection_s``.

The cursor is the only state that matters. Frames at or below it are skipped; a
frame past ``cursor + 1`` means something was missed (the subscriber overflowed or
joined a follow that was ahead), so the hole is read from the log first. Hence no
loss and no repeat, whatever the hub does.

One task per stream, the request's own: `serve` writes to the server's `send` itself.
While it waits in the live phase the stream is *parked* in ``receive()``, which returns
only when the client leaves; the hub, the heartbeat ticker and the age limit wake it by
cancelling that wait (`wake`: a cancellation it takes back with ``Task.uncancel``, as
``asyncio.timeout`` does). So an idle stream holds one task, its few coroutine frames and
no future, event or async generator of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.types import Message, Receive, Send

from api import metrics, sse
from api.server_assumptions import send_in_one_write
from api.streams import direct_write
from api.streams.format import StreamFormat
from api.streams.heartbeat import heartbeats
from api.tail import Batch, Frame, Replay, Subscription, TailHub
from shared.errors import BackendUnavailable
from shared.models import PAGE_SIZE, TERMINAL_EVENTS, Gap
from shared.settings import Settings

log = logging.getLogger(__name__)


# At most this many events behind: the hub's read brings them (`hub_brings_backlog`).
_HUB_BACKLOG = 32


class _Left(Exception):
    """The client went away (the stream stops where it is)."""


class StreamState:
    """The cursor of one response and the phases that move it; `serve` writes its bytes."""

    __slots__ = (
        "before",
        "cursor",
        "deadline",
        "done",
        "ended",
        "fmt",
        "heartbeat_s",
        "hub",
        "key",
        "last_id",
        "last_sent",
        "lead",
        "loop",
        "opening",
        "parked",
        "receive",
        "retry_ms",
        "send",
        "sub",
        "task",
        "until_terminal",
        "wake_at",
        "woken",
    )

    def __init__(
        self,
        hub: TailHub,
        settings: Settings,
        key: str,
        cursor: int,
        until_terminal: bool,
        fmt: StreamFormat,
        before: bytes = b"",
        last_id: int | None = None,
    ) -> None:
        self.hub = hub
        self.last_id = last_id
        self.key = key
        self.cursor = cursor
        self.until_terminal = until_terminal
        self.fmt = fmt
        self.before = before
        # Bytes that go out at the start of the next write (`_write`, the hub's direct
        # write): the ``retry:`` line, held for the backlog the hub brings.
        self.lead = b""
        # The response's start, when it is to go out with the first bytes (`serve`).
        self.opening: tuple[Send, Message] | None = None
        self.heartbeat_s = settings.heartbeat_s
        self.retry_ms = settings.retry_ms
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + settings.max_connection_s
        self.last_sent = self.loop.time()
        self.done = False  # the terminal event went out
        self.ended = False  # the stream finished by itself (not because the client left)
        self.wake_at = 0.0
        self.sub: Subscription | None = None  # while parked
        self.task: asyncio.Task[object] | None = None
        self.send: Send | None = None  # the server's own (api.server_assumptions.RAW_SEND)
        self.receive: Receive | None = None
        self.parked = False  # waiting in `receive()` for a wake or the client to leave
        self.woken = False  # a wake (a cancellation of the park) is on its way

    def aged(self) -> bool:
        return self.loop.time() >= self.deadline

    async def serve(
        self,
        receive: Receive,
        send: Send,
        on_close: Callable[[], None] | None = None,
        opening: tuple[Send, Message] | None = None,
    ) -> None:
        """Write the stream to `send` until it ends (then end the body) or the client leaves;
        then call `on_close` (a stream slot's release).

        `opening`: the response's start and the `send` it goes through (the app's, under
        its middleware), when not sent yet: it goes out with the stream's first bytes, in
        the same write (`api.server_assumptions.send_in_one_write`).
        """
        self.task = asyncio.current_task()
        self.receive = receive
        self.send = send
        self.opening = opening
        del opening  # held by the stream until its first write, not by this frame
        metrics.OPEN_STREAMS.inc()
        try:
            if self.cursor > 0:
                metrics.RESUMES.inc()
            lead = sse.retry(self.retry_ms) + self.before
            try:
                if not self.hub_brings_backlog():
                    await self._write(lead)
                    await self.replay()
                elif self.before or self.last_id == self.cursor:
                    # A dialect's opening frames (its clients expect them at once), or no
                    # backlog to bring: out now.
                    await self._write(lead)
                else:
                    # Out with the backlog the hub's first read brings: one write, not two
                    # (a connect wave is CPU-bound, and each write is a system call).
                    self.lead = lead
                self.before = b""
                if not (self.done or self.aged()):
                    await self.follow()
            except BackendUnavailable as exc:
                await self._write(self.fmt.error("backend_unavailable", str(exc)))
            self.ended = True
            body, self.lead = self.lead, b""
            await self._open()
            await send({"type": "http.response.body", "body": body, "more_body": False})
        except (_Left, OSError):
            pass  # the client went away (OSError: mid-write)
        except Exception:
            log.exception("event stream failed")
        finally:
            metrics.OPEN_STREAMS.dec()
            self.receive = self.send = self.task = self.opening = None
            if on_close is not None:
                on_close()

    def hub_brings_backlog(self) -> bool:
        """Whether the hub's first read of the log brings what is behind the cursor, so the
        stream subscribes at once instead of reading the log itself.

        Only for a few events (the run record said how many: `last_id`), and only when the
        hub is not already past the cursor (it then reads from there for this stream). A
        connect storm then costs one shared read per hub pass, not one per stream; the
        cursor rules make any other case (a stale record, a trimmed log) exact anyway.
        """
        last = self.last_id
        return (
            last is not None
            and 0 <= last - self.cursor <= _HUB_BACKLOG
            and self.hub.reads_from(self.key, self.cursor)
        )

    async def _write(self, data: bytes) -> None:
        assert self.send is not None
        if self.lead:
            data, self.lead = self.lead + data, b""
        message = {"type": "http.response.body", "body": data, "more_body": True}
        if not self.open_with(message):
            await self._open()
            await self.send(message)
        self.last_sent = self.loop.time()

    def open_with(self, message: Message) -> bool:
        """Send the held response start and `message` now, in one write; False: `message`
        was not sent (nor the start, unless the connection took it alone)."""
        if self.opening is None:
            return False
        assert self.send is not None
        sent = send_in_one_write([self.opening, (self.send, message)], self.send)
        if sent:
            self.opening = None
        return sent == 2

    async def _open(self) -> None:
        """Send the held response start, if any, with an ordinary wait."""
        if self.opening is not None:
            start_send, start = self.opening
            self.opening = None
            await start_send(start)

    def direct(self, batch: Batch) -> bool:
        """The hub's write of `batch` while this stream is parked (api.streams.direct_write)."""
        assert self.send is not None
        return direct_write.write(self, self.send, batch)

    def wake(self) -> None:
        """Resume the parked stream: frames queued, a heartbeat or the age limit due."""
        if self.parked and not self.woken and self.task is not None:
            self.woken = True
            if self.sub is not None:
                self.sub.direct = None  # what arrives until it runs is queued, in order
            self.task.cancel()

    async def read_into(self, parts: list[bytes], upto: int | None = None) -> bool:
        """Append one page of frames after the cursor (up to `upto`); True once caught up."""
        if upto is None and self.fmt.native:
            return await self.replay_into(parts)
        limit = PAGE_SIZE if upto is None else min(PAGE_SIZE, upto - self.cursor)
        if limit <= 0:
            return True
        page = await self.hub.read(self.key, self.cursor, limit)
        gap = page.gap(self.cursor, upto)
        if gap is not None:
            self.report_gap(parts, gap)
        events = page.events if upto is None else [e for e in page.events if e.id <= upto]
        if upto is not None and not events:
            # The rest of the hole is gone (just said so): the live frame follows.
            self.cursor = upto
            return True
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

    async def replay_into(self, parts: list[bytes]) -> bool:
        """`read_into` for the native format catching up: the hub's shared replay page, its
        bytes as they are (up to the terminal event)."""
        caught_up = self.take(await self.hub.replay(self.key, self.cursor, PAGE_SIZE), parts)
        if caught_up and not self.done and not self.hub.reads_from(self.key, self.cursor):
            # The hub has handed out events past this page (a shared page can be up to
            # REPLAY_REUSE_S old): read them now, not when the next event shows the hole.
            fresh = await self.hub.replay(self.key, self.cursor, PAGE_SIZE, reuse=False)
            caught_up = self.take(fresh, parts)
        return caught_up

    def take(self, replay: Replay, parts: list[bytes]) -> bool:
        """Append a replay page's bytes after the cursor; True once caught up."""
        page = replay.page
        gap = page.gap(self.cursor)
        if gap is not None:
            self.report_gap(parts, gap)
        events = page.events
        if events:
            last = len(events) - 1
            if self.until_terminal and replay.terminal_at >= 0:
                last = replay.terminal_at
                self.done = True
            data = replay.data
            parts.append(data if last == len(events) - 1 else data[: replay.ends[last]])
            self.cursor = events[last].id
            metrics.EVENTS_SENT.inc(last + 1)
        return self.done or len(events) < PAGE_SIZE or self.cursor >= page.last_id

    def report_gap(self, parts: list[bytes], gap: Gap) -> None:
        parts.append(self.fmt.gap(gap.first, gap.last))
        metrics.GAPS.inc()

    async def replay(self) -> None:
        """Pages from the log until caught up (or ended, or aged out at a boundary)."""
        while True:
            parts: list[bytes] = []
            caught_up = await self.read_into(parts)
            if parts:
                await self._write(b"".join(parts))
            if caught_up or self.done or self.aged():
                return

    async def follow(self) -> None:
        hub = self.hub
        sub = await hub.subscribe(
            self.key, self.cursor, until_terminal=self.until_terminal, backlog=self.last_id or 0
        )
        try:
            while True:
                if sub.overflowed:
                    # Too slow for the live pace (the hub counted it): read the log at our
                    # own pace, then rejoin.
                    hub.unsubscribe(sub)
                    await self.replay()
                    if self.done or self.aged():
                        return
                    sub = await hub.subscribe(
                        self.key, self.cursor, until_terminal=self.until_terminal
                    )
                    continue
                if not sub.batches:
                    if sub.error is not None:
                        await self._write(self.fmt.error("backend_unavailable", str(sub.error)))
                        return
                    if sub.closed or self.aged():
                        return
                    if await self.idle(sub):
                        await self._write(self.fmt.heartbeat)
                    continue
                chunk = await self.live(sub.take())
                if chunk:
                    await self._write(chunk)
                if self.done or self.aged():
                    return
        finally:
            hub.unsubscribe(sub)

    async def idle(self, sub: Subscription) -> bool:
        """Wait for frames (parked); True when a heartbeat is due instead."""
        due = self.last_sent + self.heartbeat_s
        wake_at = min(due, self.deadline)
        if self.loop.time() < wake_at:
            self.wake_at = wake_at
            self.sub = sub
            beats = heartbeats(self.loop)
            beats.add(self)
            sub.waker = self.wake
            if self.fmt.native:  # only the hub's own bytes can go out as they are
                sub.direct = self.direct
            # Parked: until a `wake` (returns) or the client leaves (raises `_Left`).
            assert self.receive is not None and self.task is not None
            self.parked = True
            try:
                while (await self.receive())["type"] != "http.disconnect":
                    pass  # the request's (empty) body: nothing to read
                raise _Left
            except asyncio.CancelledError:
                # Ours (`wake`) unless someone else cancelled the task too: then theirs wins.
                if not self.woken or self.task.uncancel() > 0:
                    raise
            finally:
                self.parked = self.woken = False
                sub.waker = sub.direct = self.sub = None
                beats.discard(self)
            if sub.batches or sub.overflowed or sub.closed:
                return False
            due = self.last_sent + self.heartbeat_s  # a direct write may have gone out meanwhile
        return self.loop.time() >= due and not self.aged()

    async def live(self, batches: list[Batch]) -> bytes:
        # Everything queued goes out as one chunk: one write for a burst.
        parts: list[bytes] = []
        sent = 0
        native = self.fmt.native
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
