"""Baseline (b): Redis pub/sub for live delivery, a queue per subscriber, re-encoded per subscriber.

The pattern many chat backends use: one PSUBSCRIBE connection per process, a
dispatcher task that puts each message on every subscriber's ``asyncio.Queue``,
and a per-subscriber loop that parses the message and encodes its SSE frame.
(The bench producer PUBLISHes every appended event on its log key for this one.)
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

import orjson
import redis.asyncio as aioredis

PUBSUB = "bench-pubsub:"  # see bench.producer
_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def make_app(redis_url: str, prefix: str) -> Any:
    queues: dict[str, set[asyncio.Queue[bytes]]] = {}
    started: list[asyncio.Task[None]] = []

    async def dispatch() -> None:
        r = aioredis.Redis.from_url(redis_url, socket_timeout=None)
        pubsub = r.pubsub(ignore_subscribe_messages=True)
        await pubsub.psubscribe(PUBSUB + prefix + "*")
        async for message in pubsub.listen():
            if message["type"] != "pmessage":
                continue
            for q in queues.get(message["channel"].decode().removeprefix(PUBSUB), ()):
                q.put_nowait(message["data"])

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not started:
            started.append(asyncio.create_task(dispatch()))
            await asyncio.sleep(0.05)
        key = parse_qs(scope["query_string"].decode())["key"][0]
        q: asyncio.Queue[bytes] = asyncio.Queue()
        queues.setdefault(key, set()).add(q)
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
        try:
            while True:
                event = orjson.loads(await q.get())
                frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (
                    event["id"],
                    event["type"].encode(),
                    orjson.dumps(event["event"]),
                )
                await send({"type": "http.response.body", "body": frame, "more_body": True})
                if event["type"] == "run.completed":
                    await send({"type": "http.response.body", "body": b""})
                    return
        finally:
            queues[key].discard(q)

    return app
