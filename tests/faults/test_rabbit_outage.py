"""RabbitMQ (a throwaway node of our own) stops with runs queued, running and waiting.

The outage lasts ``RUNRELAY_FAULT_RABBIT_DOWN_S`` seconds (default 3, to keep the suite
fast; the issue's 10 s passes the same way — see docs/reliability.md). Running runs
need only Redis and go on; queued requests are persistent on a quorum queue; waiting
runs take completions published after the restart. Everything completes, once.
"""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from shared.models import RunRecord
from shared.runtime import Runtime
from tests.faults.invariants import run_ended_once
from tests.operations.conftest import MakeSystem
from tests.support.wait import wait_for
from tests.workers.support import request_body
from tests.workers.test_broker_restart import own_node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

DOWN_S = float(os.environ.get("RUNRELAY_FAULT_RABBIT_DOWN_S", "3"))


async def _submit(runtime: Runtime, tool: str, input: dict[str, object]) -> RunRecord:
    run, _ = await runtime.runs.create(owner="ops", tool=tool, input=input)
    await runtime.broker.publish_run(request_body(run.run_id))
    return run


async def test_runs_queued_running_and_waiting_all_complete_across_a_rabbitmq_restart(
    make_system: MakeSystem,
) -> None:
    with own_node() as node:
        async with make_system(
            generator="accept", amqp_url=node.url, worker_concurrency=2, publish_grace_s=30
        ) as system:
            runtime = system.runtime
            waiting = [await system.submit(f"agent {i}") for i in range(2)]
            ops = [await system.operation_of(run) for run in waiting]
            countdown = {"seconds": DOWN_S + 6, "interval_s": 0.25}
            running = [await _submit(runtime, "countdown", countdown) for _ in range(2)]
            for run in running:
                await wait_for(
                    lambda run=run: _status(runtime, run, "running"), timeout=15, interval=0.05
                )
            story = {"prompt": "queued through it", "paragraphs": 1, "delay_ms": 0}
            queued = [await _submit(runtime, "story", story) for _ in range(4)]
            assert all([await _status(runtime, run, "queued") for run in queued])

            await asyncio.to_thread(node.stop)
            async with system.client() as http, asyncio.timeout(30):
                # No broker, no run: the API refuses rather than accepting what it cannot queue.
                refused = await http.post(
                    "/v1/runs", json={"tool": "story", "input": {"prompt": "hi"}}
                )
                assert refused.status_code == 503, refused.text
            await asyncio.sleep(DOWN_S)  # the outage itself, not a wait for a condition
            await asyncio.to_thread(node.start)

            for run, op_id in zip(waiting, ops, strict=True):
                await system.complete_once_reconnected(run, op_id)

            everything = [*waiting, *running, *queued]

            async def all_ended() -> bool:
                return all([(await runtime.runs.get(r.run_id)).terminal for r in everything])

            await wait_for(all_ended, timeout=60, interval=0.2, message="runs still open")
            for run in everything:
                log = await run_ended_once(runtime, run.run_id)
                kinds = [e["type"] for e in log]
                assert kinds[-1] == "run.completed", kinds
                assert kinds.count("run.started") == (2 if run in waiting else 1), kinds
            async with httpx.AsyncClient(base_url=system.api_url) as http:
                assert (await http.get("/readyz")).status_code == 200


async def _status(runtime: Runtime, run: RunRecord, status: str) -> bool:
    return (await runtime.runs.get(run.run_id)).status.value == status
