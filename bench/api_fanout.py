"""Fan-out of one API process: deliveries/s, publish→receive latency, memory per idle stream.

    python -m bench.api_fanout [--subscribers 1000] [--events 200] [--rate 20]
                               [--idle 5000] [--write]

The API runs in a child process (uvicorn + uvloop + httptools, pinned to CPU 0 when
there are two or more) over real Redis (``RUNRELAY_REDIS_URL``, default local). This
process pins itself to CPU 1 and is both producer (the real `Runs.emit` path) and a
lean raw-socket SSE client for every subscriber, so the server is what is measured.

1. burst: N subscribers follow one run; E events are appended as fast as the
   producer can; deliveries/s = NxE / (first append → last subscriber's terminal).
2. steady: the same N subscribers, a new run, events at `rate`/s for a few seconds;
   each event carries its append time; p50/p99 of receive - append.
3. idle: K connections on a run that emits nothing; server RSS growth / K.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid

from bench.report import machine, table, write_section
from shared.eventlog.redis import RedisEventLog
from shared.lifecycle import Runs
from shared.models import RunStatus

_T_RE = re.compile(rb'"t":(\d+)')
_TASKS: set[asyncio.Task[None]] = set()


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def serve(port: int, prefix: str, redis_url: str) -> None:
    """The child: a full-featured API process (auth off only because it is local)."""
    _pin(0)
    from api.app import create_app
    from api.server import build_server
    from shared.broker.memory import MemoryBroker
    from shared.runtime import Runtime
    from shared.settings import load_settings

    settings = load_settings(
        redis_url=redis_url,
        key_prefix=prefix,
        allow_anonymous=True,
        max_streams_per_owner=100_000,
        _env_file=None,
    )
    log = RedisEventLog(redis_url, prefix=prefix, ttl_s=600, max_events=100_000)
    runtime = Runtime(settings, log, MemoryBroker(), Runs(log), embedded=False)
    server = build_server(
        create_app(runtime, allow_open=True), "127.0.0.1", port, log_level="warning"
    )
    profile_path = os.environ.get("BENCH_PROFILE")  # where does the server spend its time?
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        stop = server.shutdown

        async def shutdown(sockets: object = None) -> None:
            profiler.disable()
            profiler.dump_stats(profile_path)
            await stop()

        server.shutdown = shutdown  # type: ignore[method-assign,assignment]
        profiler.enable()
    server.run()


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Client:
    """One SSE connection that counts frames (and append→receive latency if asked)."""

    def __init__(self, latencies: list[float] | None = None) -> None:
        self.received = 0
        self.done = asyncio.Event()
        self.attached = asyncio.Event()
        self.latencies = latencies
        self.writer: asyncio.StreamWriter | None = None

    async def run(self, port: int, path: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer = writer
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        buffer = b""
        try:
            while not self.done.is_set():
                data = await reader.read(262_144)
                if not data:
                    break
                now = time.time_ns()
                self.attached.set()
                buffer += data
                cut = buffer.rfind(b"\n\n")
                if cut < 0:
                    continue
                frames, buffer = buffer[: cut + 2], buffer[cut + 2 :]
                self.received += frames.count(b"\nevent: ")
                if self.latencies is not None:
                    self.latencies += [(now - int(t)) / 1e6 for t in _T_RE.findall(frames)]
                if b"event: run.completed" in frames:
                    self.done.set()
        finally:
            self.done.set()
            writer.close()


async def _new_run(runs: Runs) -> tuple[Runs, object]:
    run, _ = await runs.create(owner="anonymous", tool="bench", input={})
    started = await runs.start(run, worker="bench", lease_until=time.time() + 3600)
    assert started is not None
    return runs, started


async def _attach(port: int, path: str, n: int, latencies: list[float] | None) -> list[Client]:
    clients = [Client(latencies) for _ in range(n)]
    for i in range(0, n, 200):  # connect in waves: the accept backlog is finite
        batch = clients[i : i + 200]
        _TASKS.update(asyncio.create_task(c.run(port, path)) for c in batch)
        await asyncio.gather(*(c.attached.wait() for c in batch))
    return clients


async def bench(args: argparse.Namespace, port: int, prefix: str, pid: int) -> list[list[str]]:
    log = RedisEventLog(args.redis_url, prefix=prefix, ttl_s=600, max_events=100_000)
    runs = Runs(log)
    rows: list[list[str]] = []
    n, e = args.subscribers, args.events
    try:
        # 1. burst
        _, run = await _new_run(runs)
        path = f"/v1/runs/{run.run_id}/events"  # type: ignore[attr-defined]
        clients = await _attach(port, path, n, None)
        await asyncio.sleep(0.5)  # bench only: let every stream reach the live phase
        start = time.perf_counter()
        payload = {"delta": "x" * 120}
        sem = asyncio.Semaphore(8)

        async def emit_one() -> None:
            async with sem:
                await runs.emit(run, "output.message.delta", payload)  # type: ignore[arg-type]

        await asyncio.gather(*(emit_one() for _ in range(e)))
        await runs.finish(run, RunStatus.COMPLETED)  # type: ignore[arg-type]
        await asyncio.wait_for(asyncio.gather(*(c.done.wait() for c in clients)), 120)
        elapsed = time.perf_counter() - start
        delivered = sum(c.received for c in clients)
        expected = n * (e + 3)  # queued + started + e + completed
        rows.append(
            [
                f"burst, 1 run x {n} subscribers, {e} events",
                f"{delivered / elapsed:,.0f} deliveries/s",
                f"{delivered}/{expected} delivered",
            ]
        )

        # 2. steady rate
        latencies: list[float] = []
        _, run = await _new_run(runs)
        path = f"/v1/runs/{run.run_id}/events"  # type: ignore[attr-defined]
        clients = await _attach(port, path, n, latencies)
        await asyncio.sleep(0.5)
        latencies.clear()
        interval = 1.0 / args.rate
        for _ in range(int(args.rate * args.seconds)):
            data = {"delta": "x" * 100, "t": time.time_ns()}
            await runs.emit(run, "output.message.delta", data)  # type: ignore[arg-type]
            await asyncio.sleep(interval)
        await runs.finish(run, RunStatus.COMPLETED)  # type: ignore[arg-type]
        await asyncio.wait_for(asyncio.gather(*(c.done.wait() for c in clients)), 60)
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        rows.append(
            [
                f"steady, {n} subscribers x {args.rate} events/s ({n * args.rate:,} deliveries/s)",
                f"p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms",
                f"{len(latencies)} samples",
            ]
        )

        # 3. idle connections
        _, run = await _new_run(runs)
        path = f"/v1/runs/{run.run_id}/events"  # type: ignore[attr-defined]
        await asyncio.sleep(0.5)
        before = rss_kb(pid)
        idle = await _attach(port, path, args.idle, None)
        await asyncio.sleep(1.0)
        after = rss_kb(pid)
        rows.append(
            [
                f"idle, {args.idle} connections",
                f"{(after - before) / args.idle:.1f} KB RSS per connection",
                f"server RSS {before / 1024:.0f} → {after / 1024:.0f} MB",
            ]
        )
        for c in idle:
            c.done.set()
            if c.writer is not None:
                c.writer.close()
        await runs.finish(run, RunStatus.COMPLETED)  # type: ignore[arg-type]
    finally:
        await log.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rate", type=int, default=20, help="events/s in the steady phase")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument(
        "--redis-url", default=os.environ.get("RUNRELAY_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.prefix, args.redis_url)
        return

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    prefix = f"rrbench:{uuid.uuid4().hex[:8]}:"
    cmd = [sys.executable, "-m", "bench.api_fanout", "--serve", str(port), "--prefix", prefix]

    server = subprocess.Popen([*cmd, "--redis-url", args.redis_url])
    try:
        _pin(1)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the API did not start") from None
                time.sleep(0.1)
        rows = asyncio.run(bench(args, port, prefix, server.pid))
    finally:
        server.terminate()
        server.wait(15)
    result = table(["scenario", "result", "detail"], rows)
    print(result)
    if args.write:
        command = " ".join(["python -m bench.api_fanout", *sys.argv[1:]])
        write_section(
            "API fan-out",
            f"`{command.replace(' --write', '')}` — {machine()}; one API process on CPU 0, "
            "producer and clients on CPU 1, Redis on 127.0.0.1, ~200-byte events.\n\n" + result,
        )


if __name__ == "__main__":
    main()
