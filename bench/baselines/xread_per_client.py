"""Baseline (a): one blocking XREAD connection per subscriber, frames built per subscriber.

The straightforward design: each SSE request opens its own Redis connection and
loops ``XREAD BLOCK`` from its cursor. Redis connections grow with clients.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import redis.asyncio as aioredis

_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def make_app(redis_url: str, prefix: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        key = parse_qs(scope["query_string"].decode())["key"][0]
        r = aioredis.Redis.from_url(redis_url, single_connection_client=True, socket_timeout=None)
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
        cursor = "0-0"
        try:
            while True:
                reply: Any = await r.xread({key: cursor}, count=500, block=30_000)
                for _, entries in reply or []:
                    parts = []
                    end = False
                    for eid, f in entries:
                        cursor = eid.decode()
                        seq = int(cursor.partition("-")[2])
                        parts.append(b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, f[b"t"], f[b"d"]))
                        end = end or f[b"t"] == b"run.completed"
                    await send(
                        {"type": "http.response.body", "body": b"".join(parts), "more_body": True}
                    )
                    if end:
                        await send({"type": "http.response.body", "body": b""})
                        return
        finally:
            await r.aclose()

    return app
