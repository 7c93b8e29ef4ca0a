"""The SDK against a real API on real Redis and RabbitMQ, through a proxy that breaks things.

Given a real uvicorn serving the API, a `Worker` running story runs on the same real
backends, and a `FaultProxy` between the SDK and the API: when connections are cut at
random points, stalled without a close, or the client process is replaced mid-run, then
the caller still sees every event of the run exactly once, in order.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from api.app import create_app
from runrelay import AnyEvent, MessageDelta, RunRelay
from shared.runtime import Runtime
from shared.settings import Settings
from tests.support.http import serve_app
from tests.support.proxy import FaultProxy
from tests.support.wait import wait_for
from workers.worker import Worker

pytestmark = pytest.mark.timeout(60)

TOKEN = "tok-e2e"


@dataclass
class Stack:
    api_url: str  # direct, for the test's own checks
    proxy: FaultProxy  # what the SDK talks to

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    def client(self, **options: Any) -> RunRelay:
        options.setdefault("backoff_base_s", 0.02)
        options.setdefault("backoff_max_s", 0.2)
        options.setdefault("max_retries", 30)
        return RunRelay(self.proxy_url, TOKEN, **options)

    async def logged_events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's whole log as the API stores it (read directly, not through the proxy)."""
        headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
        async with httpx.AsyncClient(base_url=self.api_url, headers=headers) as http:
            response = await http.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})
        page: dict[str, Any] = response.json()
        assert not page["has_more"]
        events: list[dict[str, Any]] = page["events"]
        return events


@pytest.fixture
async def stack(make_settings: Callable[..., Settings]) -> AsyncIterator[Stack]:
    # Heartbeats (5 s) slower than the clients' stale_after (1 s): silence is real silence.
    settings = make_settings(api_tokens=f"{TOKEN}:alice", heartbeat_s=5.0, retry_ms=0)
    runtime = Runtime.build(settings)
    await runtime.start()
    worker = Worker(runtime)
    try:
        await worker.start()
        app = create_app(runtime, manage_runtime=False)
        async with serve_app(app, timeout_graceful_shutdown=2) as url:
            proxy = FaultProxy(int(url.rsplit(":", 1)[1]))
            async with proxy:
                yield Stack(url, proxy)
    finally:
        await worker.stop(grace_s=0)
        await runtime.close()


def wire_data(event: AnyEvent) -> Any:
    data = event.data
    return data if isinstance(data, dict) else data.model_dump(exclude_unset=True, by_alias=True)


def assert_whole_log(seen: list[AnyEvent], logged: list[dict[str, Any]]) -> None:
    """Every logged event once, in order, with the same type and data; nothing else."""
    assert [e.id for e in seen] == list(range(1, len(logged) + 1))
    assert [(e.id, e.type, wire_data(e)) for e in seen] == [
        (e["id"], e["type"], e["data"]) for e in logged
    ]
    assert seen[-1].type == "run.completed"


async def test_random_cuts_lose_and_repeat_nothing(stack: Stack) -> None:
    rng = random.Random(7)
    seen: list[AnyEvent] = []
    async with stack.client(stale_after=5.0) as client:
        run = await client.runs.create("story", {"prompt": "a knight", "paragraphs": 8})
        async with aclosing(client.events.stream(run_id=run.run_id)) as events:
            async for event in events:
                seen.append(event)
                roll = rng.random()
                if roll < 0.08:
                    await stack.proxy.cut_all()  # between two events
                elif roll < 0.16:
                    # Somewhere inside what comes next: headers, a frame, a heartbeat.
                    stack.proxy.cut_after_bytes(rng.randint(1, 600), times=1)

    assert stack.proxy.connections_total >= 8  # it really was cut, many times
    assert_whole_log(seen, await stack.logged_events(run.run_id))


async def test_a_stalled_connection_is_detected_after_stale_after_and_resumed(
    stack: Stack,
) -> None:
    seen: list[AnyEvent] = []
    async with stack.client(stale_after=1.0) as client:
        run = await client.runs.create(
            "story", {"prompt": "a knight", "paragraphs": 4, "delay_ms": 40}
        )

        async def follow() -> None:
            async with aclosing(client.events.stream(run_id=run.run_id)) as events:
                async for event in events:
                    seen.append(event)

        reader = asyncio.create_task(follow())
        await wait_for(lambda: len(seen) >= 5, message="no events before the stall")
        connections = stack.proxy.connections_total
        stack.proxy.stall()  # bytes stop in both directions; nothing is closed
        # Only the client's silence watchdog can open a new connection now: the server
        # neither closes (max_connection_s 300) nor sends a heartbeat within stale_after.
        await wait_for(
            lambda: stack.proxy.connections_total > connections,
            timeout=10,
            message="the stalled connection was never given up",
        )
        stack.proxy.resume()
        await asyncio.wait_for(reader, 30)

    assert_whole_log(seen, await stack.logged_events(run.run_id))


async def test_since_id_resumes_in_a_new_client_after_a_restart(stack: Stack) -> None:
    first: list[AnyEvent] = []
    async with stack.client() as client:
        run = await client.runs.create(
            "story", {"prompt": "a knight", "paragraphs": 3, "delay_ms": 10}
        )
        async with aclosing(client.events.stream(run_id=run.run_id)) as events:
            async for event in events:
                first.append(event)
                if isinstance(event, MessageDelta) and len(first) >= 6:
                    break  # the process "dies" here, remembering only the last id
    last_id = first[-1].id
    assert last_id is not None

    rest: list[AnyEvent] = []
    async with (
        stack.client() as fresh,
        aclosing(fresh.events.stream(run_id=run.run_id, since_id=last_id)) as events,
    ):
        async for event in events:
            rest.append(event)

    assert_whole_log(first + rest, await stack.logged_events(run.run_id))
