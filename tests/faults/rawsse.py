"""A lean SSE client on a bare asyncio socket, for thousands of streams on two cores.

    result = await read_stream(port, f"/v1/runs/{run_id}/events", token="t", cursor=5)
    result.ids  # the ids received, in order

One connection, HTTP/1.1 with chunked bodies decoded by hand, frames parsed by the
SDK's own pure decoder (`runrelay.sse`). No reconnects: a test that wants one calls
again with the last id.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field

import orjson

from runrelay.sse import SSEComment, SSEDecoder, SSEFrame
from shared.models import TERMINAL_EVENTS

__all__ = ["StreamResult", "read_stream"]


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
    idle: bool = False  # given up after idle_timeout_s of silence

    @property
    def last_id(self) -> int | None:
        return self.ids[-1] if self.ids else None


async def _chunks(reader: asyncio.StreamReader, chunked: bool) -> bytes:
    """The next piece of body: one chunk's payload, or whatever arrived; b"" at the end."""
    if not chunked:
        return await reader.read(65536)
    size_line = await reader.readline()
    if not size_line:
        return b""
    size = int(size_line.split(b";")[0].strip() or b"0", 16)
    if size == 0:
        return b""
    data = await reader.readexactly(size)
    await reader.readexactly(2)
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
                out, idle, idle_timeout_s, port, path, token, cursor, headers, read_pause_s, host
            )
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
) -> None:
    loop = asyncio.get_running_loop()

    def alive() -> None:  # bytes arrived: the idle clock starts again
        if idle_timeout_s is not None:
            idle.reschedule(loop.time() + idle_timeout_s)

    alive()
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    if read_pause_s:
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
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
        alive()
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
        while not out.ended:
            if read_pause_s:
                await asyncio.sleep(read_pause_s)  # the slowness under test, not a wait
            try:
                data = await _chunks(reader, chunked)
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
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


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
