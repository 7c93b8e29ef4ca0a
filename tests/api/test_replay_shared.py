"""Replays shared between streams: a reconnect storm reads and encodes each page once, and
no stream loses, repeats or waits for what a shared page did not hold."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from api import tail
from shared.eventlog.base import EventLog
from shared.models import RunHead, RunRecord
from tests.api.conftest import Api, MakeApi
from tests.api.sse_client import events
from tests.support.wait import wait_for

CURSOR = 50  # more than the hub brings itself (api.streams.state._HUB_BACKLOG)


def count_reads(log: EventLog, after: int) -> list[int]:
    """Log reads made after `after` (the replays from that cursor)."""
    calls = [0]
    read = log.read

    async def counted(key: str, after_: int, limit: int) -> object:
        if after_ == after:
            calls[0] += 1
        return await read(key, after_, limit)

    log.read = counted  # type: ignore[method-assign,assignment]
    return calls


async def follow(http: httpx.AsyncClient, url: str, seen: list[int]) -> None:
    headers = {"Last-Event-ID": str(CURSOR)}
    async with http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        async for frame in events(response):
            if frame.id is not None:
                seen.append(frame.id)


async def started_with(api: Api, http: httpx.AsyncClient, n: int) -> tuple[str, RunRecord]:
    created = await api.create_run(http)
    run = await api.producer.start(created["run_id"])
    await api.producer.emit(run, n)
    return created["events_url"], run


async def test_clients_resuming_one_run_one_after_another_share_one_read(
    make_api: MakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tail, "REPLAY_REUSE_S", 60.0)  # however slow the machine
    async with make_api() as api, api.client() as http:
        url, run = await started_with(api, http, 100)  # ids 1..102
        reads = count_reads(api.runtime.log, CURSOR)
        seen: list[list[int]] = [[] for _ in range(10)]
        readers = []
        for i in range(10):
            readers.append(asyncio.create_task(follow(http, url, seen[i])))
            # Caught up and following before the next one connects: nothing in flight to join.
            await wait_for(lambda: api.hub.subscribers == len(readers), message="caught up")
        assert reads == [1]  # one read for ten replays (unshared: ten)
        last = await api.producer.finish(run)
        await asyncio.gather(*readers)
        assert seen == [list(range(CURSOR + 1, last + 1))] * 10


async def test_a_stream_given_an_older_shared_page_gets_the_rest_at_once(
    make_api: MakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tail, "REPLAY_REUSE_S", 60.0)
    async with make_api() as api, api.client() as http:
        url, run = await started_with(api, http, 100)  # ids 1..102
        first: list[int] = []
        one = asyncio.create_task(follow(http, url, first))
        await wait_for(lambda: first[-1:] == [102], message="the first stream caught up")
        await api.producer.emit(run, 5)  # 103..107: the first stream's live frames
        await wait_for(lambda: first[-1:] == [107], message="the first stream got them live")
        reads = count_reads(api.runtime.log, CURSOR)
        second: list[int] = []
        two = asyncio.create_task(follow(http, url, second))
        # Its replay page (up to 102) is the first stream's; 103..107 come without waiting
        # for another event to show the hole.
        await wait_for(lambda: second[-1:] == [107], message="the second stream got 103..107")
        assert reads == [0]  # it was handed the shared page
        last = await api.producer.finish(run)
        await asyncio.gather(one, two)
        assert first == second == list(range(CURSOR + 1, last + 1))


async def test_a_cursor_newer_than_a_shared_record_is_not_refused(make_api: MakeApi) -> None:
    async with make_api() as api, api.client() as http:
        url, run = await started_with(api, http, CURSOR)  # ids 1..52
        runs = api.runtime.runs
        get_head = runs.store.get_head
        landed = asyncio.Event()

        async def slow_first(run_id: str) -> RunHead | None:
            record = await get_head(run_id)
            runs.store.get_head = get_head  # type: ignore[method-assign]
            await landed.wait()  # in flight while the run moves on
            return record

        runs.store.get_head = slow_first  # type: ignore[method-assign]
        flights, joined = runs._heads, []

        class Joining:
            async def run(self, key: str, call: Callable[[], Awaitable[RunHead | None]]) -> object:
                joined.append(len(flights))  # reads in flight as this one asks
                return await flights.run(key, call)

        runs._heads = Joining()  # type: ignore[assignment]
        early = asyncio.create_task(runs.get_at(run.run_id, run.owner, 0))
        await wait_for(lambda: runs.store.get_head is get_head, message="a read in flight")
        await api.producer.emit(run, 3)  # 53..55; the read in flight says 52
        late = asyncio.create_task(runs.get_at(run.run_id, run.owner, 55))
        await wait_for(lambda: joined == [0, 1], message="the second joined the first's read")
        landed.set()
        assert (await early).last_event_id == 52
        assert (await late).last_event_id == 55  # read again, not refused as past the end
        seen: list[int] = []
        await api.producer.finish(run)
        await follow(http, url, seen)
        assert seen[0] == CURSOR + 1


async def test_the_client_whose_read_the_others_share_leaving_fails_none_of_them(
    make_api: MakeApi,
) -> None:
    # The first client of a run makes the read the others wait for; it goes away mid-read
    # (its task cancelled, as a disconnect does). The others still get the run: one of
    # them reads again, instead of inheriting its cancellation.
    async with make_api() as api, api.client() as http:
        _, run = await started_with(api, http, 3)
        runs = api.runtime.runs
        get_head = runs.store.get_head
        reads = [0]
        gone = asyncio.Event()

        async def slow_first(run_id: str) -> RunHead | None:
            reads[0] += 1
            if reads[0] == 1:
                await gone.wait()  # in flight until its caller has gone away
            return await get_head(run_id)

        runs.store.get_head = slow_first  # type: ignore[method-assign]
        first = asyncio.create_task(runs.get_at(run.run_id, run.owner, 0))
        await wait_for(lambda: reads[0] == 1, message="the first read in flight")
        others = [asyncio.create_task(runs.get_at(run.run_id, run.owner, 0)) for _ in range(3)]
        await wait_for(lambda: len(runs._heads) == 1, message="the others joined it")
        await asyncio.sleep(0)  # the others are waiting on the read now
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        gone.set()
        records = await asyncio.gather(*others)
        assert [r.run_id for r in records] == [run.run_id] * 3


async def test_shared_pages_are_bounded_and_forgotten(
    make_api: MakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with make_api() as api, api.client() as http:
        _, run = await started_with(api, http, 100)  # ids 1..102
        hub, key = api.hub, api.runtime.log.keys.run_log(run.session_id, run.run_id)
        one = await hub.replay(key, 10, 500)
        monkeypatch.setattr(tail, "REPLAY_REUSE_BYTES", one.size + 1)  # room for one page
        await hub.replay(key, 20, 500)
        assert list(hub._recent) == [(key, 20, 500)]  # the older page made room
        reads = count_reads(api.runtime.log, 10)
        await hub.replay(key, 10, 500)
        assert reads == [1]  # read again, not kept past the bound
        monkeypatch.setattr(tail, "REPLAY_REUSE_S", 0.05)
        await hub.replay(key, 30, 500)
        await wait_for(lambda: not hub._recent, message="an idle hub forgets its pages")
        assert hub._recent_bytes == 0
