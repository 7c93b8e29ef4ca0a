"""The API scenarios of the suite (1-5) and the physical limits; `bench.__main__` runs them.

Each function starts its own server child (CPU 0, see `bench.servers`), drives it
from this process (CPU 1: lean SSE clients of `bench.client`, the pipelined
producer of `bench.producer`) and returns plain numbers; the runner formats them.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import statistics
import subprocess
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from bench.client import Fleet
from bench.keys import bench_prefix
from bench.producer import Producer
from bench.servers import client_name, spawn

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Ctx:
    redis_url: str
    quick: bool


def _prefix() -> str:
    return bench_prefix()


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _path(kind: str, prod: Producer, run: Any) -> str:
    if kind == "runrelay":
        return f"/v1/runs/{run.run_id}/events"
    return f"/stream?key={prod.log_key(run)}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def fanout(
    ctx: Ctx, kind: str, n_runs: int, subs: int, events: int, producer: str = "pipelined"
) -> dict[str, float]:
    """R runs x S subscribers x E events, burst: deliveries/s and server CPU per 1,000.

    `producer`: ``pipelined`` (the APPEND script sent raw in pipelines: `Producer.append`),
    ``worker`` (through the coalescing appender as a worker's tools emit:
    `Producer.append_as_worker`) or ``xadd`` (plain XADD, for the ceiling only).
    """
    prefix = _prefix()
    with spawn(kind, prefix, ctx.redis_url) as (port, pid):
        prod = Producer(ctx.redis_url, prefix)
        prod.publish = kind == "pubsub"
        fleet = Fleet(port)
        try:
            runs = await prod.runs(n_runs)
            await fleet.connect([_path(kind, prod, r) for r in runs for _ in range(subs)])
            await asyncio.sleep(1.0)  # every stream past its replay and following live
            cpu0, t0 = cpu_s(pid), time.perf_counter()
            own0 = time.process_time()
            if producer == "xadd":
                await prod.append_xadd(runs, events)
            else:
                if producer == "worker":
                    await prod.append_as_worker(runs, events)
                else:
                    await prod.append(runs, events)
                await prod.finish(runs)
            produced = time.perf_counter() - t0
            own = time.process_time() - own0
            await fleet.all_done(300)
            elapsed, cpu = time.perf_counter() - t0, cpu_s(pid) - cpu0
            delivered = fleet.received
        finally:
            fleet.close()
            await prod.close()
    return {
        "rate": delivered / elapsed,
        "cpu_per_1k": cpu / delivered * 1000,
        "busy": cpu / elapsed,
        "delivered": delivered,
        "expected": n_runs * subs * (events + 3),
        "seconds": elapsed,
        "append_rate": n_runs * events / produced,
        "producer_cpu_us": own / (n_runs * events) * 1e6,  # this process, clients included
    }


async def latency(
    ctx: Ctx, kind: str, rates: list[int], n_runs: int, subs: int, seconds: float
) -> list[dict[str, Any]]:
    """Steady appends at each total rate; publish→receive latency at the clients."""
    prefix = _prefix()
    out = []
    with spawn(kind, prefix, ctx.redis_url) as (port, pid):
        prod = Producer(ctx.redis_url, prefix)
        try:
            for rate in rates:
                lat: list[float] = []
                fleet = Fleet(port)
                runs = await prod.runs(n_runs)
                await fleet.connect(
                    [_path(kind, prod, r) for r in runs for _ in range(subs)], latencies=lat
                )
                await asyncio.sleep(1.0)
                lat.clear()
                cpu0, own0 = cpu_s(pid), time.process_time()
                redis0 = await _redis_cpu(prod.redis)
                sent = await prod.steady(runs, rate, seconds)
                await asyncio.sleep(0.3)
                busy = (cpu_s(pid) - cpu0) / (seconds + 0.3)
                own = (time.process_time() - own0) / (seconds + 0.3)
                redis_busy = (await _redis_cpu(prod.redis) - redis0) / (seconds + 0.3)
                await prod.finish(runs)
                await fleet.all_done(60)
                fleet.close()
                out.append(
                    {
                        "rate": rate,
                        "sent": sent,
                        "samples": len(lat),
                        "p50": statistics.median(lat),
                        "p99": pct(lat, 0.99),
                        "max": max(lat),
                        "busy": busy,
                        "client_busy": own,
                        "redis_busy": redis_busy,
                    }
                )
        finally:
            await prod.close()
    return out


async def _redis_clients(r: aioredis.Redis, name: str) -> int:
    clients = await r.client_list()
    return sum(1 for c in clients if c.get("name") == name)


async def connections(ctx: Ctx, n: int, heartbeat_s: float) -> dict[str, float]:
    """N idle SSE connections: RSS per connection, Redis connections, heartbeat CPU."""
    prefix = _prefix()
    with spawn("runrelay", prefix, ctx.redis_url, heartbeat_s=heartbeat_s) as (port, pid):
        prod = Producer(ctx.redis_url, prefix)
        fleet = Fleet(port)
        try:
            runs = await prod.runs(10)
            # Warm the process (imports, first stream, pools) so the delta is per connection.
            await fleet.connect([_path("runrelay", prod, runs[0])] * 50)
            await asyncio.sleep(0.5)
            before = rss_kb(pid)
            t0 = time.perf_counter()
            await fleet.connect([_path("runrelay", prod, runs[i % 10]) for i in range(n)])
            connect_s = time.perf_counter() - t0
            await asyncio.sleep(2.0)
            after = rss_kb(pid)
            held = await _redis_clients(prod.redis, client_name(prefix))
            cpu0 = cpu_s(pid)
            window = max(3.0, 2 * heartbeat_s)
            await asyncio.sleep(window)
            cpu = cpu_s(pid) - cpu0
            alive = sum(1 for c in fleet.clients if not c.done)
            pings = (n + 50) * window / heartbeat_s
            await prod.finish(runs)
        finally:
            fleet.close()
            await prod.close()
    return {
        "n": n,
        "kb_per_conn": (after - before) / n,
        "rss_before_mb": before / 1024,
        "rss_after_mb": after / 1024,
        "redis_conns": held,
        "connect_s": connect_s,
        "hb_cpu_pct": cpu / window * 100,
        "cpu_per_1k_pings_ms": cpu / pings * 1e6,
        "alive": alive,
    }


async def idle(
    ctx: Ctx, kind: str, n_runs: int, per_run: int, trace: str | None = None
) -> dict[str, Any]:
    """n_runs running runs that emit nothing, per_run idle SSE connections each.

    RSS growth of the server / connections, after a 50-connection warm-up in the same
    layout; the time to connect them all (in waves of 500, each until every client
    has its response head), and the server's CPU meanwhile per connection (steadier than
    the time on a shared machine), and Redis's (it shares the cores). With `trace` the
    server runs under tracemalloc (``BENCH_TRACEMALLOC``) and dumps a snapshot before and
    after the connections: `trace`.1 and `trace`.2 (RSS and timing are then not
    representative).
    """
    prefix = _prefix()
    n = n_runs * per_run
    if trace:
        os.environ["BENCH_TRACEMALLOC"] = trace
    try:
        with spawn(kind, prefix, ctx.redis_url) as (port, pid):
            prod = Producer(ctx.redis_url, prefix)
            fleet = Fleet(port)
            try:
                warm = await prod.runs(max(1, 50 // per_run))
                runs = await prod.runs(n_runs)
                await fleet.connect([_path(kind, prod, r) for r in warm for _ in range(per_run)])
                await asyncio.sleep(1.0)
                if trace:
                    await _snapshot(pid, f"{trace}.1")
                before = rss_kb(pid)
                paths = [_path(kind, prod, r) for r in runs for _ in range(per_run)]
                cpu0 = cpu_s(pid)
                redis0 = await _redis_cpu(prod.redis)
                t0 = time.perf_counter()
                measured = await fleet.connect(paths)
                connect_s = time.perf_counter() - t0
                connect_cpu = cpu_s(pid) - cpu0
                redis_cpu = await _redis_cpu(prod.redis) - redis0
                await asyncio.sleep(2.0)
                after = rss_kb(pid)
                if trace:
                    await _snapshot(pid, f"{trace}.2")
                alive = sum(1 for c in measured if not c.done)
                await prod.finish(warm + runs)
            finally:
                fleet.close()
                await prod.close()
    finally:
        os.environ.pop("BENCH_TRACEMALLOC", None)
    return {
        "n": n,
        "kb_per_conn": (after - before) / n,
        "connect_s": connect_s,
        "cpu_ms_per_conn": connect_cpu * 1000 / n,  # the server's CPU while they connected
        # Redis's CPU meanwhile: it shares the machine's cores with the server
        "redis_us_per_conn": redis_cpu * 1e6 / n,
        "alive": alive,
    }


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return -1


async def _snapshot(pid: int, path: str) -> None:
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    size = -1
    while True:  # written once its size stops changing
        await asyncio.sleep(0.5)
        now = _size(path)
        if now > 0 and now == size:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: no tracemalloc snapshot at {path}")
        size = now


async def _commandstats(r: aioredis.Redis) -> dict[str, int]:
    info = await r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


async def _redis_cpu(r: aioredis.Redis) -> float:
    info = await r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def storm(ctx: Ctx, n_runs: int, per_run: int, behind: int) -> dict[str, Any]:
    """n_runs x per_run clients reconnect at once, each `behind` events behind."""
    prefix = _prefix()
    with spawn("runrelay", prefix, ctx.redis_url) as (port, pid):
        prod = Producer(ctx.redis_url, prefix)
        fleet = Fleet(port)
        try:
            runs = await prod.runs(n_runs)
            await prod.append(runs, behind + 10)
            last = 2 + behind + 10
            paths, headers, targets = [], [], []
            for run in runs:
                for _ in range(per_run):
                    paths.append(_path("runrelay", prod, run))
                    headers.append({"Last-Event-ID": str(last - behind)})
                    targets.append(last)
            before = await _commandstats(prod.redis)
            redis_cpu0 = await _redis_cpu(prod.redis)
            cpu0, own0 = cpu_s(pid), time.process_time()
            t0 = time.perf_counter()
            clients = await fleet.connect(
                paths, headers=headers, target=targets, wave=len(paths), wait=False
            )
            await fleet.all_done(120)
            elapsed = time.perf_counter() - t0
            cpu, own = cpu_s(pid) - cpu0, time.process_time() - own0
            redis_cpu = await _redis_cpu(prod.redis) - redis_cpu0
            after = await _commandstats(prod.redis)
            ends = sorted(c.caught_up_at - t0 for c in clients)
            ok = sum(1 for c in clients if c.last_id == last and c.received == behind)
            statuses: dict[int, int] = {}
            for c in clients:
                statuses[c.status] = statuses.get(c.status, 0) + 1
            await prod.finish(runs)
        finally:
            fleet.close()
            await prod.close()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta = {k: v for k, v in delta.items() if v > 0}
    return {
        "clients": len(paths),
        "seconds": elapsed,
        "p50": statistics.median(ends),
        "ok": ok,
        "statuses": statuses,
        "cpu": {"server": cpu, "clients": own, "redis": redis_cpu},
        "commands": sum(delta.values()),
        "by_command": dict(sorted(delta.items(), key=lambda kv: -kv[1])[:4]),
    }


async def replay(ctx: Ctx, events: int) -> dict[str, float]:
    """One client resuming from 0 over an `events`-long log: time to the last byte."""
    prefix = _prefix()
    with spawn("runrelay", prefix, ctx.redis_url) as (port, _pid):
        prod = Producer(ctx.redis_url, prefix)
        fleet = Fleet(port)
        try:
            [run] = await prod.runs(1)
            await prod.append([run], events - 2, pipeline=500)
            await prod.finish([run])
            t0 = time.perf_counter()
            [client] = await fleet.connect([_path("runrelay", prod, run)], wait=False)
            await fleet.all_done(60)
            elapsed = time.perf_counter() - t0
        finally:
            fleet.close()
            await prod.close()
    return {"events": client.received, "seconds": elapsed, "rate": client.received / elapsed}


def redis_benchmark(n: int) -> list[list[str]]:
    """Redis's own rates on this machine: XADD (plain and pipelined), XREAD COUNT 10."""
    key = f"rrbench:rb:{uuid.uuid4().hex[:6]}"
    rows = []

    def run(args: list[str]) -> float:
        out = subprocess.run(
            ["redis-benchmark", "-q", "-n", str(n), "-c", "16", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        found = re.findall(r"([\d.]+) requests per second", out)
        return float(found[-1])

    try:
        xadd = ["XADD", key, "MAXLEN", "~", "100000", "*", "t", "x", "d", "x" * 200]
        rows.append(["redis-benchmark XADD, 16 clients", f"{run(xadd):,.0f} XADD/s"])
        rows.append(
            [
                "redis-benchmark XADD, 16 clients, pipeline 16",
                f"{run(['-P', '16', *xadd]):,.0f} XADD/s",
            ]
        )
        xread = run(["XREAD", "COUNT", "10", "STREAMS", key, "0"])
        rows.append(
            [
                "redis-benchmark XREAD COUNT 10, 16 clients",
                f"{xread:,.0f} XREAD/s = {xread * 10:,.0f} entries/s",
            ]
        )
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        rows.append(["redis-benchmark", f"n/a ({exc})"])
    finally:
        subprocess.run(["redis-cli", "DEL", key], capture_output=True, check=False)
    return rows
