"""Redis goes away (a throwaway node, SIGKILL, nothing on disk) and comes back empty.

The API and the worker are the shipped `runrelay api` / `runrelay worker` (uvloop),
observed from outside: HTTP answers, raw SSE, the worker's log and /metrics.
While it is away: API requests are 503 JSON within a deadline, an open stream ends
with an `event: error` frame, /readyz names Redis. When it is back: new runs work
with nothing restarted. The run that was executing lost its record and log with
Redis; the worker notices (its lease refresh finds no run), stops the tool and says
so, and a client asking for the run gets 404 — nobody sees it "running" forever.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shared.errors import BackendUnavailable
from shared.runtime import Runtime
from shared.settings import Settings
from tests.faults.conftest import ALICE, MakeStack, post_run, spawn_api
from tests.faults.invariants import delivered_once, run_ended_once
from tests.faults.rawsse import read_stream
from tests.support.ports import free_port
from tests.support.procs import Processes
from tests.support.proxy import FaultProxy
from tests.support.redis_node import ThrowawayRedis
from tests.support.shipped import redis_port, spawn_role, via
from tests.support.wait import wait_for
from tests.workers.support import started, submit

pytestmark = pytest.mark.timeout(90)

# Far above any healthy answer, far below a hang: the API's own Redis timeout is 5 s.
ANSWER_DEADLINE_S = 15.0


async def test_redis_away_means_503_and_an_error_frame_then_recovery_without_restarts(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    with ThrowawayRedis() as node:
        settings = make_settings(redis_url=node.url, lease_s=2.0, heartbeat_s=0.5)
        _, port = await spawn_api(processes, settings, tmp_path / "api.log")
        metrics_port = free_port()
        async with started(settings) as runtime:
            worker = await spawn_role(
                processes,
                "worker",
                settings,
                tmp_path / "worker.log",
                runtime=runtime,
                RUNRELAY_METRICS_PORT=str(metrics_port),
            )
            # Silent between ticks: the worker learns of the loss from its lease, not an append.
            doomed = await post_run(port, "countdown", {"seconds": 60, "interval_s": 30})
            await wait_for(functools.partial(_running, runtime, doomed), timeout=10)
            first_event = asyncio.Event()
            stream = asyncio.create_task(
                read_stream(
                    port,
                    f"/v1/runs/{doomed}/events",
                    token=ALICE,
                    on_id=lambda _: first_event.set(),
                )
            )
            await asyncio.wait_for(first_event.wait(), timeout=10)

            node.stop()

            async with _client(port) as http, asyncio.timeout(ANSWER_DEADLINE_S):
                for method, path, body in [
                    ("GET", f"/v1/runs/{doomed}", None),
                    ("GET", "/v1/runs", None),
                    ("POST", "/v1/runs", {"tool": "story", "input": {"prompt": "x"}}),
                    ("GET", f"/v1/runs/{doomed}/events", None),
                ]:
                    response = await http.request(method, path, json=body)
                    assert response.status_code == 503, (path, response.text)
                    error = response.json()["error"]
                    assert error["code"] == "backend_unavailable" and "Redis" in error["message"]
                ready = await http.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["rabbitmq"] == "ok" and ready.json()["redis"] != "ok"

            async with asyncio.timeout(ANSWER_DEADLINE_S):
                ended = await stream
            assert ended.errors and ended.errors[0]["code"] == "backend_unavailable", ended
            assert not ended.ended

            node.start()  # same port, empty

            async with _client(port) as http:

                async def ready_again() -> bool:
                    return (await http.get("/readyz")).status_code == 200

                await wait_for(ready_again, timeout=20, interval=0.2, message="never ready")
                fresh = await post_run(port, "story", {"prompt": "after", "delay_ms": 0})
                await wait_for(functools.partial(_ended, runtime, fresh), timeout=30)
                result = await read_stream(port, f"/v1/runs/{fresh}/events", token=ALICE)
                delivered_once(result.ids, await run_ended_once(runtime, fresh))

                # The lost run: its worker stops it and says so (log and metrics), within
                # a lease refresh of Redis being back; clients get a clear 404.
                said = f"run {doomed} no longer exists in Redis"
                await wait_for(lambda: said in worker.output(), timeout=15, message=said)
                scraped = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
                assert (
                    'runrelay_worker_runs_finished_total{status="vanished",tool="countdown"} 1.0'
                    in (scraped)
                ), scraped
                lost = await http.get(f"/v1/runs/{doomed}")
                assert lost.status_code == 404
                assert lost.json()["error"]["message"] == f"run {doomed} not found"
                gone = await http.get(f"/v1/runs/{doomed}/events")
                assert gone.status_code == 404
            assert worker.alive(), worker.output()


def _client(port: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {ALICE}"},
        timeout=httpx.Timeout(20.0),
    )


async def _running(runtime: Runtime, run_id: str) -> bool:
    return (await runtime.runs.get(run_id)).status.value == "running"


async def _ended(runtime: Runtime, run_id: str) -> bool:
    try:
        return (await runtime.runs.get(run_id)).terminal
    except BackendUnavailable:  # the test's own pooled connections died with the old Redis
        return False


async def test_the_sdk_surfaces_a_clear_error_when_redis_stays_away(make_stack: MakeStack) -> None:
    from runrelay import RunRelay
    from runrelay.errors import StreamError

    with ThrowawayRedis() as node:
        async with make_stack(redis_url=node.url, heartbeat_s=0.5) as stack:
            run_id = await stack.create("countdown", {"seconds": 60, "interval_s": 0.2})
            async with RunRelay(stack.url, ALICE, backoff_base_s=0.01, max_retries=2) as sdk:
                events = sdk.events.stream(run_id=run_id)
                first = await anext(events)
                assert first.type == "run.queued"
                node.stop()
                seen: list[str] = []
                with pytest.raises(StreamError, match=r"Redis .* is unavailable"):
                    async with asyncio.timeout(ANSWER_DEADLINE_S * 2):
                        async for event in events:
                            seen.append(event.type)
                # The server's error frame is a reason to reconnect, not an event of the run.
                assert "error" not in seen, seen
                await events.aclose()


async def test_a_redis_stall_shorter_than_the_lease_does_not_fail_the_run(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    """The worker's Redis goes silent (a stalled proxy: no error, no answer) for longer
    than a command's 5 s timeout; the tool's append times out. That is the backend's
    failure, not the tool's: the run must not end `failed` with a Redis error once Redis
    answers again — the attempt is abandoned and the reaper retries it."""
    settings = make_settings(lease_s=3.0)
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
        run = await submit(runtime, "countdown", {"seconds": 2, "interval_s": 0.1})
        await wait_for(functools.partial(_running, runtime, run.run_id), timeout=10)
        proxy.stall()
        await asyncio.sleep(6.5)  # the stall itself: past the 5 s command timeout
        proxy.resume()
        # Recovery bound: the lease runs out, the reaper retries, the 2 s run completes.
        await wait_for(functools.partial(_ended, runtime, run.run_id), timeout=30)
        log = await run_ended_once(runtime, run.run_id)
        assert log[-1]["type"] == "run.completed", log[-3:]
        assert [e["data"]["reason"] for e in log if e["type"] == "run.retrying"] == ["worker_lost"]
        assert worker.alive(), worker.output()
