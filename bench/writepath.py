"""The write path: appends/s through one `runrelay worker`, against plain pipelined XADD.

    python -m bench.writepath [--runs 200] [--paragraphs 50] [--flood 100000]

Throughput: `--runs` `story` runs with ``delay_ms: 0`` (~9 deltas per paragraph) are
queued, then one worker process with concurrency = `--runs` drains them all at once;
appends/s = every event the runs stored / (first `run.started` → last terminal
event, from the events' own ``created_at``). The reference, in the same run: a
redis-py loop of pipelined XADDs (4 connections, 200 per pipeline) of the same
number of events of the same size. Then one run alone, emitting as fast as it can:
`bench_flood` (bench/tools.py, loaded with ``RUNRELAY_TOOLS=bench.tools``), `--flood`
16-byte deltas in a loop of ``await ctx.text``.

``BENCH_PYSPY=/tmp/worker.txt`` records the worker with py-spy (``--format raw``)
during the 200-run burst. Uses ``RUNRELAY_BENCH_REDIS_URL`` / ``RUNRELAY_BENCH_AMQP_URL``
or the local defaults, a throwaway prefix and (on a local broker) a throwaway vhost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.keys import bench_prefix
from bench.report import machine, table
from bench.workers import (
    REDIS_URL,
    _amqp_url,
    _ready,
    _spawn_worker,
    _ts,
    _wait_done,
)
from shared.models import RunRecord, RunRequestMessage
from shared.runtime import Runtime
from shared.settings import load_settings


async def _submit(runtime: Runtime, tool: str, input_: dict[str, Any]) -> RunRecord:
    run, _ = await runtime.runs.create(owner="bench", tool=tool, input=input_)
    body = RunRequestMessage(run_id=run.run_id, attempt=1).model_dump_json().encode()
    await runtime.broker.publish_run(body)
    return run


async def _span(runtime: Runtime, runs: list[RunRecord]) -> tuple[int, float, int]:
    """(events stored, first run.started → last terminal, body bytes of one delta)."""
    events, first, last, size = 0, float("inf"), 0.0, 0
    for run in runs:
        key, after, stored = runtime.log.keys.run_log(run.session_id, run.run_id), 0, []
        while page := (await runtime.log.read(key, after, 10_000)).events:
            stored += page
            after = page[-1].id
        events += len(stored)
        for e in stored:
            if e.type == "run.started":
                first = min(first, _ts(e.decode()["created_at"]))
            elif e.type.startswith("run.") and e.type != "run.queued":
                last = max(last, _ts(e.decode()["created_at"]))
            elif e.type == "output.message.delta" and not size:
                size = len(e.json)
    return events, last - first, size


async def _xadd_reference(events: int, size: int, connections: int = 4) -> float:
    """Plain redis-py pipelined XADD of `events` entries of `size` bytes: events/s."""
    client = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            REDIS_URL, max_connections=connections, timeout=None
        )
    )
    key = bench_prefix("rrbench:{{x{}}}:ref")
    body = b"x" * size
    per_pipe = 200
    batches = [min(per_pipe, events - i) for i in range(0, events, per_pipe)]

    async def lane() -> None:
        while batches:
            n = batches.pop()
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(n):
                    pipe.xadd(key, {"t": "output.message.delta", "d": body})
                await pipe.execute()

    t0 = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(connections)))
    rate = events / (time.perf_counter() - t0)
    await client.delete(key)
    await client.aclose()
    return rate


async def _through_worker(
    runs: int, tool: str, input_: dict[str, Any], profile: str | None
) -> tuple[int, float, int, float]:
    """(events, seconds, delta size, worker CPU-s) of `runs` runs of `tool` on one worker."""
    with _amqp_url() as amqp_url:
        settings = load_settings(
            _env_file=None,
            redis_url=REDIS_URL,
            amqp_url=amqp_url,
            key_prefix=bench_prefix(),
            worker_concurrency=max(runs, 1),
            stream_ttl_s=300,
            stream_max_events=200_000,
            publish_grace_s=600,
        )
        runtime = Runtime.build(settings)
        await runtime.start()
        log_path = Path(f"/tmp/bench-writepath-{os.getpid()}.log")
        proc = None
        spy = None
        try:
            queued = [await _submit(runtime, tool, input_) for _ in range(runs)]
            proc = _spawn_worker(settings, log_path, {"RUNRELAY_TOOLS": "bench.tools"})
            await _ready(runtime, proc.pid)
            if profile:
                spy = _spy(proc.pid, profile)
            cpu0 = _cpu(proc.pid)
            await _wait_done(runtime, queued, timeout_s=600)
            cpu = _cpu(proc.pid) - cpu0
            events, seconds, size = await _span(runtime, queued)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            if proc is not None:
                proc.terminate()
                proc.wait(30)
            await runtime.close()
    return events, seconds, size, cpu


def _spy(pid: int, out: str) -> subprocess.Popen[bytes]:
    py_spy = str(Path(sys.executable).parent / "py-spy")
    args = [py_spy, "record", "--pid", str(pid), "-f", "raw", "-o", out, "--rate", "200"]
    return subprocess.Popen(
        [*args, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(runs: int, paragraphs: int, flood: int) -> list[list[str]]:
    profile = os.environ.get("BENCH_PYSPY")
    rows: list[list[Any]] = []
    story = {"prompt": "bench", "paragraphs": paragraphs, "delay_ms": 0}
    events, seconds, size, cpu = await _through_worker(runs, "story", story, profile)
    ref = await _xadd_reference(events, size)
    rate = events / seconds
    rows.append(
        [
            f"{runs} concurrent story runs, one worker",
            f"{events:,}",
            f"{rate:,.0f}",
            f"{cpu / seconds * 100:.0f}%",
            f"{ref:,.0f}",
            f"{rate / ref:.2f}x",
        ]
    )
    print(rows[-1], flush=True)
    flood_input = {"count": flood, "size": 16}
    events, seconds, size, cpu = await _through_worker(1, "bench_flood", flood_input, None)
    ref1 = await _xadd_reference(events, size)
    rate = events / seconds
    rows.append(
        [
            f"1 run alone emitting {flood:,} 16-byte deltas as fast as it can (bench_flood)",
            f"{events:,}",
            f"{rate:,.0f}",
            f"{cpu / seconds * 100:.0f}%",
            f"{ref1:,.0f}",
            f"{rate / ref1:.2f}x",
        ]
    )
    print(machine())
    body = table(
        [
            "scenario",
            "events",
            "appends/s",
            "worker CPU",
            "redis-py pipelined XADD, same events, 4 connections (events/s)",
            "ratio",
        ],
        rows,
    )
    print(body)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--paragraphs", type=int, default=50)
    parser.add_argument("--flood", type=int, default=100_000)
    a = parser.parse_args()
    asyncio.run(main(a.runs, a.paragraphs, a.flood))
