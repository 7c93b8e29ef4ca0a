"""A real uvicorn server on 127.0.0.1, inside the test's own event loop.

    async with serve_app(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client: ...

Streaming tests need this: httpx's ASGITransport buffers whole responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from typing import Any

import uvicorn

from tests.support.ports import bound_socket, free_port

__all__ = ["free_port", "serve_app"]


class _InLoopServer(uvicorn.Server):
    # pytest owns SIGINT/SIGTERM in the test process; uvicorn must not take them over.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.asynccontextmanager
async def serve_app(
    app: Any,
    *,
    startup_timeout: float = 10.0,
    shutdown_timeout: float = 10.0,
    send_buffer: int | None = None,
    **config: Any,
) -> AsyncIterator[str]:
    """Serve ``app`` on a free port; yield ``http://127.0.0.1:<port>``; stop it on exit.

    ``send_buffer`` fixes the kernel send buffer of every accepted connection (a slow
    network: on loopback it would otherwise grow to megabytes and absorb any backlog).
    Extra keyword arguments go to ``uvicorn.Config`` (e.g. ``timeout_graceful_shutdown``).
    """
    sock = bound_socket()
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)  # inherited
    port = sock.getsockname()[1]
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "loop": "none",
        "lifespan": "on",
        "log_level": "warning",
        "log_config": None,  # leave the test process's logging (and caplog) alone
        "http": "httptools",
        "ws": "none",
        **config,
    }
    server = _InLoopServer(uvicorn.Config(app, **options))

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits on a failed lifespan startup
            raise RuntimeError(f"uvicorn stopped with exit code {exc.code}") from None

    task = asyncio.create_task(run(), name=f"uvicorn:{port}")
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + startup_timeout
        while not server.started:
            if task.done():
                task.result()  # raises the startup failure
                raise RuntimeError("uvicorn exited before it started")
            if loop.time() >= deadline:
                raise AssertionError(f"uvicorn did not start within {startup_timeout}s")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            if not task.done():
                await _stop(server, task, shutdown_timeout)
        finally:
            sock.close()


async def _stop(server: uvicorn.Server, task: asyncio.Task[None], grace_s: float) -> None:
    server.should_exit = True
    try:
        await asyncio.wait_for(asyncio.shield(task), grace_s)
    except TimeoutError:
        # Open streams that ignore the shutdown: stop waiting for them.
        server.force_exit = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 2.0)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
