"""kill -9 of the processes that serve and run: the client and the run never notice a loss.

A worker killed mid-run and a consumer killed mid-message are proven by
tests/workers/test_crash.py and tests/operations/test_faults.py; here the same crashes
are watched by a streaming client, and every run is checked with `invariants`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

from runrelay import RunRelay
from shared.runtime import Runtime
from shared.settings import Settings
from tests.faults.conftest import ALICE, spawn_api
from tests.faults.invariants import delivered_once, run_ended_once
from tests.support.procs import Processes
from tests.support.proxy import FaultProxy
from tests.workers.support import spawn_worker, started
from workers.worker import Worker

pytestmark = pytest.mark.timeout(90)

STORY = {"prompt": "a ferry crossing", "paragraphs": 4, "delay_ms": 25}


def sdk(port: int) -> RunRelay:
    return RunRelay(
        f"http://127.0.0.1:{port}", ALICE, backoff_base_s=0.05, backoff_max_s=0.3, max_retries=40
    )


async def test_an_api_killed_mid_stream_is_replaced_and_the_sdk_misses_nothing(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    settings = make_settings(heartbeat_s=1.0, retry_ms=0)
    first, first_port = await spawn_api(processes, settings, tmp_path / "api1.log")
    second, second_port = await spawn_api(processes, settings, tmp_path / "api2.log")
    worker = Worker(Runtime.build(settings), owns_runtime=True)
    await worker.start()
    try:
        # The proxy is the load balancer: new connections go wherever it points.
        async with FaultProxy(first_port) as balancer, started(settings) as runtime:
            received: list[int] = []
            async with sdk(balancer.port) as client:
                run = await client.runs.create("story", STORY)
                stream = client.events.stream(run_id=run.run_id)
                async with contextlib.aclosing(stream) as events:
                    async for event in events:
                        assert event.id is not None
                        received.append(event.id)
                        if len(received) == 8:
                            balancer.target_port = second_port
                            first.kill9()
            assert balancer.connections_total >= 2, "the stream never had to reconnect"
            assert second.alive()
            delivered_once(received, await run_ended_once(runtime, run.run_id))
    finally:
        await worker.stop(grace_s=0)


async def test_a_worker_killed_mid_run_is_retried_and_the_watching_client_misses_nothing(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    settings = make_settings(lease_s=1.5, heartbeat_s=1.0, retry_ms=0)
    api, api_port = await spawn_api(processes, settings, tmp_path / "api.log")
    async with started(settings) as runtime:
        doomed = await spawn_worker(processes, runtime, tmp_path / "w1.log")
        received: list[str] = []
        ids: list[int] = []
        async with sdk(api_port) as client:
            run = await client.runs.create("countdown", {"seconds": 3, "interval_s": 0.1})
            async with contextlib.aclosing(client.events.stream(run_id=run.run_id)) as events:
                async for event in events:
                    assert event.id is not None
                    ids.append(event.id)
                    received.append(event.type)
                    if received.count("tool.progress") == 3 and doomed.alive():
                        doomed.kill9()
                        await spawn_worker(processes, runtime, tmp_path / "w2.log")
        log = await run_ended_once(runtime, run.run_id)
        delivered_once(ids, log)
        assert log[-1]["type"] == "run.completed"
        assert [e["data"]["reason"] for e in log if e["type"] == "run.retrying"] == ["worker_lost"]
        assert api.alive()
