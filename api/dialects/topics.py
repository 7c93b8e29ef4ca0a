"""Topic streams: event logs without a run, owned by whoever publishes to them.

    POST /v1/topics/{topic}/events   {"type"?: str, "data": <any JSON>}  -> {"id": N}
    GET  /stream?topic=T             SSE, resumable with Last-Event-ID (or ?after=)

A topic lives under the caller's owner (its log key is ``topic_log(owner, topic)``),
so two owners may use the same name without ever seeing each other's events. Frames
are the native ones (``id``/``event``/``data``), served by the same stream core as
runs; a topic never ends, so a stream closes only when the connection ages out.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.cursors import check_cursor, requested_cursor
from api.deps import ApiState, Owner, State
from api.dialects.common import stream_response
from api.openapi import CURSOR, SSE, errors
from api.responses import JSONResponse
from api.streams import NATIVE
from shared.errors import BadRequest
from shared.models import utcnow, valid_id

router = APIRouter(tags=["topics"])

TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class Publish(BaseModel):
    """Body of ``POST /v1/topics/{topic}/events``."""

    model_config = ConfigDict(extra="ignore")

    type: Annotated[str, Field(pattern=TYPE_PATTERN)] = "message"
    data: Any = None


class Published(BaseModel):
    id: int = Field(description="the event's id: its SSE `id:` and a cursor")


def _check_topic(topic: str) -> str:
    if not valid_id(topic):
        raise BadRequest("topic must be 1-128 of A-Z a-z 0-9 . _ : -", "topic")
    return topic


@router.post(
    "/v1/topics/{topic}/events",
    status_code=201,
    responses=errors(400, 401, 413, 422, 503) | {201: {"model": Published}},
)
async def publish(topic: str, body: Publish, state: State, owner: Owner) -> Response:
    """Append one event to the caller's topic; answers its id (the SSE id / cursor)."""
    _check_topic(topic)
    event = {"topic": topic, "type": body.type, "data": body.data, "created_at": utcnow()}
    try:
        encoded = orjson.dumps(event)
    except orjson.JSONEncodeError as exc:
        # Valid JSON can still be unstorable: integers past 64 bits, lone surrogates.
        raise BadRequest(f"data cannot be stored as JSON: {exc}", "data") from None
    # The backend prefixes ``{"id":N,``: hand it the JSON minus its opening brace.
    event_id = await state.runtime.log.append_topic(owner, topic, body.type, encoded[1:])
    return JSONResponse({"id": event_id}, status_code=201)


@router.get(
    "/stream",
    response_class=Response,  # the answers are all in `responses`
    responses=SSE | errors(400, 401, 422, 429, 503),
    openapi_extra=CURSOR,
)
async def topic_stream(
    request: Request, state: State, owner: Owner, topic: Annotated[str, Query()]
) -> Response:
    """The caller's topic from the cursor on: missed events, then live ones, with heartbeats."""
    return await topic_event_stream(state, owner, request, topic)


async def topic_event_stream(state: ApiState, owner: str, request: Request, topic: str) -> Response:
    """The stream of `topic_stream` (also served by `api.lean`, before FastAPI)."""
    log = state.runtime.log
    key = log.keys.topic_log(owner, _check_topic(topic))
    cursor = requested_cursor(request)
    if cursor > 0:
        check_cursor(cursor, (await log.read(key, cursor, 1)).last_id)
    return stream_response(state, owner, key, cursor, NATIVE, until_terminal=False)
