"""The live tail: one reader per API process fans each new event out to every local subscriber.

    hub = TailHub(log, buffer=settings.subscriber_buffer); hub.start()
    sub = await hub.subscribe(key, cursor, until_terminal=True)
    ... frames = sub.take() ...  # see api.streams.state for the consumer side
    hub.unsubscribe(sub); await hub.close()

One task calls `EventLog.wait` with the cursor of every followed log plus a
private wake key; a log followed for the first time wakes that read so it is
re-issued with the new key. So the process holds one blocking Redis connection
however many clients follow however many runs.

Each event's SSE frame is built once and the same bytes object is handed to
every subscriber of that log. Pushing never blocks: a subscriber whose bounded
buffer would overflow is detached and told so; it then reads the log from its own
cursor and re-subscribes (see `api.streams.state`). The hub's cursor per log is only a
read position — correctness lives in each subscriber, which skips frames at or
below its cursor and fills any hole from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from api import latency, metrics, sse
from shared.errors import BackendUnavailable
from shared.eventlog.base import Cursors, EventLog
from shared.flights import Flights
from shared.models import PAGE_SIZE, TERMINAL_EVENTS, Page, StoredEvent

log = logging.getLogger(__name__)

# A replay page read for one stream is handed to streams asking the same for this long
# after, within this many bytes: a reconnect storm spreads its clients over a second or so.
REPLAY_REUSE_S = 1.0
REPLAY_REUSE_BYTES = 16 << 20

# redis-py's blocking reads must stay well inside any socket timeout, and a short block
# bounds how stale a missed wake-up can make a newly followed log.
BLOCK_S = 1.0
_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 5.0


class Frame(NamedTuple):
    """A stored event and its native SSE frame, built once for all subscribers."""

    event: StoredEvent
    data: bytes


class Batch(NamedTuple):
    """Frames the hub read together for one log, with their native bytes joined once.

    A subscriber whose cursor is right before `first` writes `data` as it is: no
    per-frame work per subscriber in the common case.
    """

    frames: list[Frame]
    data: bytes
    first: int
    last: int
    contiguous: bool  # ids first..last without a hole
    terminal_at: int  # index of the first terminal event, -1 if none

    @classmethod
    def of(cls, frames: list[Frame]) -> Batch:
        first, last = frames[0].event.id, frames[-1].event.id
        terminal_at = first_terminal([f.event for f in frames])
        data = b"".join([f.data for f in frames])
        return cls(frames, data, first, last, last - first == len(frames) - 1, terminal_at)


def first_terminal(events: list[StoredEvent]) -> int:
    """The index of the first terminal event, -1 if none."""
    return next((i for i, e in enumerate(events) if e.type in TERMINAL_EVENTS), -1)


class Replay:
    """A page of the log read once for every stream replaying it, its native frames joined
    once: 1,000 clients resuming a run from one cursor cost one read and one encoding.

    ``data[:ends[i]]`` is the native bytes of events ``0..i``.
    """

    __slots__ = ("data", "ends", "page", "size", "terminal_at")

    def __init__(self, page: Page) -> None:
        self.page = page
        frames = [sse.frame(e.id, e.type, e.json) for e in page.events]
        self.data = b"".join(frames)
        self.ends = list(itertools.accumulate(map(len, frames)))
        self.terminal_at = first_terminal(page.events)
        # What keeping it costs, roughly: the events and their frames, plus a floor, so
        # that many empty pages count against the bound too.
        self.size = 2 * len(self.data) + 1024


class Subscription:
    """One stream's mailbox at the hub. Only the hub pushes; only its stream takes.

    Idle streams are most of a process's connections, so this holds little: a list,
    and while its stream is parked the stream's wake and (native format) direct write.
    """

    __slots__ = (
        "_capacity",
        "_queued",
        "batches",
        "closed",
        "direct",
        "error",
        "key",
        "overflowed",
        "waker",
    )

    def __init__(self, key: str, capacity: int) -> None:
        self.key = key
        self.batches: list[Batch] = []
        self.overflowed = False  # detached by the hub: read the log, then subscribe again
        self.closed = False  # the hub is shutting down: finish what is queued, then end
        self.error: BackendUnavailable | None = None
        self._capacity = capacity  # in frames
        self._queued = 0
        # Set by the stream while it is parked: `waker` resumes it, `direct` writes a batch
        # to its connection at once if it can (api.streams.direct_write).
        self.waker: Callable[[], None] | None = None
        self.direct: Callable[[Batch], bool] | None = None

    def push(self, batch: Batch) -> bool:
        """Queue a batch; False (and detached) when the buffer would overflow."""
        if self.direct is not None and not self.batches and self.direct(batch):
            # Written straight to the connection of a parked stream: no task wake-up,
            # so 1,000 subscribers of a run get an event in one pass of this loop.
            return True
        if self._queued + len(batch.frames) > self._capacity:
            self.overflowed = True
            self.batches = []  # the log has them; the stream re-reads from its cursor
            self._queued = 0
            self.wake()
            return False
        self.batches.append(batch)
        self._queued += len(batch.frames)
        self.wake()
        return True

    def take(self) -> list[Batch]:
        batches, self.batches = self.batches, []
        self._queued = 0
        return batches

    def end(self, error: BackendUnavailable | None = None) -> None:
        self.closed = True
        self.error = error
        self.wake()

    def wake(self) -> None:
        """Resume the stream parked on this subscription (a heartbeat being due does this too)."""
        waker = self.waker
        if waker is not None:
            waker()

    async def wait(self) -> None:
        """Return once frames are queued, the subscription ended, or `wake` is called.

        For a consumer without a connection of its own; a stream parks instead
        (api.streams.state), so an idle stream holds no future of its own.
        """
        if self.batches or self.overflowed or self.closed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def woken() -> None:
            if not waiter.done():
                waiter.set_result(None)

        self.waker = woken
        try:
            await waiter
        finally:
            self.waker = None


class _Follow:
    """One followed log's subscribers (its cursor is `TailHub._cursors`' entry)."""

    __slots__ = ("backlog", "subscribers", "until_terminal")

    def __init__(self, until_terminal: bool, backlog: int) -> None:
        self.until_terminal = until_terminal
        self.subscribers: set[Subscription] = set()
        # Ids up to this were stored before the follow began: a backlog it brings, of any
        # age, whose wait is not the pipeline's latency (api.latency).
        self.backlog = backlog


class TailHub:
    """The process-wide live reader; `start()` in the app's lifespan, `close()` at the end."""

    def __init__(
        self, log: EventLog, *, buffer: int, block_s: float = BLOCK_S, batch: int = PAGE_SIZE
    ) -> None:
        self._log = log
        self._buffer = buffer
        self._block_s = min(block_s, BLOCK_S)
        self._batch = batch
        self._wake_key = log.keys.wakeup(uuid.uuid4().hex)
        self._follows: dict[str, _Follow] = {}
        # Each followed log's cursor (the only copy), and the wake log's: what every read
        # asks for, kept as the follows change. Rebuilt per read it was O(followed) each time, and a
        # wave of 2,000 new streams makes hundreds of reads (14% of a connect storm).
        self._cursors: dict[str, int] = {self._wake_key: 0}
        # What changed since the last read's copy (`Cursors`): the read is O(changes) in
        # the Redis change feed, and a log followed again is read at once.
        self._seq = 0
        self._added: set[str] = set()
        self._removed: set[str] = set()
        self._changes_lost = False  # all follows dropped at once: the next read compares
        self._reads: Flights[tuple[str, int, int], Page] = Flights()
        self._replays: Flights[tuple[str, int, int], Replay] = Flights()
        # Finished replay pages, oldest first: ask -> (reusable until, the page).
        self._recent: OrderedDict[tuple[str, int, int], tuple[float, Replay]] = OrderedDict()
        self._recent_bytes = 0
        self._expiry: asyncio.TimerHandle | None = None
        self._work = asyncio.Event()
        self._in_wait = False
        self._woken = False  # a wake was sent for the read now running
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def followed(self) -> int:
        """How many logs the reader follows now."""
        return len(self._follows)

    @property
    def subscribers(self) -> int:
        return sum(len(f.subscribers) for f in self._follows.values())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="runrelay tail hub")

    def drain(self) -> None:
        """End every stream at its next event boundary (shutdown: clients reconnect elsewhere)."""
        self._closing = True
        for follow in self._follows.values():
            for sub in follow.subscribers:
                sub.end()
        self._unfollow_all()
        self._work.set()

    async def close(self) -> None:
        self.drain()
        if self._expiry is not None:
            self._expiry.cancel()
        self._recent.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def reads_from(self, key: str, cursor: int) -> bool:
        """Whether a subscription to `key` made now gets every event after `cursor` from this
        hub's reads: nobody follows `key` yet (the follow starts there), or its follow is
        not past `cursor`. Not while draining (subscriptions end at once then)."""
        at = self._cursors.get(key)  # a followed log's (the wake key is no log)
        return not self._closing and (at is None or at <= cursor)

    async def subscribe(
        self, key: str, cursor: int, *, until_terminal: bool, backlog: int = 0
    ) -> Subscription:
        """Receive frames of `key` appended after the hub's read position (≈ `cursor`).

        `backlog`: the log's last id as the subscriber last knew it; a follow this starts
        brings the events up to it without timing them (`api.latency`)."""
        sub = Subscription(key, self._buffer)
        if self._closing:
            sub.end()
            return sub
        follow = self._follows.get(key)
        new = follow is None
        if follow is None:
            follow = self._follows[key] = _Follow(until_terminal, backlog)
            self._cursors[key] = cursor
            self._added.add(key)
            self._removed.discard(key)
        follow.subscribers.add(sub)
        self._work.set()
        if new and self._in_wait and not self._woken:
            # The running read does not include this key: make it return and re-issue.
            # One wake per read: the re-issued read takes every key added meanwhile, so
            # 2,000 streams attaching at once cost a few wakes, not 2,000 (each a round trip).
            self._woken = True
            try:
                await self._log.wake(self._wake_key)
            except BackendUnavailable:
                self._woken = False  # the read still returns within BLOCK_S
        return sub

    async def read(self, key: str, after: int, limit: int) -> Page:
        """`EventLog.read`, one Redis read for all streams asking the same at the same time.

        A reconnect storm asks for the same pages many times over (every client of a
        run resuming from about the same place). Only reads in flight are shared, so
        a page is never older than one a stream would have read itself.
        """
        # Shielded (Flights): one stream going away does not cancel the others' read.
        return await self._reads.run((key, after, limit), lambda: self._log.read(key, after, limit))

    async def replay(self, key: str, after: int, limit: int, *, reuse: bool = True) -> Replay:
        """A stream's replay page: shared with every stream asking the same within
        ``REPLAY_REUSE_S`` of its read, and encoded once.

        Unlike `read`, the page may be up to that old. That is safe for a stream
        catching up, never for one filling a hole (which must see what the hub saw): a
        page that ended early only makes the stream follow sooner, and the hub then
        reads from the stream's cursor (its rules fill any hole from the log). `reuse`
        False reads afresh for this caller alone (and keeps that page for the next).
        """
        ask = (key, after, limit)
        if not reuse:  # fresh: read for this caller alone
            return await self._read_replay(ask)
        recent = self._recent.get(ask)
        if recent is not None and recent[0] > asyncio.get_running_loop().time():
            return recent[1]
        return await self._replays.run(ask, lambda: self._read_replay(ask))

    async def _read_replay(self, ask: tuple[str, int, int]) -> Replay:
        replay = Replay(await self._log.read(*ask))
        recent = self._recent
        old = recent.pop(ask, None)
        if old is not None:
            self._recent_bytes -= old[1].size
        until = asyncio.get_running_loop().time() + REPLAY_REUSE_S
        recent[ask] = (until, replay)
        self._recent_bytes += replay.size
        self._expire()
        return replay

    def _expire(self) -> None:
        """Forget replay pages past their reuse or beyond the byte bound, oldest first; a
        timer does it when the first left is due, so an idle process holds none."""
        loop = asyncio.get_running_loop()
        recent, now = self._recent, loop.time()
        while recent and (
            self._recent_bytes > REPLAY_REUSE_BYTES or next(iter(recent.values()))[0] <= now
        ):
            _, (_, gone) = recent.popitem(last=False)
            self._recent_bytes -= gone.size
        if recent and self._expiry is None:
            self._expiry = loop.call_at(next(iter(recent.values()))[0], self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self._expire()

    def unsubscribe(self, sub: Subscription) -> None:
        follow = self._follows.get(sub.key)
        if follow is not None and sub in follow.subscribers:
            follow.subscribers.remove(sub)
            if not follow.subscribers:
                self._unfollow(sub.key)

    async def _run(self) -> None:
        backoff = _BACKOFF_FIRST_S
        while not self._closing:
            if not self._follows:
                # Following nothing: the log's pub/sub connections and readers go too.
                with contextlib.suppress(BackendUnavailable):
                    await self._log.idle()
                self._work.clear()
                if not self._follows:
                    await self._work.wait()
                continue
            cursors = self._snapshot()  # the read's own: the follows change meanwhile
            self._in_wait = True
            self._woken = False
            try:
                found = await self._log.wait(cursors, self._block_s, self._batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Streams end with an error frame instead of hanging; clients reconnect.
                log.warning("tail read failed; ending %d streams: %s", self.subscribers, exc)
                if not isinstance(exc, BackendUnavailable):
                    exc = BackendUnavailable(f"event log read failed: {exc}")
                self._fail(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            finally:
                self._in_wait = False
            backoff = _BACKOFF_FIRST_S
            for key, events in found.items():
                if key == self._wake_key:
                    if events:
                        self._cursors[key] = events[-1].id
                    continue
                follow = self._follows.get(key)
                if follow is not None:
                    self._deliver(key, follow, events)

    def _deliver(self, key: str, follow: _Follow, events: list[StoredEvent]) -> None:
        frames: list[Frame] = []
        ended = False
        cursor = self._cursors[key]
        for event in events:
            if event.id <= cursor:
                continue
            frames.append(Frame(event, sse.frame(event.id, event.type, event.json)))
            cursor = event.id
            if follow.until_terminal and event.type in TERMINAL_EVENTS:
                ended = True
                break
        if not frames:
            return
        self._cursors[key] = cursor
        batch = Batch.of(frames)
        dropped = [sub for sub in follow.subscribers if not sub.push(batch)]
        # Once per event, however many subscribers: the hub reads each event once.
        if frames[-1].event.id > follow.backlog:
            latency.observe([f.event.json for f in frames if f.event.id > follow.backlog])
        for sub in dropped:
            follow.subscribers.discard(sub)
        if dropped:
            metrics.SLOW_CLIENT_FALLBACKS.inc(len(dropped))
        if ended or not follow.subscribers:
            # Nothing follows a terminal event; subscribers end on the frame they just got.
            self._unfollow(key)

    def _fail(self, error: BackendUnavailable) -> None:
        for follow in self._follows.values():
            for sub in follow.subscribers:
                sub.end(error)
        self._unfollow_all()

    def _snapshot(self) -> Cursors:
        seq = self._seq + 1
        since = -1 if self._changes_lost else self._seq
        added, removed = frozenset(self._added), frozenset(self._removed)
        self._seq, self._changes_lost = seq, False
        self._added.clear()
        self._removed.clear()
        return Cursors(self._cursors, seq=seq, since=since, added=added, removed=removed)

    def _unfollow(self, key: str) -> None:
        self._follows.pop(key, None)
        if self._cursors.pop(key, None) is not None:
            self._removed.add(key)
            self._added.discard(key)

    def _unfollow_all(self) -> None:
        self._follows.clear()
        self._cursors = {self._wake_key: self._cursors[self._wake_key]}
        self._changes_lost = True
