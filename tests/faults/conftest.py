"""A runrelay system under fault: API on a real uvicorn, a worker, real Redis and RabbitMQ.

    async with make_stack(heartbeat_s=0.5) as stack:
        run_id = await stack.create("story", {...})
        result = await read_stream(stack.port, f"/v1/runs/{run_id}/events", token=ALICE)
        delivered_once(result.ids, await run_ended_once(stack.runtime, run_id))

The API and worker share this process (cheap, and the test can look inside: the hub,
the tasks); tests that crash a process spawn it instead (`spawn_api`). Settings
overrides go to every part; `redis_url`/`amqp_url` point a stack at a throwaway node.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.tail import TailHub
from shared.runtime import Runtime
from shared.settings import Settings
from tests.api.conftest import build_runtime
from tests.operations.conftest import make_system  # noqa: F401 -- the delegated system, reused
from tests.support.devserver import REPO, RUNRELAY
from tests.support.http import serve_app
from tests.support.ports import free_port
from tests.support.procs import Proc, Processes
from tests.support.tools import advertise_builtin_tools
from tests.support.wait import wait_for
from workers.worker import Worker

ALICE, BOB = "tok-alice", "tok-bob"
TOKENS = f"{ALICE}:alice,{BOB}:bob"


@dataclass
class Stack:
    url: str
    app: FastAPI
    runtime: Runtime  # the API's runtime (the worker has its own, like a separate process)
    worker: Worker | None
    client_name: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def hub(self) -> TailHub:
        hub: TailHub = self.app.state.api.hub
        return hub

    def client(self, token: str | None = ALICE, **kw: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kw.setdefault("timeout", httpx.Timeout(20.0))
        return httpx.AsyncClient(base_url=self.url, headers=headers, **kw)

    async def create(
        self, tool: str, input: dict[str, Any], *, token: str = ALICE, **body: Any
    ) -> str:
        async with self.client(token) as http:
            response = await http.post("/v1/runs", json={"tool": tool, "input": input, **body})
        assert response.status_code == 202, response.text
        run_id: str = response.json()["run_id"]
        return run_id

    async def ended(self, run_id: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        async def done() -> bool:
            return (await self.runtime.runs.get(run_id)).terminal

        await wait_for(done, timeout=timeout, interval=0.05, message=f"run {run_id} never ended")


MakeStack = Callable[..., contextlib.AbstractAsyncContextManager[Stack]]


@pytest.fixture
def make_stack(make_settings: Callable[..., Settings]) -> MakeStack:
    @contextlib.asynccontextmanager
    async def make(
        *, worker: bool = True, send_buffer: int | None = None, **overrides: Any
    ) -> AsyncIterator[Stack]:
        overrides.setdefault("api_tokens", TOKENS)
        settings = make_settings(**overrides)
        client_name = f"rrfault-{uuid.uuid4().hex[:8]}"
        runtime = build_runtime(settings, "real", client_name)
        await runtime.start()
        running: Worker | None = None
        try:
            if worker:
                running = Worker(Runtime.build(settings), owns_runtime=True)
                await running.start()
            if running is None:
                await advertise_builtin_tools(settings)
            app = create_app(runtime, manage_runtime=False)
            async with serve_app(app, timeout_graceful_shutdown=2, send_buffer=send_buffer) as url:
                yield Stack(url, app, runtime, running, client_name)
        finally:
            if running is not None:
                await running.stop(grace_s=0)
            await runtime.close()

    return make


def process_env(settings: Settings, **extra: str) -> dict[str, str | None]:
    """The environment of a runrelay process on the same backends and prefix as `settings`."""
    env: dict[str, str | None] = {
        "RUNRELAY_REDIS_URL": settings.redis_url,
        "RUNRELAY_AMQP_URL": settings.amqp_url,
        "RUNRELAY_KEY_PREFIX": settings.key_prefix,
        "RUNRELAY_API_TOKENS": TOKENS,
        "RUNRELAY_HEARTBEAT_S": str(settings.heartbeat_s),
        "RUNRELAY_RETRY_MS": str(settings.retry_ms),
        "PYTHONPATH": str(REPO),
        "PORT": None,
    }
    env.update(extra)
    return env


async def post_run(port: int, tool: str, input: dict[str, Any], *, token: str = ALICE) -> str:
    """`POST /v1/runs` as a client would; the run id of the 202."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20.0) as http:
        response = await http.post(
            "/v1/runs",
            json={"tool": tool, "input": input},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


async def spawn_api(
    processes: Processes, settings: Settings, log_path: Path, **extra: str
) -> tuple[Proc, int]:
    """`runrelay api` as its own process on a free port, once `/readyz` answers 200."""
    return await spawn_api_on(processes, settings, log_path, free_port(), **extra)


async def spawn_api_on(
    processes: Processes, settings: Settings, log_path: Path, port: int, /, **extra: str
) -> tuple[Proc, int]:
    """`runrelay api` on `port` (a restart behind a balancer that knows the port)."""
    proc = processes.spawn(
        [RUNRELAY, "api", "--port", str(port)],
        process_env(settings, **extra),
        log_path=log_path,
        cwd=log_path.parent,
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=3.0) as http:

        async def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"runrelay api exited: {proc.output()}")
            try:
                return (await http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(ready, timeout=30, interval=0.1, message="runrelay api never ready")
    await advertise_builtin_tools(settings)
    return proc, port
