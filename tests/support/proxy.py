"""A TCP proxy that breaks connections on command, in front of Redis, RabbitMQ or an API.

    async with FaultProxy(target_port) as proxy:
        client = connect(port=proxy.port)
        await proxy.cut_all()          # RST every open connection
        proxy.stall(); proxy.resume()  # hold bytes without closing, then let them flow
        proxy.delay_s = 0.2            # latency per forwarded chunk
        proxy.cut_after_bytes(500)     # each connection dies after 500 bytes downstream
        proxy.refuse_new(True)         # accept-and-reset new connections

"Downstream" is target -> client. Counters: ``connections_total``, ``active_connections``,
``bytes_down``, ``bytes_up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType

_CHUNK = 65536


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0) instead of a polite FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.bytes_down = 0
        self.cut_after: int | None = None
        self.closed = False

    def cut(self) -> None:
        if self.closed:
            return
        self.closed = True
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.delay_s = 0.0
        self.connections_total = 0
        self.bytes_down = 0
        self.bytes_up = 0
        self.held_up = 0  # client -> target chunks read but held by `stall`, now
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._cut_after: int | None = None
        self._cuts_left: int | None = None
        self._refuse = False

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FaultProxy is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def active_connections(self) -> int:
        return sum(not conn.closed for conn in self._conns)

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._flowing.set()
        for conn in list(self._conns):
            conn.cut()
        tasks = list(self._tasks)
        if tasks:
            # Cut connections end their pumps; cancel only what still hangs.
            _, pending = await asyncio.wait(tasks, timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- faults ---

    async def cut_all(self) -> int:
        """Reset every open connection (both sides); returns how many were cut."""
        conns = list(self._conns)
        for conn in conns:
            conn.cut()
        await asyncio.sleep(0)  # give the pumps a turn to see it
        return len(conns)

    def stall(self) -> None:
        """Stop forwarding bytes in both directions; connections stay open."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut_after_bytes(self, n: int | None, *, times: int | None = None) -> None:
        """Cut each connection once it has carried ``n`` bytes downstream (counted from
        its start), for open and new connections; ``times`` limits how many get cut;
        ``None`` disarms."""
        self._cut_after = n
        self._cuts_left = times
        for conn in self._conns:
            conn.cut_after = n

    def refuse_new(self, refuse: bool = True) -> None:
        """Reset new connections right after accepting them (the target looks down)."""
        self._refuse = refuse

    # --- plumbing ---

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections_total += 1
        conn = _Connection(writer)
        conn.cut_after = self._cut_after
        try:
            if self._refuse:
                conn.cut()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                conn.cut()
                return
            conn.upstream = up_writer
            self._conns.add(conn)
            await asyncio.gather(
                self._pump(reader, up_writer, conn, downstream=False),
                self._pump(up_reader, writer, conn, downstream=True),
            )
        except asyncio.CancelledError:
            # Only close() cancels us; asyncio's stream callback would log a cancelled task.
            conn.cut()
        finally:
            self._conns.discard(conn)
            if not conn.closed:
                conn.closed = True
                writer.close()
                if conn.upstream is not None:
                    conn.upstream.close()
            self._tasks.discard(task)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        conn: _Connection,
        *,
        downstream: bool,
    ) -> None:
        try:
            while not conn.closed:
                data = await src.read(_CHUNK)
                if not data:
                    if not conn.closed and dst.can_write_eof():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    return
                if not self._flowing.is_set():
                    held = not downstream
                    self.held_up += held
                    try:
                        await self._flowing.wait()
                    finally:
                        self.held_up -= held
                if self.delay_s > 0:
                    await asyncio.sleep(self.delay_s)
                if conn.closed:
                    return
                cut = False
                if downstream and conn.cut_after is not None:
                    room = conn.cut_after - conn.bytes_down
                    if len(data) >= room and self._take_cut():
                        data, cut = data[: max(room, 0)], True
                if data:
                    dst.write(data)
                    await dst.drain()
                if downstream:
                    conn.bytes_down += len(data)
                    self.bytes_down += len(data)
                else:
                    self.bytes_up += len(data)
                if cut:
                    conn.cut()
                    return
        except (ConnectionError, OSError):
            conn.cut()

    def _take_cut(self) -> bool:
        if self._cuts_left is None:
            return True
        if self._cuts_left <= 0:
            return False
        self._cuts_left -= 1
        return True
