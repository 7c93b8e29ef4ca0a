"""Liveness, readiness (per dependency) and Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Literal

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.responses import Response

from api.deps import State
from api.responses import JSONResponse

router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: str = Field(description='"ok", or why not')
    rabbitmq: str = Field(description='"ok", or why not')


_CHECK_TIMEOUT_S = 2.0


@router.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


async def _check(probe: Awaitable[None]) -> str:
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT_S):
            await probe
    except TimeoutError:
        return f"no answer within {_CHECK_TIMEOUT_S} s"
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return "ok"


@router.get(
    "/readyz",
    responses={
        200: {"model": Readiness},
        503: {"model": Readiness, "description": "A dependency does not answer"},
    },
)
async def readyz(state: State) -> Response:
    """200 when Redis and RabbitMQ answer; 503 naming what does not."""
    runtime = state.runtime
    redis, rabbitmq = await asyncio.gather(
        _check(runtime.log.ping()), _check(runtime.broker.ping())
    )
    ready = redis == "ok" and rabbitmq == "ok"
    body = {"status": "ok" if ready else "unavailable", "redis": redis, "rabbitmq": rabbitmq}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,  # the answer is in `responses`
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
