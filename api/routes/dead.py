"""Operator routes for dead letters: list them, replay one to its queue, purge them all."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from api.deps import Operator, State
from api.openapi import errors
from shared.broker.base import DeadLetter

router = APIRouter(prefix="/v1/dead", tags=["operators"])

_PREVIEW_BYTES = 200


class DeadLetterInfo(BaseModel):
    id: str = Field(description="what replay takes")
    queue: str = Field(description="the queue it came from, and a replay goes back to")
    reason: str
    age_s: float = Field(description="seconds since it was dead-lettered (0 when unknown)")
    dead_at: float = Field(description="unix time it was dead-lettered, 0 when unknown")
    size: int = Field(description="body size in bytes")
    body_preview: str = Field(description=f"the body's first {_PREVIEW_BYTES} bytes, as text")


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetterInfo] = Field(description="oldest first")


class Purged(BaseModel):
    purged: int


def _info(letter: DeadLetter, now: float) -> dict[str, Any]:
    return {
        "id": letter.id,
        "queue": letter.source,
        "reason": letter.reason,
        "age_s": round(max(0.0, now - letter.dead_at), 3) if letter.dead_at else 0.0,
        "dead_at": letter.dead_at,
        "size": len(letter.body),
        "body_preview": letter.body[:_PREVIEW_BYTES].decode(errors="replace"),
    }


@router.get("", response_model=DeadLetterList, responses=errors(401, 403, 422, 503))
async def list_dead(
    state: State, operator: Operator, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """The dead letters in `runrelay.dead`, left in place."""
    letters = await state.runtime.broker.list_dead_letters(limit)
    now = time.time()
    return {"dead_letters": [_info(letter, now) for letter in letters]}


@router.post(
    "/{letter_id}/replay", response_model=DeadLetterInfo, responses=errors(401, 403, 404, 422, 503)
)
async def replay_dead(letter_id: str, state: State, operator: Operator) -> dict[str, Any]:
    """Publish the dead letter back to the queue it came from, and remove it."""
    return _info(await state.runtime.broker.replay_dead_letter(letter_id), time.time())


@router.delete("", response_model=Purged, responses=errors(401, 403, 503))
async def purge_dead(state: State, operator: Operator) -> dict[str, int]:
    """Remove every dead letter."""
    return {"purged": await state.runtime.broker.purge_dead_letters()}
