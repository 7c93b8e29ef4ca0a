"""What the stream code assumes of the server and the app around it, each named once.

An upgrade of uvicorn or Starlette may break any of these quietly: the streams would
still work in the tests that only read them, but write half frames or hold every
idle stream's frames. tests/api/test_server_assumptions.py checks each one against
the real server and the real app, so such an upgrade fails there first.

1. `send_if_ready`: uvicorn's `send` waits (for flow control) only *before* it writes.
2. `RAW_SEND`, `DETACH`: `api.middleware.AccessLog` is the outermost of our middleware
   (`api.app.create_app` adds it last). Only the framework's own layers (Starlette's
   and FastAPI's error handling, telemetry, body limit) sit outside it; they pass the
   scope on and await the server's `send`, so point 1 holds through them. AccessLog
   puts that `send` in the scope, and a place where a response hands over the long
   phase of its stream, to run once the app's frames are gone (`/ds/` has its own
   stack, `api.ds.front`, with `AccessLog` outermost too: its SSE responses and
   waiting long-polls detach there).
3. A parked stream (`api.streams.state`, and an idle Durable Streams reader:
   `api.ds.reads._park`) waits in uvicorn's `receive()` and is woken by cancelling that
   wait: a cancelled `receive()` loses nothing, and a later one still returns
   ``http.disconnect`` once the client has left.
4. `send_in_one_write`: uvicorn's `send` is a method of the request's cycle, and writes
   through the cycle's ``transport`` attribute (point 1: at once, when it does not wait).
"""

from __future__ import annotations

from starlette.types import Message, Send

# Scope keys AccessLog sets for every HTTP request (see the module doc, point 2).
RAW_SEND = "runrelay.send"  # the server's own `send`, under no middleware of ours
DETACH = "runrelay.detach"  # call with an `api.middleware.Detached` to run it after the app


def send_if_ready(send: Send, message: Message) -> bool:
    """Send `message` now if the connection takes it without waiting; False: not sent.

    This steps the `send` coroutine by hand, once. uvicorn's `send` awaits its flow
    control (a client whose buffer is full) before it writes anything, and otherwise
    writes and returns without suspending. So one step either completes the write or
    stops before it; closing the coroutine there drops the message whole, and the
    caller may send it later with an ordinary ``await``.
    """
    step = send(message).__await__()
    try:
        step.send(None)
    except StopIteration:
        return True
    except Exception:
        return False  # the caller's own write will meet (and report) the same
    step.close()  # it would wait for the client to drain: nothing was written
    return False


class _Collected:
    """Stands in for a connection's transport while `send_in_one_write` collects the writes."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)


def send_in_one_write(sends: list[tuple[Send, Message]], server_send: Send) -> int:
    """Send the messages now, in order, as one write to the connection: how many were sent
    (0 when the connection would make the first wait, or is not uvicorn's).

    `server_send` is the server's own `send` (`RAW_SEND`); each of `sends` may be it or a
    middleware's around it. For these steps the request's cycle writes into a list
    (point 4), and the list goes out as one write: a new stream's response start and its
    first bytes are one system call and one wake of the client, not two (a connect wave
    is CPU-bound). A message is sent only if it goes without waiting (`send_if_ready`);
    the ones before it are written all the same.
    """
    cycle = getattr(server_send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        return 0
    collected = _Collected()
    cycle.transport = collected  # type: ignore[union-attr]
    sent = 0
    try:
        for send, message in sends:
            if not send_if_ready(send, message):
                break
            sent += 1
    finally:
        cycle.transport = transport  # type: ignore[union-attr]
    if collected.parts:
        transport.write(b"".join(collected.parts))
    return sent
