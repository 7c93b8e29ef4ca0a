"""Three `runrelay api` processes behind a real haproxy, their clients cut and re-balanced.

The API tier scales by adding processes behind a load balancer because a process holds
no state a client depends on: the client's cursor (Last-Event-ID) is the only state,
and any process resumes it exactly. Each process follows every log its clients read
through one tail hub, so its Redis connections stay a fixed handful however many
streams it serves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from shared.settings import Settings
from tests.faults.conftest import ALICE, post_run, spawn_api, spawn_api_on
from tests.faults.invariants import delivered_once, run_ended_once
from tests.faults.rawsse import follow
from tests.support.haproxy import Haproxy
from tests.support.procs import Proc, Processes
from tests.support.shipped import spawn_role
from tests.support.sockets import established
from tests.support.wait import wait_for
from tests.workers.support import started

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RUNS, READERS_PER_RUN = 3, 16
# RedisConnection's command pool (6) + the blocking pool of the hub and change feed (2).
REDIS_CONNECTIONS_PER_API = 8
# Long enough for both faults to land while every run still streams.
COUNTDOWN = {"seconds": 12, "interval_s": 0.1}


async def test_readers_behind_haproxy_get_every_event_once_across_an_api_crash_and_a_rebalance(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    settings = make_settings(heartbeat_s=1.0, retry_ms=0)
    redis_port = urlsplit(settings.redis_url or "").port or 6379
    apis: list[tuple[Proc, int]] = list(
        await asyncio.gather(
            *(spawn_api(processes, settings, tmp_path / f"api{i}.log") for i in range(3))
        )
    )
    balancer = Haproxy(processes, tmp_path, [port for _, port in apis])
    await balancer.start()
    async with started(settings) as runtime:
        await spawn_role(processes, "worker", settings, tmp_path / "worker.log", runtime=runtime)
        run_ids = [await post_run(balancer.port, "countdown", COUNTDOWN) for _ in range(RUNS)]
        seen: list[list[int]] = [[] for _ in range(RUNS * READERS_PER_RUN)]
        readers = [
            asyncio.create_task(
                follow(
                    balancer.port,
                    f"/v1/runs/{run_ids[i % RUNS]}/events",
                    token=ALICE,
                    on_id=seen[i].append,
                    deadline_s=60,
                )
            )
            for i in range(len(seen))
        ]

        async def every_reader_moves_on() -> None:
            """Each reader receives new events: it is (re)connected and streaming."""
            mark = [len(ids) for ids in seen]
            await wait_for(
                lambda: all(len(ids) >= m + 3 for ids, m in zip(seen, mark, strict=True)),
                timeout=20,
                message="some readers stopped receiving",
            )

        await every_reader_moves_on()
        # A crash: its clients' connections break; haproxy sends them to the other two.
        crashed, crashed_port = apis[0]
        crashed.kill9()
        await every_reader_moves_on()
        apis[0] = await spawn_api_on(processes, settings, tmp_path / "api0b.log", crashed_port)
        # A new haproxy takes over and the old one's connections are cut: every client
        # reconnects, round robin over all three, the restarted one included.
        await balancer.start()
        await every_reader_moves_on()

        for proc, port in apis:
            streams = established(proc.pid, local_port=port)
            redis = established(proc.pid, remote_port=redis_port)
            assert streams > REDIS_CONNECTIONS_PER_API, (proc.pid, streams)
            assert 1 <= redis <= REDIS_CONNECTIONS_PER_API, (proc.pid, streams, redis)

        results = await asyncio.wait_for(asyncio.gather(*readers), 40)
        for i, result in enumerate(results):
            assert result.connections >= 2, "the haproxy restart cut no connection"
            delivered_once(result.ids, await run_ended_once(runtime, run_ids[i % RUNS]))
