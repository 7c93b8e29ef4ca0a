"""Redis goes away (a throwaway node, SIGKILL, nothing on disk) and comes back empty.

While it is away: API requests are 503 JSON within a deadline, an open stream ends
with an `event: error` frame, /readyz names Redis. When it is back: new runs work
with nothing restarted. The run that was executing lost its record and log with
Redis; the worker notices (its lease refresh finds no run), stops the tool and says
so, and a client asking for the run gets 404 — nobody sees it "running" forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from shared.runtime import Runtime
from shared.settings import Settings
from tests.faults.conftest import ALICE, TOKENS, MakeStack
from tests.faults.invariants import delivered_once, run_ended_once
from tests.faults.rawsse import read_stream
from tests.support.proxy import FaultProxy
from tests.support.redis_node import ThrowawayRedis
from tests.support.wait import wait_for
from workers.worker import Worker

pytestmark = pytest.mark.timeout(90)

# Far above any healthy answer, far below a hang: the API's own Redis timeout is 5 s.
ANSWER_DEADLINE_S = 15.0


async def test_redis_away_means_503_and_an_error_frame_then_recovery_without_restarts(
    make_stack: MakeStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="workers")
    with ThrowawayRedis() as node:
        async with make_stack(redis_url=node.url, lease_s=2.0, heartbeat_s=0.5) as stack:
            # Silent between ticks: the worker learns of the loss from its lease, not an append.
            doomed = await stack.create("countdown", {"seconds": 60, "interval_s": 30})
            assert stack.worker is not None
            worker = stack.worker
            await wait_for(lambda: doomed in worker.executions, timeout=10)
            stream = asyncio.create_task(
                read_stream(stack.port, f"/v1/runs/{doomed}/events", token=ALICE)
            )
            await wait_for(lambda: stack.hub.subscribers > 0, timeout=10)

            node.stop()

            async with stack.client() as http, asyncio.timeout(ANSWER_DEADLINE_S):
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

            async with stack.client() as http:

                async def ready_again() -> bool:
                    return (await http.get("/readyz")).status_code == 200

                await wait_for(ready_again, timeout=20, interval=0.2, message="never ready")
                fresh = await stack.create("story", {"prompt": "after", "delay_ms": 0})
                await stack.ended(fresh)
                result = await read_stream(stack.port, f"/v1/runs/{fresh}/events", token=ALICE)
                delivered_once(result.ids, await run_ended_once(stack.runtime, fresh))

                # The lost run: its worker stops it, and clients get a clear 404.
                await wait_for(lambda: doomed not in worker.executions, timeout=15)
                lost = await http.get(f"/v1/runs/{doomed}")
                assert lost.status_code == 404
                assert lost.json()["error"]["message"] == f"run {doomed} not found"
                gone = await http.get(f"/v1/runs/{doomed}/events")
                assert gone.status_code == 404
    assert any(doomed in r.getMessage() and "no longer" in r.getMessage() for r in caplog.records)


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
    make_stack: MakeStack, make_settings: Callable[..., Settings]
) -> None:
    """The worker's Redis goes silent (a stalled proxy: no error, no answer) for longer
    than a command's 5 s timeout; the tool's append times out. That is the backend's
    failure, not the tool's: the run must not end `failed` with a Redis error once Redis
    answers again — the attempt is abandoned and the reaper retries it."""
    async with make_stack(worker=False, lease_s=3.0) as stack:
        settings = stack.runtime.settings
        assert settings.redis_url is not None
        redis_port = urlsplit(settings.redis_url).port or 6379
        async with FaultProxy(redis_port) as proxy:
            worker_settings = make_settings(
                redis_url=f"redis://127.0.0.1:{proxy.port}/0", lease_s=3.0, api_tokens=TOKENS
            )
            worker = Worker(Runtime.build(worker_settings), owns_runtime=True)
            await worker.start()
            try:
                run_id = await stack.create("countdown", {"seconds": 2, "interval_s": 0.1})
                await wait_for(lambda: run_id in worker.executions, timeout=10)
                proxy.stall()
                await asyncio.sleep(6.5)  # the stall itself: past the 5 s command timeout
                proxy.resume()
                await stack.ended(run_id, timeout=30)
                log = await run_ended_once(stack.runtime, run_id)
                assert log[-1]["type"] == "run.completed", log[-3:]
                assert [e["data"]["reason"] for e in log if e["type"] == "run.retrying"] == [
                    "worker_lost"
                ]
            finally:
                await worker.stop(grace_s=0)
