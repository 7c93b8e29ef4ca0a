"""Chat task style: a run's stream as an AI SDK UI message stream (v1).

    GET  /api/chat/tasks/{task_id}/stream?last_message_id=0-N   (task id = run id)
    GET  /api/chat/tasks/{task_id}
    POST /api/chat/operations/{operation_id}/complete           (the webhook core, `api.operations`)

The run is one assistant message: ``start`` (``messageId`` = run id), one text part per
native message (``text-start``/``text-delta``/``text-end``, part id ``txt-<id of its
first delta>``), ``tool-input-available``/``tool-output-available`` per tool call, then
``finish`` (after ``error`` for a failed run, ``abort`` for a cancelled one) and
``data: [DONE]``. Chunks carry exactly the AI SDK's fields: its client validates them
strictly. The SSE ``id:`` is ``0-N`` (native id N) on the last frame an event produces,
so a browser reconnect resumes exactly after whole events.

A resume first re-sends what the client's fresh parser needs to accept what follows:
``start``, the open text part's ``text-start``, and ``tool-input-available`` of tool
calls still waiting for output. That state is rebuilt by folding the events up to the
cursor through the same mapping the stream uses.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from api.cursors import head_at
from api.deps import ApiState, Owner, State
from api.dialects.common import sse_data, stream_response
from api.headers import header
from api.openapi import SSE, STREAM_ENDED, errors
from api.operations import Completion, accept_completion
from api.routes.operations import internal_caller
from api.streams import StreamFormat
from shared.errors import BadCursor
from shared.eventlog.follow import replay
from shared.models import TERMINAL_EVENTS, RunHead, StoredEvent

HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}
DONE = b"data: [DONE]\n\n"
_CURSOR = re.compile(r"^0-(\d{1,18})$")

Chunk = dict[str, Any]

router = APIRouter(prefix="/api/chat", tags=["chat"])


class MessageState:
    """The AI SDK message a run has produced so far; `feed` maps one native event to chunks."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.started = False
        self.open_text: str | None = None
        self.waiting_tools: dict[str, Chunk] = {}  # toolCallId -> its tool-input-available
        self.done_tools: set[str] = set()
        self.operations: dict[str, str] = {}  # operation id -> toolCallId

    def feed(self, event: StoredEvent) -> list[Chunk]:
        body = self._map(event)
        if not self.started and (body or event.type == "run.queued"):
            self.started = True
            body.insert(0, {"type": "start", "messageId": self.message_id})
        return body

    def reopen(self) -> list[Chunk]:
        """What a fresh parser needs before the events after this point (a resume)."""
        self.started = True
        chunks: list[Chunk] = [{"type": "start", "messageId": self.message_id}]
        if self.open_text is not None:
            chunks.append({"type": "text-start", "id": self.open_text})
        chunks.extend(self.waiting_tools.values())
        return chunks

    def _map(self, event: StoredEvent) -> list[Chunk]:
        type_ = event.type
        if type_ == "output.message.delta":
            data = event.decode()["data"]
            out: list[Chunk] = []
            if self.open_text is None:
                self.open_text = f"txt-{event.id}"
                out.append({"type": "text-start", "id": self.open_text})
            out.append({"type": "text-delta", "id": self.open_text, "delta": str(data["delta"])})
            return out
        if type_ == "output.message.completed":
            data = event.decode()["data"]
            if self.open_text is not None:
                return self._close_text()
            # A message that came without deltas: send it as one whole part.
            text = "".join(
                str(part.get("text", ""))
                for part in data.get("message", {}).get("content", [])
                if isinstance(part, dict) and part.get("type") == "text"
            )
            if not text:
                return []
            part_id = f"txt-{event.id}"
            return [
                {"type": "text-start", "id": part_id},
                {"type": "text-delta", "id": part_id, "delta": text},
                {"type": "text-end", "id": part_id},
            ]
        if type_ == "tool.started":
            call = event.decode()["data"]["tool_call"]
            return self._tool_input(str(call["id"]), str(call["name"]), call.get("arguments", {}))
        if type_ == "operation.accepted":
            data = event.decode()["data"]
            call_id = str(data["tool_call_id"])
            self.operations[str(data["operation_id"])] = call_id
            return self._tool_input(call_id, str(data["tool_name"]), {})
        if type_ == "tool.completed":
            data = event.decode()["data"]
            call_id = str(data["tool_call_id"])
            head = self._tool_input(call_id, str(data.get("tool_name", "tool")), {})
            return head + self._tool_output(call_id, data.get("output"))
        if type_ == "operation.completed":
            data = event.decode()["data"]
            waiting = self.operations.get(str(data["operation_id"]))
            if waiting is None:
                return []
            output = data.get("result") if data.get("success") else {"error": data.get("error")}
            return self._tool_output(waiting, output)
        if type_ in TERMINAL_EVENTS:
            data = event.decode()["data"]
            out = self._close_text()
            if type_ == "run.failed":
                out.append({"type": "error", "errorText": str(data.get("error") or "run failed")})
            elif type_ == "run.cancelled":
                out.append({"type": "abort"})
            out.append({"type": "finish"})
            return out
        return []  # run.queued/started/retrying, tool.progress, custom.*: nothing to show

    def _close_text(self) -> list[Chunk]:
        if self.open_text is None:
            return []
        part_id, self.open_text = self.open_text, None
        return [{"type": "text-end", "id": part_id}]

    def _tool_input(self, call_id: str, name: str, input: Any) -> list[Chunk]:
        if call_id in self.waiting_tools or call_id in self.done_tools:
            return []
        chunk = {
            "type": "tool-input-available",
            "toolCallId": call_id,
            "toolName": name,
            "input": input,
        }
        self.waiting_tools[call_id] = chunk
        return [chunk]

    def _tool_output(self, call_id: str, output: Any) -> list[Chunk]:
        if call_id in self.done_tools:
            return []
        self.waiting_tools.pop(call_id, None)
        self.done_tools.add(call_id)
        return [{"type": "tool-output-available", "toolCallId": call_id, "output": output}]


def frames(chunks: list[Chunk], event_id: int, terminal: bool) -> bytes:
    """SSE frames of one event's chunks; only the last carries the id (whole events resume)."""
    out = b"".join(
        sse_data(chunk, id_=f"0-{event_id}" if i == len(chunks) - 1 else None)
        for i, chunk in enumerate(chunks)
    )
    return out + DONE if terminal else out


def chat_format(message: MessageState) -> StreamFormat:
    def framer(event: StoredEvent) -> bytes:
        return frames(message.feed(event), event.id, event.type in TERMINAL_EVENTS)

    def gap(first: int, last: int) -> bytes:
        text = f"events 0-{first}..0-{last} are no longer retained; the message is incomplete"
        return sse_data({"type": "error", "errorText": text})

    def error(code: str, text: str) -> bytes:
        return sse_data({"type": "error", "errorText": f"{code}: {text}"})

    return StreamFormat(framer=framer, gap=gap, error=error)


def parse_cursor(request: Request, last_message_id: str | None) -> int:
    """``0-N`` from ``Last-Event-ID`` (a browser reconnect) or ``last_message_id``; 0 if none."""
    raw, name = header(request, b"last-event-id"), "Last-Event-ID"
    if raw is None:
        raw, name = last_message_id, "last_message_id"
    if raw is None or raw == "":
        return 0
    match = _CURSOR.match(raw.strip())
    if match is None:
        raise BadCursor(f"{name} must look like 0-N (N = an event id), got {raw!r}", name)
    return int(match.group(1))


async def _fold(state: ApiState, run: RunHead, key: str, cursor: int) -> MessageState:
    message = MessageState(run.run_id)
    if cursor == 0:
        return message
    events = replay(state.runtime.log, key, 0)
    try:
        async for item in events:
            if not isinstance(item, StoredEvent):
                continue  # a gap before the cursor: nothing to rebuild from it
            if item.id > cursor:
                break
            message.feed(item)
    finally:
        await events.aclose()
    return message


@router.get(
    "/tasks/{task_id}/stream",
    response_class=Response,  # the answers are all in `responses`
    responses=SSE | STREAM_ENDED | errors(400, 401, 404, 422, 429, 503),
)
async def task_stream(
    task_id: str,
    request: Request,
    state: State,
    owner: Owner,
    last_message_id: Annotated[str | None, Query()] = None,
) -> Response:
    """The run as a UI message stream, from `last_message_id` (``0-0`` = from the start)."""
    return await task_event_stream(state, owner, request, task_id, last_message_id)


async def task_event_stream(
    state: ApiState, owner: str, request: Request, task_id: str, last_message_id: str | None
) -> Response:
    """The stream of `task_stream` (also served by `api.lean`, before FastAPI)."""
    # Its head only, shared with the task's other clients opening now (`Runs.get_at`).
    run, cursor = await head_at(
        state.runtime.runs, task_id, owner, lambda: parse_cursor(request, last_message_id)
    )
    if cursor > run.last_event_id:
        raise BadCursor(
            f"last_message_id 0-{cursor} is past the last event 0-{run.last_event_id}",
            "last_message_id",
        )
    if run.terminal and cursor == run.last_event_id:
        return Response(status_code=204)  # nothing left: a reconnecting client stops
    key = state.runtime.log.keys.run_log(run.session_id, run.run_id)
    message = await _fold(state, run, key, cursor)
    before = b"".join(sse_data(c) for c in message.reopen()) if cursor > 0 else b""
    return stream_response(
        state, owner, key, cursor, chat_format(message), before=before, headers=HEADERS
    )


@router.get("/tasks/{task_id}", responses=errors(401, 404, 422, 503))
async def task_status(task_id: str, state: State, owner: Owner) -> dict[str, Any]:
    run = await state.runtime.runs.get(task_id, owner)
    return {
        "task_id": run.run_id,
        "session_id": run.session_id,
        "tool": run.tool,
        "status": run.status.value,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "finished_at": run.finished_at,
        "error": run.error,
        "last_message_id": f"0-{run.last_event_id}",
    }


@router.post(
    "/operations/{operation_id}/complete",
    dependencies=[Depends(internal_caller)],
    responses=errors(400, 401, 404, 413, 422, 503),
)
async def complete_operation(operation_id: str, body: Completion, state: State) -> dict[str, str]:
    """The same webhook as ``POST /v1/operations/{operation_id}/complete`` (``X-API-Key``)."""
    return await accept_completion(state.runtime, operation_id, body)
