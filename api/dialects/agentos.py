"""AgentOS style: agents and teams (configured, each mapped to a tool), form-posted runs,
``event: <Name>`` streams and ``/resume`` by ``last_event_index``.

    GET  /agents                              GET  /teams
    POST /agents/{id}/runs                    POST /teams/{id}/runs           (form)
    POST /agents/{id}/runs/{run_id}/resume    POST /teams/{id}/runs/{run_id}/resume
    GET  /agents/{id}/runs/{run_id}           GET  /teams/{id}/runs/{run_id}

``event_index`` is the native event id - 1, so a resume is the native cursor rule
unchanged. Native events without an AgentOS name (``run.queued``, ``tool.progress``,
``operation.*``, ``run.retrying``, ``custom.*``) are not sent; they keep their index,
so the indexes a client sees may skip numbers, but resuming from any of them is exact.
The mapping table is in docs/dialects.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form
from starlette.responses import Response

from api.deps import ApiState, Owner, State
from api.dialects.common import epoch_s, sse_data, start_run, stream_response
from api.openapi import SSE, errors
from api.responses import JSONResponse
from api.streams import StreamFormat, event_stream
from shared.errors import BadCursor, NotFound
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

router = APIRouter(tags=["agentos"])


def event_name(kind: Kind, native_type: str) -> str | None:
    """The AgentOS event name of a native type (teams prefix ``Team``); None = not sent."""
    name = _NAMES.get(native_type)
    if name is None:
        return None
    return f"Team{name}" if kind == "team" else name


def to_agentos(
    kind: Kind, spec_id: str, spec: AgentSpec, event: StoredEvent
) -> dict[str, Any] | None:
    """The data of one native event as AgentOS sends it, or None when it has no AgentOS name."""
    name = event_name(kind, event.type)
    if name is None:
        return None
    native = event.decode()
    data: dict[str, Any] = native.get("data") or {}
    out: dict[str, Any] = {
        "event": name,
        "event_index": event.id - 1,
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
    kind: Kind, spec_id: str, spec: AgentSpec, *, after: int = 0, then: bytes = b""
) -> StreamFormat:
    """Frames ``event: <Name>``; `then` goes out right after the event with id `after`."""

    def framer(event: StoredEvent) -> bytes:
        data = to_agentos(kind, spec_id, spec, event)
        frame = b"" if data is None else sse_data(data, event=data["event"])
        return frame + then if then and event.id == after else frame

    return StreamFormat(framer=framer)


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
    try:
        async for _ in body:
            pass
    finally:
        await body.aclose()
    return "".join(text) if ended else None


def _summary(kind: Kind, spec_id: str, spec: AgentSpec, run: RunRecord) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "session_id": run.session_id,
        f"{kind}_id": spec_id,
        "status": STATUS[run.status],
        "created_at": epoch_s(run.created_at),
        "updated_at": epoch_s(run.updated_at),
        "event_count": run.last_event_id,
        **({"error": run.error} if run.error else {}),
    }


def _register(kind: Kind) -> None:
    base = f"/{kind}s"

    @router.get(base, name=f"list_{kind}s", responses=errors(401))
    async def listing(state: State, owner: Owner) -> list[dict[str, Any]]:
        return [
            {"id": spec_id, "name": spec.name, "description": spec.description, "tool": spec.tool}
            for spec_id, spec in _specs(state, kind).items()
        ]

    @router.post(
        base + "/{spec_id}/runs",
        name=f"create_{kind}_run",
        responses=errors(400, 401, 404, 409, 413, 422, 429, 503)
        | {
            200: {
                "description": "The ended run's summary with its `content`; with `stream`, "
                "its events as `event: <Name>` SSE",
                "content": SSE[200]["content"],
            },
            202: {
                "description": "`background`, or not ended within a connection's age: "
                "the run's summary",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
        },
    )
    async def create(
        spec_id: str,
        state: State,
        owner: Owner,
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
            if text is None:
                return JSONResponse(_summary(kind, spec_id, spec, run), status_code=202)
            return JSONResponse({**_summary(kind, spec_id, spec, run), "content": text})
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

    @router.post(
        base + "/{spec_id}/runs/{run_id}/resume",
        name=f"resume_{kind}_run",
        response_class=Response,  # the answers are all in `responses`
        responses=SSE | errors(400, 401, 404, 413, 422, 429, 503),
    )
    async def resume(
        spec_id: str,
        run_id: str,
        state: State,
        owner: Owner,
        last_event_index: Annotated[int | None, Form()] = None,
        session_id: Annotated[str | None, Form()] = None,
    ) -> Response:
        """Missed events after `last_event_index` (none or -1 = all), then live ones."""
        spec = _spec(_specs(state, kind), kind, spec_id)
        run = await _owned_run(state, owner, kind, spec, run_id, session_id)
        index = -1 if last_event_index is None else last_event_index
        if index < -1 or index + 1 > run.last_event_id:
            raise BadCursor(
                f"last_event_index must be -1..{run.last_event_id - 1}, got {index}",
                "last_event_index",
            )
        cursor = index + 1
        total = run.last_event_id
        if run.terminal:
            head = meta(
                "replay", run, total_events=total, last_event_index_requested=last_event_index
            )
            if cursor == total:
                return Response(head, media_type="text/event-stream")
            return stream_response(
                state,
                owner,
                _run_key(state, run),
                cursor,
                agentos_format(kind, spec_id, spec),
                before=head,
            )
        subscribed = meta("subscribed", run, current_event_count=total)
        if cursor == total:
            fmt, before = agentos_format(kind, spec_id, spec), subscribed
        else:
            fmt = agentos_format(kind, spec_id, spec, after=total, then=subscribed)
            before = meta("catch_up", run, missed_events=total - cursor, current_event_count=total)
        return stream_response(state, owner, _run_key(state, run), cursor, fmt, before=before)

    @router.get(
        base + "/{spec_id}/runs/{run_id}",
        name=f"get_{kind}_run",
        responses=errors(401, 404, 422, 503),
    )
    async def status(spec_id: str, run_id: str, state: State, owner: Owner) -> dict[str, Any]:
        spec = _spec(_specs(state, kind), kind, spec_id)
        run = await _owned_run(state, owner, kind, spec, run_id, None)
        return _summary(kind, spec_id, spec, run)


_register("agent")
_register("team")
