"""Live Durable Streams readers of one stream share its reads (api.ds.reads.page): one
append wakes every reader, and they read it once between them, not once each, while
every reader still gets every message exactly once, in order."""

from __future__ import annotations

import asyncio

import orjson
from httpx_sse import aconnect_sse

from api.ds import reads
from shared.eventlog.streams import StreamStore
from tests.api.conftest import MakeApi
from tests.support.wait import wait_for

JSON = {"Content-Type": "application/json"}
READERS = 40
MESSAGES = 8


def _count_reads(streams: StreamStore) -> list[int]:
    calls = [0]
    read = streams.page

    async def counted(*args: object, **kw: object) -> object:
        calls[0] += 1
        return await read(*args, **kw)  # type: ignore[arg-type]

    streams.page = counted  # type: ignore[method-assign,assignment]
    return calls


async def test_many_live_readers_share_each_read_and_get_every_message_once(
    make_api: MakeApi,
) -> None:
    async with make_api() as api, api.client("alice") as alice:
        assert (await alice.put("/ds/shared", headers=JSON)).status_code == 201
        got: list[list[int]] = [[] for _ in range(READERS)]
        ready = [False] * READERS

        async def reader(i: int) -> None:
            params = {"offset": "-1", "live": "sse"}
            async with aconnect_sse(alice, "GET", "/ds/shared", params=params) as source:
                async for event in source.aiter_sse():
                    if event.event == "control":
                        ready[i] = True
                    elif event.event == "data":
                        got[i] += [m["n"] for m in orjson.loads(event.data)]
                        if len(got[i]) >= MESSAGES:
                            return

        readers = [asyncio.create_task(reader(i)) for i in range(READERS)]
        await wait_for(lambda: all(ready), timeout=20, message="readers never attached")
        reads = _count_reads(api.runtime.streams)
        for n in range(MESSAGES):
            posted = await alice.post("/ds/shared", content=orjson.dumps({"n": n}), headers=JSON)
            assert posted.status_code == 204, posted.text

            # One at a time: each append is its own wake of all the readers.
            def arrived(n: int = n) -> bool:
                return all(len(g) > n for g in got)

            await wait_for(arrived, timeout=20, message=f"message {n} missing")
        await asyncio.wait_for(asyncio.gather(*readers), timeout=20)
        assert got == [list(range(MESSAGES))] * READERS  # each once, in order
        # Unshared, every reader would read every append: READERS * MESSAGES reads.
        assert reads[0] <= 3 * MESSAGES, reads[0]


async def test_a_reader_told_of_an_append_never_keeps_a_shared_page_read_before_it(
    make_api: MakeApi,
) -> None:
    # The race sharing could lose an append in: a read in flight when the append lands
    # is joined by a reader the hub has told of it. Its page ends before the append,
    # so the reader reads again, else it would wait for news that already came.
    async with make_api() as api:
        stored: list[bytes] = [b"[1]"]
        gate = asyncio.Event()
        started = asyncio.Event()

        async def slow_page(after: int) -> reads.View:
            snapshot = list(enumerate(stored, start=1))
            started.set()
            await gate.wait()  # the append lands while this read is in flight
            return reads.cut(snapshot[after:], after, len(snapshot), False)

        source = reads.Source("application/json", "k-race", 1, slow_page)
        early = asyncio.create_task(reads.page(api.hub, source, 0))
        await asyncio.wait_for(started.wait(), 5)
        stored.append(b"[2]")  # stored; the hub tells of id 2 only now
        asyncio.get_running_loop().call_soon(gate.set)  # once the reader below has joined
        # Told of id 2 after every read so far started (`seen`): it joins the early read.
        view, _ = await reads.page(api.hub, source, 0, reads.News(told=2, seen=1 << 60))
        assert view is not None and view.messages == [b"[1]", b"[2]"]
        first, _ = await early
        assert first is not None and first.messages == [b"[1]"]  # the early read was stale
