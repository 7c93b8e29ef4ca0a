"""End to end: a real worker emits, the real API streams, raw SSE clients receive.

    python -m bench.endtoend [--runs 4] [--clients 50] [--interval-ms 5] [--seconds 10]

`--runs` `bench_tick` runs (bench/tools.py: one ~120-byte delta every `--interval-ms`,
so 4 x 5 ms = ~800 events/s) on one `runrelay worker` (``python -m workers``,
``RUNRELAY_TOOLS=bench.tools``, pinned to CPU 1 with the clients: the load side),
followed by `--clients` raw SSE clients each (bench/client.py, this process, CPU 1)
through the real API server (bench/servers.py ``runrelay``: create_app + build_server,
pinned to CPU 0). Latency = client receive time - the delta's ``created_at``, which
the worker stamps in microseconds when the tool emits, before the appender batches
it; the appender's linger, the round trip to Redis, the API's read and the write to
the client are all in it. Clients connect before the runs are queued, so every
sample is live.

In the same run, the baselines: the same worker with ``RUNRELAY_APPEND_LINGER_MS=0``,
and the suite's latency scenario (bench/scenarios.py `latency`: the pipelined
producer stamps each event at its append call) at the same rate and layout, into the
runrelay API and into the minimal asyncio ceiling: what the read side alone costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import uvloop

from bench import scenarios as sc
from bench.client import Fleet
from bench.keys import bench_prefix
from bench.report import machine, table
from bench.servers import pin, raise_fd_limit, spawn
from bench.workers import REDIS_URL, _amqp_url, _ready, _spawn_worker, _wait_done
from bench.writepath import _spy
from shared.models import RunRequestMessage
from shared.runtime import Runtime
from shared.settings import load_settings

OWNER = "anonymous"  # the bench API server runs in its open mode


def _latencies_ms(stamps: list[tuple[int, bytes]]) -> list[float]:
    seconds: dict[bytes, float] = {}  # the date part of a stamp parsed once per second
    out = []
    for received_ns, iso in stamps:
        head, _, frac = iso.rstrip(b"Z").partition(b".")
        base = seconds.get(head)
        if base is None:
            base = datetime.fromisoformat(head.decode() + "+00:00").timestamp()
            seconds[head] = base
        out.append((received_ns / 1e9 - base - int(frac) / 10 ** len(frac)) * 1000)
    return out


async def through_worker(
    runs: int, clients: int, interval_ms: float, seconds: float, linger_ms: float | None
) -> dict[str, Any]:
    count = int(seconds * 1000 / interval_ms)
    prefix = bench_prefix()
    extra = {"RUNRELAY_TOOLS": "bench.tools"}
    if linger_ms is not None:
        extra["RUNRELAY_APPEND_LINGER_MS"] = str(linger_ms)
    with _amqp_url() as amqp_url, spawn("runrelay", prefix, REDIS_URL) as (port, api_pid):
        settings = load_settings(
            _env_file=None,
            redis_url=REDIS_URL,
            amqp_url=amqp_url,
            key_prefix=prefix,
            worker_concurrency=max(runs, 8),
            stream_ttl_s=300,
            publish_grace_s=600,
        )
        runtime = Runtime.build(settings)
        await runtime.start()
        log_path = Path(f"/tmp/bench-endtoend-{os.getpid()}.log")
        proc = None
        fleet = Fleet(port)
        stamps: list[tuple[int, bytes]] = []
        spies: list[subprocess.Popen[bytes]] = []
        try:
            proc = _spawn_worker(settings, log_path, extra, cpu=1)
            await _ready(runtime, proc.pid)
            tick = {"count": count, "interval_ms": interval_ms}
            queued = [
                (await runtime.runs.create(owner=OWNER, tool="bench_tick", input=tick))[0]
                for _ in range(runs)
            ]
            paths = [f"/v1/runs/{r.run_id}/events" for r in queued for _ in range(clients)]
            await fleet.connect(paths, stamps=stamps)
            await asyncio.sleep(0.5)  # every stream attached and following
            profile = os.environ.get("BENCH_PYSPY")
            if profile:
                spies = [_spy(api_pid, profile + ".api"), _spy(proc.pid, profile + ".worker")]
            cpu_api, cpu_worker = sc.cpu_s(api_pid), sc.cpu_s(proc.pid)
            t0 = time.perf_counter()
            for run in queued:
                body = RunRequestMessage(run_id=run.run_id, attempt=1).model_dump_json()
                await runtime.broker.publish_run(body.encode())
            await _wait_done(runtime, queued, timeout_s=seconds * 3 + 60)
            await fleet.all_done(60)
            elapsed = time.perf_counter() - t0
            cpu_api = sc.cpu_s(api_pid) - cpu_api
            cpu_worker = sc.cpu_s(proc.pid) - cpu_worker
        finally:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            fleet.close()
            if proc is not None:
                proc.terminate()
                proc.wait(30)
            await runtime.close()
    lat = _latencies_ms(stamps)
    return {
        "samples": len(lat),
        "expected": runs * clients * count,
        "rate": runs * count / elapsed,
        "p50": statistics.median(lat),
        "p99": sc.pct(lat, 0.99),
        "max": max(lat),
        "api_busy": cpu_api / elapsed,
        "worker_busy": cpu_worker / elapsed,
    }


async def main(runs: int, clients: int, interval_ms: float, seconds: float) -> list[list[str]]:
    rate = int(runs * 1000 / interval_ms)
    rows: list[list[str]] = []

    def row(label: str, r: dict[str, Any], busy: str) -> None:
        rows.append(
            [
                label,
                f"{r['p50']:.1f}",
                f"{r['p99']:.1f}",
                f"{r['max']:.1f}",
                busy,
                f"{r['samples']:,}/{r['expected']:,}",
            ]
        )
        print(rows[-1], flush=True)

    for linger, label in ((None, "default linger (1 ms)"), (0.0, "RUNRELAY_APPEND_LINGER_MS=0")):
        r = await through_worker(runs, clients, interval_ms, seconds, linger)
        os.environ.pop("BENCH_PYSPY", None)  # profile the first (default) case only
        row(
            f"worker → Redis → API → client, {label}, {r['rate']:,.0f} events/s",
            r,
            f"API {r['api_busy']:.0%}, worker {r['worker_busy']:.0%}",
        )
    ctx = sc.Ctx(REDIS_URL, quick=False)
    for kind, label in (("runrelay", "runrelay API"), ("ceiling", "minimal asyncio ceiling")):
        [r] = await sc.latency(ctx, kind, [rate], runs, clients, seconds)
        r["expected"] = r["sent"] * clients
        row(
            f"bench producer (append call → client) → {label}, {rate:,} events/s",
            r,
            f"server {r['busy']:.0%}",
        )
    print(machine())
    print(
        table(
            ["path", "p50 ms", "p99 ms", "max ms", "CPU busy", "samples/expected"],
            rows,
        )
    )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    a = parser.parse_args()
    pin(1)
    raise_fd_limit()
    uvloop.run(main(a.runs, a.clients, a.interval_ms, a.seconds))
