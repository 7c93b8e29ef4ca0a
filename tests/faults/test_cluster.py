"""runrelay on a Redis Cluster: the shipped processes, exact resume, and a master's failover.

A throwaway cluster (tests/support/redis_cluster.py) on its own ports; `runrelay api`,
`runrelay worker` and `runrelay consumer` reach it through ``redis+cluster://`` with
seed nodes, as an operator configures them. Clients read raw SSE.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from shared.errors import BackendUnavailable
from shared.eventlog.redis import RedisEventLog
from shared.models import RunRecord
from shared.runtime import Runtime
from shared.settings import Settings
from tests.faults.conftest import ALICE, spawn_api
from tests.faults.invariants import delivered_once, run_ended_once
from tests.faults.rawsse import follow
from tests.support.procs import Processes
from tests.support.redis_cluster import ThrowawayCluster, node_command
from tests.support.redis_node import ThrowawayRedis
from tests.support.shipped import spawn_generator, spawn_role
from tests.support.wait import wait_for
from tests.workers.support import started

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

STORY = {"prompt": "a cluster of islands", "paragraphs": 3, "delay_ms": 40}


@pytest.fixture
def cluster() -> Iterator[ThrowawayCluster]:
    with ThrowawayCluster(masters=3, replicas=1) as made:
        yield made


async def create(port: int, tool: str, input: dict[str, object]) -> str:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ALICE}"}
    ) as http:
        answer = await http.post("/v1/runs", json={"tool": tool, "input": input})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["run_id"])


async def test_api_worker_and_consumer_on_a_cluster_stream_every_run_exactly_once(
    make_settings: Callable[..., Settings],
    processes: Processes,
    tmp_path: Path,
    cluster: ThrowawayCluster,
) -> None:
    base = make_settings(redis_url=cluster.url)
    _, gen_url = await spawn_generator(processes, base, tmp_path / "generator.log")
    settings = make_settings(redis_url=cluster.url, generator_url=gen_url, heartbeat_s=1.0)
    async with started(settings) as runtime:
        for role in ("worker", "consumer"):
            await spawn_role(processes, role, settings, tmp_path / f"{role}.log", runtime=runtime)
        _, port = await spawn_api(processes, settings, tmp_path / "api.log")
        run_ids = [await create(port, "story", STORY) for _ in range(4)]
        run_ids += [await create(port, "generate_agent", {"instructions": "a weather agent"})]
        path = "/v1/runs/{}/events"
        readers = [follow(port, path.format(r), token=ALICE) for r in run_ids for _ in range(2)]
        results = await asyncio.wait_for(asyncio.gather(*readers), timeout=60)

        keys = {
            runtime.log.keys.run_log((await runtime.runs.get(r)).session_id, r) for r in run_ids
        }
        assert len({cluster_slot(runtime, k) for k in keys}) > 1, "all runs in one slot"
        for index, run_id in enumerate(run_ids):
            log = await run_ended_once(runtime, run_id)
            assert log[-1]["type"] == "run.completed", log[-1]
            for result in results[2 * index : 2 * index + 2]:
                delivered_once(result.ids, log)


def cluster_slot(runtime: Runtime, key: str) -> int:
    assert isinstance(runtime.log, RedisEventLog)
    return runtime.log.conn.slot_of(key)


async def test_a_master_killed_mid_run_fails_over_and_nothing_is_failed_or_repeated(
    make_settings: Callable[..., Settings],
    processes: Processes,
    tmp_path: Path,
    cluster: ThrowawayCluster,
) -> None:
    # Redis's default asynchronous replication (what runrelay promises then is in
    # docs/scaling.md); RUNRELAY_REDIS_MIN_REPLICAS has its own test below.
    settings = make_settings(
        redis_url=cluster.url,
        lease_s=2.0,
        publish_grace_s=3.0,
        heartbeat_s=1.0,
        max_attempts=5,
    )
    async with started(settings) as runtime:
        worker = await spawn_role(
            processes, "worker", settings, tmp_path / "worker.log", runtime=runtime
        )
        api, port = await spawn_api(processes, settings, tmp_path / "api.log")
        run_ids = [await create(port, "story", STORY) for _ in range(3)]
        readers = [
            asyncio.create_task(follow(port, f"/v1/runs/{r}/events", token=ALICE, deadline_s=90))
            for r in run_ids
        ]

        async def streaming() -> bool:
            records = [await runtime.runs.get(r) for r in run_ids]
            return all(record.last_event_id >= 5 for record in records)

        await wait_for(streaming, timeout=20, message="the runs never streamed")
        first = await runtime.runs.get(run_ids[0])
        key = runtime.log.keys.run_log(first.session_id, first.run_id)
        victim = cluster.master_of_slot(cluster_slot(runtime, key))
        victim.stop()  # kill -9 the master holding the first run

        statuses: list[int] = []

        async def recovered() -> bool:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                headers={"Authorization": f"Bearer {ALICE}"},
                timeout=10,
            ) as http:
                answer = await http.get(f"/v1/runs/{run_ids[0]}")
            statuses.append(answer.status_code)
            return answer.status_code == 200

        await wait_for(recovered, timeout=30, interval=0.2, message="the API never recovered")
        results = await asyncio.wait_for(asyncio.gather(*readers), timeout=90)

    assert set(statuses) <= {200, 503}, statuses  # never a 500 during the failover
    # A fresh view: the test's own connections to the dead master are gone with it.
    async with started(settings) as runtime:
        for run_id, result in zip(run_ids, results, strict=True):
            log = await run_ended_once(runtime, run_id)
            assert log[-1]["type"] == "run.completed", [e["type"] for e in log]
            delivered_once(result.ids, log)
    assert "Traceback" not in api.output(), api.output()[-3000:]
    assert "raised" not in worker.output(), worker.output()[-3000:]  # no tool saw the failover


async def test_with_min_replicas_an_append_returns_once_a_replica_has_it_else_fails(
    make_settings: Callable[..., Settings],
) -> None:
    with ThrowawayRedis() as master:
        replica = ThrowawayRedis(extra_args=("--replicaof", "127.0.0.1", str(master.port)))
        with replica:
            await wait_for(lambda: _linked(replica.port), timeout=20, message="never synced")
            settings = make_settings(
                redis_url=master.url, redis_min_replicas=1, redis_min_replicas_timeout_ms=300
            )
            async with started(settings) as runtime:
                run, _ = await runtime.runs.create(owner="alice", tool="story", input={})
                claimed = await runtime.runs.start(run, worker="w", lease_until=time.time() + 30)
                assert claimed is not None
                await runtime.runs.emit(claimed, "output.message.delta", {"delta": "a"}, worker="w")
                # The replica holds what the append returned for.
                assert "output.message.delta" in _replica_log(replica.port, runtime, claimed)

                replica.stop()
                with pytest.raises(BackendUnavailable, match="RUNRELAY_REDIS_MIN_REPLICAS"):
                    await runtime.runs.emit(
                        claimed, "output.message.delta", {"delta": "b"}, worker="w"
                    )


def _linked(port: int) -> bool:
    return "master_link_status:up" in node_command(port, "INFO", "replication")


def _replica_log(port: int, runtime: Runtime, run: RunRecord) -> str:
    key = runtime.log.keys.run_log(run.session_id, run.run_id)
    return node_command(port, "XRANGE", key, "-", "+")
