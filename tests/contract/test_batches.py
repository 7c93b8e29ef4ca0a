"""Batch appends (`EventLog.append_batches`), identical for the embedded and the Redis backend."""

from __future__ import annotations

import time

from shared.errors import AppendRefused, NotFound
from shared.eventlog.base import Batch, EventLog, Transition, encode_body
from shared.lifecycle import Runs
from shared.models import RunRecord, RunStatus, utcnow
from tests.contract.test_eventlog import all_events, started


def batch(run: RunRecord, texts: list[str], rule: Transition) -> Batch:
    events = [
        (
            "output.message.delta",
            encode_body(run.run_id, run.session_id, "output.message.delta", {"delta": t}, utcnow()),
        )
        for t in texts
    ]
    return Batch(run.owner, run.session_id, run.run_id, events, rule)


async def test_batches_store_consecutive_ids_in_order_in_both_logs(
    runs: Runs, log: EventLog
) -> None:
    a, b = await started(runs), await started(runs)
    rule_a, rule_b = runs.emit_rule(a, "w1"), runs.emit_rule(b, "w1")
    first = await log.append_batches(
        [batch(a, ["a1", "a2", "a3"], rule_a), batch(b, ["b1"], rule_b)]
    )
    second = await log.append_batches([batch(a, ["a4", "a5"], rule_a)])
    assert first == [5, 3] and second == [7]  # queued + started, then the batches
    events = await all_events(log, log.keys.run_log(a.session_id, a.run_id))
    assert [e.id for e in events] == list(range(1, 8))
    assert [e.decode()["id"] for e in events] == [e.id for e in events]
    deltas = [e.decode()["data"]["delta"] for e in events[2:]]
    assert deltas == ["a1", "a2", "a3", "a4", "a5"]
    session = await all_events(log, log.keys.session_log(a.session_id, a.owner))
    assert [e.id for e in session] == list(range(1, 8))
    assert [e.decode()["run_event_id"] for e in session] == list(range(1, 8))
    assert (await runs.get(a.run_id)).last_event_id == 7


async def test_a_refused_batch_stores_none_of_its_events(runs: Runs, log: EventLog) -> None:
    run = await started(runs)
    await log.append_batches([batch(run, ["kept"], runs.emit_rule(run, "w1"))])
    await runs.cancel(run)  # mid-stream: run.cancelled is event 4
    ok, lost = await started(runs), await started(runs, worker="w2")
    results = await log.append_batches(
        [
            batch(run, ["x", "y", "z"], runs.emit_rule(run, "w1")),
            batch(ok, ["fine"], runs.emit_rule(ok, "w1")),
            batch(lost, ["not yours"], runs.emit_rule(lost, "w1")),  # held by w2
        ]
    )
    refused, stored, fenced = results
    assert isinstance(refused, AppendRefused) and refused.run_status == "cancelled"
    assert stored == 3
    assert isinstance(fenced, AppendRefused) and fenced.run_status == "running"
    events = await all_events(log, log.keys.run_log(run.session_id, run.run_id))
    assert [e.type for e in events][-2:] == ["output.message.delta", "run.cancelled"]
    assert len(events) == 4
    assert len(await all_events(log, log.keys.run_log(lost.session_id, lost.run_id))) == 2


async def test_a_terminal_batch_ends_the_run_after_its_last_event(
    runs: Runs, log: EventLog
) -> None:
    run = await started(runs)
    end = Transition(to=RunStatus.COMPLETED.value, terminal=True, expect={"worker": "w1"})
    [last] = await log.append_batches([batch(run, ["p", "q"], end)])
    assert last == 4
    record = await runs.get(run.run_id)
    assert record.status == RunStatus.COMPLETED and record.finished_at is not None
    [after] = await log.append_batches([batch(run, ["late"], runs.emit_rule(run, "w1"))])
    assert isinstance(after, AppendRefused) and after.run_status == "completed"
    events = await all_events(log, log.keys.run_log(run.session_id, run.run_id))
    assert [e.id for e in events] == [1, 2, 3, 4]


async def test_a_batch_for_an_unknown_run_is_not_found(runs: Runs, log: EventLog) -> None:
    run = await started(runs)
    ghost = run.model_copy(update={"run_id": f"run_{time.time_ns()}"})
    [result] = await log.append_batches([batch(ghost, ["x"], Transition())])
    assert isinstance(result, NotFound)


async def test_a_batch_keeps_each_events_type_and_exact_bytes(runs: Runs, log: EventLog) -> None:
    # Multi-byte text, a body far over redis-py's 6,000-byte packing buffer, an empty
    # delta and mixed types in one batch: each event comes back as it was encoded.
    run = await started(runs)
    texts = ["héllo ✓ 🎉", "", "x" * 20_000, 'naïve\n"quoted"', "end"]
    types = ["output.message.delta", "custom.note", "output.message.delta", "custom.n", "t"]
    events = [
        (t, encode_body(run.run_id, run.session_id, t, {"delta": d}, utcnow()))
        for t, d in zip(types, texts, strict=True)
    ]
    [last] = await log.append_batches(
        [Batch(run.owner, run.session_id, run.run_id, events, runs.emit_rule(run, "w1"))]
    )
    assert last == 7
    for key in (
        log.keys.run_log(run.session_id, run.run_id),
        log.keys.session_log(run.session_id, run.owner),
    ):
        stored = (await all_events(log, key))[2:]
        assert [e.type for e in stored] == types
        assert [e.decode()["type"] for e in stored] == types
        assert [e.decode()["data"]["delta"] for e in stored] == texts
