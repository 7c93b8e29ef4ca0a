"""The servers the bench measures, each a child process pinned to CPU 0.

    python -m bench.servers runrelay --port P --prefix X [--heartbeat-s 15]
    python -m bench.servers ceiling  --port P --prefix X   # minimal asyncio, pre-encoded frames
    python -m bench.servers xread    --port P --prefix X   # baseline (a), bench/baselines
    python -m bench.servers pubsub   --port P --prefix X   # baseline (b), bench/baselines

`runrelay` is the real API (create_app + build_server: uvicorn, uvloop, httptools,
all middleware, auth in its open mode). `ceiling` is the least any Python server
must do: one shared XREAD over the followed logs, each batch framed once, the same
bytes written to every connection's transport; no HTTP framework, no resume, no
heartbeat. Clients of non-runrelay servers ask for ``/stream?key=<run log key>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis

from bench.keys import forget

KINDS = ("runrelay", "ceiling", "xread", "pubsub")


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def client_name(prefix: str) -> str:
    return "rrbench-api-" + prefix.strip(":").replace(":", "-")


def serve_runrelay(port: int, prefix: str, redis_url: str, heartbeat_s: float) -> None:
    from api.app import create_app
    from api.server import build_server, tune_gc
    from shared.broker.memory import MemoryBroker
    from shared.eventlog.redis_records import redis_stores
    from shared.runtime import Runtime
    from shared.settings import load_settings

    settings = load_settings(
        redis_url=redis_url,
        key_prefix=prefix,
        allow_anonymous=True,
        max_streams_per_owner=1_000_000,
        heartbeat_s=heartbeat_s,
        _env_file=None,
    )
    stores = redis_stores(
        redis_url, prefix=prefix, ttl_s=600, max_events=200_000, client_name=client_name(prefix)
    )
    runtime = Runtime(settings, stores, MemoryBroker(), embedded=False)
    app = create_app(runtime, allow_open=True)
    if os.environ.get(
        "BENCH_NO_DIRECT"
    ):  # for before/after figures: streams never written by the hub
        from api.streams.state import StreamState

        StreamState.direct = lambda self, batch: False  # type: ignore[method-assign]
    server = build_server(app, "127.0.0.1", port, log_level="warning")
    _tracemalloc_on_signal(os.environ.get("BENCH_TRACEMALLOC"))
    if not os.environ.get("BENCH_NO_GC_TUNING"):  # for before/after figures
        tune_gc()  # as `runrelay api` (api.server.serve) does
    server.config.backlog = 4096
    profile = os.environ.get("BENCH_PROFILE")  # cProfile of the server, written at exit
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        stop = server.shutdown

        async def shutdown(sockets: object = None) -> None:
            profiler.disable()
            profiler.dump_stats(profile)
            await stop()

        server.shutdown = shutdown  # type: ignore[method-assign]
        profiler.enable()
    server.run()


def _tracemalloc_on_signal(path: str | None) -> None:
    """With `path`: trace allocations; each SIGUSR1 dumps a snapshot to `path`.N (N = 1, 2...)."""
    if not path:
        return
    import signal
    import tracemalloc

    tracemalloc.start(1)
    taken = [0]

    def dump(_sig: int, _frame: object) -> None:
        taken[0] += 1
        tracemalloc.take_snapshot().dump(f"{path}.{taken[0]}")

    signal.signal(signal.SIGUSR1, dump)


_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"connection: close\r\n\r\nretry: 2000\n\n"
)


class _Ceiling:
    def __init__(self, redis_url: str) -> None:
        self.redis = aioredis.Redis.from_url(redis_url, socket_timeout=None)
        self.subs: dict[str, list[asyncio.Transport]] = {}
        self.cursors: dict[str, int] = {}

    async def read_forever(self) -> None:
        while True:
            if not self.cursors:
                await asyncio.sleep(0.02)
                continue
            streams = {k: f"0-{c}" for k, c in self.cursors.items()}
            reply: Any = await self.redis.xread(streams, count=500, block=50)  # type: ignore[arg-type]
            for raw_key, entries in reply or []:
                key = raw_key.decode()
                parts = []
                end = False
                for eid, f in entries:
                    seq = int(eid.partition(b"-")[2])
                    parts.append(b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, f[b"t"], f[b"d"]))
                    self.cursors[key] = seq
                    end = end or f[b"t"] == b"run.completed"
                chunk = b"".join(parts)
                for t in self.subs.get(key, ()):
                    t.write(chunk)
                if end:
                    for t in self.subs.pop(key, ()):
                        t.close()
                    self.cursors.pop(key, None)

    def protocol(self) -> asyncio.Protocol:
        hub = self

        class Conn(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t: Any = transport
                self.buf = b""

            def data_received(self, data: bytes) -> None:
                self.buf += data
                if b"\r\n\r\n" not in self.buf:
                    return
                target = self.buf.split(b" ", 2)[1].decode()
                key = parse_qs(urlsplit(target).query)["key"][0]
                self.t.write(_HEAD)
                hub.subs.setdefault(key, []).append(self.t)
                hub.cursors.setdefault(key, 0)

        return Conn()


def serve_ceiling(port: int, redis_url: str) -> None:
    import uvloop

    async def main() -> None:
        hub = _Ceiling(redis_url)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(hub.protocol, "127.0.0.1", port, backlog=4096)
        async with server:
            await hub.read_forever()

    uvloop.run(main())


def serve_asgi(kind: str, port: int, prefix: str, redis_url: str) -> None:
    import uvicorn

    from bench.baselines import pubsub_queue, xread_per_client

    module = xread_per_client if kind == "xread" else pubsub_queue
    app = module.make_app(redis_url, prefix)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


def wait_listening(port: int, proc: subprocess.Popen[bytes], kind: str) -> None:
    """Return once 127.0.0.1:`port` accepts connections; exit if `proc` dies or 20 s pass."""
    import socket

    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"bench: the {kind} server did not start") from None
            time.sleep(0.05)


@contextmanager
def spawn(
    kind: str, prefix: str, redis_url: str, heartbeat_s: float = 15.0
) -> Iterator[tuple[int, int]]:
    """Start a server child; yields (port, pid) once it accepts connections."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "bench.servers", kind, "--port", str(port), "--prefix", prefix]
    cmd += ["--redis-url", redis_url, "--heartbeat-s", str(heartbeat_s)]
    proc = subprocess.Popen(cmd)
    try:
        wait_listening(port, proc, kind)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        forget(redis_url, prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--heartbeat-s", type=float, default=15.0)
    args = parser.parse_args()
    pin(0)
    raise_fd_limit()
    if args.kind == "runrelay":
        serve_runrelay(args.port, args.prefix, args.redis_url, args.heartbeat_s)
    elif args.kind == "ceiling":
        serve_ceiling(args.port, args.redis_url)
    else:
        serve_asgi(args.kind, args.port, args.prefix, args.redis_url)


if __name__ == "__main__":
    main()
