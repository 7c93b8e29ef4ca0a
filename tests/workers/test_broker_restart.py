"""Workers and a RabbitMQ that goes away: each test runs its own throwaway node.

The machine's shared RabbitMQ is never stopped; a node here is stopped through its
own node name (see tests/support/rabbit_node.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.broker.base import Ack, Delivery, Outcome
from shared.errors import PublishFailed
from shared.models import RunRecord
from shared.runtime import Runtime
from shared.settings import Settings
from tests.support.procs import Processes
from tests.support.rabbit_node import RabbitNode
from tests.support.wait import wait_for
from tests.workers.support import spawn_worker, started, submit, types, wait_status

pytestmark = pytest.mark.slow
STORY = {"prompt": "after the storm", "paragraphs": 1, "delay_ms": 0}


@contextlib.contextmanager
def own_node(extra_conf: str = "", advanced: str = "") -> Iterator[RabbitNode]:
    root = Path(tempfile.mkdtemp(prefix="rr-rabbit-"))
    node = RabbitNode(root)
    if extra_conf:
        conf = root / "rabbitmq.conf"
        conf.write_text(conf.read_text() + extra_conf)
    if advanced:
        (root / "advanced.config").write_text(advanced)
    try:
        node.start()
        yield node
    finally:
        try:
            node.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def node() -> Iterator[RabbitNode]:
    with own_node() as value:
        yield value


async def restart(node: RabbitNode) -> None:
    await asyncio.to_thread(node.stop)
    await asyncio.to_thread(node.start)


async def submit_when_connected(runtime: Runtime, tool: str, input: dict[str, object]) -> RunRecord:
    """Submit once this process's own broker connection is back."""

    async def attempt() -> RunRecord | None:
        try:
            return await submit(runtime, tool, input)
        except PublishFailed:
            return None

    run: RunRecord = await wait_for(attempt, timeout=30, interval=0.2, message="no reconnect")
    return run


async def executed_once(runtime: Runtime, run: RunRecord) -> None:
    kinds = await types(runtime, run)
    assert kinds.count("run.started") == 1 and "run.retrying" not in kinds, kinds
    assert kinds[-1] == "run.completed"


async def test_idle_workers_reconnect_after_a_broker_restart(
    node: RabbitNode,
    make_settings: Callable[..., Settings],
    processes: Processes,
    tmp_path: Path,
) -> None:
    settings = make_settings(amqp_url=node.url)
    async with started(settings) as runtime:
        worker = await spawn_worker(processes, runtime, tmp_path / "worker.log")

        await restart(node)

        runs = [await submit_when_connected(runtime, "story", STORY) for _ in range(5)]
        for run in runs:
            await wait_status(runtime, run, "completed", timeout=30)
            await executed_once(runtime, run)
        assert worker.alive()


async def test_a_broker_restart_during_a_run_loses_nothing(
    node: RabbitNode,
    make_settings: Callable[..., Settings],
    processes: Processes,
    tmp_path: Path,
) -> None:
    settings = make_settings(amqp_url=node.url, worker_concurrency=1, lease_s=5)
    async with started(settings) as runtime:
        await spawn_worker(processes, runtime, tmp_path / "worker.log")
        long = await submit(runtime, "countdown", {"seconds": 4, "interval_s": 0.2})
        await wait_status(runtime, long, "running")
        # Persistent messages queued behind the running one, in the broker only.
        queued = [await submit(runtime, "story", STORY) for _ in range(3)]

        await restart(node)

        await wait_status(runtime, long, "completed", timeout=30)
        await executed_once(runtime, long)
        for run in queued:
            await wait_status(runtime, run, "completed", timeout=30)
            await executed_once(runtime, run)
        after = await submit_when_connected(runtime, "story", STORY)
        await wait_status(runtime, after, "completed", timeout=30)


# Timeouts are checked on the channel tick (once a minute by default, so a 3 s timeout
# fires after ~60 s); a 250 ms tick makes it fire on time.
SHORT_CONSUMER_TIMEOUT = (
    "consumer_timeout = 3000\n",
    "[{rabbit, [{channel_tick_interval, 250}]}].\n",
)


async def test_a_run_longer_than_the_consumer_timeout_completes_once(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    with own_node(*SHORT_CONSUMER_TIMEOUT) as node:
        settings = make_settings(amqp_url=node.url, worker_concurrency=1)
        async with started(settings) as runtime:
            await _the_timeout_bites(runtime)
            await spawn_worker(processes, runtime, tmp_path / "worker.log")
            long = await submit(runtime, "countdown", {"seconds": 7, "interval_s": 0.5})

            await wait_status(runtime, long, "completed", timeout=30)

            await executed_once(runtime, long)
            # The worker's channel survived: it still takes runs.
            after = await submit(runtime, "story", STORY)
            await wait_status(runtime, after, "completed", timeout=15)


async def _the_timeout_bites(runtime: Runtime) -> None:
    """Control: a handler that holds a message past the timeout sees it delivered again."""
    seen: list[int] = []
    again = asyncio.Event()

    async def hold(delivery: Delivery) -> Outcome:
        seen.append(delivery.deliveries)
        if len(seen) > 1:
            again.set()
            return Ack()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(again.wait(), 20)
        return Ack()

    consumer = await runtime.broker.consume_runs(hold, prefetch=1)
    try:
        await runtime.broker.publish_run(b'{"run_id": "run_control", "attempt": 1}')
        await wait_for(again.is_set, timeout=20, message="consumer_timeout never fired")
    finally:
        await consumer.stop()
    assert seen[1] > 1
