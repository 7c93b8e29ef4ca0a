"""A delegated-operations system under test: API, worker and consumer on real backends.

    async with make_system(generator="accept") as system:
        run = await system.submit("make a weather agent")
        op_id = await system.operation_of(run)           # once it is waiting
        await system.complete(run, op_id)                # publish to operation.complete

The API and the generator are real uvicorn servers; the worker and the completion
consumer run in this process on their own runtime (as separate processes would), or,
with ``shipped=True``, as the shipped `runrelay worker` / `runrelay consumer` on uvloop
(fault tests that claim a process-level guarantee; read their logs with ``output()``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette

from api.app import create_app
from shared.errors import PublishFailed
from shared.models import RunRecord
from shared.runtime import Runtime
from shared.settings import Settings
from tests.operations import generator_double
from tests.support.http import serve_app
from tests.support.procs import Proc, Processes
from tests.support.shipped import spawn_role
from tests.support.wait import wait_for
from tests.workers.support import events, started, wait_status
from workers.completion import COMPLETIONS
from workers.consumer import CompletionConsumer
from workers.generator import create_generator_app
from workers.worker import Worker

API_KEY = "internal-test-key"
TOKEN = "tok-ops"
OWNER = "ops"


@dataclass
class System:
    runtime: Runtime  # the test's own view of the backends (publishing, reading)
    api_url: str
    generator: Starlette
    worker: Worker | None  # in-process ones; None when shipped
    consumer: CompletionConsumer | None
    procs: list[Proc] = field(default_factory=list)  # the shipped worker and consumer

    def output(self) -> str:
        """Everything the shipped processes logged so far."""
        return "\n".join(proc.output() for proc in self.procs)

    def client(self, **kw: Any) -> httpx.AsyncClient:
        kw.setdefault("timeout", httpx.Timeout(20.0))
        return httpx.AsyncClient(
            base_url=self.api_url, headers={"Authorization": f"Bearer {TOKEN}"}, **kw
        )

    async def submit(self, instructions: str = "a weather agent") -> RunRecord:
        run, _ = await self.runtime.runs.create(
            owner=OWNER, tool="generate_agent", input={"instructions": instructions}
        )
        await self.runtime.broker.publish_run(
            orjson.dumps({"run_id": run.run_id, "attempt": run.attempt})
        )
        return run

    async def operation_of(self, run: RunRecord) -> str:
        """The run's operation id, once the run is waiting for it."""
        await wait_status(self.runtime, run, "waiting")
        accepted = [e for e in await events(self.runtime, run) if e["type"] == "operation.accepted"]
        assert len(accepted) == 1, accepted
        op_id: str = accepted[0]["data"]["operation_id"]
        return op_id

    async def complete(
        self, run: RunRecord, op_id: str, *, success: bool = True, error: str | None = None
    ) -> None:
        message = {
            "operation_id": op_id,
            "task_id": run.run_id,
            "success": success,
            "result": {"name": "weather-bot"} if success else None,
            "error": error,
        }
        await self.runtime.broker.publish_completion(orjson.dumps(message))

    async def complete_once_reconnected(self, run: RunRecord, op_id: str) -> None:
        """Publish the completion, retrying until the (restarted) broker takes it."""

        async def published() -> bool:
            try:
                await self.complete(run, op_id)
            except PublishFailed:
                return False
            return True

        await wait_for(published, timeout=30, interval=0.2, message="broker never came back")


def handled(*results: str) -> float:
    """How many completions this process has handled with these results (a counter)."""
    return float(sum(COMPLETIONS.labels(r)._value.get() for r in results))


async def wait_handled(before: float, n: int, *results: str) -> None:
    await wait_for(
        lambda: handled(*results) - before >= n,
        timeout=20,
        message=f"{n} completions never handled as {results}",
    )


MakeSystem = Callable[..., contextlib.AbstractAsyncContextManager[System]]


@pytest.fixture
def make_system(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> MakeSystem:
    @contextlib.asynccontextmanager
    async def make(
        *, generator: str = "real", consumer: bool = True, shipped: bool = False, **overrides: Any
    ) -> AsyncIterator[System]:
        base = {
            "api_tokens": f"{TOKEN}:{OWNER}",
            "internal_api_key": API_KEY,
            "lease_s": 3,
            "publish_grace_s": 2,
            "early_completion_s": 10,
            "generator_timeout_s": 5,
            **overrides,
        }
        async with started(make_settings(**base)) as publisher:
            if generator == "real":
                gen_app = create_generator_app(
                    delay_s=1.5,
                    via="queue",
                    publish=publisher.broker.publish_completion,
                    webhook_url=None,
                    api_key=None,
                )
            else:
                gen_app = generator_double.create_app(
                    generator, publisher.broker.publish_completion
                )
            async with serve_app(gen_app) as gen_url:
                settings = make_settings(**{"generator_url": gen_url, **base})
                async with (
                    started(settings) as api_rt,
                    serve_app(create_app(api_rt, manage_runtime=False)) as api_url,
                ):
                    if shipped:
                        roles = ["worker", "consumer"] if consumer else ["worker"]
                        procs = [
                            await spawn_role(
                                processes,
                                role,
                                settings,
                                tmp_path / f"{role}.log",
                                runtime=publisher,
                                **_role_extra(settings),
                            )
                            for role in roles
                        ]
                        yield System(publisher, api_url, gen_app, None, None, procs)
                        return
                    async with started(settings) as worker_rt, started(settings) as consumer_rt:
                        worker = Worker(worker_rt)
                        await worker.start()
                        completion = CompletionConsumer(consumer_rt) if consumer else None
                        if completion is not None:
                            await completion.start()
                        try:
                            yield System(publisher, api_url, gen_app, worker, completion)
                        finally:
                            if completion is not None:
                                await completion.stop()
                            await worker.stop(grace_s=0)

    return make


def _role_extra(settings: Settings) -> dict[str, str]:
    """What a shipped worker or consumer needs here beyond `role_env` (the generator's terms)."""
    return {
        "RUNRELAY_EARLY_COMPLETION_S": str(settings.early_completion_s),
        "RUNRELAY_GENERATOR_TIMEOUT_S": str(settings.generator_timeout_s),
    }
