"""Append throughput of the event log on Redis: one run, and spread across many runs.

    python -m bench.append [--events 20000] [--runs 100] [--producers 16] [--write]

Each append is the full lifecycle step a worker performs (`Runs.emit`: one Lua script
that assigns the id, writes the run log and the session log, and checks the holder).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import time

from bench.keys import bench_prefix
from bench.report import machine, table, write_section
from shared.eventlog.redis_records import redis_stores
from shared.lifecycle import Runs
from shared.models import RunRecord, RunStatus

REDIS_URL = os.environ.get("RUNRELAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _started(runs: Runs, n: int) -> list[RunRecord]:
    out = []
    for _ in range(n):
        run, _ = await runs.create(owner="bench", tool="story", input={})
        claimed = await runs.start(run, worker="bench", lease_until=time.time() + 3600)
        assert claimed is not None
        out.append(claimed)
    return out


async def _rate(runs: Runs, targets: list[RunRecord], events: int, producers: int) -> float:
    per = events // producers
    data = {"delta": "x" * 150}

    async def produce(p: int) -> None:
        for i in range(per):
            run = targets[(p * per + i) % len(targets)]
            await runs.emit(run, "output.message.delta", data, worker="bench")

    t0 = time.perf_counter()
    await asyncio.gather(*(produce(p) for p in range(producers)))
    return per * producers / (time.perf_counter() - t0)


def _redis_benchmark_xadd() -> str:
    try:
        out = subprocess.run(
            [
                "redis-benchmark",
                "-q",
                "-n",
                "100000",
                "-c",
                "16",
                "XADD",
                "rrbench:{x}",
                "MAXLEN",
                "10000",
                "*",
                "d",
                "x" * 150,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        rate = re.findall(r"([\d.]+) requests per second", out)[-1]
        return f"{float(rate):,.0f}"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "n/a (redis-benchmark not available)"


async def main(events: int, nruns: int, producers: int, write: bool) -> list[list[str]]:
    prefix = bench_prefix()
    stores = redis_stores(REDIS_URL, prefix=prefix, ttl_s=60, max_events=100_000)
    log, runs = stores.log, Runs(stores)
    try:
        one = await _started(runs, 1)
        many = await _started(runs, nruns)
        rows = []
        for label, targets in (
            (f"1 run, {producers} producers", one),
            (f"{nruns} runs, {producers} producers", many),
        ):
            rate = await _rate(runs, targets, events, producers)
            rows.append([label, f"{events:,}", f"{rate:,.0f}"])
        # Ending the runs starts their retention clock, so the bench leaves nothing behind.
        for run in one + many:
            await runs.finish(run, RunStatus.COMPLETED)
    finally:
        await log.close()
    xadd = _redis_benchmark_xadd()
    rows.append(["redis-benchmark XADD (16 clients, not pipelined)", "100,000", xadd])
    body = table(["scenario", "events", "appends/s"], rows)
    print(machine())
    print(body)
    if write:
        cmd = f"python -m bench.append --events {events} --runs {nruns} --producers {producers}"
        write_section(
            "Append",
            f"`{cmd}` — {machine()}, Redis on 127.0.0.1, ~200-byte events. Each append is "
            "one `Runs.emit` (Lua: id + run log + session log + holder check).\n\n" + body,
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    a = parser.parse_args()
    asyncio.run(main(a.events, a.runs, a.producers, a.write))
