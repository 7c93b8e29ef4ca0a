"""Event parsing: every native type becomes its typed model; nothing unknown is lost."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from runrelay import events as ev
from runrelay.errors import EventParseError
from runrelay.events import Event, StreamGap, parse_event

NATIVE: list[tuple[str, type[ev.BaseEvent], dict[str, Any]]] = [
    ("run.queued", ev.RunQueued, {"tool": "story", "input": {"prompt": "x"}, "attempt": 1}),
    ("run.started", ev.RunStarted, {"attempt": 1, "worker": "w-1"}),
    ("output.message.delta", ev.MessageDelta, {"delta": "Once"}),
    (
        "output.message.completed",
        ev.MessageCompleted,
        {"message": {"role": "assistant", "content": [{"type": "text", "text": "Once."}]}},
    ),
    (
        "tool.started",
        ev.ToolStarted,
        {"tool_call": {"id": "tc1", "name": "countdown", "arguments": {"seconds": 3}}},
    ),
    ("tool.progress", ev.ToolProgress, {"tool_call_id": "tc1", "progress": 0.5, "message": "2s"}),
    (
        "tool.completed",
        ev.ToolCompleted,
        {"tool_call_id": "tc1", "tool_name": "countdown", "success": True, "output": None},
    ),
    (
        "operation.accepted",
        ev.OperationAccepted,
        {"operation_id": "op1", "tool_call_id": "tc1", "tool_name": "generate_agent"},
    ),
    (
        "operation.completed",
        ev.OperationCompleted,
        {"operation_id": "op1", "success": False, "result": None, "error": "boom"},
    ),
    ("run.retrying", ev.RunRetrying, {"attempt": 2, "reason": "worker lost"}),
    ("run.completed", ev.RunCompleted, {"status": "completed"}),
    ("run.failed", ev.RunFailed, {"status": "failed", "error": "tool raised"}),
    ("run.cancelled", ev.RunCancelled, {"status": "cancelled", "reason": "user"}),
]


def envelope(type_: str, data: dict[str, Any], id_: int = 7) -> bytes:
    return orjson.dumps(
        {
            "id": id_,
            "run_id": "r1",
            "session_id": "s1",
            "type": type_,
            "data": data,
            "created_at": "2026-01-01T00:00:00.000Z",
        }
    )


@pytest.mark.parametrize(("type_", "model", "data"), NATIVE, ids=[n[0] for n in NATIVE])
def test_every_native_type_parses_to_its_model(
    type_: str, model: type[ev.BaseEvent], data: dict[str, Any]
) -> None:
    event = parse_event(type_, envelope(type_, data))
    assert type(event) is model
    assert (event.id, event.type, event.run_id, event.session_id) == (7, type_, "r1", "s1")
    assert event.created_at == "2026-01-01T00:00:00.000Z"
    assert event.data.model_dump(by_alias=True, exclude_unset=True) == data  # type: ignore[union-attr]
    assert event.is_terminal == (type_ in ev.TERMINAL_TYPES)


def test_every_native_type_has_a_model() -> None:
    assert {n[0] for n in NATIVE} | {"stream.gap"} == set(ev.EVENT_MODELS)


def test_typed_data_is_reachable_by_attribute() -> None:
    event = parse_event("output.message.completed", envelope(*NATIVE[3][::2]))
    assert isinstance(event, ev.MessageCompleted)
    assert event.data.message.text == "Once."


def test_unknown_types_arrive_as_generic_events_with_their_data() -> None:
    event = parse_event("custom.weather", envelope("custom.weather", {"temp_c": 21}))
    assert type(event) is Event
    assert event.data == {"temp_c": 21}
    assert event.id == 7


def test_a_native_type_with_unexpected_data_is_delivered_generically_not_lost() -> None:
    event = parse_event("output.message.delta", envelope("output.message.delta", {"text": "x"}))
    assert type(event) is Event
    assert event.data == {"text": "x"}


def test_a_bare_gap_frame_has_no_id_and_names_the_missing_range() -> None:
    event = parse_event("stream.gap", b'{"from": 3, "to": 9}')
    assert isinstance(event, StreamGap)
    assert (event.id, event.data.from_, event.data.to) == (None, 3, 9)


def test_a_gap_in_an_envelope_parses_too() -> None:
    event = parse_event("stream.gap", orjson.dumps({"run_id": "r1", "data": {"from": 1, "to": 2}}))
    assert isinstance(event, StreamGap)
    assert (event.run_id, event.data.from_, event.data.to) == ("r1", 1, 2)


def test_the_frame_id_is_the_cursor_and_the_run_local_id_is_kept() -> None:
    # On a session stream the SSE id is session-local; the JSON id is the run's own.
    event = parse_event("run.started", envelope("run.started", {"attempt": 1}, id_=2), stream_id=41)
    assert (event.id, event.run_event_id) == (41, 2)


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'"text"'])
def test_data_that_is_not_a_json_object_is_an_error(payload: bytes) -> None:
    with pytest.raises(EventParseError):
        parse_event("run.started", payload)
