"""RabbitMQ (a throwaway node of our own) stops with runs queued, running and waiting.

The outage lasts ``RUNRELAY_FAULT_RABBIT_DOWN_S`` seconds (default 3, to keep the suite
fast; the issue's 10 s passes the same way — see docs/reliability.md). Running runs
need only Redis and go on; queued requests are persistent on a quorum queue; waiting
runs take completions published after the restart. Everything completes, once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import pytest

from shared.models import RunRecord
from shared.runtime import Runtime
from shared.settings import Settings
from tests.faults.conftest import post_run, spawn_api
from tests.faults.invariants import all_end, run_ended_once
from tests.operations.conftest import MakeSystem
from tests.support.procs import Proc, Processes
from tests.support.rabbit_node import rabbitmqctl
from tests.support.wait import wait_for
from tests.workers.support import request_body, spawn_worker, started
from tests.workers.test_broker_restart import own_node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

DOWN_S = float(os.environ.get("RUNRELAY_FAULT_RABBIT_DOWN_S", "3"))


async def _submit(runtime: Runtime, tool: str, input: Mapping[str, object]) -> RunRecord:
    run, _ = await runtime.runs.create(owner="ops", tool=tool, input=input)
    await runtime.broker.publish_run(request_body(run.run_id))
    return run


# What the reaper logs when it republishes a queued run (workers/reaper.py).
REPUBLISHED = "republished attempt"


async def test_runs_queued_running_and_waiting_all_complete_across_a_rabbitmq_restart(
    make_system: MakeSystem, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="workers")
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
                    functools.partial(_status, runtime, run, "running"), timeout=15, interval=0.05
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
            await all_end(runtime, [r.run_id for r in everything], message="runs still open")
            for run in everything:
                log = await run_ended_once(runtime, run.run_id)
                kinds = [e["type"] for e in log]
                assert kinds[-1] == "run.completed", kinds
                assert kinds.count("run.started") == (2 if run in waiting else 1), kinds
                assert "run.retrying" not in kinds, kinds
            async with httpx.AsyncClient(base_url=system.api_url) as http:
                assert (await http.get("/readyz")).status_code == 200
    # The queue kept every request: nothing waited for the reaper's republish.
    # (Only the reaper's records: aio_pika's own cannot always be formatted.)
    reaper = [r.getMessage() for r in caplog.records if r.name == "workers.reaper"]
    assert not [m for m in reaper if REPUBLISHED in m], reaper


@pytest.mark.skip(
    reason="unfinished: after the node's crash-restart a freshly spawned `runrelay worker` "
    "never heartbeats (one was reset while connecting, later ones print nothing); see the "
    "faulttests report"
)
async def test_a_rabbitmq_node_killed_with_runs_queued_loses_none_and_needs_no_reaper(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    """kill -9 of the broker node (no clean shutdown, nothing flushed on the way out)
    while the runs wait in the queue for a worker. Confirmed persistent messages on a
    quorum queue survive; a classic queue of transient messages loses them, and only
    the reaper's republish (after the 30 s publish grace) would bring them back."""
    with own_node() as node:
        settings = make_settings(amqp_url=node.url, publish_grace_s=30, lease_s=3)
        api, api_port = await spawn_api(processes, settings, tmp_path / "api.log")
        story = {"prompt": "through a crash", "paragraphs": 1, "delay_ms": 0}
        run_ids = [await post_run(api_port, "story", story) for _ in range(4)]

        await asyncio.to_thread(node.kill)
        await asyncio.to_thread(node.start)
        # After a crash the node recovers its queues before it is fully up.
        await asyncio.to_thread(rabbitmqctl, "await_startup", node=node.nodename, home=node.home)

        async with started(settings) as runtime:
            worker = await _spawn_restarting(processes, runtime, tmp_path)

            async def all_ended() -> bool:
                return all([(await runtime.runs.get(r)).terminal for r in run_ids])

            # Well inside the publish grace: only the queue itself can have kept them.
            await wait_for(all_ended, timeout=20, interval=0.2, message="runs lost with the node")
            for run_id in run_ids:
                kinds = [e["type"] for e in await run_ended_once(runtime, run_id)]
                assert kinds[-1] == "run.completed", kinds
                assert kinds.count("run.started") == 1 and "run.retrying" not in kinds, kinds
        assert REPUBLISHED not in worker.output() and REPUBLISHED not in api.output()


async def _status(runtime: Runtime, run: RunRecord, status: str) -> bool:
    return (await runtime.runs.get(run.run_id)).status.value == status


async def _spawn_restarting(processes: Processes, runtime: Runtime, tmp_path: Path) -> Proc:
    """`runrelay worker`, started again if it does not come up, as a process manager does.

    Right after a crash-restart the node may reset a new connection during the
    worker's start (seen here; the worker then hangs instead of exiting — reported).
    """
    for attempt in range(3):
        try:
            return await spawn_worker(
                processes, runtime, tmp_path / f"worker{attempt}.log", ready_s=8
            )
        except AssertionError:
            processes.procs[-1].kill9()
    raise AssertionError("runrelay worker never came up after the node restart")
