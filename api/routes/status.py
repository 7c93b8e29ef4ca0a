"""``GET /v1/status``: queue depths, live workers, and the caller's runs by status;
``GET /v1/workers``: the workers seen in the last hour and how each left;
``GET /v1/metrics``: the process's counters as JSON, for the console's graphs."""

from __future__ import annotations

import time
from collections import Counter
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from prometheus_client import REGISTRY
from pydantic import BaseModel, ConfigDict, Field

from api import latency
from api.deps import Operator, State
from api.openapi import errors
from shared.eventlog.base import WORKER_HISTORY_S

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


class WorkerSeen(BaseModel):
    model_config = ConfigDict(extra="allow")  # the rest of the worker's heartbeat info

    worker_id: str
    last_seen: float = Field(description="its last heartbeat (unix time)")
    left: Literal["clean", "lost"] | None = Field(
        description="null while live; clean: it stopped and said so; lost: its heartbeat ran out"
    )
    left_at: float | None = Field(description="when it left (unix time)")


class WorkerHistory(BaseModel):
    workers: list[WorkerSeen] = Field(description="latest heartbeat first")


@router.get("/workers", response_model=WorkerHistory, responses=errors(401, 403, 422, 503))
async def worker_history(
    state: State,
    owner: Operator,
    since_s: Annotated[float, Query(gt=0, le=WORKER_HISTORY_S)] = WORKER_HISTORY_S,
) -> dict[str, Any]:
    """The workers live in the last `since_s` seconds (an hour at most), live or gone."""
    return {"workers": await state.runtime.workers.recent(time.time() - since_s)}


# The counters and gauges the console graphs, by Prometheus name: whichever of them this
# process has (the API's own; in `runrelay dev` the worker's and consumer's too).
_GRAPHED = (
    "runrelay_api_runs_created",
    "runrelay_api_events_sent",
    "runrelay_api_open_streams",
    "runrelay_worker_runs_finished",
    "runrelay_worker_active_runs",
)


class Latency(BaseModel):
    count: int = Field(description="events delivered in the window")
    p50: float | None = None
    p99: float | None = None


class Snapshot(BaseModel):
    at: float
    metrics: dict[str, dict[str, float]]
    queues: list[Queue]
    deliver_latency_s: Latency = Field(
        description="emit→deliver latency over the last 10 s (the histogram is on /metrics)"
    )


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
        "deliver_latency_s": latency.recent_quantiles((0.5, 0.99)),
    }
