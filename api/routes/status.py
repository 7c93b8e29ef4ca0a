"""``GET /v1/status``: queue depths, live workers, and the caller's runs by status;
``GET /v1/metrics``: the process's counters as JSON, for the console's graphs."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from fastapi import APIRouter
from prometheus_client import REGISTRY
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


# The counters and gauges the console graphs, by Prometheus name: whichever of them this
# process has (the API's own; in `runrelay dev` the worker's and consumer's too).
_GRAPHED = (
    "runrelay_api_runs_created",
    "runrelay_api_events_sent",
    "runrelay_api_open_streams",
    "runrelay_worker_runs_finished",
    "runrelay_worker_active_runs",
)


class Snapshot(BaseModel):
    at: float
    metrics: dict[str, dict[str, float]]
    queues: list[Queue]


def _sample_totals() -> dict[str, dict[str, float]]:
    """Each graphed metric's samples summed by their first label value ("" when none)."""
    out: dict[str, dict[str, float]] = {}
    for family in REGISTRY.collect():
        if family.name not in _GRAPHED:
            continue
        by_label = out.setdefault(family.name, {})
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # the counter's creation time, not a count
            label = sample.labels.get("status", "")  # runs finished: by status
            by_label[label] = by_label.get(label, 0.0) + sample.value
    return out


@router.get("/metrics", response_model=Snapshot, responses=errors(401, 403, 503))
async def metrics_snapshot(state: State, owner: Operator) -> dict[str, Any]:
    """This process's counters and gauges and the queue depths now, as JSON: the console
    polls it and graphs rates from the differences (Prometheus has ``/metrics``)."""
    queues = await state.runtime.broker.stats()
    return {
        "at": time.time(),
        "metrics": _sample_totals(),
        "queues": [
            {"name": q.name, "messages": q.messages, "consumers": q.consumers} for q in queues
        ],
    }
