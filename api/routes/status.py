"""``GET /v1/status``: queue depths, live workers, and the caller's runs by status."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import Operator, State
from api.openapi import errors

router = APIRouter(prefix="/v1", tags=["status"])

_RECENT_RUNS = 1000


class Queue(BaseModel):
    name: str
    messages: int
    consumers: int


class Status(BaseModel):
    queues: list[Queue]
    workers: list[dict[str, Any]]
    runs_by_status: dict[str, int]


@router.get("/status", response_model=Status, responses=errors(401, 403, 503))
async def status(state: State, owner: Operator) -> dict[str, Any]:
    runtime = state.runtime
    queues = await runtime.broker.stats()
    workers = await runtime.workers.live()
    recent = await runtime.runs.list(owner, limit=_RECENT_RUNS)
    return {
        "queues": [
            {"name": q.name, "messages": q.messages, "consumers": q.consumers} for q in queues
        ],
        "workers": workers,
        "runs_by_status": dict(Counter(run.status.value for run in recent)),
    }
