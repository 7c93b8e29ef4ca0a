"""The coalescing appender over both backends: order, coalescing, refusal, backpressure."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from shared.appender import Appender
from shared.errors import AppendRefused, BackendUnavailable, RunRelayError
from shared.eventlog.base import Batch, EventLog, encode_body
from shared.lifecycle import Runs
from shared.models import RunRecord, utcnow
from tests.contract.test_eventlog import all_events, started
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(60)


class Gated:
    """The log, with each round held until `gate` opens; counts the rounds and batches."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.gate = asyncio.Event()
        self.gate.set()
        self.rounds: list[list[int]] = []  # events per batch, per round
        self.fail: RunRelayError | None = None

    async def append_batches(self, batches: Sequence[Batch]) -> list[int | RunRelayError]:
        self.rounds.append([len(b.events) for b in batches])
        await self.gate.wait()
        if self.fail is not None:
            return [self.fail] * len(batches)
        return await self.log.append_batches(batches)


def body(run: RunRecord, text: str) -> bytes:
    data = {"delta": text}
    return encode_body(run.run_id, run.session_id, "output.message.delta", data, utcnow())


def stream_of(app: Appender, runs: Runs, run: RunRecord, worker: str = "w1"):  # type: ignore[no-untyped-def]
    return app.stream(run.owner, run.session_id, run.run_id, runs.emit_rule(run, worker))


async def deltas(log: EventLog, run: RunRecord) -> list[str]:
    events = await all_events(log, log.keys.run_log(run.session_id, run.run_id))
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    return [e.decode()["data"]["delta"] for e in events if e.type == "output.message.delta"]


async def test_many_runs_keep_their_order_and_waiting_emits_share_batches(
    runs: Runs, log: EventLog
) -> None:
    gated = Gated(log)
    app = Appender(gated, linger_s=0.001)  # type: ignore[arg-type]
    targets = [await started(runs) for _ in range(5)]
    streams = [stream_of(app, runs, r) for r in targets]

    async def tool(i: int) -> None:
        for n in range(200):
            await streams[i].put("output.message.delta", body(targets[i], f"{i}:{n}"))
            if n % 50 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(tool(i) for i in range(5)))
    for s in streams:
        await s.flush()
    for i, run in enumerate(targets):
        assert await deltas(log, run) == [f"{i}:{n}" for n in range(200)]
    # 1,000 emits, far fewer script calls: the waiting ones went out as batches.
    assert sum(len(r) for r in gated.rounds) < 100
    await app.close()


async def test_a_refused_batch_refuses_the_rest_and_the_next_emit_raises(
    runs: Runs, log: EventLog
) -> None:
    gated = Gated(log)
    app = Appender(gated, linger_s=0.001)  # type: ignore[arg-type]
    run = await started(runs)
    stream = stream_of(app, runs, run)
    await stream.put("output.message.delta", body(run, "before"))
    await stream.flush()
    gated.gate.clear()
    await stream.put("output.message.delta", body(run, "in flight"))
    await wait_for(lambda: len(gated.rounds) == 2, timeout=5)
    await stream.put("output.message.delta", body(run, "queued behind it"))
    await runs.cancel(run)
    gated.gate.set()
    with pytest.raises(AppendRefused) as refused:
        await stream.flush()
    assert refused.value.run_status == "cancelled"
    with pytest.raises(AppendRefused):  # sticky: every later emit of this attempt
        await stream.put("output.message.delta", body(run, "after"))
    assert await deltas(log, run) == ["before"]
    events = await all_events(log, log.keys.run_log(run.session_id, run.run_id))
    assert events[-1].type == "run.cancelled"
    await app.close()


async def test_a_failed_round_surfaces_backend_unavailable(runs: Runs, log: EventLog) -> None:
    gated = Gated(log)
    gated.fail = BackendUnavailable("redis away")
    app = Appender(gated, linger_s=0.001)  # type: ignore[arg-type]
    run = await started(runs)
    stream = stream_of(app, runs, run)
    await stream.put("output.message.delta", body(run, "lost"))
    with pytest.raises(BackendUnavailable):
        await stream.flush()
    await app.close()


async def test_a_tool_emitting_faster_than_the_log_takes_waits(runs: Runs, log: EventLog) -> None:
    gated = Gated(log)
    run = await started(runs)
    one = len(body(run, "0000"))
    app = Appender(gated, linger_s=0.001, max_run_bytes=10 * one)  # type: ignore[arg-type]
    stream = stream_of(app, runs, run)
    gated.gate.clear()
    for n in range(10):  # within the bound: each put returns at once
        await asyncio.wait_for(stream.put("output.message.delta", body(run, f"{n:04}")), 1)
    over = asyncio.create_task(stream.put("output.message.delta", body(run, "0010")))
    await wait_for(lambda: len(gated.rounds) >= 1, timeout=5)
    for _ in range(20):  # let the loop run: the put stays held while nothing drains
        await asyncio.sleep(0)
    assert not over.done()
    gated.gate.set()
    await asyncio.wait_for(over, 5)
    await stream.flush()
    assert await deltas(log, run) == [f"{n:04}" for n in range(11)]
    await app.close()


async def test_a_tool_emitting_in_a_tight_loop_gets_its_first_batch_out_before_it_ends(
    runs: Runs, log: EventLog
) -> None:
    """A tool that emits 1,000 chunks awaiting nothing else (all within the byte bound)
    still lets the first batches go out while it emits, not only once it is done."""
    gated = Gated(log)
    app = Appender(gated, linger_s=0.001)  # type: ignore[arg-type]
    run = await started(runs)
    stream = stream_of(app, runs, run)
    rounds_seen = []
    for n in range(1000):
        await stream.put("output.message.delta", body(run, f"{n:04}"))
        rounds_seen.append(len(gated.rounds))
    assert rounds_seen[-1] >= 1, "no batch went out while the tool was emitting"
    await stream.flush()
    assert await deltas(log, run) == [f"{n:04}" for n in range(1000)]
    await app.close()
