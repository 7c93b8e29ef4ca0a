"""An API process under test: a real uvicorn on 127.0.0.1 over real or embedded backends.

    async with make_api(heartbeat_s=0.2) as api:
        async with api.client("alice") as http: ...
        run = await api.producer.start(run_id)      # act as the worker

Every test using `make_api` runs twice: over Redis + RabbitMQ and over the embedded
backends. There is no worker yet, so tests drive the real lifecycle (`Runs`) directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.tail import TailHub
from shared.broker.base import Broker, Names
from shared.eventlog.base import Stores
from shared.lifecycle import Runs
from shared.models import RunRecord, RunStatus
from shared.runtime import Runtime
from shared.settings import Settings
from tests.support.http import serve_app
from workers.tools import load_tool_modules, tool_specs

TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}
TOKENS_SETTING = ",".join(f"{token}:{owner}" for owner, token in TOKENS.items())


class Producer:
    """Plays the worker: the real lifecycle calls a worker makes, on the API's own runtime."""

    def __init__(self, runs: Runs) -> None:
        self.runs = runs

    async def start(self, run_id: str) -> RunRecord:
        run = await self.runs.get(run_id)
        started = await self.runs.start(run, worker="test-worker", lease_until=time.time() + 600)
        assert started is not None
        return started

    async def emit(self, run: RunRecord, n: int, text: str = "x") -> None:
        for i in range(n):
            await self.runs.emit(run, "output.message.delta", {"delta": f"{text}{i}"})

    async def finish(self, run: RunRecord) -> int:
        return await self.runs.finish(run, RunStatus.COMPLETED)


@dataclass
class Api:
    url: str
    app: FastAPI
    runtime: Runtime
    backend: str
    client_name: str | None

    @property
    def producer(self) -> Producer:
        return Producer(self.runtime.runs)

    @property
    def hub(self) -> TailHub:
        hub: TailHub = self.app.state.api.hub
        return hub

    def client(self, owner: str | None = "alice", **kw: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {TOKENS[owner]}"} if owner else {}
        kw.setdefault("timeout", httpx.Timeout(20.0))
        return httpx.AsyncClient(base_url=self.url, headers=headers, **kw)

    async def raw_get(
        self, path: str, owner: str = "alice"
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """`path` requested on a connection of its own, its answer read as raw bytes."""
        host, port = self.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKENS[owner]}\r\n"
            "\r\n".encode()
        )
        await writer.drain()
        return reader, writer

    async def create_run(self, http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
        body.setdefault("tool", "story")
        body.setdefault("input", {"prompt": "hi"})
        response = await http.post("/v1/runs", json=body)
        assert response.status_code == 202, response.text
        created: dict[str, Any] = response.json()
        return created


MakeApi = Callable[..., contextlib.AbstractAsyncContextManager[Api]]


def build_runtime(settings: Settings, backend: str, client_name: str | None) -> Runtime:
    stores: Stores
    broker: Broker
    if backend == "real":
        from shared.broker.rabbitmq import RabbitBroker
        from shared.eventlog.redis_records import redis_stores

        assert settings.redis_url and settings.amqp_url
        stores = redis_stores(
            settings.redis_url,
            prefix=settings.key_prefix,
            ttl_s=settings.stream_ttl_s,
            max_events=settings.stream_max_events,
            client_name=client_name,
        )
        broker = RabbitBroker(
            settings.amqp_url,
            name="runrelay-api-test",
            names=Names.for_prefix(settings.key_prefix),
        )
    else:
        from shared.broker.memory import MemoryBroker
        from shared.eventlog.memory import memory_stores

        stores = memory_stores(
            prefix=settings.key_prefix,
            ttl_s=settings.stream_ttl_s,
            max_events=settings.stream_max_events,
        )
        broker = MemoryBroker(names=Names.for_prefix(settings.key_prefix))
    return Runtime(settings, stores, broker, embedded=backend != "real")


@pytest.fixture(params=["real", "memory"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_api(make_settings: Callable[..., Settings], backend: str) -> MakeApi:
    @contextlib.asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[Api]:
        allow_open = overrides.pop("allow_open", False)
        advertise = overrides.pop("advertise_tools", True)
        overrides.setdefault("api_tokens", TOKENS_SETTING)
        settings = make_settings(**overrides)
        client_name = f"rrapi-{uuid.uuid4().hex[:8]}" if backend == "real" else None
        runtime = build_runtime(settings, backend, client_name)
        app = create_app(runtime, allow_open=allow_open)
        async with serve_app(app, timeout_graceful_shutdown=2) as url:
            # No worker runs here: advertise the built-in tools as one would, so runs of
            # them pass the API's check at create.
            if advertise:
                load_tool_modules()
                await runtime.workers.advertise_tools(tool_specs(), time.time())
            yield Api(url, app, runtime, backend, client_name)

    return make
