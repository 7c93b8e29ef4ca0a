"""The heartbeat ticker: one per event loop wakes the parked streams whose ``: ping`` or
maximum age is due. No timer per connection, and nothing at all while no stream waits."""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol


class Parked(Protocol):
    """A stream waiting for frames in its live phase, as the ticker sees it."""

    heartbeat_s: float  # its heartbeat period
    wake_at: float  # loop time at which it wants to be woken (a ping or its age is due)

    def wake(self) -> None: ...


class Heartbeats:
    """The parked streams of one loop, and the task that wakes them when due."""

    def __init__(self) -> None:
        self._waiting: dict[Parked, None] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, stream: Parked) -> None:
        self._waiting[stream] = None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, stream: Parked) -> None:
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


_HEARTBEATS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Heartbeats] = (
    weakref.WeakKeyDictionary()
)


def heartbeats(loop: asyncio.AbstractEventLoop) -> Heartbeats:
    """The ticker of `loop` (made on first use)."""
    beats = _HEARTBEATS.get(loop)
    if beats is None:
        beats = _HEARTBEATS[loop] = Heartbeats()
    return beats
