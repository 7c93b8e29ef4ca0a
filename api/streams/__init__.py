"""Resumable event streams: replay after a cursor, then live frames from the hub, to the end.

    body = event_stream(hub, settings, key, cursor, until_terminal=True)
    return EventStreamResponse(body, on_close=slots.acquire(owner))

One concept per module:

- `state`: one stream's cursor and its phases (replay, live, heartbeat, end): the
  rules that make a stream lose and repeat nothing; it writes to the connection itself.
- `format`: how events become bytes (`StreamFormat`); dialects bring their own.
- `heartbeat`: the per-loop ticker that wakes parked streams when a ping is due.
- `direct_write`: the hub writing a batch to a parked stream's connection itself.
- `body`: `event_stream`, and the `StreamBody` protocol the response needs.
- `response`: the ASGI response; served by `api.lean` before the framework, or detached
  from the app's frames for its long phase when FastAPI routed it.
- `slots`: open streams per owner.

What this leans on in uvicorn and the middleware is in `api.server_assumptions`.
"""

from api.streams.body import StreamBody, event_stream
from api.streams.format import NATIVE, StreamFormat
from api.streams.response import EventStreamResponse
from api.streams.slots import StreamSlots
from api.streams.state import StreamState

__all__ = [
    "NATIVE",
    "EventStreamResponse",
    "StreamBody",
    "StreamFormat",
    "StreamSlots",
    "StreamState",
    "event_stream",
]
