"""Replay then follow one log: the reference reader every tail is built on.

The cursor is the only state: replay reads pages after it, and the live phase asks
the backend for events after that same cursor. Because the live read starts where
the replay stopped, an event appended during the hand-off is either in the last
page or in the first live batch — never both (ids only grow), never neither (the
backend returns everything past the cursor). That is why there is no gap and no
duplicate, by construction.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from shared.eventlog.base import EventLog
from shared.models import PAGE_SIZE, TERMINAL_EVENTS, Gap, StoredEvent

__all__ = ["Gap", "follow", "replay"]


async def replay(
    log: EventLog, key: str, after: int, *, page: int = PAGE_SIZE
) -> AsyncGenerator[StoredEvent | Gap, None]:
    """Everything retained after `after`, reporting a gap once if the cursor is too old."""
    cursor = after
    while True:
        batch = await log.read(key, cursor, page)
        gap = batch.gap(cursor)
        if gap is not None:
            yield gap
        for event in batch.events:
            yield event
            cursor = event.id
        if len(batch.events) < page:
            return


async def follow(
    log: EventLog, key: str, after: int, *, wait_s: float = 1.0, until_terminal: bool = True
) -> AsyncGenerator[StoredEvent | Gap, None]:
    """Replay, then live events, ending after a terminal event when `until_terminal`."""
    cursor = after
    async for item in replay(log, key, cursor):
        yield item
        if isinstance(item, StoredEvent):
            cursor = item.id
            if until_terminal and item.type in TERMINAL_EVENTS:
                return
    while True:
        found = await log.wait({key: cursor}, wait_s, PAGE_SIZE)
        for event in found.get(key, []):
            if event.id != cursor + 1:
                # Trimmed while we waited: fall back to a replay, which reports the gap.
                async for item in follow(
                    log, key, cursor, wait_s=wait_s, until_terminal=until_terminal
                ):
                    yield item
                return
            yield event
            cursor = event.id
            if until_terminal and event.type in TERMINAL_EVENTS:
                return
