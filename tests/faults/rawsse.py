"""A lean SSE client on a bare asyncio socket, for thousands of streams on two cores.

    result = await read_stream(port, f"/v1/runs/{run_id}/events", token="t", cursor=5)
    result.ids  # the ids received, in order

One connection, HTTP/1.1 with chunked bodies decoded by hand, frames parsed by the
SDK's own pure decoder (`runrelay.sse`). `read_stream` never reconnects; `follow` does,
as a client that resumes should (Last-Event-ID = the last id it received), and reports
every id of every connection, so a server that repeats an event on resume is seen:

    result = await follow(proxy.port, f"/v1/runs/{run_id}/events", token="t")
    result.ids          # across all reconnects, repeats included
    result.connections  # how many connections it took
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from runrelay.sse import SSEComment, SSEDecoder, SSEFrame
from shared.models import TERMINAL_EVENTS

__all__ = ["FollowResult", "StreamResult", "follow", "read_stream"]


@dataclass
class StreamResult:
    status: int = 0
    ids: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    gaps: list[dict[str, int]] = field(default_factory=list)
    errors: list[dict[str, object]] = field(default_factory=list)
    pings: int = 0
    body: bytes = b""  # the body of a non-stream answer
    ended: bool = False  # a terminal event arrived
    idle: bool = False  # given up after `idle_timeout_s` of silence

    @property
    def last_id(self) -> int | None:
        return self.ids[-1] if self.ids else None


class _Body:
    """The response body as bytes arrive, chunked encoding decoded by hand.

    A chunk's payload is handed on piece by piece, as a real client's parser sees it:
    a connection cut inside a big chunk still delivers the frames before the cut.
    """

    def __init__(self, reader: asyncio.StreamReader, chunked: bool) -> None:
        self.reader = reader
        self.chunked = chunked
        self.left = 0  # bytes left of the current chunk

    async def next(self) -> bytes:
        """The next piece of body; b"" at its end (or when the connection closed)."""
        if not self.chunked:
            return await self.reader.read(65536)
        if self.left == 0:
            size_line = await self.reader.readline()
            if not size_line:
                return b""
            self.left = int(size_line.split(b";")[0].strip() or b"0", 16)
            if self.left == 0:
                return b""
        data = await self.reader.read(min(self.left, 65536))
        if not data:
            return b""
        self.left -= len(data)
        if self.left == 0:
            await self.reader.readexactly(2)
        return data


async def read_stream(
    port: int,
    path: str,
    *,
    token: str | None = None,
    cursor: int | None = None,
    headers: dict[str, str] | None = None,
    read_pause_s: float = 0.0,
    host: str = "127.0.0.1",
    on_id: Callable[[int], None] | None = None,
    idle_timeout_s: float | None = None,
) -> StreamResult:
    """GET ``path`` as an SSE client; read until the terminal event or the server closes.

    ``read_pause_s`` makes a slow reader (a pause before each read: the server's
    writes back up into the socket buffers). ``idle_timeout_s`` gives up on a
    connection that carries nothing, not even a ping, for that long (like the SDK's
    ``stale_after``) and returns what it received, with ``idle`` set.
    """
    out = StreamResult()
    try:
        async with asyncio.timeout(None) as idle:
            await _read(
                out, idle, idle_timeout_s, port, path, token, cursor, headers,
                read_pause_s, host, on_id,
            )  # fmt: skip
    except TimeoutError:
        out.idle = True
    return out


async def _read(
    out: StreamResult,
    idle: asyncio.Timeout,
    idle_timeout_s: float | None,
    port: int,
    path: str,
    token: str | None,
    cursor: int | None,
    headers: dict[str, str] | None,
    read_pause_s: float,
    host: str,
    on_id: Callable[[int], None] | None,
) -> None:
    loop = asyncio.get_running_loop()

    def alive() -> None:  # bytes arrived: the idle clock starts again
        if idle_timeout_s is not None:
            idle.reschedule(loop.time() + idle_timeout_s)

    alive()
    # A slow reader must also be slow at the socket: with a big StreamReader limit the
    # transport would keep reading into memory and the server would never see it lag.
    # The receive buffer is set before connecting, so the window the server sees is small
    # from the handshake on.
    if read_pause_s:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    else:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        if token:
            lines.append(f"Authorization: Bearer {token}")
        if cursor is not None:
            lines.append(f"Last-Event-ID: {cursor}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        out.status = int(status_line.split()[1])
        response_headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (h.partition(":") for h in header_lines if h)
        }
        chunked = response_headers.get("transfer-encoding", "").lower() == "chunked"
        if out.status != 200:
            if "content-length" in response_headers:
                out.body = await reader.readexactly(int(response_headers["content-length"]))
            return
        decoder = SSEDecoder()
        body = _Body(reader, chunked)
        while not out.ended:
            if read_pause_s:
                await asyncio.sleep(read_pause_s)  # the slowness under test, not a wait
            try:
                data = await body.next()
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if not data:
                return
            alive()
            for item in decoder.feed(data):
                if isinstance(item, SSEComment):
                    out.pings += 1
                elif isinstance(item, SSEFrame):
                    _take(out, item)
                    if on_id is not None and item.id is not None and item.event != "stream.gap":
                        on_id(int(item.id))
        return
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@dataclass
class FollowResult:
    ids: list[int] = field(default_factory=list)  # every connection's, repeats included
    types: list[str] = field(default_factory=list)
    gaps: list[dict[str, int]] = field(default_factory=list)
    errors: list[dict[str, object]] = field(default_factory=list)
    connections: int = 0  # attempts, refused ones included
    statuses: list[int] = field(default_factory=list)  # 0: the connection broke first
    ended: bool = False


async def follow(
    port: int | Callable[[], int],
    path: str,
    *,
    token: str | None = None,
    cursor: int | None = None,
    deadline_s: float = 60.0,
    pause_s: float = 0.02,
    on_id: Callable[[int], None] | None = None,
) -> FollowResult:
    """Read ``path`` until the terminal event, reconnecting whenever the connection ends.

    Each reconnect sends ``Last-Event-ID`` = the last id received (or ``cursor``), as a
    resuming client does. ``port`` may be a callable (the balancer's current choice).
    ``on_id`` sees each id as it arrives (a test can inject a fault at the n-th).
    Refused connections, broken heads and 503s are retried after ``pause_s`` (a
    client's backoff, not a wait for a condition) until ``deadline_s``.
    """
    out = FollowResult()
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline_s
    last = cursor
    while not out.ended:
        if loop.time() > give_up:
            raise AssertionError(
                f"follow {path}: no terminal event after {deadline_s}s and "
                f"{out.connections} connections; ids {out.ids[-20:]}"
            )
        out.connections += 1
        target = port() if callable(port) else port
        try:
            one = await read_stream(target, path, token=token, cursor=last, on_id=on_id)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            out.statuses.append(0)
            await asyncio.sleep(pause_s)
            continue
        out.statuses.append(one.status)
        if one.status not in (200, 503):
            raise AssertionError(f"follow {path}: {one.status} {one.body!r}")
        out.ids += one.ids
        out.types += one.types
        out.gaps += one.gaps
        out.errors += one.errors
        out.ended = one.ended
        if one.ids:
            last = one.ids[-1]
        if not out.ended:
            await asyncio.sleep(pause_s)
    return out


def _take(out: StreamResult, frame: SSEFrame) -> None:
    if frame.event == "stream.gap":
        out.gaps.append(orjson.loads(frame.data))
    elif frame.event == "error":
        out.errors.append(orjson.loads(frame.data))
    elif frame.id is not None:
        out.ids.append(int(frame.id))
        out.types.append(frame.event)
        if frame.event in TERMINAL_EVENTS:
            out.ended = True


class RawPoster:
    """Keep-alive HTTP/1.1 POSTs of JSON over a few bare sockets: a lean load generator.

    async with RawPoster(port, token, connections=16) as poster:
        status, body = await poster.post("/v1/runs", b'{"tool": "story"}')
    """

    def __init__(self, port: int, token: str, *, connections: int = 16) -> None:
        self.port = port
        self.token = token
        self.size = connections
        self._free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )

    async def __aenter__(self) -> RawPoster:
        for _ in range(self.size):
            self._free.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        while not self._free.empty():
            _, writer = self._free.get_nowait()
            writer.close()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        request = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        reader, writer = await self._free.get()
        try:
            try:
                answer = await self._exchange(reader, writer, request)
            except (asyncio.IncompleteReadError, ConnectionError):
                # The server closed an idle keep-alive socket before reading: a new one.
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                answer = await self._exchange(reader, writer, request)
        except BaseException:
            writer.close()
            self._free.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))
            raise
        self._free.put_nowait((reader, writer))
        return answer

    @staticmethod
    async def _exchange(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> tuple[int, bytes]:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await reader.readexactly(length)
