"""A node of a 3-node RabbitMQ cluster dies (kill -9) with runs queued and running.

The runs queue is a quorum queue with a replica on every node, so a request survives
the node that held it; processes list every node in RUNRELAY_AMQP_URL and reconnect
to the next. The node killed is the one the worker is connected to, with run requests
in its hands unacked. Nothing is lost (every run ends completed) and nothing runs
twice (one `run.started` each, attempt 1: the fault explains no retry).

Not the node that declared the topology: runrelay's other queues (retry, dead-letter,
completions) are classic, homed on that node, and a reconnect that re-declares them
fails until it returns (see docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings
from tests.faults.invariants import all_end, run_ended_once
from tests.support.procs import Processes
from tests.support.rabbit_node import RabbitNode, rabbit_cluster, rabbitmqctl
from tests.support.shipped import spawn_role
from tests.support.sockets import established
from tests.workers.support import started, submit, wait_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

COUNTDOWN = {"seconds": 4, "interval_s": 0.2}
STORY = {"prompt": "across a node's death", "paragraphs": 1, "delay_ms": 0}


def queues(node: RabbitNode) -> list[dict[str, Any]]:
    out = rabbitmqctl(
        "list_queues", "name", "type", "leader", "members", "--formatter", "json",
        node=node.nodename, home=node.home,
    )  # fmt: skip
    listed: list[dict[str, Any]] = json.loads(out)
    return listed


async def test_the_workers_node_killed_loses_no_queued_run_and_runs_none_twice(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    with rabbit_cluster(3) as nodes:
        doomed, home, third = nodes
        # The topology is declared through `home`; the worker lists `doomed` first.
        settings = make_settings(
            amqp_url=",".join(node.url for node in (home, third, doomed)),
            worker_concurrency=2,
            publish_grace_s=60,  # far past the test: the reaper's republish cannot hide a loss
        )
        async with started(settings) as runtime:
            runs_queue = runtime.names.runs_queue
            (queue,) = [q for q in queues(home) if q["name"] == runs_queue]
            assert queue["type"] == "quorum"
            assert sorted(queue["members"]) == sorted(node.nodename for node in nodes)

            worker = await spawn_role(
                processes, "worker", settings, tmp_path / "worker.log", runtime=runtime,
                RUNRELAY_AMQP_URL=",".join(node.url for node in nodes),
            )  # fmt: skip
            assert established(worker.pid, remote_port=doomed.port) == 1
            running = [await submit(runtime, "countdown", COUNTDOWN) for _ in range(2)]
            for run in running:
                await wait_status(runtime, run, "running")
            # Two of these are in the worker's hands (prefetch 2, waiting for a slot),
            # unacked: the broker must give them back when the worker's node dies.
            queued = [await submit(runtime, "story", STORY) for _ in range(4)]

            await asyncio.to_thread(doomed.kill)
            everything = [*running, *queued]
            await all_end(
                runtime, [r.run_id for r in everything], message="runs lost with the node"
            )
            for run in everything:
                log = await run_ended_once(runtime, run.run_id)
                kinds = [e["type"] for e in log]
                assert kinds[-1] == "run.completed", kinds
                assert kinds.count("run.started") == 1 and "run.retrying" not in kinds, kinds
                assert (await runtime.runs.get(run.run_id)).attempt == 1
            moved = sum(established(worker.pid, remote_port=node.port) for node in (home, third))
            assert moved == 1, "the worker did not move to another node"
