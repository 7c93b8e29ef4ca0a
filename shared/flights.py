"""Concurrent identical reads share one call in flight (a "single flight").

    flights: Flights[str, RunRecord | None] = Flights()
    record = await flights.run(run_id, lambda: store.get_run(run_id))

Only calls in flight are shared, so an answer is never older than the oldest caller
waiting for it; nothing is kept once the call returns. The call runs shielded: one
caller going away does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Flights(Generic[K, V]):
    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(call())
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(pending)

    def _landed(self, key: K, done: asyncio.Future[V]) -> None:
        self._pending.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: every caller may have gone
