"""Runs: create (and optionally stream), read, list, cancel, and their event streams."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api import metrics
from api.cursors import check_cursor, head_at, requested_cursor
from api.deps import ApiState, Owner, State
from api.headers import header
from api.openapi import CURSOR, SSE, STREAM_ENDED, errors
from api.responses import JSONResponse
from api.streams import EventStreamResponse, event_stream
from api.submit import submit_run
from shared import tracing
from shared.errors import Conflict
from shared.models import PublicRun, RunHead, RunRecord, RunStatus

router = APIRouter(prefix="/v1/runs", tags=["runs"])

TOOL_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
_JSON_PAGE_DEFAULT = 100


class CreateRun(BaseModel):
    """Body of ``POST /v1/runs``."""

    model_config = ConfigDict(extra="ignore")

    tool: Annotated[str, Field(pattern=TOOL_PATTERN, description="registered tool name")]
    input: dict[str, Any] = Field(default_factory=dict, description="the tool's input object")
    session_id: str | None = Field(default=None, description="join an existing session")
    stream: bool = Field(default=False, description="answer with the run's SSE stream")


class RunCreated(BaseModel):
    """The 202 of ``POST /v1/runs``: where the run's events are."""

    run_id: str
    session_id: str
    status: RunStatus
    events_url: str


class RunList(BaseModel):
    runs: list[PublicRun] = Field(description="newest first")


class Gap(BaseModel):
    from_: int = Field(alias="from")
    to: int


class EventsPage(BaseModel):
    """``Accept: application/json`` on a run's events: the events after the cursor."""

    events: list[dict[str, Any]] = Field(description="native events, oldest first")
    next_cursor: int = Field(description="the cursor of the next poll")
    first_id: int = Field(description="oldest id the log still holds, 0 when none")
    last_id: int = Field(description="newest id, 0 when none")
    status: RunStatus
    has_more: bool
    gap: Gap | None = Field(description="ids gone from the log before these events")


def events_url(run_id: str) -> str:
    return f"/v1/runs/{run_id}/events"


def _run_stream(state: ApiState, owner: str, run: RunRecord | RunHead, cursor: int) -> Response:
    release = state.slots.acquire(owner)
    runtime = state.runtime
    key = runtime.log.keys.run_log(run.session_id, run.run_id)
    body = event_stream(
        state.hub, runtime.settings, key, cursor, until_terminal=True, last_id=run.last_event_id
    )
    return EventStreamResponse(body, on_close=release)


@router.post(
    "",
    status_code=202,
    responses={202: {"model": RunCreated}} | SSE | errors(400, 401, 404, 409, 413, 422, 429, 503),
)
async def create_run(
    body: CreateRun,
    state: State,
    owner: Owner,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    """Record the run and publish its request; answer once the broker confirmed it."""
    # A child of FastAPI's own request span, which continues a caller's traceparent.
    with tracing.span("runrelay.create", {"runrelay.tool": body.tool}):
        run, _ = await submit_run(
            state,
            owner,
            body.tool,
            body.input,
            session_id=body.session_id,
            idempotency_key=idempotency_key,
        )
    return _created(state, owner, run, stream=body.stream)


def _created(state: ApiState, owner: str, run: RunRecord, *, stream: bool = False) -> Response:
    """The answer to a started run: its stream from event 1, or the 202 saying where it is."""
    if stream:
        return _run_stream(state, owner, run, 0)
    return JSONResponse(
        {
            "run_id": run.run_id,
            "session_id": run.session_id,
            "status": run.status.value,
            "events_url": events_url(run.run_id),
        },
        status_code=202,
    )


@router.get("", response_model=RunList, responses=errors(401, 422, 503))
async def list_runs(
    state: State,
    owner: Owner,
    session_id: str | None = None,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """The caller's runs, newest first."""
    found = await state.runtime.runs.list(owner, session_id=session_id, status=status, limit=limit)
    return {"runs": [run.public() for run in found]}


@router.get("/{run_id}", response_model=PublicRun, responses=errors(401, 404, 422, 503))
async def get_run(run_id: str, state: State, owner: Owner) -> dict[str, Any]:
    run = await state.runtime.runs.get(run_id, owner)
    return run.public()


@router.post("/{run_id}/cancel", response_model=PublicRun, responses=errors(401, 404, 422, 503))
async def cancel_run(run_id: str, state: State, owner: Owner) -> dict[str, Any]:
    """Idempotent: a run that already ended is returned as it is."""
    runs = state.runtime.runs
    run = await runs.cancel(await runs.get(run_id, owner))
    return run.public()


@router.post(
    "/{run_id}/retry",
    status_code=202,
    responses={202: {"model": RunCreated}, **errors(401, 404, 409, 422, 429, 503)},
)
async def retry_run(run_id: str, state: State, owner: Owner) -> Response:
    """A new run with the ended run's tool, input and session; it records ``retry_of``."""
    old = await state.runtime.runs.get(run_id, owner)
    if not old.terminal:
        raise Conflict(f"run {run_id} is {old.status.value}; only an ended run can be retried")
    run, _ = await submit_run(
        state, owner, old.tool, old.input, session_id=old.session_id, retry_of=old.run_id
    )
    return _created(state, owner, run)


@router.get(
    "/{run_id}/events",
    response_class=Response,  # the answers are all in `responses`
    responses={200: SSE[200] | {"model": EventsPage}}
    | STREAM_ENDED
    | errors(400, 401, 404, 422, 429, 503),
    openapi_extra=CURSOR,
)
async def run_events(
    run_id: str,
    request: Request,
    state: State,
    owner: Owner,
    limit: Annotated[int, Query(ge=1, le=1000)] = _JSON_PAGE_DEFAULT,
) -> Response:
    """SSE from the cursor to the terminal event, or a JSON page (``Accept: application/json``)."""
    if not wants_json(request):
        return await run_event_stream(state, owner, request, run_id)
    run = await state.runtime.runs.get(run_id, owner)
    cursor = requested_cursor(request)
    check_cursor(cursor, run.last_event_id)
    return await _json_page(state, run, cursor, limit)


async def run_event_stream(state: ApiState, owner: str, request: Request, run_id: str) -> Response:
    """``GET /v1/runs/{run_id}/events`` as SSE (also served by `api.lean`, before FastAPI)."""
    run, cursor = await head_at(
        state.runtime.runs, run_id, owner, lambda: requested_cursor(request)
    )
    check_cursor(cursor, run.last_event_id)
    if run.terminal and cursor == run.last_event_id:
        return Response(status_code=204)  # an EventSource stops reconnecting on 204
    return _run_stream(state, owner, run, cursor)


def wants_json(request: Request) -> bool:
    accept = header(request, b"accept") or ""
    return "application/json" in accept and "text/event-stream" not in accept


async def _json_page(state: ApiState, run: RunRecord, cursor: int, limit: int) -> Response:
    log = state.runtime.log
    page = await log.read(log.keys.run_log(run.session_id, run.run_id), cursor, limit)
    next_cursor = page.events[-1].id if page.events else cursor
    gap = page.gap(cursor)
    if gap is not None:
        metrics.GAPS.inc()
    head = b'{"events":[' + b",".join(e.json for e in page.events) + b"],"
    # Status comes from the record read before the page: a run that ended in between
    # shows its old status with has_more, and the next poll sees the end.
    tail = {
        "next_cursor": next_cursor,
        "first_id": page.first_id,
        "last_id": page.last_id,
        "status": run.status.value,
        "has_more": page.last_id > next_cursor,
        "gap": None if gap is None else {"from": gap.first, "to": gap.last},
    }
    return Response(head + orjson.dumps(tail)[1:], media_type="application/json")
