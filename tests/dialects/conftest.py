"""The whole system for dialect tests: real Redis and RabbitMQ, a real uvicorn serving the
API, and a real worker in this process on the same Runtime, so runs execute the story tool.

    async def test_x(system: System) -> None:
        async with system.client("alice") as http: ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from api.app import create_app
from shared.models import RunRecord
from shared.runtime import Runtime
from shared.settings import Settings
from tests.api.conftest import TOKENS, TOKENS_SETTING
from tests.support.http import serve_app
from tests.support.wait import wait_for
from workers.worker import Worker

# Paced so a client can read part of a run, drop, and come back while it still runs.
SLOW = {"paragraphs": 6, "delay_ms": 60}
FAST = {"paragraphs": 2, "delay_ms": 0}
TICKS = {"seconds": 1.2, "interval_s": 0.1}
AGENTS = {
    "story": {"name": "Story", "tool": "story", "input": FAST},
    "slow": {"name": "Slow story", "tool": "story", "input": SLOW},
    # tool.progress between the tool call's start and end: native events AgentOS never sees.
    "countdown": {"name": "Countdown", "tool": "countdown", "input": TICKS},
}
TEAMS = {
    "story": {"name": "Story team", "tool": "story", "input": FAST},
    "slow": {"name": "Slow story team", "tool": "story", "input": SLOW},
}


@dataclass
class System:
    url: str
    runtime: Runtime
    worker: Worker

    def client(self, owner: str | None = "alice", **kw: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {TOKENS[owner]}"} if owner else {}
        kw.setdefault("timeout", httpx.Timeout(20.0))
        return httpx.AsyncClient(base_url=self.url, headers=headers, **kw)

    async def run(self, run_id: str) -> RunRecord:
        return await self.runtime.runs.get(run_id)

    async def wait_run(self, run_id: str, predicate: Callable[[RunRecord], bool]) -> RunRecord:
        async def check() -> RunRecord | None:
            run = await self.run(run_id)
            return run if predicate(run) else None

        found = await wait_for(check, timeout=20, message=f"run {run_id}")
        assert found is not None
        return found

    async def native_events(self, run_id: str) -> list[dict[str, Any]]:
        run = await self.run(run_id)
        key = self.runtime.log.keys.run_log(run.session_id, run.run_id)
        return [e.decode() for e in (await self.runtime.log.read(key, 0, 100_000)).events]


@pytest.fixture
async def system(make_settings: Callable[..., Settings]) -> AsyncIterator[System]:
    settings = make_settings(
        api_tokens=TOKENS_SETTING,
        heartbeat_s=0.1,
        agents=AGENTS,
        teams=TEAMS,
        internal_api_key="test-internal-key",
    )
    runtime = Runtime.build(settings)
    await runtime.start()
    worker = Worker(runtime)
    try:
        await worker.start()
        app = create_app(runtime, manage_runtime=False)
        async with serve_app(app, timeout_graceful_shutdown=2) as url:
            yield System(url, runtime, worker)
    finally:
        await worker.stop(grace_s=0)
        await runtime.close()
