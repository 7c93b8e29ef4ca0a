"""The direct write: the hub writes a batch to a parked stream's connection itself.

A run followed by 1,000 clients would otherwise wake 1,000 stream tasks per event,
each to write a few frames. While a stream is parked in its live phase, its
subscription carries `StreamState.direct` (which calls `write`); the hub calls it with
each new batch, and the stream's cursor moves exactly as if its own task had written it.
A new stream's held ``retry:`` line (`StreamState.lead`) goes out in front of its
first batch, and its response's start (`StreamState.opening`) in front of both, in the
same write.

Only the plain case is written here: the native format (see `StreamState.idle`),
the batch right after the cursor without a hole, no terminal event (the stream's task
ends the response after that), not aged out, and a connection that takes the bytes
without waiting (`api.server_assumptions.send_if_ready`). Anything else is refused and
queued for the stream's task, so a slow client still falls back to reading the log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import Send

from api import metrics
from api.server_assumptions import send_if_ready
from api.tail import Batch

if TYPE_CHECKING:
    from api.streams.state import StreamState


def write(stream: StreamState, send: Send, batch: Batch) -> bool:
    """Write `batch` to `send` (the server's own) now and move the stream's cursor; False:
    queue it instead."""
    if (
        batch.first != stream.cursor + 1
        or not batch.contiguous
        or batch.terminal_at >= 0
        or stream.aged()
    ):
        return False
    body = stream.lead + batch.data if stream.lead else batch.data
    message = {"type": "http.response.body", "body": body, "more_body": True}
    if stream.opening is not None:
        if not stream.open_with(message):  # the response's start, in the same write
            return False
    elif not send_if_ready(send, message):
        return False
    stream.lead = b""
    stream.cursor = batch.last
    stream.last_sent = stream.loop.time()
    stream.wake_at = min(stream.last_sent + stream.heartbeat_s, stream.deadline)
    metrics.EVENTS_SENT.inc(len(batch.frames))
    return True
