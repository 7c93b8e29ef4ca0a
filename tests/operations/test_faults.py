"""Process and broker faults around delegated runs: a killed consumer, a restarted RabbitMQ."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from shared.runtime import Runtime
from tests.operations.conftest import MakeSystem
from tests.support.procs import Processes
from tests.support.proxy import FaultProxy
from tests.support.shipped import spawn_role
from tests.support.wait import wait_for
from tests.workers.support import types, wait_status
from tests.workers.test_broker_restart import own_node

pytestmark = pytest.mark.slow


async def completions_queue(runtime: Runtime) -> tuple[int, int]:
    """(ready messages, consumers) of chat_operation_complete."""
    for queue in await runtime.broker.stats():
        if queue.name == runtime.names.completions_queue:
            return queue.messages, queue.consumers
    raise AssertionError("no completions queue")


def via(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


async def test_a_consumer_killed_while_handling_a_completion_is_redelivered_and_applied_once(
    make_system: MakeSystem, processes: Processes, tmp_path: Path
) -> None:
    async with make_system(generator="accept", consumer=False) as system:
        settings = system.runtime.settings
        assert settings.redis_url is not None
        run = await system.submit()
        op_id = await system.operation_of(run)
        redis_port = urlsplit(settings.redis_url).port or 6379
        async with FaultProxy(redis_port) as proxy:
            proc = await spawn_role(
                processes,
                "consumer",
                settings,
                tmp_path / "consumer.log",
                runtime=system.runtime,
                RUNRELAY_REDIS_URL=via(settings.redis_url, proxy.port),
            )
            # Its Redis now hangs: the consumer takes the message and is stuck handling it.
            proxy.stall()
            await system.complete(run, op_id)
            await wait_for(
                lambda: _delivered(system.runtime), timeout=10, message="never delivered"
            )
            proc.kill9()
            await proc.wait_async(10)
        assert "applied" not in proc.output()  # it died with the message in hand

        assert (await system.runtime.runs.get(run.run_id)).status.value == "waiting"
        await spawn_role(
            processes, "consumer", settings, tmp_path / "survivor.log", runtime=system.runtime
        )
        await wait_status(system.runtime, run, "completed", timeout=20)
        kinds = await types(system.runtime, run)
        assert kinds.count("operation.completed") == 1 and kinds.count("tool.completed") == 1
        assert kinds[-1] == "run.completed"


async def test_two_consumers_racing_on_copies_of_one_completion_apply_it_once(
    make_system: MakeSystem, processes: Processes, tmp_path: Path
) -> None:
    """A real race, not copies one after another: each of two `runrelay consumer`
    processes takes one copy while its Redis is held by a stalled proxy, and both
    proxies let go at once, so both consumers read the run `waiting` together and
    both try to append. Only the compare-and-set (`operation.completed` only while the
    run waits for that operation) keeps the second out."""
    async with make_system(generator="accept", consumer=False) as system:
        settings = system.runtime.settings
        assert settings.redis_url is not None
        run = await system.submit()
        op_id = await system.operation_of(run)
        redis_port = urlsplit(settings.redis_url).port or 6379
        async with FaultProxy(redis_port) as first, FaultProxy(redis_port) as second:
            for n, proxy in enumerate((first, second)):
                await spawn_role(
                    processes,
                    "consumer",
                    settings,
                    tmp_path / f"consumer{n}.log",
                    runtime=system.runtime,
                    RUNRELAY_REDIS_URL=via(settings.redis_url, proxy.port),
                )
            first.stall()
            second.stall()
            await system.complete(run, op_id)
            await system.complete(run, op_id)
            # Both copies are out of the queue: one in each consumer's hands, stuck.
            await wait_for(
                lambda: _delivered(system.runtime), timeout=10, message="never delivered"
            )
            first.resume()
            second.resume()
            await wait_status(system.runtime, run, "completed", timeout=20)
        kinds = await types(system.runtime, run)
        assert kinds.count("operation.completed") == 1, kinds
        assert kinds.count("tool.completed") == 1 and kinds.count("run.completed") == 1
        assert kinds[-1] == "run.completed"


async def _delivered(runtime: Runtime) -> bool:
    return (await completions_queue(runtime))[0] == 0


async def test_runs_waiting_through_a_rabbitmq_restart_take_completions_published_after(
    make_system: MakeSystem,
) -> None:
    # The shipped worker and consumer (uvloop) reconnect on their own; none is restarted.
    with own_node() as node:
        async with make_system(generator="accept", amqp_url=node.url, shipped=True) as system:
            runs = [await system.submit(f"agent {i}") for i in range(3)]
            ops = [await system.operation_of(run) for run in runs]

            await asyncio.to_thread(node.stop)
            await asyncio.to_thread(node.start)

            for run, op_id in zip(runs, ops, strict=True):
                await system.complete_once_reconnected(run, op_id)
            for run in runs:
                # Deadline: well inside the 10 s early-completion window and any reaper pass.
                await wait_status(system.runtime, run, "completed", timeout=30)
                kinds = await types(system.runtime, run)
                assert kinds.count("operation.completed") == 1 and kinds[-1] == "run.completed"
                assert kinds.count("run.started") == 2 and "run.retrying" not in kinds, kinds
            assert all(proc.alive() for proc in system.procs), system.output()
            assert "republished attempt" not in system.output()
