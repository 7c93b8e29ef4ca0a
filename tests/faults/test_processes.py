"""kill -9 of the processes that serve and run: the client and the run never notice a loss.

Every process here is a shipped entry point (`runrelay api`, `runrelay worker`, on
uvloop) and the client is the raw SSE reader, which reports every id it received
across reconnects — a repeat on resume is a failure, not something an SDK hides.
A consumer killed mid-message is proven by tests/operations/test_faults.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.faults.conftest import ALICE, post_run, spawn_api
from tests.faults.invariants import delivered_once, log_of, run_ended_once
from tests.faults.rawsse import follow
from tests.support.procs import Processes
from tests.support.proxy import FaultProxy
from tests.support.wait import wait_for
from tests.workers.support import spawn_worker, started, worker_id_of

pytestmark = pytest.mark.timeout(90)

STORY = {"prompt": "a ferry crossing", "paragraphs": 4, "delay_ms": 25}


async def test_an_api_killed_mid_stream_is_replaced_and_the_client_misses_and_repeats_nothing(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    settings = make_settings(heartbeat_s=1.0, retry_ms=0)
    first, first_port = await spawn_api(processes, settings, tmp_path / "api1.log")
    second, second_port = await spawn_api(processes, settings, tmp_path / "api2.log")
    async with started(settings) as runtime:
        await spawn_worker(processes, runtime, tmp_path / "worker.log")
        # The proxy is the load balancer: new connections go wherever it points.
        async with FaultProxy(first_port) as balancer:
            run_id = await post_run(balancer.port, "story", STORY)

            def crash_at_8(event_id: int) -> None:
                if event_id == 8 and first.alive():
                    balancer.target_port = second_port
                    first.kill9()

            result = await follow(
                balancer.port,
                f"/v1/runs/{run_id}/events",
                token=ALICE,
                on_id=crash_at_8,
                deadline_s=30,
            )
        assert not first.alive() and result.connections >= 2, "the stream never reconnected"
        assert second.alive()
        # Every id of both connections: the resume on the second API repeated nothing.
        delivered_once(result.ids, await run_ended_once(runtime, run_id))


async def test_a_worker_killed_mid_run_is_retried_within_the_lease_and_the_client_misses_nothing(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    # A short lease, and a publish grace far longer than the recovery bound: a retry
    # that needed the queued-run republish (a wrong attempt number) misses the bound.
    settings = make_settings(lease_s=1.5, heartbeat_s=1.0, retry_ms=0, publish_grace_s=30)
    api, api_port = await spawn_api(processes, settings, tmp_path / "api.log")
    async with started(settings) as runtime:
        workers = [await spawn_worker(processes, runtime, tmp_path / f"w{i}.log") for i in (1, 2)]
        run_id = await post_run(api_port, "countdown", {"seconds": 1.5, "interval_s": 0.1})
        reader = asyncio.create_task(
            follow(api_port, f"/v1/runs/{run_id}/events", token=ALICE, deadline_s=40)
        )

        async def some_progress() -> bool:
            return [e["type"] for e in await log_of(runtime, run_id)].count("tool.progress") >= 3

        await wait_for(some_progress, timeout=20, message="the run never made progress")
        owner = (await runtime.runs.get(run_id)).worker
        doomed = [w for w in workers if await worker_id_of(runtime, w) == owner]
        assert len(doomed) == 1, (owner, [w.pid for w in workers])
        doomed[0].kill9()

        # The bound: the lease runs out, the reaper retries, the other worker finishes.
        async def ended() -> bool:
            return (await runtime.runs.get(run_id)).terminal

        await wait_for(
            ended,
            timeout=settings.lease_s + 5,
            interval=0.05,
            message="the killed worker's run did not end within lease + 5 s",
        )
        result = await asyncio.wait_for(reader, 20)
        log = await run_ended_once(runtime, run_id)
        delivered_once(result.ids, log)
        assert log[-1]["type"] == "run.completed"
        assert [e["data"]["reason"] for e in log if e["type"] == "run.retrying"] == ["worker_lost"]
        assert api.alive()
