"""Concurrent identical reads share one call in flight (a "single flight").

    flights: Flights[str, RunRecord | None] = Flights()
    record = await flights.run(run_id, lambda: store.get_run(run_id))

Only calls in flight are shared, so an answer is never older than the oldest caller
waiting for it; nothing is kept once the call returns.

The first caller makes the call in its own task, and the others wait for its answer.
A task and a shield per call (as ``ensure_future`` would take) were about 4% of a
connect wave's CPU, where nearly every call has one caller. One caller going away
does not fail the others: if the first is cancelled, its call is, and one of those
still waiting makes the call again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Abandoned(Exception):
    """The caller making the call went away before it returned: ask again."""


class Flights(Generic[K, V]):
    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        while True:
            pending = self._pending.get(key)
            if pending is None:
                return await self._lead(key, call)
            try:
                # Shielded: this caller going away does not cancel the answer for the rest.
                return await asyncio.shield(pending)
            except _Abandoned:
                continue

    async def _lead(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        pending: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending[key] = pending
        try:
            result = await call()
        except BaseException as exc:
            del self._pending[key]
            gone = isinstance(exc, asyncio.CancelledError)
            pending.set_exception(_Abandoned() if gone else exc)
            pending.exception()  # retrieved: nobody else may be waiting
            raise
        del self._pending[key]
        pending.set_result(result)
        return result
