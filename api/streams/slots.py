"""Open streams per owner, bounded (429 beyond)."""

from __future__ import annotations

from collections.abc import Callable

from api.errors import TooManyStreams


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
        return _Slot(self._open, owner)


class _Slot:
    """One taken slot; calling it gives the slot back (once; later calls do nothing).

    An object with three slots, not a closure: every open stream holds one, and a
    closure with its cells is about three times the size."""

    __slots__ = ("_open", "_owner", "_released")

    def __init__(self, open_: dict[str, int], owner: str) -> None:
        self._open = open_
        self._owner = owner
        self._released = False

    def __call__(self) -> None:
        if self._released:
            return
        self._released = True
        left = self._open.get(self._owner, 1) - 1
        if left > 0:
            self._open[self._owner] = left
        else:
            self._open.pop(self._owner, None)
