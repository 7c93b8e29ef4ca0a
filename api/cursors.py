"""Where a resumed stream starts: `Last-Event-ID`, or `?after=` and its aliases."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from api.headers import header, in_query
from shared.errors import BadCursor
from shared.lifecycle import Runs
from shared.models import RunHead

_QUERY_NAMES = ("after", "since_id", "last_event_id")


def requested_cursor(request: Request) -> int:
    """The client's cursor, 0 when none; `BadCursor` unless a non-negative integer.

    The header wins over the query: an EventSource reconnecting to its original URL
    (which may carry ``?after=``) sends its newer position in ``Last-Event-ID``.
    """
    raw = header(request, b"last-event-id")
    name = "Last-Event-ID"
    if raw is None:
        for query_name in _QUERY_NAMES:
            if in_query(request, query_name):
                raw, name = request.query_params[query_name], query_name
                break
    if raw is None:
        return 0
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise BadCursor(f"{name} must be a non-negative integer event id, got {raw!r}", name)
    return int(text)


def check_cursor(cursor: int, last_id: int, name: str = "cursor") -> None:
    """A cursor past the newest event was never handed out: reject it."""
    if cursor > last_id:
        raise BadCursor(f"{name} {cursor} is past the last event id {last_id}", name)


async def head_at(
    runs: Runs, run_id: str, owner: str, cursor_of: Callable[[], int]
) -> tuple[RunHead, int]:
    """The head of the owner's run for a stream opening at the cursor `cursor_of` reads
    (`Runs.get_at`), and that cursor.

    Another owner's run is a 404 whatever the cursor says: a bad cursor's `BadCursor`
    is raised only once the run is known to be the caller's.
    """
    try:
        cursor = cursor_of()
    except BadCursor:
        await runs.get_at(run_id, owner, 0)  # the same checks, on the head read they share
        raise
    return await runs.get_at(run_id, owner, cursor), cursor
