"""Typed run events, one pydantic model per native type (SPEC §3).

Every event has ``.id``, ``.type``, ``.data``, ``.run_id``, ``.session_id`` and
``.created_at``; ``.data`` is a typed model for native types and a plain dict
for the rest. Narrow with ``isinstance``::

    async for event in client.events.stream(run_id=run.run_id):
        if isinstance(event, MessageDelta):
            print(event.data.delta, end="")
        elif isinstance(event, ToolProgress):
            show(event.data.progress)

Types this SDK does not know (``custom.*``, or native types added later) arrive
as a generic :class:`Event` whose ``data`` is a dict: nothing is dropped.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runrelay.errors import EventParseError

TERMINAL_TYPES = frozenset({"run.completed", "run.failed", "run.cancelled"})


class _Model(BaseModel):
    # Unknown fields are kept, so a newer server never breaks an older SDK.
    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)


class BaseEvent(_Model):
    """Fields every event shares; ``id`` is None only for frames without one (``stream.gap``).

    ``id`` is the stream position (pass it as ``since_id`` to resume). On a session
    stream it is the session-local id; ``run_event_id`` keeps the run-local one.
    """

    id: int | None = None
    type: str
    run_id: str | None = None
    session_id: str | None = None
    created_at: str | None = None
    run_event_id: int | None = None

    @property
    def is_terminal(self) -> bool:
        """True for run.completed / run.failed / run.cancelled."""
        return self.type in TERMINAL_TYPES


class Event(BaseEvent):
    """Any event type this SDK has no model for; ``data`` is the raw JSON object."""

    data: dict[str, Any] = Field(default_factory=dict)


# --- data models -------------------------------------------------------------------


class RunQueuedData(_Model):
    tool: str
    input: dict[str, Any] = Field(default_factory=dict)
    attempt: int = 1


class RunStartedData(_Model):
    attempt: int = 1
    worker: str | None = None


class MessageDeltaData(_Model):
    delta: str


class ContentPart(_Model):
    type: str = "text"
    text: str = ""


class Message(_Model):
    role: str = "assistant"
    content: list[ContentPart] = Field(default_factory=list)

    @property
    def text(self) -> str:
        """All text parts joined."""
        return "".join(part.text for part in self.content if part.type == "text")


class MessageCompletedData(_Model):
    message: Message


class ToolCall(_Model):
    id: str
    name: str
    arguments: Any = None


class ToolStartedData(_Model):
    tool_call: ToolCall


class ToolProgressData(_Model):
    tool_call_id: str | None = None
    progress: float = Field(ge=0.0, le=1.0)
    message: str | None = None


class ToolCompletedData(_Model):
    tool_call_id: str | None = None
    tool_name: str | None = None
    success: bool
    output: Any = None


class OperationAcceptedData(_Model):
    operation_id: str
    tool_call_id: str | None = None
    tool_name: str | None = None


class OperationCompletedData(_Model):
    operation_id: str
    success: bool
    result: Any = None
    error: str | None = None


class RunRetryingData(_Model):
    attempt: int
    reason: str | None = None


class RunEndedData(_Model):
    status: str
    error: str | None = None
    reason: str | None = None


class StreamGapData(_Model):
    """Events ``from_``..``to`` (inclusive) are no longer retained; JSON keys ``from``/``to``."""

    from_: int = Field(alias="from")
    to: int


# --- event models ------------------------------------------------------------------


class RunQueued(BaseEvent):
    type: Literal["run.queued"] = "run.queued"
    data: RunQueuedData


class RunStarted(BaseEvent):
    type: Literal["run.started"] = "run.started"
    data: RunStartedData


class MessageDelta(BaseEvent):
    type: Literal["output.message.delta"] = "output.message.delta"
    data: MessageDeltaData


class MessageCompleted(BaseEvent):
    type: Literal["output.message.completed"] = "output.message.completed"
    data: MessageCompletedData


class ToolStarted(BaseEvent):
    type: Literal["tool.started"] = "tool.started"
    data: ToolStartedData


class ToolProgress(BaseEvent):
    type: Literal["tool.progress"] = "tool.progress"
    data: ToolProgressData


class ToolCompleted(BaseEvent):
    type: Literal["tool.completed"] = "tool.completed"
    data: ToolCompletedData


class OperationAccepted(BaseEvent):
    type: Literal["operation.accepted"] = "operation.accepted"
    data: OperationAcceptedData


class OperationCompleted(BaseEvent):
    type: Literal["operation.completed"] = "operation.completed"
    data: OperationCompletedData


class RunRetrying(BaseEvent):
    type: Literal["run.retrying"] = "run.retrying"
    data: RunRetryingData


class RunCompleted(BaseEvent):
    type: Literal["run.completed"] = "run.completed"
    data: RunEndedData


class RunFailed(BaseEvent):
    type: Literal["run.failed"] = "run.failed"
    data: RunEndedData


class RunCancelled(BaseEvent):
    type: Literal["run.cancelled"] = "run.cancelled"
    data: RunEndedData


class StreamGap(BaseEvent):
    """The cursor was older than what the server retains; the missing ids are in ``data``."""

    type: Literal["stream.gap"] = "stream.gap"
    data: StreamGapData


AnyEvent = (
    RunQueued
    | RunStarted
    | MessageDelta
    | MessageCompleted
    | ToolStarted
    | ToolProgress
    | ToolCompleted
    | OperationAccepted
    | OperationCompleted
    | RunRetrying
    | RunCompleted
    | RunFailed
    | RunCancelled
    | StreamGap
    | Event
)

EVENT_MODELS: dict[str, type[AnyEvent]] = {
    model.model_fields["type"].default: model
    for model in (
        RunQueued,
        RunStarted,
        MessageDelta,
        MessageCompleted,
        ToolStarted,
        ToolProgress,
        ToolCompleted,
        OperationAccepted,
        OperationCompleted,
        RunRetrying,
        RunCompleted,
        RunFailed,
        RunCancelled,
        StreamGap,
    )
}


def parse_event(type: str, payload: bytes | str, *, stream_id: int | None = None) -> AnyEvent:
    """Build the typed event for an SSE frame's ``event:`` and ``data:``.

    ``stream_id`` is the frame's ``id:``; when given it becomes ``.id`` (the resume
    cursor), and the JSON's own ``id`` is kept as ``.run_event_id``. A native type
    whose data does not match its model is delivered as a generic :class:`Event`
    rather than lost. Raises :class:`EventParseError` if the payload is not a JSON object.
    """
    try:
        body: Any = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise EventParseError(f"{type}: data is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise EventParseError(f"{type}: data is not a JSON object")
    # Normally the data is the event envelope of SPEC §2; a bare gap frame may carry
    # just {"from", "to"}, so anything without an envelope is taken as the data itself.
    envelope = body if isinstance(body.get("data"), dict) and "from" not in body else None
    fields: dict[str, Any] = dict(envelope) if envelope is not None else {"data": body}
    fields["type"] = type
    json_id = fields.get("id")
    fields["run_event_id"] = json_id if isinstance(json_id, int) else None
    if stream_id is not None:
        fields["id"] = stream_id
    elif not isinstance(json_id, int):
        fields["id"] = None
    model = EVENT_MODELS.get(type)
    if model is not None:
        try:
            return model.model_validate(fields)
        except ValidationError:
            pass
    return Event.model_validate(fields)
