"""Connections that break: cut mid-frame, stalled, slow to read, and a reconnect storm.

A stalled connection detected by the SDK's watchdog is proven by
tests/sdk/test_e2e.py::test_a_stalled_connection_is_detected_after_stale_after_and_resumed,
random cut points by tests/sdk/test_e2e.py::test_random_cuts_lose_and_repeat_nothing.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from shared.runtime import Runtime
from tests.faults.conftest import ALICE, MakeStack, Stack
from tests.faults.invariants import delivered_once, log_of, run_ended_once
from tests.faults.rawsse import StreamResult, follow, read_stream
from tests.support.proxy import FaultProxy
from tests.support.wait import wait_for
from workers.worker import Worker

pytestmark = pytest.mark.timeout(120)

# Odd offsets: inside the HTTP head, inside `retry:`, inside an `id:` line, inside JSON,
# between the two newlines that end a frame; primes so no frame boundary lines up.
ODD_OFFSETS = (1, 13, 97, 211, 389, 1021, 2053)


async def test_cuts_at_odd_byte_offsets_mid_frame_lose_and_repeat_nothing(
    make_stack: MakeStack,
) -> None:
    async with make_stack(heartbeat_s=0.5, retry_ms=0) as stack:
        run_id = await stack.create("story", {"prompt": "cut", "paragraphs": 3, "delay_ms": 5})
        await stack.ended(run_id)
        log = await run_ended_once(stack.runtime, run_id)
        async with FaultProxy(stack.port) as proxy:
            for offset in ODD_OFFSETS:
                proxy.cut_after_bytes(offset, times=4)
                # The raw reader resumes from its last id after each cut and reports
                # every id it got, so an event repeated on resume fails here.
                result = await follow(
                    proxy.port, f"/v1/runs/{run_id}/events", token=ALICE, pause_s=0.01
                )
                assert result.connections >= 5, f"offset {offset}: no cut"
                delivered_once(result.ids, log)


async def overflows(stack: Stack) -> float:
    """The API's count of subscribers that overflowed and fell back to the log."""
    async with stack.client(token=None) as http:
        text = (await http.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("runrelay_api_slow_client_fallbacks_total "):
            return float(line.split()[1])
    raise AssertionError("no runrelay_api_slow_client_fallbacks_total in /metrics")


async def test_a_slow_reader_overflows_without_holding_up_the_run_or_others_and_misses_nothing(
    make_stack: MakeStack,
) -> None:
    # The smallest hub buffer, and far more bytes than the socket buffers hold (small
    # ones, as on a real network): the slow reader's stream blocks on its socket, its
    # hub buffer overflows, and it must catch up from the log.
    async with make_stack(
        worker=False, send_buffer=8192, subscriber_buffer=8, heartbeat_s=5
    ) as stack:
        before = await overflows(stack)
        run_id = await stack.create(
            "story", {"prompt": "a long one " * 500, "paragraphs": 30, "delay_ms": 1}
        )
        path = f"/v1/runs/{run_id}/events"
        slow = asyncio.create_task(read_stream(stack.port, path, token=ALICE, read_pause_s=0.01))
        fast = asyncio.create_task(read_stream(stack.port, path, token=ALICE))
        # Both are live (subscribed to the hub) before the run produces anything: a
        # reader that is behind from the start only ever replays the log, never overflows.
        await wait_for(lambda: stack.hub.subscribers == 2, timeout=10)
        worker = Worker(Runtime.build(stack.runtime.settings), owns_runtime=True)
        await worker.start()
        try:
            await stack.ended(run_id)
        finally:
            await worker.stop(grace_s=0)
        fast_result = await asyncio.wait_for(fast, 20)
        # The run and the fast reader are done while the slow one is still reading.
        assert not slow.done()
        slow_result = await asyncio.wait_for(slow, 60)
        assert await overflows(stack) > before, "the slow reader never overflowed"
        log = await run_ended_once(stack.runtime, run_id)
        delivered_once(fast_result.ids, log)
        delivered_once(slow_result.ids, log)


async def test_a_storm_of_1000_clients_resuming_at_once_each_catch_up_exactly(
    make_stack: MakeStack,
) -> None:
    clients = 1000
    async with make_stack(max_streams_per_owner=clients + 10, heartbeat_s=2) as stack:
        run_id = await stack.create("story", {"prompt": "storm", "paragraphs": 6, "delay_ms": 20})

        async def some_events() -> bool:
            return len(await log_of(stack.runtime, run_id)) >= 20

        await wait_for(some_events, timeout=15)
        last = len(await log_of(stack.runtime, run_id))
        rng = random.Random(7)
        cursors = [rng.randrange(0, last) for _ in range(clients)]
        path = f"/v1/runs/{run_id}/events"
        retried = 0

        async def resume(cursor: int) -> StreamResult:
            # As the SDK does: a 503 (Redis pool exhausted by the herd) is retried after a
            # jittered backoff, from the same cursor.
            nonlocal retried
            for attempt in range(20):
                result = await read_stream(stack.port, path, token=ALICE, cursor=cursor)
                if result.status != 503:
                    return result
                retried += 1
                await asyncio.sleep(rng.uniform(0, min(2.0, 0.05 * 2**attempt)))
            return result

        results = await asyncio.wait_for(asyncio.gather(*(resume(c) for c in cursors)), 120)
        print(f"storm: {retried} answers were 503 and retried")
        log = await run_ended_once(stack.runtime, run_id)
        for cursor, result in zip(cursors, results, strict=True):
            assert result.status == 200 and not result.errors and not result.gaps
            delivered_once(result.ids, log, since=cursor)
        await wait_for(lambda: stack.hub.subscribers == 0, timeout=10, message="subscribers left")
