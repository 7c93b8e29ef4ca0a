"""A stand-in for an external generator, over real HTTP, in the ways real ones behave.

Modes: ``accept`` (202, the test completes the operation itself), ``early`` (publish
the completion, wait until the consumer retried it as too early,
then answer 202), ``ok`` (200 with the result), ``fail`` (500).
Requests are recorded in ``app.state.requests``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.support.wait import wait_for
from workers.completion import COMPLETIONS
from workers.generator import fake_agent


def _early_count() -> float:
    return float(COMPLETIONS.labels("early")._value.get())


def create_app(mode: str, publish: Callable[[bytes], Awaitable[None]] | None = None) -> Starlette:
    requests: list[dict[str, Any]] = []

    async def generate(request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        requests.append(body)
        result = fake_agent(body["instructions"])
        if mode == "ok":
            return JSONResponse(result)
        if mode == "fail":
            return PlainTextResponse("generator exploded", status_code=500)
        if mode == "early":
            assert publish is not None
            message = {
                "operation_id": body["operation_id"],
                "task_id": body["task_id"],
                "success": True,
                "result": result,
                "error": None,
            }
            seen = _early_count()
            await publish(orjson.dumps(message))
            # Answer only once the consumer has found the completion too early (same process).
            await wait_for(lambda: _early_count() > seen, timeout=10, message="not seen early")
        return JSONResponse({"operation_id": body["operation_id"], "status": "accepted"}, 202)

    app = Starlette(routes=[Route("/api/generate-agent", generate, methods=["POST"])])
    app.state.requests = requests
    return app
