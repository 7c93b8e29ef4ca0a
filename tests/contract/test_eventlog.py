"""The event-log contract, identical for the embedded and the Redis backend."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import AppendRefused, NotFound
from shared.eventlog.base import EventLog, RunStore, Transition
from shared.eventlog.follow import Gap, follow, replay
from shared.lifecycle import Runs
from shared.models import RunRecord, RunStatus, StoredEvent
from tests.contract.conftest import MakeStores
from tests.support.wait import wait_for


async def started(runs: Runs, worker: str = "w1", **create: object) -> RunRecord:
    run, _ = await runs.create(owner="alice", tool="story", input={"prompt": "x"}, **create)  # type: ignore[arg-type]
    claimed = await runs.start(run, worker=worker, lease_until=time.time() + 30)
    assert claimed is not None
    return claimed


async def all_events(log: EventLog, key: str) -> list[StoredEvent]:
    return [e async for e in replay(log, key, 0) if isinstance(e, StoredEvent)]


async def test_concurrent_appenders_get_gapless_unique_ids(runs: Runs, log: EventLog) -> None:
    run = await started(runs)

    async def producer(n: int) -> None:
        for i in range(500):
            await runs.emit(run, "output.message.delta", {"delta": f"{n}:{i}"}, worker="w1")

    await asyncio.gather(*(producer(n) for n in range(20)))

    events = await all_events(log, log.keys.run_log(run.session_id, run.run_id))
    assert [e.id for e in events] == list(range(1, 10_003))  # queued + started + 10,000
    assert [e.decode()["id"] for e in events] == [e.id for e in events]
    deltas = [e.decode()["data"]["delta"] for e in events if e.type == "output.message.delta"]
    assert len(set(deltas)) == 10_000
    assert (await runs.get(run.run_id)).last_event_id == 10_002


async def test_reader_from_random_cursor_sees_every_later_event_once(
    runs: Runs, log: EventLog
) -> None:
    run = await started(runs)
    key = log.keys.run_log(run.session_id, run.run_id)
    for i in range(50):
        await runs.emit(run, "output.message.delta", {"delta": str(i)}, worker="w1")
    cursor = random.randint(0, 52)

    async def produce() -> None:
        for i in range(50, 300):
            await runs.emit(run, "output.message.delta", {"delta": str(i)}, worker="w1")
            if i % 37 == 0:
                await asyncio.sleep(0)  # let the reader switch from replay to live mid-stream
        await runs.finish(run, RunStatus.COMPLETED, expect={"worker": "w1"})

    async def read() -> list[int]:
        return [
            e.id async for e in follow(log, key, cursor, wait_s=0.2) if isinstance(e, StoredEvent)
        ]

    seen, _ = await asyncio.wait_for(asyncio.gather(read(), produce()), 30)
    assert seen == list(range(cursor + 1, 304))  # 2 + 300 + terminal


async def test_racing_terminal_appends_exactly_one_wins(runs: Runs, log: EventLog) -> None:
    run = await started(runs)
    outcomes = await asyncio.gather(
        runs.finish(run, RunStatus.COMPLETED),
        runs.finish(run, RunStatus.FAILED, error="boom"),
        runs.finish(run, RunStatus.CANCELLED, reason="client"),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if isinstance(o, int)]
    assert len(winners) == 1
    assert all(isinstance(o, AppendRefused) for o in outcomes if not isinstance(o, int))
    with pytest.raises(AppendRefused):
        await runs.emit(run, "output.message.delta", {"delta": "late"})
    events = await all_events(log, log.keys.run_log(run.session_id, run.run_id))
    assert [e.type for e in events].count("run.completed") + [e.type for e in events].count(
        "run.failed"
    ) + [e.type for e in events].count("run.cancelled") == 1
    assert events[-1].id == winners[0]
    assert (await runs.get(run.run_id)).terminal


async def test_trimmed_log_reports_its_oldest_id(make_stores: MakeStores) -> None:
    stores = make_stores(max_events=10)
    log, runs = stores.log, Runs(stores)
    run = await started(runs)
    for i in range(23):
        await runs.emit(run, "output.message.delta", {"delta": str(i)}, worker="w1")
    key = log.keys.run_log(run.session_id, run.run_id)

    page = await log.read(key, 0, 100)
    assert (page.first_id, page.last_id) == (16, 25)
    assert [e.id for e in page.events] == list(range(16, 26))
    items = [i async for i in replay(log, key, 3)]
    assert items[0] == Gap(4, 15)
    assert [i.id for i in items[1:] if isinstance(i, StoredEvent)] == list(range(16, 26))
    # The session's log, which gets a copy of every event, is held to the same bound.
    session = await log.read(log.keys.session_log(run.session_id, "alice"), 0, 100)
    assert [e.id for e in session.events] == list(range(16, 26))


async def test_a_run_longer_than_the_ttl_keeps_its_whole_log(make_stores: MakeStores) -> None:
    stores = make_stores(ttl_s=1)
    log, runs = stores.log, Runs(stores)
    run = await started(runs)
    await runs.emit(run, "output.message.delta", {"delta": "early"}, worker="w1")
    # Time passing beyond the TTL is what this test is about, not a wait for a condition.
    await asyncio.sleep(1.5)
    await runs.emit(run, "output.message.delta", {"delta": "late"}, worker="w1")
    key = log.keys.run_log(run.session_id, run.run_id)
    assert [e.id for e in await all_events(log, key)] == [1, 2, 3, 4]

    await runs.finish(run, RunStatus.COMPLETED)
    # After the run ends the retention clock starts; the log then goes away by itself.
    await wait_for(lambda: _gone(runs, run.run_id), timeout=10, message="log never expired")
    assert (await log.read(key, 0, 10)).events == []


async def _gone(runs: Runs, run_id: str) -> bool:
    try:
        await runs.get(run_id)
    except NotFound:
        return True
    return False


async def test_two_prefixes_never_see_each_other(make_stores: MakeStores, prefix: str) -> None:
    a, b = Runs(make_stores(prefix=prefix + "a:")), Runs(make_stores(prefix=prefix + "b:"))
    run, _ = await a.create(owner="alice", tool="story", input={}, session_id="shared-session")
    with pytest.raises(NotFound):
        await b.get(run.run_id)
    assert await b.list("alice") == []
    other, _ = await b.create(owner="bob", tool="story", input={}, session_id="shared-session")
    assert [r.run_id for r in await a.list("alice")] == [run.run_id]
    assert [r.run_id for r in await b.list("bob")] == [other.run_id]


async def test_idempotent_create_returns_the_same_run(runs: Runs) -> None:
    first, created = await runs.create(
        owner="alice", tool="story", input={"a": 1}, idempotency_key="key-1"
    )
    again, created_again = await runs.create(
        owner="alice", tool="story", input={"a": 1}, idempotency_key="key-1"
    )
    other, _ = await runs.create(owner="bob", tool="story", input={}, idempotency_key="key-1")
    assert created and not created_again
    assert again.run_id == first.run_id
    assert other.run_id != first.run_id
    assert len(await runs.list("alice")) == 1


async def test_session_log_interleaves_runs_with_session_local_ids(
    runs: Runs, log: EventLog
) -> None:
    a = await started(runs, session_id="chat-1")
    b = await started(runs, session_id="chat-1")
    await runs.emit(a, "output.message.delta", {"delta": "a"}, worker="w1")
    await runs.emit(b, "output.message.delta", {"delta": "b"}, worker="w1")
    await runs.finish(a, RunStatus.COMPLETED)

    events = await all_events(log, log.keys.session_log("chat-1", "alice"))
    assert [e.id for e in events] == list(range(1, 8))
    decoded = [e.decode() for e in events]
    assert [(d["run_id"], d["run_event_id"]) for d in decoded] == [
        (a.run_id, 1), (a.run_id, 2), (b.run_id, 1), (b.run_id, 2),
        (a.run_id, 3), (b.run_id, 3), (a.run_id, 4),
    ]  # fmt: skip
    assert [r.run_id for r in await runs.list("alice", session_id="chat-1")] == [b.run_id, a.run_id]


async def test_sessions_are_per_owner_even_with_the_same_id(
    runs: Runs, log: EventLog, store: RunStore
) -> None:
    mine, _ = await runs.create(owner="alice", tool="story", input={}, session_id="chat")
    theirs, _ = await runs.create(owner="mallory", tool="story", input={}, session_id="chat")

    assert await store.session_exists("alice", "chat")
    assert await store.session_exists("mallory", "chat")
    assert not await store.session_exists("bob", "chat")
    assert [r.run_id for r in await runs.list("alice", session_id="chat")] == [mine.run_id]
    assert [r.run_id for r in await runs.list("mallory", session_id="chat")] == [theirs.run_id]
    alices = await all_events(log, log.keys.session_log("chat", "alice"))
    assert [(e.id, e.decode()["run_id"]) for e in alices] == [(1, mine.run_id)]


async def test_a_run_is_claimed_by_one_worker_and_lost_workers_cannot_write(
    runs: Runs,
) -> None:
    run, _ = await runs.create(owner="alice", tool="story", input={})
    claims = await asyncio.gather(
        *(runs.start(run, worker=f"w{i}", lease_until=time.time() + 30) for i in range(5))
    )
    holders = [c for c in claims if c is not None]
    assert len(holders) == 1 and holders[0].status == RunStatus.RUNNING
    holder = holders[0]
    loser = next(f"w{i}" for i in range(5) if f"w{i}" != holder.worker)

    with pytest.raises(AppendRefused):
        await runs.emit(holder, "output.message.delta", {"delta": "x"}, worker=loser)
    assert await runs.refresh_lease(holder, worker=loser, lease_until=time.time() + 60) is None
    assert holder.worker is not None
    refreshed = await runs.refresh_lease(holder, worker=holder.worker, lease_until=time.time() + 60)
    assert refreshed is not None

    await runs.retry(holder, "worker_lost", expect={"worker": holder.worker})
    again = await runs.get(run.run_id)
    assert (again.status, again.attempt) == (RunStatus.QUEUED, 2)
    with pytest.raises(AppendRefused):  # the old holder's attempt is over
        await runs.emit(holder, "output.message.delta", {"delta": "zombie"}, worker=holder.worker)
    assert await runs.start(holder, worker="w9", lease_until=time.time() + 30) is None
    assert await runs.start(again, worker="w9", lease_until=time.time() + 30) is not None


async def test_delegation_applies_only_its_own_completion_once(runs: Runs) -> None:
    run = await started(runs)
    await runs.delegate(run, {"operation_id": "op-1"}, worker="w1")
    waiting = await runs.get(run.run_id)
    assert (waiting.status, waiting.worker) == (RunStatus.WAITING, None)
    with pytest.raises(AppendRefused):  # a completion of some other operation
        await runs.complete_operation(waiting, "op-2", {"operation_id": "op-2", "success": True})
    outcomes = await asyncio.gather(
        *(
            runs.complete_operation(waiting, "op-1", {"operation_id": "op-1", "success": True})
            for _ in range(3)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(o, int) for o in outcomes) == 1
    requeued = await runs.get(run.run_id)
    assert (requeued.status, requeued.attempt) == (RunStatus.QUEUED, 1)
    assert await runs.start(requeued, worker="w2", lease_until=time.time() + 30) is not None


async def test_cancel_is_immediate_and_idempotent(runs: Runs) -> None:
    run = await started(runs)
    cancelled = await runs.cancel(run)
    assert cancelled.status == RunStatus.CANCELLED and cancelled.cancel_requested
    again = await runs.cancel(cancelled)
    assert again.last_event_id == cancelled.last_event_id
    with pytest.raises(AppendRefused):
        await runs.emit(run, "output.message.delta", {"delta": "late"}, worker="w1")


async def test_unknown_run_is_not_found(runs: Runs) -> None:
    with pytest.raises(NotFound):
        await runs.get("run_missing")
    with pytest.raises(NotFound):
        await runs.get("../../etc")
    run, _ = await runs.create(owner="alice", tool="story", input={})
    with pytest.raises(NotFound):
        await runs.get(run.run_id, owner="mallory")


async def test_transition_rules_are_enforced(runs: Runs, log: EventLog) -> None:
    run, _ = await runs.create(owner="alice", tool="story", input={})
    with pytest.raises(AppendRefused):  # output before the run started
        await runs.emit(run, "output.message.delta", {"delta": "x"})
    with pytest.raises(AppendRefused):
        await runs.append(run, "operation.completed", {}, Transition(frozenset({"waiting"})))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
async def test_paging_from_any_cursor_returns_exactly_the_later_events(
    log: EventLog, data: st.DataObject
) -> None:
    topic = f"t{uuid.uuid4().hex}"
    key = log.keys.topic_log("alice", topic)
    n = data.draw(st.integers(0, 60), label="events")
    for i in range(n):
        await log.append_topic("alice", topic, "custom.x", b'"i":%d}' % i)
    cursor = data.draw(st.integers(0, n + 3), label="cursor")
    limit = data.draw(st.integers(1, 70), label="limit")

    page = await log.read(key, cursor, limit)
    assert [e.id for e in page.events] == list(range(cursor + 1, min(cursor + limit, n) + 1))
    assert page.last_id == n and page.first_id == (1 if n else 0)

    got: list[int] = []
    cursor = 0
    while True:
        size = data.draw(st.integers(1, 25), label="page size")
        batch = await log.read(key, cursor, size)
        got += [e.id for e in batch.events]
        if not batch.events:
            break
        cursor = batch.events[-1].id
    assert got == list(range(1, n + 1))


async def test_a_log_no_longer_waited_on_is_no_longer_subscribed(
    redis_url: str, prefix: str
) -> None:
    """The change feed subscribes each log a `wait` asks for and unsubscribes each it no
    longer asks for, whether a pass only adds logs (counted, not compared) or also drops
    some; a dropped log left subscribed would be notified of every append for ever."""
    from shared.eventlog.redis_records import redis_stores

    log = redis_stores(redis_url, prefix=prefix, ttl_s=60, max_events=100).log
    admin = aioredis.Redis.from_url(redis_url)
    key = {name: log.keys.topic_log("owner", name) for name in "abcdefgh"}

    async def subscribed() -> set[str]:
        found = dict(await admin.pubsub_shardnumsub(*key.values()))
        return {name for name, k in key.items() if found[k.encode()] > 0}

    async def waiting_on(names: str) -> None:
        await log.wait(dict.fromkeys((key[n] for n in names), 0), 0.05, 10)

        async def exactly() -> bool:
            return await subscribed() == set(names)

        await wait_for(exactly, message=f"subscribed to exactly {names}")

    try:
        await waiting_on("abcd")
        await waiting_on("bce")  # drops two, adds one
        await waiting_on("bcef")  # only adds
        await waiting_on("cfgh")  # drops two, adds two: the same count
        await waiting_on("cfgh")  # nothing changes
    finally:
        await log.close()
        await admin.aclose()


async def test_a_wake_ends_a_wait_that_includes_its_key_and_no_other(log: EventLog) -> None:
    """`wake` ends a wait in progress on its key at once (the tail hub adds logs to its
    read so), and leaves a wait without that key alone. On Redis the change feed's own
    wait is woken in the process: the wake writes nothing to Redis (a round trip per
    wake was 5% of a connect wave's CPU); another waiter's wake still goes through it."""
    wake, other = log.keys.wakeup(uuid.uuid4().hex), log.keys.wakeup(uuid.uuid4().hex)
    feed = getattr(log, "_feed", None)
    if feed is not None:
        # A first wait returns early, empty, once its subscription is confirmed (its log
        # is read then); the next one waits. One key: one confirmation, even on a Cluster.
        await log.wait({wake: 0}, 10, 10)
    woken = asyncio.create_task(log.wait({wake: 0}, 60, 10))
    if feed is not None:  # woken while it waits, not before (that works anyway)
        await wait_for(lambda: feed.busy, message="the wait is under way")
    await log.wake(other)  # not this wait's key
    assert not woken.done()
    await log.wake(wake)
    await asyncio.wait_for(woken, 10)
    if feed is not None:
        client = log.conn.redis  # type: ignore[attr-defined]
        assert await client.exists(wake) == 0  # woken in the process
        assert await client.exists(other) == 1  # no wait of the feed's: through Redis
