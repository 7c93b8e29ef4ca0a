"""`runrelay generator`: an example external service that answers 202 and completes later.

    app = create_generator_app(delay_s=3, via="queue", publish=broker.publish_completion,
                               webhook_url=None, api_key=None)

``POST /api/generate-agent`` (and ``/api/edit-agent``) with ``{instructions,
operation_id, task_id}`` answers ``202 {operation_id, status: "accepted"}``; after
`delay_s` it reports a deterministic fake agent built from the instructions, either
by publishing the SPEC §6 completion message (``via="queue"``, confirmed) or by
calling ``POST {webhook_url}/v1/operations/{operation_id}/complete`` with
``X-API-Key`` (``via="webhook"``). The factory keeps no global state, so
`runrelay dev` can mount it next to everything else on one embedded broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import orjson
import uvicorn
from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared.errors import PublishFailed
from shared.models import Ident
from shared.runtime import Runtime
from shared.settings import Settings

log = logging.getLogger(__name__)

VIAS = ("queue", "webhook")
_WEBHOOK_TIMEOUT_S = 10.0
_WEBHOOK_ATTEMPTS = 5
# A broker restart takes seconds; the run waits up to RUNRELAY_OPERATION_TIMEOUT_S anyway.
PUBLISH_PATIENCE_S = 120.0
_PUBLISH_PAUSE_MAX_S = 5.0

Publish = Callable[[bytes], Awaitable[None]]


class GenerateRequest(BaseModel):
    instructions: str = Field(min_length=1, max_length=20_000)
    operation_id: Ident
    task_id: Ident
    agent_id: str | None = Field(default=None, max_length=128)


def fake_agent(instructions: str, agent_id: str | None = None) -> dict[str, Any]:
    """The "generated agent": a pure function of the instructions."""
    digest = hashlib.sha256(instructions.encode()).hexdigest()
    words = [w.strip(".,;:!?").lower() for w in instructions.split()][:3]
    name = "-".join(w for w in words if w) or "agent"
    return {
        "agent_id": agent_id or f"agent_{digest[:12]}",
        "name": name,
        "instructions": instructions,
        "model": "example-model",
        "tools": ["search", "summarise"] if len(instructions) % 2 else ["search"],
    }


def create_generator_app(
    *,
    delay_s: float,
    via: str,
    publish: Publish | None,
    webhook_url: str | None,
    api_key: str | None,
) -> Starlette:
    """The example generator; `publish` is needed for ``via="queue"``, `webhook_url` for webhook."""
    if via not in VIAS:
        raise ValueError(f"via must be one of {VIAS}, not {via!r}")
    if via == "queue" and publish is None:
        raise ValueError("via='queue' needs a publish function")
    if via == "webhook" and not webhook_url:
        raise ValueError("via='webhook' needs webhook_url")
    pending: set[asyncio.Task[None]] = set()

    async def complete(request: GenerateRequest) -> None:
        await asyncio.sleep(delay_s)
        message = {
            "operation_id": request.operation_id,
            "task_id": request.task_id,
            "success": True,
            "result": fake_agent(request.instructions, request.agent_id),
            "error": None,
        }
        if via == "queue":
            assert publish is not None
            await _publish_until_confirmed(publish, orjson.dumps(message))
        else:
            await _call_webhook(webhook_url or "", api_key, message)
        log.info("generator: operation %s completed via %s", request.operation_id, via)

    async def generate(request: Request) -> JSONResponse:
        try:
            body = GenerateRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"error": {"code": "invalid_request", "message": str(exc)}}, 422)
        task = asyncio.create_task(complete(body), name=f"complete {body.operation_id}")
        pending.add(task)
        task.add_done_callback(_forget(pending))
        return JSONResponse({"operation_id": body.operation_id, "status": "accepted"}, 202)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for task in list(pending):
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    routes = [
        Route("/api/generate-agent", generate, methods=["POST"]),
        Route("/api/edit-agent", generate, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _forget(pending: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("generator: completion failed: %r", task.exception())

    return done


async def _publish_until_confirmed(publish: Publish, body: bytes) -> None:
    """Publish, and again while the broker is away, for up to `PUBLISH_PATIENCE_S`.

    A completion is the only copy of the result: dropped on a broker blip, its run
    would wait (and then fail) for an operation that did finish.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + PUBLISH_PATIENCE_S
    pause = 0.2
    while True:
        try:
            await publish(body)
            return
        except PublishFailed as exc:
            if loop.time() + pause > give_up:
                raise
            log.warning("generator: publish failed, again in %.1f s: %s", pause, exc)
        await asyncio.sleep(pause)  # backoff while the broker reconnects
        pause = min(pause * 2, _PUBLISH_PAUSE_MAX_S)


async def _call_webhook(base_url: str, api_key: str | None, message: dict[str, Any]) -> None:
    url = f"{base_url.rstrip('/')}/v1/operations/{message['operation_id']}/complete"
    body = {k: message[k] for k in ("success", "result", "error")}
    headers = {"X-API-Key": api_key} if api_key else {}
    async with httpx.AsyncClient(timeout=_WEBHOOK_TIMEOUT_S) as client:
        for attempt in range(1, _WEBHOOK_ATTEMPTS + 1):
            try:
                response = await client.post(url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                log.warning("generator: webhook attempt %d failed: %r", attempt, exc)
            else:
                if response.status_code < 500:
                    response.raise_for_status()
                    return
                log.warning("generator: webhook attempt %d: HTTP %d", attempt, response.status_code)
            await asyncio.sleep(min(2.0**attempt, 10.0))
    raise RuntimeError(f"webhook {url} failed {_WEBHOOK_ATTEMPTS} times")


class _Server(uvicorn.Server):
    # uvicorn re-raises the stopping signal after shutdown (exit 143); stop quietly, exit 0.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def run_generator(settings: Settings, host: str, port: int, via: str, delay_s: float) -> None:
    """`runrelay generator`: queue mode needs ``RUNRELAY_AMQP_URL``; webhook mode calls the API
    at ``RUNRELAY_URL`` (default http://127.0.0.1:8000) with ``RUNRELAY_INTERNAL_API_KEY``."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_serve(settings, host, port, via, delay_s))


async def _serve(settings: Settings, host: str, port: int, via: str, delay_s: float) -> None:
    key = settings.internal_api_key.get_secret_value() if settings.internal_api_key else None
    if via == "webhook":
        url = os.environ.get("RUNRELAY_URL") or "http://127.0.0.1:8000"
        app = create_generator_app(
            delay_s=delay_s, via=via, publish=None, webhook_url=url, api_key=key
        )
        await _Server(uvicorn.Config(app, host=host, port=port)).serve()
        return
    runtime = Runtime.build(settings)
    await runtime.broker.connect()
    try:
        app = create_generator_app(
            delay_s=delay_s,
            via=via,
            publish=runtime.broker.publish_completion,
            webhook_url=None,
            api_key=key,
        )
        await _Server(uvicorn.Config(app, host=host, port=port)).serve()
    finally:
        await runtime.broker.close()
