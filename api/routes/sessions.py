"""A session's stream: the events of all its runs, with session-local ids."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from api.cursors import check_cursor, requested_cursor
from api.deps import ApiState, Owner, State
from api.openapi import CURSOR, SSE, errors
from api.streams import EventStreamResponse, event_stream
from shared.errors import NotFound
from shared.models import valid_id

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@router.get(
    "/{session_id}/events",
    response_class=Response,  # the answers are all in `responses`
    responses=SSE | errors(400, 401, 404, 422, 429, 503),
    openapi_extra=CURSOR,
)
async def session_events(session_id: str, request: Request, state: State, owner: Owner) -> Response:
    """SSE over every run of the session; it ends only when the connection ages out."""
    return await session_event_stream(state, owner, request, session_id)


async def session_event_stream(
    state: ApiState, owner: str, request: Request, session_id: str
) -> Response:
    """The stream of `session_events` (also served by `api.lean`, before FastAPI)."""
    log = state.runtime.log
    # Sessions are per owner: another owner's session of this id is simply not ours.
    if not valid_id(session_id) or not await state.runtime.store.session_exists(owner, session_id):
        raise NotFound(f"session {session_id} not found")
    cursor = requested_cursor(request)
    key = log.keys.session_log(session_id, owner)
    if cursor > 0:
        check_cursor(cursor, (await log.read(key, cursor, 1)).last_id)
    release = state.slots.acquire(owner)
    body = event_stream(state.hub, state.runtime.settings, key, cursor, until_terminal=False)
    return EventStreamResponse(body, on_close=release)
