"""What every dialect shares: starting a run the native way, and a streamed response that
puts a dialect's own frames around the one resumable stream core (`api.streams`).

A dialect contributes only a `StreamFormat` (a framer from stored events to its bytes)
and, where its protocol wants them, frames sent once before the events (``before``).
Replay, live tail, heartbeats, gaps and connection age all stay in `event_stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson
from starlette.responses import Response

from api.deps import ApiState
from api.streams import EventStreamResponse, StreamFormat, event_stream
from api.submit import submit_run
from shared.errors import BackendUnavailable
from shared.models import RunRecord

# Tasks started by a closing response (e.g. a cancel); kept so they are not collected early.
_background: set[asyncio.Task[Any]] = set()


async def start_run(
    state: ApiState, owner: str, tool: str, input: Mapping[str, Any], session_id: str | None
) -> RunRecord:
    """Create and queue a run exactly as ``POST /v1/runs`` does (same checks, same metrics)."""
    run, _ = await submit_run(state, owner, tool, input, session_id=session_id)
    return run


def stream_response(
    state: ApiState,
    owner: str,
    key: str,
    cursor: int,
    fmt: StreamFormat,
    *,
    until_terminal: bool = True,
    before: bytes = b"",
    on_abandon: Callable[[], Any] | None = None,
    headers: Mapping[str, str] | None = None,
    release: Callable[[], None] | None = None,
) -> Response:
    """SSE over log `key` after `cursor` in format `fmt`.

    `before` goes out right after the ``retry:`` line. `on_abandon` (a coroutine
    function) runs when the response ends before its stream did, i.e. the client
    went away; a stream that ends on its own (terminal event, connection age) is not
    abandoned. `release` is a stream slot the caller took already (else one is taken).
    """
    if release is None:
        release = state.slots.acquire(owner)
    body = event_stream(
        state.hub,
        state.runtime.settings,
        key,
        cursor,
        until_terminal=until_terminal,
        fmt=fmt,
        before=before,
    )

    def close() -> None:
        assert release is not None
        release()
        if not body.ended and on_abandon is not None:
            task = asyncio.create_task(_quietly(on_abandon))
            _background.add(task)
            task.add_done_callback(_background.discard)

    return EventStreamResponse(body, on_close=close, headers=headers)


async def _quietly(action: Callable[[], Any]) -> None:
    with contextlib.suppress(BackendUnavailable):
        await action()


def epoch_s(timestamp: str) -> int:
    """``2026-01-02T03:04:05.678Z`` as unix seconds (what AgentOS-style clients expect)."""
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp())


def sse_data(data: Mapping[str, Any], *, event: str | None = None, id_: str | None = None) -> bytes:
    """One SSE frame whose data is `data` as one-line JSON."""
    head = b""
    if id_ is not None:
        head += b"id: %s\n" % id_.encode()
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError(f"SSE event name must be one line: {event!r}")
        head += b"event: %s\n" % event.encode()
    return head + b"data: %s\n\n" % orjson.dumps(data)
