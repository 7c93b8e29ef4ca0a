"""RabbitMQ (a throwaway node of our own) stops with runs queued, running and waiting.

The outage lasts ``RUNRELAY_FAULT_RABBIT_DOWN_S`` seconds (default 3, to keep the suite
fast; the issue's 10 s passes the same way — see docs/reliability.md). Running runs
need only Redis and go on; queued requests are persistent on a quorum queue; waiting
runs take completions published after the restart. Everything completes, once.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx
import pytest

from shared.models import RunRecord
from shared.runtime import Runtime
from shared.settings import Settings
from tests.faults.conftest import ALICE, post_run, spawn_api
from tests.faults.invariants import all_end, delivered_once, run_ended_once
from tests.faults.rawsse import follow
from tests.operations.conftest import MakeSystem
from tests.support.devserver import REPO, RUNRELAY
from tests.support.procs import Processes
from tests.support.rabbit_node import rabbitmqctl
from tests.support.wait import wait_for
from tests.workers.support import request_body, spawn_worker, started, worker_env
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
    make_system: MakeSystem,
) -> None:
    with own_node() as node:
        async with make_system(
            generator="accept",
            amqp_url=node.url,
            worker_concurrency=2,
            publish_grace_s=30,
            shipped=True,  # `runrelay worker` and `runrelay consumer`, on uvloop
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
            # Inside the 30 s publish grace: nothing can have waited for the reaper.
            ids = [r.run_id for r in everything]
            await all_end(runtime, ids, message="runs still open", timeout_s=25)
            for run in everything:
                log = await run_ended_once(runtime, run.run_id)
                kinds = [e["type"] for e in log]
                assert kinds[-1] == "run.completed", kinds
                assert kinds.count("run.started") == (2 if run in waiting else 1), kinds
                assert "run.retrying" not in kinds, kinds
            async with httpx.AsyncClient(base_url=system.api_url) as http:
                assert (await http.get("/readyz")).status_code == 200
            # The queue kept every request: nothing waited for the reaper's republish,
            # and neither process had to be restarted.
            assert all(proc.alive() for proc in system.procs), system.output()
            assert REPUBLISHED not in system.output()


async def test_a_rabbitmq_node_killed_with_runs_queued_and_running_loses_none_and_needs_no_reaper(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    """kill -9 of the broker node (nothing flushed on the way out) with 2 runs running
    on a `runrelay worker` and 4 queued behind them. The worker reconnects on its own;
    confirmed persistent requests on the quorum queue survive, so every run completes
    once, well inside the publish grace (a classic queue of transient messages loses
    them, and only the reaper's republish 30 s later would bring them back)."""
    with own_node() as node:
        # RabbitMQ 3.10 writes a new quorum queue's Ra metadata to disk lazily: one
        # declared seconds before a crash does not come back (it never elects a leader).
        # A production queue is older than that; a clean restart gives ours that footing.
        settings = make_settings(amqp_url=node.url, publish_grace_s=30, worker_concurrency=2)
        async with started(settings):
            pass  # declares the topology
        await asyncio.to_thread(node.stop)
        await asyncio.to_thread(node.start)
        api, api_port = await spawn_api(processes, settings, tmp_path / "api.log")
        async with started(settings) as runtime:
            worker = await spawn_worker(processes, runtime, tmp_path / "worker.log")
            countdown = {"seconds": 10, "interval_s": 0.25}
            running = [await post_run(api_port, "countdown", countdown) for _ in range(2)]
            for run_id in running:
                await wait_for(functools.partial(_status_is, runtime, run_id, "running"))
            story = {"prompt": "through a crash", "paragraphs": 1, "delay_ms": 0}
            queued = [await post_run(api_port, "story", story) for _ in range(4)]
            reader = asyncio.create_task(
                follow(api_port, f"/v1/runs/{running[0]}/events", token=ALICE, deadline_s=60)
            )

            await asyncio.to_thread(node.kill)
            await asyncio.to_thread(node.start)

            # Well inside the publish grace: only the queue itself can have kept them.
            await all_end(runtime, running + queued, message="runs lost", timeout_s=25)
            for run_id in running + queued:
                kinds = [e["type"] for e in await run_ended_once(runtime, run_id)]
                assert kinds[-1] == "run.completed", kinds
                assert kinds.count("run.started") == 1 and "run.retrying" not in kinds, kinds
            delivered_once((await reader).ids, await run_ended_once(runtime, running[0]))
        assert worker.alive() and api.alive()
        assert REPUBLISHED not in worker.output() and REPUBLISHED not in api.output()


async def test_a_worker_whose_broker_never_answers_at_start_exits_naming_the_setting(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    """What a quorum queue without a leader looks like to a starting worker (seen after a
    kill -9): the connection opens, `basic.consume` is never answered. The worker must
    not hang silently; it exits non-zero naming RUNRELAY_AMQP_URL, so that its process
    manager restarts it and the operator knows where to look."""
    with own_node() as node:
        settings = make_settings(amqp_url=node.url)
        async with started(settings) as runtime:
            queue = runtime.names.runs_queue
        # Freeze the queue's Raft member: RabbitMQ accepts the consume and never answers.
        ra_name = f"'%2F_{queue}'"
        frozen = f"sys:suspend(whereis({ra_name}))."
        await asyncio.to_thread(rabbitmqctl, "eval", frozen, node=node.nodename, home=node.home)
        worker = processes.spawn(
            [RUNRELAY, "worker"], worker_env(settings), log_path=tmp_path / "w.log", cwd=REPO
        )
        # The start is bounded by the broker's 10 s connect timeout; then it gives up.
        code = await worker.wait_async(timeout=30)
        assert code != 0, worker.output()
        last = worker.output().strip().splitlines()[-1]
        assert "cannot start" in last and "RUNRELAY_AMQP_URL" in last, last
        assert queue in last and "did not answer" in last, last


async def _status_is(runtime: Runtime, run_id: str, status: str) -> bool:
    return (await runtime.runs.get(run_id)).status.value == status


async def _status(runtime: Runtime, run: RunRecord, status: str) -> bool:
    return (await runtime.runs.get(run.run_id)).status.value == status
