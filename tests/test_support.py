"""The test infrastructure itself: if these fail, nothing else can be trusted."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from shared.settings import Settings
from tests.support.http import free_port, serve_app
from tests.support.procs import Processes
from tests.support.proxy import FaultProxy
from tests.support.redis_node import ThrowawayRedis
from tests.support.wait import wait_for, wait_for_sync

# --- a tiny echo server for the proxy ---


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    writers: set[asyncio.StreamWriter] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    for writer in writers:
        writer.close()
    await server.wait_closed()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


# --- wait ---


async def test_wait_for_returns_the_first_truthy_value() -> None:
    calls = 0

    def ready() -> int:
        nonlocal calls
        calls += 1
        return calls if calls >= 3 else 0

    assert await wait_for(ready, interval=0.001) == 3


async def test_wait_for_accepts_async_predicates() -> None:
    async def ready() -> str:
        return "yes"

    assert await wait_for(ready) == "yes"


async def test_wait_for_fails_with_the_message_at_the_deadline() -> None:
    with pytest.raises(AssertionError, match="never ready"):
        await wait_for(lambda: False, timeout=0.05, message="never ready")


def test_wait_for_sync() -> None:
    values = iter([None, 0, "done"])

    assert wait_for_sync(lambda: next(values), interval=0.001) == "done"
    with pytest.raises(AssertionError, match="nope"):
        wait_for_sync(lambda: None, timeout=0.05, message="nope")


# --- proxy ---


async def test_proxy_forwards_both_ways_and_counts(echo_port: int) -> None:
    async with FaultProxy(echo_port) as proxy:
        reader, writer = await _connect(proxy.port)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"

        assert proxy.connections_total == 1
        assert proxy.active_connections == 1
        assert proxy.bytes_up == 5
        assert proxy.bytes_down == 5
        await _close(writer)
        await wait_for(lambda: proxy.active_connections == 0, message="connection not closed")


async def test_cut_all_resets_open_connections(echo_port: int) -> None:
    async with FaultProxy(echo_port) as proxy:
        reader, writer = await _connect(proxy.port)
        writer.write(b"ping")
        await asyncio.wait_for(reader.readexactly(4), 5)

        assert await proxy.cut_all() == 1

        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        assert proxy.active_connections == 0
        await _close(writer)

        # New connections still work after a cut.
        reader, writer = await _connect(proxy.port)
        writer.write(b"again")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"again"
        assert proxy.connections_total == 2
        await _close(writer)


async def test_stall_holds_bytes_until_resume(echo_port: int) -> None:
    async with FaultProxy(echo_port) as proxy:
        reader, writer = await _connect(proxy.port)
        proxy.stall()
        writer.write(b"held")
        await writer.drain()

        pending = asyncio.ensure_future(reader.readexactly(4))
        done, _ = await asyncio.wait({pending}, timeout=0.2)
        assert not done, "bytes flowed through a stalled proxy"
        assert proxy.active_connections == 1

        proxy.resume()
        assert await asyncio.wait_for(pending, 5) == b"held"
        await _close(writer)


async def test_cut_after_bytes_cuts_downstream_at_the_limit(echo_port: int) -> None:
    async with FaultProxy(echo_port) as proxy:
        proxy.cut_after_bytes(10, times=1)
        reader, writer = await _connect(proxy.port)
        writer.write(b"x" * 25)

        received = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(100), 5):
                received += chunk
        assert received == b"x" * 10
        await _close(writer)

        # times=1: the next connection is left alone.
        reader, writer = await _connect(proxy.port)
        writer.write(b"y" * 25)
        assert await asyncio.wait_for(reader.readexactly(25), 5) == b"y" * 25
        await _close(writer)


async def test_delay_slows_each_chunk(echo_port: int) -> None:
    async with FaultProxy(echo_port) as proxy:
        proxy.delay_s = 0.1
        reader, writer = await _connect(proxy.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(b"z")
        await asyncio.wait_for(reader.readexactly(1), 5)

        assert loop.time() - started >= 0.2  # one delay each way
        await _close(writer)


async def test_refuse_new_resets_new_connections(echo_port: int) -> None:
    async with FaultProxy(echo_port) as proxy:
        proxy.refuse_new()
        reader, writer = await _connect(proxy.port)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        await _close(writer)


# --- http ---

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _app(state: dict[str, bool]) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    state["started"] = True
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    state["stopped"] = True
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i in range(3):
            body = f"id: {i}\n\n".encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


async def test_serve_app_runs_a_real_server_with_lifespan() -> None:
    state: dict[str, bool] = {}

    async with serve_app(_app(state)) as base_url:
        assert state == {"started": True}
        assert base_url.startswith("http://127.0.0.1:")
        async with (
            httpx.AsyncClient(base_url=base_url) as client,
            client.stream("GET", "/events") as response,
        ):
            chunks = [line async for line in response.aiter_lines() if line]
        assert chunks == ["id: 0", "id: 1", "id: 2"]

    assert state == {"started": True, "stopped": True}
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(base_url)


async def test_serve_app_reports_a_failed_startup() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(RuntimeError, match="uvicorn"):
        async with serve_app(broken):
            pass


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536


# --- processes ---


async def test_processes_are_killed_by_pid(processes: Processes, tmp_path: Path) -> None:
    code = "import sys, time; print('up', flush=True); time.sleep(60)"
    proc = processes.spawn(
        [sys.executable, "-c", code], {"RR_MARK": "1"}, log_path=tmp_path / "p.log"
    )
    await wait_for(lambda: "up" in proc.output(), message="child never started")

    proc.kill9()

    assert await proc.wait_async(5) == -9
    assert not proc.alive()


def test_terminate_lets_the_process_handle_sigterm(processes: Processes, tmp_path: Path) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('bye', flush=True), sys.exit(3)))\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = processes.spawn([sys.executable, "-c", code], {}, log_path=tmp_path / "t.log")
    wait_for_sync(lambda: "up" in proc.output(), message="child never started")

    proc.terminate()

    assert proc.wait(5) == 3
    assert "bye" in proc.output()


def test_env_none_removes_a_variable(
    processes: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RR_GONE", "x")
    code = "import os; print(os.environ.get('RR_GONE', 'absent'), os.environ['RR_NEW'])"
    proc = processes.spawn(
        [sys.executable, "-c", code],
        {"RR_GONE": None, "RR_NEW": "new"},
        log_path=tmp_path / "e.log",
    )

    assert proc.wait(10) == 0
    assert proc.output().strip() == "absent new"


# --- throwaway redis ---


def test_throwaway_redis_stops_and_comes_back_on_the_same_port() -> None:
    with ThrowawayRedis() as node:
        assert node.port != 6379
        client = redis.Redis.from_url(node.url, socket_timeout=2)
        client.set("k", "v")
        pid = node.pid

        node.stop()
        with pytest.raises(redis.ConnectionError):
            client.ping()

        node.start()
        assert node.pid != pid
        assert client.ping()
        assert client.get("k") is None  # nothing was saved
        client.close()
    assert not node.running


# --- backend fixtures ---


def test_make_settings_points_at_the_test_backends(
    make_settings: Callable[..., Settings], redis_url: str, amqp_url: str, prefix: str
) -> None:
    settings = make_settings(stream_ttl_s=5)

    assert settings.redis_url == redis_url
    assert settings.amqp_url == amqp_url
    assert settings.key_prefix == prefix
    assert settings.stream_ttl_s == 5
    assert prefix.startswith("rrtest:")


def test_no_developer_runrelay_variables_leak_in() -> None:
    import os

    leaked = [
        name
        for name in os.environ
        if name.startswith("RUNRELAY_") and not name.startswith("RUNRELAY_TEST_")
    ]
    assert leaked == []


_PREFIX_SEEN: list[str] = []


def test_prefix_keys_are_written(prefix: str, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set(f"{prefix}a", 1)
    client.set(f"{prefix}{{s:x}}:run:1", 1)
    _PREFIX_SEEN.append(prefix)
    client.close()


def test_prefix_keys_are_gone_after_the_test(prefix: str, redis_url: str) -> None:
    assert _PREFIX_SEEN, "runs after test_prefix_keys_are_written"
    assert prefix != _PREFIX_SEEN[0]
    client = redis.Redis.from_url(redis_url)
    assert list(client.scan_iter(match=f"{_PREFIX_SEEN[0]}*")) == []
    client.close()


async def test_amqp_url_is_a_usable_vhost(amqp_url: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(aio_pika.Message(b"hi"), routing_key=queue.name)
        message = await wait_for(lambda: queue.get(fail=False), message="no message")
        assert message is not None
        assert message.body == b"hi"
        await message.ack()
