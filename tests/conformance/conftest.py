"""`runrelay api` + `runrelay worker` as shipped, for reading runs as Durable Streams.

    async with run_system(stream_max_events="10") as system:
        run_id = await post_run(system.port, "countdown", {...})
        events = await system.logged(run_id)  # what the log holds, to compare with

Both are subprocesses on real Redis and RabbitMQ; the test's own runtime only
observes (the worker's heartbeat, the run's record and log).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.models import StoredEvent
from shared.runtime import Runtime
from shared.settings import Settings
from tests.faults.conftest import spawn_api
from tests.support.devserver import REPO
from tests.support.procs import Processes
from tests.support.shipped import spawn_role
from tests.support.wait import wait_for
from tests.workers.support import started


def ensure_node_packages() -> None:
    """The pinned npm packages of tests/conformance (scripts/ensure-conformance), or fail."""
    install = subprocess.run(
        [str(REPO / "scripts" / "ensure-conformance")], capture_output=True, text=True, check=False
    )
    if install.returncode != 0:
        pytest.fail(f"scripts/ensure-conformance failed:\n{install.stderr}", pytrace=False)


@dataclass
class RunSystem:
    port: int
    runtime: Runtime

    async def ended(self, run_id: str) -> None:
        async def done() -> bool:
            record = await self.runtime.store.get_run(run_id)
            return record is not None and record.terminal

        await wait_for(done, timeout=30, interval=0.05, message=f"run {run_id} never ended")

    async def logged(self, run_id: str) -> list[StoredEvent]:
        """Every event the run's log holds, in order."""
        record = await self.runtime.store.get_run(run_id)
        assert record is not None
        key = self.runtime.log.keys.run_log(record.session_id, run_id)
        events: list[StoredEvent] = []
        while True:
            page = await self.runtime.log.read(key, events[-1].id if events else 0, 500)
            if not page.events:
                return events
            events += page.events


MakeRunSystem = Callable[..., contextlib.AbstractAsyncContextManager[RunSystem]]


@pytest.fixture
def run_system(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> MakeRunSystem:
    """`run_system(**env)`: an API and a worker, each with ``RUNRELAY_<NAME>=value`` for
    every keyword (``stream_max_events="10"``)."""

    @contextlib.asynccontextmanager
    async def make(**env: str) -> AsyncIterator[RunSystem]:
        settings = make_settings()
        extra = {f"RUNRELAY_{name.upper()}": value for name, value in env.items()}
        _, port = await spawn_api(processes, settings, tmp_path / "api.log", **extra)
        async with started(settings) as runtime:
            log = tmp_path / "worker.log"
            await spawn_role(processes, "worker", settings, log, runtime=runtime, **extra)
            yield RunSystem(port, runtime)

    return make
