"""Load: thousands of streams while runs arrive at a steady rate; nothing lost or leaked.

Parameters (environment), defaults kept short so the suite stays fast:

- ``RUNRELAY_FAULT_LOAD_S`` (5): how long runs keep arriving;
- ``RUNRELAY_FAULT_LOAD_RATE`` (200): runs created per second;
- ``RUNRELAY_FAULT_LOAD_STREAMS`` (2000): streams held open on long runs meanwhile.

The full minute: ``RUNRELAY_FAULT_LOAD_S=60 scripts/test tests/faults/test_load.py``
(result in docs/reliability.md). The API runs in this process so the test can count
its hub subscribers and tasks; two worker processes execute the runs. Clients are
bare asyncio sockets (`rawsse`); runs are created over a few keep-alive sockets.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from shared.settings import Settings
from tests.faults.conftest import ALICE, MakeStack, Stack
from tests.faults.invariants import delivered_once, run_ended_once
from tests.faults.rawsse import RawPoster, StreamResult, read_stream
from tests.support.procs import Processes
from tests.support.wait import wait_for
from tests.workers.support import spawn_worker

DURATION_S = float(os.environ.get("RUNRELAY_FAULT_LOAD_S", "5"))
RATE = int(os.environ.get("RUNRELAY_FAULT_LOAD_RATE", "200"))
STREAMS = int(os.environ.get("RUNRELAY_FAULT_LOAD_STREAMS", "2000"))
PER_LONG_RUN = 100

pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(120 + DURATION_S * 4))]


async def _redis_clients(url: str, name: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        listed = await client.client_list()
        return sum(1 for c in listed if c.get("name") == name)
    finally:
        await client.aclose()


def _tasks() -> int:
    return len(asyncio.all_tasks())


async def test_thousands_of_streams_and_a_steady_run_rate_lose_nothing_and_leak_nothing(
    make_stack: MakeStack,
    make_settings: Callable[..., Settings],
    processes: Processes,
    tmp_path: Path,
) -> None:
    async with make_stack(
        worker=False,
        worker_concurrency=100,
        max_streams_per_owner=STREAMS + RATE * 10 + 100,
        heartbeat_s=15,
        publish_grace_s=120,
        lease_s=30,
    ) as stack:
        for i in range(2):
            await spawn_worker(processes, stack.runtime, tmp_path / f"worker{i}.log")
        redis_url = stack.runtime.settings.redis_url
        assert redis_url is not None
        baseline_tasks = _tasks()
        baseline_redis = await _redis_clients(redis_url, stack.client_name)
        assert stack.hub.subscribers == 0

        async with RawPoster(stack.port, ALICE, connections=24) as http:
            long_runs = await _create_many(
                http,
                STREAMS // PER_LONG_RUN,
                # Ticking until the load is over, then cancelled: held open however slow the start.
                {"tool": "countdown", "input": {"seconds": 3600, "interval_s": 5}},
            )
            held = [
                asyncio.create_task(_read(stack, run_id))
                for run_id in long_runs
                for _ in range(PER_LONG_RUN)
            ]
            await wait_for(
                lambda: stack.hub.subscribers >= len(held) * 0.9, timeout=60, interval=0.1,
                message="streams never opened",
            )  # fmt: skip

            short: list[tuple[str, asyncio.Task[StreamResult]]] = []
            story = {"tool": "story", "input": {"prompt": "load", "paragraphs": 1, "delay_ms": 0}}

            async def batch(n: int) -> None:
                for run_id in await _create_many(http, n, story):
                    short.append((run_id, asyncio.create_task(_read(stack, run_id))))

            # Runs arrive on a schedule (a tick's worth each 0.1 s), not as fast as answered.
            loop = asyncio.get_running_loop()
            tick, per_tick = 0.1, max(1, round(RATE * 0.1))
            started = loop.time()
            batches = []
            for k in range(int(DURATION_S / tick)):
                batches.append(asyncio.create_task(batch(per_tick)))
                await asyncio.sleep(max(0.0, started + (k + 1) * tick - loop.time()))
            await asyncio.gather(*batches)
            created_in = loop.time() - started

            for run_id in long_runs:
                status, data = await http.post(f"/v1/runs/{run_id}/cancel", b"")
                assert status == 200, data
            everything = [t for _, t in short] + held
            await wait_for(
                lambda: all(t.done() for t in everything), timeout=60 + DURATION_S * 2,
                interval=0.25, message="streams still open",
            )  # fmt: skip

        for run_id, task in short:
            result = task.result()
            assert result.status == 200 and not result.errors, result
            delivered_once(result.ids, await run_ended_once(stack.runtime, run_id))
        for index, run_id in enumerate(long_runs):
            log = await run_ended_once(stack.runtime, run_id)
            for task in held[index * PER_LONG_RUN : (index + 1) * PER_LONG_RUN]:
                result = task.result()
                assert result.status == 200 and not result.errors, result
                delivered_once(result.ids, log)

        # Flat afterwards: no subscriber, task or Redis connection outlives its stream.
        await wait_for(lambda: stack.hub.subscribers == 0, timeout=10, message="subscribers left")
        await wait_for(lambda: _tasks() <= baseline_tasks, timeout=10, message="tasks left")
        assert await _redis_clients(redis_url, stack.client_name) <= max(baseline_redis, 10)
        print(f"load: {len(short)} runs created in {created_in:.1f}s, {len(held)} held streams")


async def _create_many(http: RawPoster, n: int, body: Mapping[str, object]) -> list[str]:
    payload = orjson.dumps(body)
    answers = await asyncio.gather(*(http.post("/v1/runs", payload) for _ in range(n)))
    for status, data in answers:
        assert status == 202, data
    return [orjson.loads(data)["run_id"] for _, data in answers]


async def _read(stack: Stack, run_id: str) -> StreamResult:
    return await read_stream(stack.port, f"/v1/runs/{run_id}/events", token=ALICE)
