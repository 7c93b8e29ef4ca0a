"""Duplicate, reordered and late messages on both queues, through the real broker.

Already proven elsewhere: one run request delivered twice
(tests/workers/test_worker.py::test_a_duplicated_message_executes_the_run_once), one
completion sent three times
(tests/operations/test_flow.py::test_one_completion_sent_three_times_is_applied_once), a
completion before `operation.accepted`
(tests/operations/test_flow.py::test_a_completion_that_beats_operation_accepted_is_applied),
a completion for a cancelled run
(tests/operations/test_flow.py::test_a_completion_for_a_cancelled_run_is_recorded_and_ignored).
"""

from __future__ import annotations

import orjson
import pytest

from tests.faults.invariants import run_ended_once
from tests.operations.conftest import MakeSystem, handled, wait_handled
from tests.support.wait import wait_for
from tests.workers.support import wait_status

pytestmark = pytest.mark.timeout(60)


async def test_run_requests_from_the_future_the_past_and_twice_execute_the_run_once(
    make_system: MakeSystem,
) -> None:
    async with make_system(generator="accept") as system:
        runtime = system.runtime
        run, _ = await runtime.runs.create(
            owner="ops", tool="story", input={"prompt": "once", "paragraphs": 1, "delay_ms": 0}
        )

        def request(attempt: int) -> bytes:
            return orjson.dumps({"run_id": run.run_id, "attempt": attempt})

        # Reordered: a future attempt arrives before the real one, then the real one twice.
        for body in (request(3), request(1), request(1), request(2)):
            await runtime.broker.publish_run(body)
        await wait_status(runtime, run, "completed")
        # Late: a copy of the request after the run ended.
        before = await run_ended_once(runtime, run.run_id)
        await runtime.broker.publish_run(request(1))
        # And one that can never be valid: dead-lettered with the reason.
        await runtime.broker.publish_run(orjson.dumps({"run_id": run.run_id, "attempt": 0}))

        poison = orjson.dumps({"run_id": run.run_id, "attempt": 0})
        reasons: list[str] = []

        async def poison_dead() -> bool:
            # Other tests' leftovers share the vhost's dead-letter queue: look for ours.
            letters = await runtime.broker.take_dead_letters(100)
            reasons.extend(d.reason for d in letters if d.body == poison)
            return bool(reasons)

        await wait_for(poison_dead, timeout=15, message="no dead letter")
        assert "attempt" in reasons[0], reasons

        async def queue_empty() -> bool:
            stats = {q.name: q for q in await runtime.broker.stats()}
            return stats[runtime.names.runs_queue].messages == 0

        await wait_for(queue_empty, timeout=10)
        after = await run_ended_once(runtime, run.run_id)
        assert after == before
        assert [e["type"] for e in after].count("run.started") == 1


async def test_completions_late_after_the_end_reordered_or_for_the_wrong_task_change_nothing(
    make_system: MakeSystem,
) -> None:
    async with make_system(generator="accept", early_completion_s=0.5) as system:
        runtime = system.runtime
        first, second = await system.submit("one"), await system.submit("two")
        op_first, op_second = await system.operation_of(first), await system.operation_of(second)

        # Reordered across runs: the second run's completion arrives first.
        await system.complete(second, op_second)
        await system.complete(first, op_first)
        for run in (first, second):
            await wait_status(runtime, run, "completed")
        settled = {r.run_id: await run_ended_once(runtime, r.run_id) for r in (first, second)}

        # Late: the same completion again after the run ended.
        seen = handled("ignored_ended")
        await system.complete(first, op_first)
        await wait_handled(seen, 1, "ignored_ended")

        # Crossed wires: an operation paired with another task is rejected, not applied.
        rejected = handled("rejected")
        wrong = {"operation_id": op_first, "task_id": second.run_id, "success": True}
        await runtime.broker.publish_completion(orjson.dumps(wrong))
        await wait_handled(rejected, 1, "rejected")

        # Late for something that never existed: retried briefly, then dead-lettered.
        ghost = {"operation_id": "op_ghost", "task_id": "run_ghost", "success": True}
        await runtime.broker.publish_completion(orjson.dumps(ghost))

        async def ghost_dead() -> bool:
            letters = await runtime.broker.take_dead_letters(10)
            return any(b"op_ghost" in letter.body for letter in letters)

        await wait_for(ghost_dead, timeout=20, message="the unknown completion never dead-lettered")
        for run in (first, second):
            assert await run_ended_once(runtime, run.run_id) == settled[run.run_id]
