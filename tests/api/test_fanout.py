"""The live tail at scale: many clients, many runs, a stalled reader — nobody loses or repeats."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from api import tail
from shared.eventlog.memory import memory_stores
from tests.api.conftest import Api, MakeApi
from tests.api.sse_client import events
from tests.support.wait import wait_for


async def follow(http: httpx.AsyncClient, url: str) -> list[int]:
    async with http.stream("GET", url) as response:
        assert response.status_code == 200
        return [frame.id async for frame in events(response) if frame.id is not None]


async def redis_connections(api: Api) -> int:
    """Connections Redis sees from this API process (its log sets a client name)."""
    assert api.runtime.settings.redis_url and api.client_name
    admin = aioredis.Redis.from_url(api.runtime.settings.redis_url)
    try:
        clients = await admin.client_list()
    finally:
        await admin.aclose()
    return sum(1 for c in clients if c.get("name") == api.client_name)


def many(api: Api) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    return api.client(limits=limits, timeout=httpx.Timeout(60.0))


async def test_200_clients_on_one_run_each_get_every_event_once(make_api: MakeApi) -> None:
    async with make_api() as api, many(api) as http:
        created = await api.create_run(http)
        run = await api.producer.start(created["run_id"])
        readers = [asyncio.create_task(follow(http, created["events_url"])) for _ in range(200)]
        await wait_for(lambda: api.hub.subscribers == 200, timeout=30, message="clients attached")
        await api.producer.emit(run, 50)
        last = await api.producer.finish(run)
        results = await asyncio.gather(*readers)
        assert all(ids == list(range(1, last + 1)) for ids in results)
        if api.backend == "real":
            assert await redis_connections(api) < 10


async def test_200_runs_followed_at_once(make_api: MakeApi) -> None:
    async with make_api() as api, many(api) as http:
        created = [await api.create_run(http) for _ in range(200)]
        runs = [await api.producer.start(c["run_id"]) for c in created]
        readers = [asyncio.create_task(follow(http, c["events_url"])) for c in created]
        await wait_for(lambda: api.hub.followed == 200, timeout=30, message="runs followed")
        if api.backend == "real":
            assert await redis_connections(api) < 10

        async def produce(i: int) -> int:
            await api.producer.emit(runs[i], 10)
            return await api.producer.finish(runs[i])

        lasts = await asyncio.gather(*(produce(i) for i in range(200)))
        results = await asyncio.gather(*readers)
        assert [ids for ids in results] == [list(range(1, last + 1)) for last in lasts]
        if api.backend == "real":
            assert await redis_connections(api) < 10
        await wait_for(lambda: api.hub.followed == 0, message="follows released")


class StalledReader:
    """A raw HTTP/1.1 client with a tiny receive window that reads nothing until told."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, base_url: str, path: str, token: str) -> StalledReader:
        host, port = base_url.removeprefix("http://").split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no window autotuning
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        # A small limit: asyncio reads ahead up to twice this before it stops reading.
        reader, writer = await asyncio.open_connection(sock=sock, limit=16_384)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
        return cls(reader, writer)

    async def read_all(self) -> bytes:
        """The rest of the chunked body, until the server ends it."""
        body = bytearray()
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return bytes(body)
            body += chunk[:-2]

    def close(self) -> None:
        self.writer.close()


def fallbacks() -> float:
    return REGISTRY.get_sample_value("runrelay_api_slow_client_fallbacks_total") or 0.0


async def test_stalled_reader_slows_nobody_and_later_gets_everything(make_api: MakeApi) -> None:
    async with make_api(subscriber_buffer=8) as api, api.client() as http:
        created = await api.create_run(http)
        run = await api.producer.start(created["run_id"])
        stalled = await StalledReader.open(api.url, created["events_url"], "tok-alice")
        try:
            fast = asyncio.create_task(follow(http, created["events_url"]))
            await wait_for(lambda: api.hub.subscribers == 2, message="both clients attached")
            before = fallbacks()
            # ~10 MB: more than the stalled socket and the kernel (sndbuf ≤ 4 MB) can hold.
            await api.producer.emit(run, 320, text="z" * 32_000)
            last = await api.producer.finish(run)
            # The producer finished and the fast client got everything while one reads nothing.
            assert await fast == list(range(1, last + 1))
            await wait_for(lambda: fallbacks() > before, message="slow-client fallback")

            body = await stalled.read_all()
        finally:
            stalled.close()
        ids = [int(line[4:]) for line in body.split(b"\n") if line.startswith(b"id: ")]
        assert ids == list(range(1, last + 1))
        assert body.endswith(b"event: run.completed\ndata: " + body.rsplit(b"data: ", 1)[1])


async def test_streams_attaching_while_the_hub_reads_each_get_their_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Streams attaching during one read share one wake, and the next read is woken again.

    The hub's read is made to block for an hour: a stream whose wake was lost (say, the
    "already woken" flag never cleared) would get nothing until then.
    """
    monkeypatch.setattr(tail, "BLOCK_S", 3600.0)
    log = memory_stores().log
    hub = tail.TailHub(log, buffer=100, block_s=3600.0)
    keys = [log.keys.topic_log("owner", f"topic{i}") for i in range(4)]
    hub.start()
    try:
        first = await hub.subscribe(keys[0], 0, until_terminal=False)
        await wait_for(lambda: hub._in_wait, message="the hub reads")
        together = await asyncio.gather(
            *(hub.subscribe(k, 0, until_terminal=False) for k in keys[1:3])
        )
        await wait_for(lambda: hub._in_wait and not hub._woken, message="the hub reads again")
        later = await hub.subscribe(keys[3], 0, until_terminal=False)
        # Only the last stream's log gets an event: nothing else can end the hour-long read.
        await log.append_topic("owner", "topic3", "custom.tick", b'"type":"custom.tick"}')
        await asyncio.wait_for(later.wait(), 10)
        for i in range(3):
            await log.append_topic("owner", f"topic{i}", "custom.tick", b'"type":"custom.tick"}')
        for sub in [first, *together, later]:
            await asyncio.wait_for(sub.wait(), 10)
            assert [f.event.id for b in sub.take() for f in b.frames] == [1]
    finally:
        await hub.close()


async def test_a_burst_of_page_reads_holds_a_handful_of_redis_connections(
    make_api: MakeApi,
) -> None:
    """100 JSON page reads at once (each its own log read): the command pool's bound holds,
    so the process keeps its handful of Redis connections (the reads wait their turn)."""
    async with make_api() as api, many(api) as http:
        created = [await api.create_run(http) for _ in range(10)]
        json = {"Accept": "application/json"}
        pages = await asyncio.gather(
            *(http.get(created[i % 10]["events_url"], headers=json) for i in range(100))
        )
        assert [p.status_code for p in pages] == [200] * 100
        assert all(p.json()["events"][0]["type"] == "run.queued" for p in pages)
        if api.backend == "real":
            assert await redis_connections(api) < 10


async def test_a_log_followed_again_within_one_read_brings_what_is_behind_the_new_cursor(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that leaves and comes back while the hub waits (a reconnect, behind the
    log's end) gets the events after its cursor at once, on real Redis. The change feed
    is still subscribed to the log then, so no confirmation comes to have it read; only
    the hub knows the follow began again. (With the 5 s sweep made an hour long, a
    follow that waited for news or the sweep gets nothing here.)"""
    from shared.eventlog.redis import _ChangeFeed
    from shared.eventlog.redis_records import redis_stores

    monkeypatch.setattr(_ChangeFeed, "SWEEP_S", 3600.0)
    log = redis_stores(redis_url, prefix=prefix, ttl_s=60, max_events=100).log
    hub = tail.TailHub(log, buffer=100)
    key = log.keys.topic_log("owner", "again")
    for _ in range(3):
        await log.append_topic("owner", "again", "custom.tick", b'"type":"custom.tick"}')
    hub.start()
    try:
        first = await hub.subscribe(key, 0, until_terminal=False)
        await asyncio.wait_for(first.wait(), 10)
        assert [f.event.id for b in first.take() for f in b.frames] == [1, 2, 3]
        feed = log._feed  # type: ignore[attr-defined]

        async def waiting() -> bool:
            return hub._in_wait and bool(feed.busy)

        await wait_for(waiting, message="the hub waits")
        hub.unsubscribe(first)
        again = await hub.subscribe(key, 1, until_terminal=False)
        await asyncio.wait_for(again.wait(), 10)
        assert [f.event.id for b in again.take() for f in b.frames] == [2, 3]
    finally:
        await hub.close()
        await log.close()


async def test_the_hub_stops_watching_a_log_nobody_follows_any_more(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On real Redis: once the last stream of a log leaves, the hub's next read drops the
    change feed's subscription to it, while the logs still followed stay subscribed (a
    log left subscribed would be notified of every append for as long as the process
    lives). The 5 s sweep, which compares every key, is made an hour long."""
    from shared.eventlog.redis import _ChangeFeed
    from shared.eventlog.redis_records import redis_stores

    monkeypatch.setattr(_ChangeFeed, "SWEEP_S", 3600.0)
    log = redis_stores(redis_url, prefix=prefix, ttl_s=60, max_events=100).log
    admin = aioredis.Redis.from_url(redis_url)
    hub = tail.TailHub(log, buffer=100)
    keys = [log.keys.topic_log("owner", name) for name in ("stays", "goes")]

    async def subscribed() -> list[bool]:
        found = dict(await admin.pubsub_shardnumsub(*keys))
        return [found[k.encode()] > 0 for k in keys]

    hub.start()
    try:
        subs = [await hub.subscribe(k, 0, until_terminal=False) for k in keys]

        async def both() -> bool:
            return await subscribed() == [True, True]

        await wait_for(both, message="both logs subscribed")
        hub.unsubscribe(subs[1])
        # A new follow makes the hub read again (its own wake): that read drops the other.
        await hub.subscribe(log.keys.topic_log("owner", "new"), 0, until_terminal=False)

        async def one() -> bool:
            return await subscribed() == [True, False]

        await wait_for(one, message="only the followed log subscribed")
    finally:
        await hub.close()
        await log.close()
        await admin.aclose()
