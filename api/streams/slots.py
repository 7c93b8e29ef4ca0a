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
