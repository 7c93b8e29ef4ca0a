"""AgentOS style: agents and teams (configured, each mapped to a tool), form-posted runs,
``event: <Name>`` streams and ``/resume`` by ``last_event_index``.

    GET  /agents                              GET  /teams
    POST /agents/{id}/runs                    POST /teams/{id}/runs           (form)
    POST /agents/{id}/runs/{run_id}/resume    POST /teams/{id}/runs/{run_id}/resume
    GET  /agents/{id}/runs/{run_id}           GET  /teams/{id}/runs/{run_id}

``event_index`` counts the events this dialect sends, from 0 with no gaps, as AgentOS
clients expect: native events without an AgentOS name (``run.queued``,
``tool.progress``, ``operation.*``, ``run.retrying``, ``custom.*``) are not sent and
not counted. The native cursor rule stays underneath: index ``i`` is the native id of
the ``i``-th sent event in the log, found by counting (`locate`), and a stream from
that native cursor numbers its events on from ``i + 1``. The mapping table is in
docs/dialects.md.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import Response
from starlette.types import Message

from api.deps import ApiState, Owner, State
from api.dialects.common import epoch_s, sse_data, start_run, stream_response
from api.openapi import SSE, errors
from api.responses import JSONResponse
from api.streams import StreamFormat, event_stream
from shared.errors import BadCursor, NotFound
from shared.eventlog.follow import replay
from shared.models import TERMINAL_EVENTS, RunRecord, RunStatus, StoredEvent
from shared.settings import AgentSpec

Kind = Literal["agent", "team"]

# AgentOS run statuses (what its clients compare against).
STATUS = {
    RunStatus.QUEUED: "PENDING",
    RunStatus.RUNNING: "RUNNING",
    RunStatus.WAITING: "RUNNING",  # delegated to an external service: still in progress
    RunStatus.COMPLETED: "COMPLETED",
    RunStatus.FAILED: "ERROR",
    RunStatus.CANCELLED: "CANCELLED",
}

_NAMES = {
    "run.started": "RunStarted",
    "output.message.delta": "RunContent",
    "output.message.completed": "RunContentCompleted",
    "tool.started": "ToolCallStarted",
    "tool.completed": "ToolCallCompleted",
    "run.completed": "RunCompleted",
    "run.failed": "RunError",
    "run.cancelled": "RunCancelled",
}

SENT = frozenset(_NAMES)  # the native types this dialect sends (and counts)

router = APIRouter(tags=["agentos"])


def event_name(kind: Kind, native_type: str) -> str | None:
    """The AgentOS event name of a native type (teams prefix ``Team``); None = not sent."""
    name = _NAMES.get(native_type)
    if name is None:
        return None
    return f"Team{name}" if kind == "team" else name


def to_agentos(
    kind: Kind, spec_id: str, spec: AgentSpec, event: StoredEvent, index: int
) -> dict[str, Any] | None:
    """The data of one native event as AgentOS sends it (as event number `index`), or None
    when it has no AgentOS name."""
    name = event_name(kind, event.type)
    if name is None:
        return None
    native = event.decode()
    data: dict[str, Any] = native.get("data") or {}
    out: dict[str, Any] = {
        "event": name,
        "event_index": index,
        "run_id": native["run_id"],
        "session_id": native["session_id"],
        f"{kind}_id": spec_id,
        f"{kind}_name": spec.name,
        "created_at": epoch_s(native["created_at"]),
    }
    if event.type == "output.message.delta":
        out["content"] = data.get("delta", "")
        out["content_type"] = "str"
    elif event.type == "tool.started":
        call = data.get("tool_call") or {}
        out["tool"] = {
            "tool_call_id": call.get("id"),
            "tool_name": call.get("name"),
            "tool_args": call.get("arguments"),
        }
    elif event.type == "tool.completed":
        out["tool"] = {
            "tool_call_id": data.get("tool_call_id"),
            "tool_name": data.get("tool_name"),
            "result": data.get("output"),
            "tool_call_error": not data.get("success", True),
        }
    elif event.type == "run.failed":
        out["content"] = data.get("error") or "run failed"
    elif event.type == "run.cancelled":
        out["reason"] = data.get("reason")
    if event.type in ("run.completed", "run.failed", "run.cancelled"):
        out["status"] = STATUS[RunStatus(data.get("status", event.type.removeprefix("run.")))]
    return out


def meta(name: str, run: RunRecord, **counts: int | None) -> bytes:
    """A resume meta event: ``event``, ``run_id``, ``session_id``, ``status`` and counts."""
    data = {
        "event": name,
        "run_id": run.run_id,
        "session_id": run.session_id,
        "status": STATUS[run.status],
        **counts,
    }
    return sse_data(data, event=name)


def agentos_format(
    kind: Kind,
    spec_id: str,
    spec: AgentSpec,
    *,
    first_index: int = 0,
    after: int = 0,
    then: bytes = b"",
) -> StreamFormat:
    """Frames ``event: <Name>`` numbered from `first_index`; `then` goes out right after
    the native event with id `after`.

    The numbering is this stream's own count: the stream core frames each event once,
    in order, as its cursor moves, so counting here numbers them as the log does.
    """
    next_index = first_index

    def framer(event: StoredEvent) -> bytes:
        nonlocal next_index
        data = to_agentos(kind, spec_id, spec, event, next_index)
        if data is not None:
            next_index += 1
        frame = b"" if data is None else sse_data(data, event=data["event"])
        return frame + then if then and event.id == after else frame

    return StreamFormat(framer=framer)


@dataclass(frozen=True, slots=True)
class Position:
    """A dialect index located in the native log, counted up to a native id."""

    cursor: int  # native id of the event with the wanted index (0: before the first)
    count: int  # events this dialect sends, in the log up to the native id counted to


async def locate(state: ApiState, run: RunRecord, index: int = -1) -> Position:
    """Count the sent events of `run` up to its last native id; find index `index`.

    A log trimmed by ``RUNRELAY_STREAM_MAX_EVENTS`` is counted from its oldest retained
    event, so past a trim the indexes count what is still there.
    """
    upto = run.last_event_id
    cursor = 0
    count = 0
    async for item in replay(state.runtime.log, _run_key(state, run), 0):
        if not isinstance(item, StoredEvent):
            continue  # trimmed: what is gone cannot be counted
        if item.id > upto:
            break
        if item.type in SENT:
            if count == index:
                cursor = item.id
            count += 1
    return Position(cursor, count)


def _spec(settings_map: dict[str, AgentSpec], kind: Kind, spec_id: str) -> AgentSpec:
    spec = settings_map.get(spec_id)
    if spec is None:
        raise NotFound(f"{kind} {spec_id} not found")
    return spec


def _specs(state: ApiState, kind: Kind) -> dict[str, AgentSpec]:
    settings = state.runtime.settings
    return settings.agents if kind == "agent" else settings.teams


async def _owned_run(
    state: ApiState, owner: str, kind: Kind, spec: AgentSpec, run_id: str, session_id: str | None
) -> RunRecord:
    """The caller's run of this agent/team; 404 for anything else, a wrong session included."""
    run = await state.runtime.runs.get(run_id, owner)
    if run.tool != spec.tool or (session_id and session_id != run.session_id):
        raise NotFound(f"run {run_id} not found")
    return run


def _run_key(state: ApiState, run: RunRecord) -> str:
    return state.runtime.log.keys.run_log(run.session_id, run.run_id)


async def _collect(state: ApiState, run: RunRecord) -> str | None:
    """The run's text once it ended, None if it did not within a connection's age.

    Blocking mode is a stream nobody sees: the same core, with a framer that keeps
    the text and sends nothing.
    """
    text: list[str] = []
    ended = False

    def keep(event: StoredEvent) -> bytes:
        nonlocal ended
        if event.type == "output.message.delta":
            text.append(str(event.decode()["data"].get("delta", "")))
        ended = ended or event.type in TERMINAL_EVENTS
        return b""

    body = event_stream(
        state.hub,
        state.runtime.settings,
        _run_key(state, run),
        0,
        until_terminal=True,
        fmt=StreamFormat(framer=keep),
    )
    await body.serve(_never_leaves, _discard)  # an unexpected error is logged: no text
    return "".join(text) if ended else None


async def _never_leaves() -> Message:
    """The `receive` of a stream nobody reads: its client never leaves."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")


async def _discard(message: Message) -> None:
    """The `send` of a stream nobody reads."""


async def _summary(state: ApiState, kind: Kind, spec_id: str, run: RunRecord) -> dict[str, Any]:
    """The run as AgentOS reports it; ``event_count`` counts the events this dialect sends."""
    return {
        "run_id": run.run_id,
        "session_id": run.session_id,
        f"{kind}_id": spec_id,
        "status": STATUS[run.status],
        "created_at": epoch_s(run.created_at),
        "updated_at": epoch_s(run.updated_at),
        "event_count": (await locate(state, run)).count,
        **({"error": run.error} if run.error else {}),
    }


def _kind(request: Request) -> Kind:
    """Which of the two route sets matched: the first segment of the route's own path."""
    path: str = request.scope["route"].path
    return "team" if path.startswith("/teams") else "agent"


KindOf = Annotated[Kind, Depends(_kind)]


async def list_specs(state: State, owner: Owner, kind: KindOf) -> list[dict[str, Any]]:
    """The configured agents (or teams)."""
    return [
        {"id": spec_id, "name": spec.name, "description": spec.description, "tool": spec.tool}
        for spec_id, spec in _specs(state, kind).items()
    ]


async def create_run(
    spec_id: str,
    state: State,
    owner: Owner,
    kind: KindOf,
    message: Annotated[str, Form()],
    stream: Annotated[bool, Form()] = False,
    background: Annotated[bool, Form()] = False,
    session_id: Annotated[str | None, Form()] = None,
    user_id: Annotated[str | None, Form()] = None,  # informational: auth decides the owner
) -> Response:
    """Start a run; `stream`/`background` decide whether the connection carries or owns it."""
    spec = _spec(_specs(state, kind), kind, spec_id)
    prompt = {**spec.input, "prompt": message}
    if not stream:
        run = await start_run(state, owner, spec.tool, prompt, session_id or None)
        # Blocking mode waits for the end, bounded like a stream; unfinished by then: 202.
        text = None if background else await _collect(state, run)
        if not background:
            run = await state.runtime.runs.get(run.run_id)
        summary = await _summary(state, kind, spec_id, run)
        if text is None:
            return JSONResponse(summary, status_code=202)
        return JSONResponse({**summary, "content": text})
    # The stream slot first: a 429 must not leave a run behind that nobody watches.
    release = state.slots.acquire(owner)
    try:
        run = await start_run(state, owner, spec.tool, prompt, session_id or None)
    except BaseException:
        release()
        raise
    runs = state.runtime.runs

    async def cancel() -> None:
        await runs.cancel(await runs.get(run.run_id), "client disconnected")

    # Without background the connection owns the run, as AgentOS clients expect.
    return stream_response(
        state,
        owner,
        _run_key(state, run),
        0,
        agentos_format(kind, spec_id, spec),
        on_abandon=None if background else cancel,
        release=release,
    )


async def resume_run(
    spec_id: str,
    run_id: str,
    state: State,
    owner: Owner,
    kind: KindOf,
    last_event_index: Annotated[int | None, Form()] = None,
    session_id: Annotated[str | None, Form()] = None,
) -> Response:
    """Missed events after `last_event_index` (none or -1 = all), then live ones."""
    spec = _spec(_specs(state, kind), kind, spec_id)
    run = await _owned_run(state, owner, kind, spec, run_id, session_id)
    index = -1 if last_event_index is None else last_event_index
    where = await locate(state, run, index)
    total = where.count
    if index < -1 or index + 1 > total:
        raise BadCursor(
            f"last_event_index must be -1..{total - 1}, got {index}", "last_event_index"
        )
    key = _run_key(state, run)
    if run.terminal:
        head = meta("replay", run, total_events=total, last_event_index_requested=last_event_index)
        if index + 1 == total:
            return Response(head, media_type="text/event-stream")
        fmt = agentos_format(kind, spec_id, spec, first_index=index + 1)
        return stream_response(state, owner, key, where.cursor, fmt, before=head)
    subscribed = meta("subscribed", run, current_event_count=total)
    if index + 1 == total:
        # Nothing missed: live from the end of what was counted.
        before = subscribed
        fmt = agentos_format(kind, spec_id, spec, first_index=total)
        return stream_response(state, owner, key, run.last_event_id, fmt, before=before)
    fmt = agentos_format(
        kind, spec_id, spec, first_index=index + 1, after=run.last_event_id, then=subscribed
    )
    before = meta("catch_up", run, missed_events=total - index - 1, current_event_count=total)
    return stream_response(state, owner, key, where.cursor, fmt, before=before)


async def get_run(
    spec_id: str, run_id: str, state: State, owner: Owner, kind: KindOf
) -> dict[str, Any]:
    """The run's summary."""
    spec = _spec(_specs(state, kind), kind, spec_id)
    run = await _owned_run(state, owner, kind, spec, run_id, None)
    return await _summary(state, kind, spec_id, run)


_CREATED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The ended run's summary with its `content`; with `stream`, "
        "its events as `event: <Name>` SSE",
        "content": SSE[200]["content"],
    },
    202: {
        "description": "`background`, or not ended within a connection's age: the run's summary",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
}

for _k in ("agent", "team"):
    _base = f"/{_k}s"
    router.add_api_route(
        _base, list_specs, methods=["GET"], name=f"list_{_k}s", responses=errors(401)
    )
    router.add_api_route(
        _base + "/{spec_id}/runs",
        create_run,
        methods=["POST"],
        name=f"create_{_k}_run",
        responses=errors(400, 401, 404, 409, 413, 422, 429, 503) | _CREATED,
    )
    router.add_api_route(
        _base + "/{spec_id}/runs/{run_id}/resume",
        resume_run,
        methods=["POST"],
        name=f"resume_{_k}_run",
        response_class=Response,  # the answers are all in `responses`
        responses=SSE | errors(400, 401, 404, 413, 422, 429, 503),
    )
    router.add_api_route(
        _base + "/{spec_id}/runs/{run_id}",
        get_run,
        methods=["GET"],
        name=f"get_{_k}_run",
        responses=errors(401, 404, 422, 503),
    )
