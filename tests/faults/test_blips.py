"""Redis blips in front of the shipped processes: a retry, never a failure, a 500 or a dead letter.

A blip is what a failover or a balancer restart does to a client: its open connections
are reset (RST) and, for a while, new ones are refused; then Redis answers again. Each
process under test (`runrelay worker`, `runrelay api`, `runrelay consumer`, on uvloop)
reaches Redis through a `FaultProxy`; everything else, and the test's own view of the
data, goes to Redis directly.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from shared.runtime import Runtime
from shared.settings import Settings
from tests.faults.conftest import ALICE, spawn_api
from tests.faults.invariants import delivered_once, log_of, run_ended_once
from tests.faults.rawsse import read_stream
from tests.operations.conftest import MakeSystem
from tests.support.procs import Processes
from tests.support.proxy import FaultProxy
from tests.support.shipped import redis_port, spawn_role, via
from tests.support.wait import wait_for
from tests.workers.support import started, types, wait_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

OUTAGE_S = 8.0
STORY = {"prompt": "a lighthouse keeper", "paragraphs": 3, "delay_ms": 40}
# What a transport error looks like when it leaks into a run's result or a response.
TRANSPORT_TEXT = re.compile(r"TCPTransport|Connection reset|Error while reading|closed=True")


async def test_a_reset_of_the_workers_redis_connections_retries_every_run_and_fails_none(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    settings = make_settings(lease_s=1.5, publish_grace_s=2.0, heartbeat_s=1.0)
    assert settings.redis_url is not None
    async with started(settings) as runtime, FaultProxy(redis_port(settings)) as proxy:
        worker = await spawn_role(
            processes,
            "worker",
            settings,
            tmp_path / "worker.log",
            runtime=runtime,
            RUNRELAY_REDIS_URL=via(settings.redis_url, proxy.port),
        )
        _, api_port = await spawn_api(processes, settings, tmp_path / "api.log")
        run_ids = await create_runs(api_port, 5)
        readers = [
            asyncio.create_task(follow(api_port, f"/v1/runs/{run_id}/events")) for run_id in run_ids
        ]

        async def all_streaming() -> bool:
            for run_id in run_ids:
                run = await runtime.runs.get(run_id)
                log = await log_types(runtime, run_id)
                if run.status.value != "running" or "output.message.delta" not in log:
                    return False
            return True

        await wait_for(all_streaming, timeout=20, message="the runs never streamed")
        # Reset while the worker has a command in flight: a reset of idle pooled
        # connections alone is absorbed (they connect afresh) and would reach no run.
        proxy.stall()
        await wait_for(lambda: proxy.held_up > 0, message="no command of the worker's in flight")
        assert await proxy.cut_all() > 0
        proxy.resume()

        # Lease (1.5 s) + reaper + a second attempt of a ~3 s story.
        async def all_ended() -> bool:
            records = [await runtime.runs.get(r) for r in run_ids]
            return all(record.terminal for record in records)

        await wait_for(all_ended, timeout=30, message="runs still not ended after the reset")
        received = await asyncio.wait_for(asyncio.gather(*readers), timeout=30)

        for run_id, ids in zip(run_ids, received, strict=True):
            record = await runtime.runs.get(run_id)
            assert record.status.value == "completed", (
                f"run {run_id} ended {record.status.value}: {record.error}"
            )
            log = await run_ended_once(runtime, run_id)
            delivered_once(ids, log)
        retried = [r for r in run_ids if "run.retrying" in await log_types(runtime, r)]
    assert retried, "the reset reached no run: the test proved nothing"
    assert not TRANSPORT_TEXT.search(_failed_reasons(worker.output())), worker.output()[-3000:]


async def create_runs(port: int, n: int) -> list[str]:
    headers = {"Authorization": f"Bearer {ALICE}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as http:
        answers = [
            await http.post("/v1/runs", json={"tool": "story", "input": STORY}) for _ in range(n)
        ]
    assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
    return [a.json()["run_id"] for a in answers]


async def log_types(runtime: Runtime, run_id: str) -> list[str]:
    return [e["type"] for e in await log_of(runtime, run_id)]


def _failed_reasons(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if "raised" in line)


async def follow(port: int, path: str) -> list[int]:
    """Every id a raw client receives, reconnecting with its last id until the run ends."""
    ids: list[int] = []
    for _ in range(50):
        result = await read_stream(port, path, token=ALICE, cursor=ids[-1] if ids else None)
        ids += result.ids
        if result.ended or result.status == 204:
            return ids
        await asyncio.sleep(0.1)  # a client's reconnect delay, not a wait for a condition
    raise AssertionError(f"{path}: never ended; received {ids}")


async def test_an_api_answers_503_never_500_while_its_redis_connections_are_reset(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    settings = make_settings()
    assert settings.redis_url is not None
    async with FaultProxy(redis_port(settings)) as proxy:
        api, port = await spawn_api(
            processes,
            settings,
            tmp_path / "api.log",
            RUNRELAY_REDIS_URL=via(settings.redis_url, proxy.port),
        )
        headers = {"Authorization": f"Bearer {ALICE}"}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=15
        ) as http:
            created = await http.post("/v1/runs", json={"tool": "story", "input": STORY})
            assert created.status_code == 202, created.text
            run_id = created.json()["run_id"]
            statuses: list[int] = []
            bodies: list[bytes] = []

            async def hammer() -> None:
                for i in range(40):
                    if i % 3 == 0:
                        answer = await http.get(f"/v1/runs/{run_id}")
                    elif i % 3 == 1:
                        answer = await http.get("/v1/runs", params={"limit": 5})
                    else:
                        answer = await http.get(
                            f"/v1/runs/{run_id}/events", headers={"Accept": "application/json"}
                        )
                    statuses.append(answer.status_code)
                    bodies.append(answer.content)

            async def blips() -> None:
                # Resets while requests are in flight, then an outage (new connections
                # refused), then Redis is back.
                for _ in range(6):
                    await asyncio.sleep(0.05)  # the nemesis's rhythm, not a wait
                    await proxy.cut_all()
                proxy.refuse_new()
                await proxy.cut_all()
                await asyncio.sleep(1.0)  # the outage's length, not a wait
                proxy.refuse_new(False)

            await asyncio.gather(blips(), *(hammer() for _ in range(8)))
            after = await http.get(f"/v1/runs/{run_id}")

    assert 500 not in statuses, f"{statuses.count(500)} answers were 500"
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert statuses.count(503) > 0, "no request met the outage: the test proved nothing"
    for status, body in zip(statuses, bodies, strict=True):
        if status == 503:
            assert orjson.loads(body)["error"]["code"] == "backend_unavailable", body
    assert after.status_code == 200, f"the API did not recover by itself: {after.text}"
    assert "Traceback" not in api.output(), api.output()[-3000:]


async def test_a_completion_survives_a_long_redis_outage_on_the_consumer_side(
    make_system: MakeSystem, processes: Processes, tmp_path: Path
) -> None:
    async with make_system(generator="accept", consumer=False) as system:
        runtime = system.runtime
        settings = runtime.settings
        assert settings.redis_url is not None
        run = await system.submit()
        op_id = await system.operation_of(run)
        async with FaultProxy(redis_port(settings)) as proxy:
            consumer = await spawn_role(
                processes,
                "consumer",
                settings,
                tmp_path / "consumer.log",
                runtime=runtime,
                RUNRELAY_REDIS_URL=via(settings.redis_url, proxy.port),
            )
            proxy.refuse_new()
            await proxy.cut_all()
            await system.complete(run, op_id)

            # Longer than the old code lasted: it dead-lettered the completion on its
            # fifth failed delivery, about 4 s in.
            await asyncio.sleep(OUTAGE_S)  # the outage's length, not a wait
            assert "; requeued" in consumer.output(), "the completion never met the outage"
            proxy.refuse_new(False)
            await wait_status(runtime, run, "completed", "failed", timeout=30)

        kinds = await types(runtime, run)
        assert kinds.count("operation.completed") == 1, kinds
        assert kinds[-1] == "run.completed", kinds
        letters = await runtime.broker.take_dead_letters(1000)
        assert not [d for d in letters if op_id.encode() in d.body], letters
