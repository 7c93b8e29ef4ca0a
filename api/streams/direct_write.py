"""The direct write: the hub writes a batch to a parked stream's connection itself.

A run followed by 1,000 clients would otherwise wake 1,000 stream tasks per event,
each to write a few frames. While a stream waits in its live phase, its subscription
carries `DirectWrite.write`; the hub calls it with each new batch, and the stream's
cursor moves exactly as if its own task had written the batch.

Only the plain case is written here: the native format (set up in `api.streams.body`),
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


class DirectWrite:
    """Writes batches to one stream's connection from the hub's loop, while it is parked."""

    __slots__ = ("_send", "_stream")

    def __init__(self, stream: StreamState, send: Send) -> None:
        self._stream = stream
        self._send = send  # the server's own (api.server_assumptions.RAW_SEND)

    def write(self, batch: Batch) -> bool:
        """Write `batch` now and move the stream's cursor; False: queue it instead."""
        stream = self._stream
        if (
            batch.first != stream.cursor + 1
            or not batch.contiguous
            or batch.terminal_at >= 0
            or stream.aged()
        ):
            return False
        message = {"type": "http.response.body", "body": batch.data, "more_body": True}
        if not send_if_ready(self._send, message):
            return False
        stream.cursor = batch.last
        stream.last_sent = stream.loop.time()
        stream.wake_at = min(stream.last_sent + stream.heartbeat_s, stream.deadline)
        metrics.EVENTS_SENT.inc(len(batch.frames))
        return True
