"""The contracts of the run store, the scheduler and the worker registry, over every backend.

The event log's own contract (appends, reads, waits) is tests/contract/test_eventlog.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.eventlog.base import WORKER_HISTORY_S, RunStore, Scheduler, Stores, WorkerRegistry
from shared.eventlog.memory import MemoryEventLog
from shared.lifecycle import Runs
from shared.models import Operation, RunHead, RunRecord, RunStatus
from tests.contract.conftest import MakeStores
from tests.support.wait import wait_for


async def test_records_come_back_typed_with_every_stored_field(runs: Runs, store: RunStore) -> None:
    run, _ = await runs.create(owner="alice", tool="story", input={"prompt": "x"})
    claimed = await runs.start(run, worker="w1", lease_until=time.time() + 30)
    assert claimed is not None

    record = await store.get_run(run.run_id)
    assert record is not None
    assert record.status == RunStatus.RUNNING and record.worker == "w1"
    assert record.lease_until is not None and record.lease_until > time.time()
    assert record.input == {"prompt": "x"} and record.owner == "alice"
    assert "lease_until" not in record.public() and "owner" not in record.public()
    assert await store.get_run("run_nobody") is None


async def started_elsewhere(make_stores: MakeStores) -> tuple[Runs, RunRecord, Stores]:
    """A running run, the `Runs` of the process that made it, and the stores of another
    process that never looked it up (memory: the same process's, there is no other)."""
    created_by = make_stores()
    writer = Runs(created_by)
    run, _ = await writer.create(owner="alice", tool="story", input={"prompt": "x"})
    started = await writer.start(run, worker="w1", lease_until=time.time() + 30)
    assert started is not None
    reader = created_by if isinstance(created_by.log, MemoryEventLog) else make_stores()
    return writer, started, reader


async def test_another_process_reads_the_same_record_without_having_looked_it_up(
    make_stores: MakeStores,
) -> None:
    """An API process that never saw the run (a client reconnecting to another one)
    reads the record as its creator stored it; an unknown run is None there too."""
    _, started, reader = await started_elsewhere(make_stores)
    assert await reader.runs.get_run(started.run_id) == started
    assert await reader.runs.get_run(started.run_id) == started  # now looked up: the other path
    assert await make_stores().runs.get_run("run_nobody") is None


async def test_a_head_is_what_the_record_says_on_every_path(make_stores: MakeStores) -> None:
    """A stream's open reads the run's head: the record's owner, session, status and last
    event id, the same in a process that never looked the run up and in one that did,
    and moving with the record; an unknown run has none."""
    writer, started, reader = await started_elsewhere(make_stores)
    run = started

    def head_of(record: RunRecord) -> RunHead:
        ids = record.run_id, record.session_id, record.owner
        return RunHead(*ids, record.status, record.last_event_id)

    assert await reader.runs.get_head(run.run_id) == head_of(started)  # never looked up
    await writer.emit(started, "output.delta", {"text": "hi"}, worker="w1")
    await writer.finish(started, RunStatus.COMPLETED)
    ended = await writer.store.get_run(run.run_id)
    assert ended is not None and ended.last_event_id > started.last_event_id
    head = await reader.runs.get_head(run.run_id)  # looked up now: the other path
    assert head == head_of(ended) and head is not None and head.terminal
    assert await reader.runs.get_head("run_nobody") is None
    assert await make_stores().runs.get_head("run_nobody") is None


async def test_a_record_not_looked_up_yet_is_one_call_to_a_redis_node(
    redis_url: str, prefix: str
) -> None:
    """On one node, the run index and the record come in one scripted call, not two
    round trips one after the other: what the reading connection ran last was it."""
    import redis.asyncio as aioredis

    from shared.eventlog.redis_records import redis_stores

    name = "rrtest-reader-" + prefix.strip(":").replace(":", "-")
    writer = redis_stores(redis_url, prefix=prefix, ttl_s=3600, max_events=1000)
    reader = redis_stores(redis_url, prefix=prefix, ttl_s=3600, max_events=1000, client_name=name)
    other = redis_stores(
        redis_url, prefix=prefix, ttl_s=3600, max_events=1000, client_name=name + "-2"
    )
    probe = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        run, _ = await Runs(writer).create(owner="alice", tool="story", input={})
        record = await reader.runs.get_run(run.run_id)
        assert record is not None and record.run_id == run.run_id
        clients = [c for c in await probe.client_list() if c["name"] == name]
        assert clients and {c["cmd"] for c in clients} == {"evalsha"}
        # A stream's open, in yet another process: its head, in one call too.
        head = await other.runs.get_head(run.run_id)
        assert head is not None and head.owner == "alice"
        clients = [c for c in await probe.client_list() if c["name"] == name + "-2"]
        assert clients and {c["cmd"] for c in clients} == {"evalsha"}
    finally:
        await probe.aclose()
        await writer.log.close()
        await reader.log.close()
        await other.log.close()


async def test_update_run_is_a_compare_and_set(runs: Runs, store: RunStore) -> None:
    run, _ = await runs.create(owner="alice", tool="story", input={})

    applied, after = await store.update_run(run.run_id, {"status": "running"}, {"error": "x"})
    assert not applied and after is not None and after.error is None
    applied, after = await store.update_run(run.run_id, {"status": "queued"}, {"error": "x"})
    assert applied and after is not None and after.error == "x"
    assert await store.update_run("run_nobody", {}, {"error": "x"}) == (False, None)


async def test_an_idempotency_key_binds_once_per_owner(store: RunStore) -> None:
    assert await store.claim_idempotency("alice", "k1", "run_a", 60) == "run_a"
    assert await store.claim_idempotency("alice", "k1", "run_b", 60) == "run_a"
    assert await store.claim_idempotency("bob", "k1", "run_c", 60) == "run_c"


async def test_admission_counts_an_owners_active_runs_up_to_the_limit(store: RunStore) -> None:
    assert await store.admit_active("alice", "run_1", 2)
    assert await store.admit_active("alice", "run_1", 2)  # the same run again: still one
    assert await store.admit_active("alice", "run_2", 2)
    assert not await store.admit_active("alice", "run_3", 2)
    assert await store.admit_active("bob", "run_9", 2)  # another owner is not counted
    assert await store.active_runs("alice", 10) == ["run_1", "run_2"]

    await store.drop_active("alice", ["run_1"])
    assert await store.admit_active("alice", "run_3", 2)
    assert sorted(await store.active_runs("alice", 10)) == ["run_2", "run_3"]


async def test_an_operation_is_recorded_once_and_found_by_id(store: RunStore) -> None:
    op = Operation(
        operation_id="op_1", task_id="run_1", session_id="s", tool_call_id="c", tool_name="t"
    )
    assert await store.put_operation(op, 60)
    assert not await store.put_operation(op.model_copy(update={"task_id": "run_2"}), 60)
    assert await store.get_operation("op_1") == op
    assert await store.get_operation("op_missing") is None


async def test_the_schedule_answers_due_runs_earliest_first_and_forgets(
    scheduler: Scheduler,
) -> None:
    now = time.time()
    await scheduler.schedule("run_late", now - 1)
    await scheduler.schedule("run_early", now - 5)
    await scheduler.schedule("run_future", now + 60)
    assert await scheduler.due(now, 10) == ["run_early", "run_late"]
    assert await scheduler.due(now, 1) == ["run_early"]

    await scheduler.schedule("run_early", now + 60)  # replaces the earlier due
    await scheduler.unschedule("run_late")
    assert await scheduler.due(now, 10) == []


async def test_workers_are_live_until_their_heartbeat_runs_out(workers: WorkerRegistry) -> None:
    await workers.heartbeat("w1", {"pid": 1}, 30)
    await workers.heartbeat("w2", {"pid": 2}, 0.2)
    live = {w["worker_id"]: w for w in await workers.live()}
    assert set(live) == {"w1", "w2"} and live["w1"]["pid"] == 1

    await workers.remove("w1")
    # The run-out of a heartbeat's TTL is the behaviour under test, not a wait for it.
    await asyncio.sleep(0.3)
    assert await workers.live() == []


async def test_departed_workers_are_remembered_for_an_hour_and_how_they_left(
    workers: WorkerRegistry,
) -> None:
    start = time.time()
    await workers.heartbeat("w-lost", {"pid": 1}, 0.2)
    await workers.heartbeat("w-stopped", {"pid": 2}, 30)
    await workers.heartbeat("w-live", {"pid": 3}, 30)
    await workers.remove("w-stopped")
    await workers.remove("w-never-seen")  # nothing to remember

    async def only_one_live() -> bool:
        return [w["worker_id"] for w in await workers.live()] == ["w-live"]

    await wait_for(only_one_live, timeout=5, message="w-lost's heartbeat never ran out")

    recent = {w["worker_id"]: w for w in await workers.recent(since=start - 1)}
    assert set(recent) == {"w-lost", "w-stopped", "w-live"}
    assert (recent["w-live"]["left"], recent["w-live"]["left_at"]) == (None, None)
    assert recent["w-stopped"]["left"] == "clean" and recent["w-stopped"]["pid"] == 2
    assert start <= recent["w-stopped"]["left_at"] <= time.time()
    assert recent["w-lost"]["left"] == "lost"
    assert recent["w-lost"]["left_at"] == pytest.approx(recent["w-lost"]["last_seen"] + 0.2)
    assert [w["worker_id"] for w in await workers.recent(since=time.time() + 5)] == ["w-live"]

    # An hour after it left, a worker is forgotten (by a heartbeat, anyone's).
    await workers.heartbeat("w-old", {"pid": 4}, -WORKER_HISTORY_S - 1)
    assert "w-old" not in {w["worker_id"] for w in await workers.recent(since=0)}


async def test_advertised_tools_are_kept_by_name_and_by_when(workers: WorkerRegistry) -> None:
    now = time.time()
    await workers.advertise_tools([{"name": "story", "description": "old"}], now - 100)
    await workers.advertise_tools([{"name": "story", "description": "new"}], now)
    await workers.advertise_tools([{"name": "retired"}], now - 1000)

    tools = await workers.list_tools(since=now - 10)
    assert [(t["name"], t["description"]) for t in tools] == [("story", "new")]
    assert [t["name"] for t in await workers.list_tools(since=0)] == ["retired", "story"]


async def test_a_connection_reset_while_pooled_is_connected_afresh_not_failed(
    redis_url: str, prefix: str
) -> None:
    """Redis comes back after its connections were reset (a proxy, a failover): the next
    call connects again instead of failing on the dead connection it took from the pool.
    Both paths: a plain redis-py call and the coalesced one."""
    from shared.eventlog.redis import RedisConnection
    from tests.support.proxy import FaultProxy

    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with FaultProxy(port) as proxy:
        conn = RedisConnection(f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix)
        pool = conn.redis.connection_pool
        try:
            await conn.redis.set(f"{prefix}k", "v")
            assert await conn.batch.command("GET", f"{prefix}k") == b"v"
            assert await proxy.cut_all() >= 1

            def all_closed() -> bool:
                writers = [c._writer for c in pool._get_free_connections()]
                return all(w is not None and w.transport.is_closing() for w in writers)

            await wait_for(all_closed, message="the pooled connections see the reset")
            assert await conn.batch.command("GET", f"{prefix}k") == b"v"
            assert await conn.call(conn.redis.get(f"{prefix}k")) == b"v"
        finally:
            await conn.close()
