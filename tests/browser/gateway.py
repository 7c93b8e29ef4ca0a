"""A small HTTP gateway in front of the API that can answer 502 to event streams.

    gateway = Gateway(dev.url)
    async with serve_app(gateway, lifespan="off") as url: ...
    gateway.fail_streams = True   # new SSE requests get 502 (the browser's EventSource gives up)
    gateway.end_streams()         # open SSE responses end now (the browser reconnects)

Everything else is forwarded as it is, streaming, to the upstream API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
_HOP = {b"host", b"connection", b"transfer-encoding", b"keep-alive", b"upgrade"}


class Gateway:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fail_streams = False
        self.refused = 0
        self._generation = 0  # bumped by end_streams; a stream of an older one stops

    def end_streams(self) -> None:
        self._generation += 1

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        assert scope["type"] == "http"
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP]
        accept = dict(scope["headers"]).get(b"accept", b"")
        if b"text/event-stream" in accept and self.fail_streams:
            self.refused += 1
            await send({"type": "http.response.start", "status": 502, "headers": []})
            await send({"type": "http.response.body", "body": b"bad gateway"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        target = scope["path"] + (
            f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        )
        generation = self._generation
        async with httpx.AsyncClient(base_url=self.upstream, timeout=None) as client:
            request = client.build_request(scope["method"], target, headers=headers, content=body)
            response = await client.send(request, stream=True)
            try:
                out = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP]
                await send(
                    {"type": "http.response.start", "status": response.status_code, "headers": out}
                )
                async for chunk in response.aiter_raw():
                    if generation != self._generation:
                        break  # end_streams(): end this response here
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            finally:
                await response.aclose()
        await send({"type": "http.response.body", "body": b""})
