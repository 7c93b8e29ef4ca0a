"""Server-Sent Events framing: pure functions from values to bytes, no I/O.

Event data is the stored JSON, spliced in as it is: it is one line already
(orjson never emits a raw newline), so nothing is re-encoded per frame.
"""

from __future__ import annotations

import orjson

PING = b": ping\n\n"
EVENT_STREAM = "text/event-stream"


def _check_type(type_: str) -> bytes:
    if "\n" in type_ or "\r" in type_:
        # A line break would let the type end the frame early and forge the next one.
        raise ValueError(f"SSE event type must be one line: {type_!r}")
    return type_.encode()


def frame(event_id: int, type_: str, json: bytes) -> bytes:
    """``id:``/``event:``/``data:`` frame for one stored event."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, _check_type(type_), json)


def retry(ms: int) -> bytes:
    """The reconnection delay a client should use; sent first on every stream."""
    return b"retry: %d\n\n" % ms


def gap(first: int, last: int) -> bytes:
    """Events ``first``..``last`` are gone from the log; no id, so the cursor stays put."""
    return b'event: stream.gap\ndata: {"from":%d,"to":%d}\n\n' % (first, last)


def error(code: str, message: str) -> bytes:
    """A stream-ending error (no id: it is not an event of the log)."""
    data = orjson.dumps({"code": code, "message": message})
    return b"event: error\ndata: %s\n\n" % data
