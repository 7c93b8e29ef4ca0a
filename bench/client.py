"""The load generator's SSE client: one asyncio Protocol per connection, minimal parsing.

    fleet = Fleet(port)
    clients = await fleet.connect([path] * 1000, latencies=lat)   # waves; returns when attached
    await fleet.all_done(60)                                         # each saw its end

A client counts frames (``\\nevent: `` occurrences), remembers the last ``id:`` it
saw, optionally collects publish→receive latency from a ``"t":<ns>`` field in the
data, and is done at ``run.completed``, at a target id, or when the server closes.
Thousands of these cost little CPU, so the server (on its own core) is measured.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import cast

_T_RE = re.compile(rb'"t":(\d+)')
_ID_RE = re.compile(rb"\nid: (\d+)\n")
# A delta's emit stamp (end to end: `created_at` is stamped by the worker at emit).
_CREATED_RE = re.compile(rb'"type":"output\.message\.delta",[^\n]*?"created_at":"([^"]+)"')


class SSEClient(asyncio.Protocol):
    __slots__ = (
        "buf",
        "caught_up_at",
        "done",
        "fleet",
        "last_id",
        "latencies",
        "received",
        "request",
        "stamps",
        "status",
        "target",
        "transport",
    )

    def __init__(
        self,
        fleet: Fleet,
        request: bytes,
        latencies: list[float] | None,
        target: int | None,
    ) -> None:
        self.fleet = fleet
        self.request = request
        self.latencies = latencies
        self.target = target
        self.stamps: list[tuple[int, bytes]] | None = None
        self.buf = b""
        self.received = 0
        self.last_id = 0
        self.status = 0
        self.done = False
        self.caught_up_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance assert: uvloop's TCPTransport is no asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.status:
            self.status = int(data[9:12]) if data.startswith(b"HTTP/") else -1
            self.fleet.attached(self)
            if self.status != 200:
                self._finish()
                return
        buf = self.buf + data if self.buf else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.buf = buf
            return
        frames = buf[: cut + 2]
        self.buf = buf[cut + 2 :]
        self.received += frames.count(b"\nevent: ")
        if self.latencies is not None:
            now = time.time_ns()
            self.latencies += [(now - int(t)) / 1e6 for t in _T_RE.findall(frames)]
        if self.stamps is not None:
            # Kept raw (receive ns, ISO bytes): parsing waits until the run is over.
            now = time.time_ns()
            self.stamps += [(now, c) for c in _CREATED_RE.findall(frames)]
        last = frames.rfind(b"\nid: ")
        if last >= 0:
            m = _ID_RE.match(frames, last)
            if m:
                self.last_id = int(m.group(1))
        if (self.target is not None and self.last_id >= self.target) or (
            b"event: run.completed" in frames
        ):
            self._finish()

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.caught_up_at = time.perf_counter()
            self.fleet.finished()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.status:
            self.status = -1
            self.fleet.attached(self)
        self._finish()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Fleet:
    """Many clients of one server; counts attachments and completions."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.clients: list[SSEClient] = []
        self._attached = 0
        self._done = 0
        self._attach_goal = 0
        self._attach_event = asyncio.Event()
        self._done_event = asyncio.Event()

    def attached(self, _: SSEClient) -> None:
        self._attached += 1
        if self._attached >= self._attach_goal:
            self._attach_event.set()

    def finished(self) -> None:
        self._done += 1
        if self._done >= len(self.clients):
            self._done_event.set()

    async def connect(
        self,
        paths: list[str],
        *,
        latencies: list[float] | None = None,
        headers: list[dict[str, str]] | None = None,
        target: list[int] | None = None,
        wave: int = 500,
        wait: bool = True,
        stamps: list[tuple[int, bytes]] | None = None,
    ) -> list[SSEClient]:
        """Open one connection per path (in waves: the accept backlog is finite)."""
        loop = asyncio.get_running_loop()
        new: list[SSEClient] = []
        for i, path in enumerate(paths):
            extra = "".join(f"{k}: {v}\r\n" for k, v in (headers[i] if headers else {}).items())
            request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n{extra}\r\n".encode()
            new.append(SSEClient(self, request, latencies, target[i] if target else None))
            new[-1].stamps = stamps
        self.clients += new
        self._done_event.clear()
        for i in range(0, len(new), wave):
            batch = new[i : i + wave]
            self._attach_goal = self._attached + len(batch) if wait else 0
            self._attach_event.clear()
            await asyncio.gather(
                *(
                    loop.create_connection(lambda c=c: c, self.host, self.port)  # type: ignore[misc]
                    for c in batch
                )
            )
            if wait:
                await asyncio.wait_for(self._attach_event.wait(), 60)
        return new

    async def all_done(self, limit_s: float) -> None:
        if self._done < len(self.clients):
            await asyncio.wait_for(self._done_event.wait(), limit_s)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.clients.clear()
        self._attached = self._done = 0

    @property
    def received(self) -> int:
        return sum(c.received for c in self.clients)

    @property
    def pending(self) -> int:
        return len(self.clients) - self._done
