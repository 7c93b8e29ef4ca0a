"""SIGTERM is a deploy, not a crash: every shipped process drains and exits 0.

Process managers (systemd, Kubernetes, honcho) read any other exit as a failure. The
API also ends its open streams at a frame boundary first, so a client resumes on
another process with nothing lost or repeated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from tests.faults.conftest import ALICE, spawn_api
from tests.faults.invariants import delivered_once, run_ended_once
from tests.faults.rawsse import read_stream
from tests.support.procs import Processes
from tests.support.shipped import spawn_generator, spawn_role
from tests.support.wait import wait_for
from tests.workers.support import started

pytestmark = pytest.mark.timeout(90)

STORY = {"prompt": "a night shift", "paragraphs": 3, "delay_ms": 30}


async def test_api_worker_and_consumer_exit_0_on_sigterm_and_streams_resume_exactly(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    settings = make_settings(heartbeat_s=1.0, retry_ms=0, shutdown_grace_s=20.0)
    async with started(settings) as runtime:
        worker = await spawn_role(
            processes, "worker", settings, tmp_path / "w.log", runtime=runtime
        )
        consumer = await spawn_role(
            processes, "consumer", settings, tmp_path / "c.log", runtime=runtime
        )
        first, first_port = await spawn_api(processes, settings, tmp_path / "api1.log")
        _, second_port = await spawn_api(processes, settings, tmp_path / "api2.log")
        headers = {"Authorization": f"Bearer {ALICE}"}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{first_port}", headers=headers
        ) as http:
            created = await http.post("/v1/runs", json={"tool": "story", "input": STORY})
        assert created.status_code == 202, created.text
        run_id = created.json()["run_id"]
        path = f"/v1/runs/{run_id}/events"
        stream = asyncio.create_task(read_stream(first_port, path, token=ALICE))

        async def streaming() -> bool:
            run = await runtime.runs.get(run_id)
            return run.last_event_id >= 6

        await wait_for(streaming, timeout=20, message="the run never streamed")
        first.terminate()
        cut = await asyncio.wait_for(stream, timeout=20)
        assert await first.wait_async(timeout=20) == 0, first.output()[-2000:]
        assert not cut.ended and cut.ids, "the stream was not cut mid-run: nothing proved"
        rest = await read_stream(second_port, path, token=ALICE, cursor=cut.ids[-1])
        assert rest.ended, rest
        log = await run_ended_once(runtime, run_id)
        delivered_once(cut.ids + rest.ids, log)

        worker.terminate()
        consumer.terminate()
        assert await worker.wait_async(timeout=30) == 0, worker.output()[-2000:]
        assert await consumer.wait_async(timeout=30) == 0, consumer.output()[-2000:]


async def test_the_generator_exits_0_on_sigterm(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    # uvicorn re-raises the stopping signal after its shutdown (exit 143), which a process
    # manager reads as a crash: the generator's server overrides that, as the API's does.
    settings = make_settings()
    generator, _ = await spawn_generator(processes, settings, tmp_path / "g.log")
    generator.terminate()
    assert await generator.wait_async(timeout=30) == 0, generator.output()[-2000:]
