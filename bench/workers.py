"""Runs/s through one worker process, and queue -> `run.started` latency, on real backends.

    python -m bench.workers [--runs 2000] [--concurrency 8] [--latency-runs 300] [--rate 50]
                            [--write]

Throughput: `--runs` short `story` runs (1 paragraph, no delay: ~12 events each) are
queued first, then one `python -m workers` process drains them; runs/s is measured
from the first `run.started` to the last `run.completed` (timestamps from the
events themselves). Latency: with that worker idle, runs are submitted at `--rate`
per second (create + confirmed publish, as the API does) and each run's
`run.started` time minus its `run.queued` time is taken (millisecond stamps).

Uses ``RUNRELAY_BENCH_REDIS_URL`` / ``RUNRELAY_BENCH_AMQP_URL`` or the local defaults,
a throwaway key prefix and (on a local broker) a throwaway vhost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from bench.keys import bench_prefix
from bench.report import machine, table, write_section
from shared.models import RunRecord, RunRequestMessage
from shared.runtime import Runtime
from shared.settings import Settings, load_settings

REDIS_URL = os.environ.get("RUNRELAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("RUNRELAY_BENCH_AMQP_URL")
REPO = Path(__file__).resolve().parent.parent
STORY = {"prompt": "bench", "paragraphs": 1, "delay_ms": 0}


@contextlib.contextmanager
def _amqp_url() -> Iterator[str]:
    if AMQP_URL:
        yield AMQP_URL
        return
    from tests.support.rabbit_node import temp_vhost

    with temp_vhost() as url:
        yield url


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def _submit(runtime: Runtime) -> RunRecord:
    run, _ = await runtime.runs.create(owner="bench", tool="story", input=STORY)
    body = RunRequestMessage(run_id=run.run_id, attempt=1).model_dump_json().encode()
    await runtime.broker.publish_run(body)
    return run


async def _times(runtime: Runtime, run: RunRecord) -> dict[str, float]:
    page = await runtime.log.read(runtime.log.keys.run_log(run.session_id, run.run_id), 0, 1000)
    return {e.type: _ts(e.decode()["created_at"]) for e in page.events}


async def _wait_done(runtime: Runtime, runs: list[RunRecord], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    index = 0
    while index < len(runs):
        # Runs finish roughly in order: look at the first unfinished one only.
        if (await runtime.runs.get(runs[index].run_id)).terminal:
            index += 1
            continue
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {len(runs) - index} runs unfinished after {timeout_s}s")
        await asyncio.sleep(0.05)


def _spawn_worker(
    settings: Settings,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    cpu: int | None = None,
) -> subprocess.Popen[bytes]:
    """`python -m workers` (= `runrelay worker`) on these settings; `cpu` pins it (taskset)."""
    env = {
        **os.environ,
        "RUNRELAY_REDIS_URL": settings.redis_url or "",
        "RUNRELAY_AMQP_URL": settings.amqp_url or "",
        "RUNRELAY_KEY_PREFIX": settings.key_prefix,
        "RUNRELAY_WORKER_CONCURRENCY": str(settings.worker_concurrency),
        "RUNRELAY_STREAM_TTL_S": str(settings.stream_ttl_s),
        "RUNRELAY_PUBLISH_GRACE_S": str(settings.publish_grace_s),
        "RUNRELAY_STREAM_MAX_EVENTS": str(settings.stream_max_events),
        **(extra_env or {}),
    }
    cmd = [sys.executable, "-m", "workers"]
    if cpu is not None and (os.cpu_count() or 1) > 1:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    with log_path.open("ab") as log:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=log)


async def _ready(runtime: Runtime, pid: int) -> None:
    deadline = time.monotonic() + 30
    while not any(w.get("pid") == pid for w in await runtime.workers.live()):
        if time.monotonic() > deadline:
            raise SystemExit("bench: the worker did not start; see its log")
        await asyncio.sleep(0.05)


async def main(
    runs: int,
    concurrency: int,
    latency_runs: int,
    rate: float,
    write: bool,
    workers: int = 1,
) -> list[list[str]]:
    with _amqp_url() as amqp_url:
        settings = load_settings(
            _env_file=None,
            redis_url=REDIS_URL,
            amqp_url=amqp_url,
            key_prefix=bench_prefix(),
            worker_concurrency=concurrency,
            stream_ttl_s=300,
            publish_grace_s=600,
        )
        runtime = Runtime.build(settings)
        await runtime.start()
        log_path = Path(f"/tmp/bench-worker-{os.getpid()}.log")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            queued = [await _submit(runtime) for _ in range(runs)]
            procs = [_spawn_worker(settings, log_path) for _ in range(workers)]
            for proc in procs:
                await _ready(runtime, proc.pid)
            await _wait_done(runtime, queued, timeout_s=600)
            first = await _times(runtime, queued[0])
            # With several workers the last run queued need not finish last: look at a few.
            ends = [(await _times(runtime, r))["run.completed"] for r in queued[-4 * workers :]]
            throughput = runs / (max(ends) - first["run.started"])
            events = len(
                (
                    await runtime.log.read(
                        runtime.log.keys.run_log(queued[0].session_id, queued[0].run_id), 0, 1000
                    )
                ).events
            )

            submitted: list[RunRecord] = []
            start = time.perf_counter()
            for i in range(latency_runs):
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                submitted.append(await _submit(runtime))
            await _wait_done(runtime, submitted, timeout_s=120)
            lags = []
            for run in submitted:
                times = await _times(runtime, run)
                lags.append((times["run.started"] - times["run.queued"]) * 1000)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
            await runtime.close()

    lags.sort()
    p50 = statistics.median(lags)
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    rows = [
        [
            f"throughput, {runs} queued story runs (~{events} events each)",
            f"{throughput:.0f} runs/s",
            "",
            "",
        ],
        [
            f"queue -> run.started, {latency_runs} runs at {rate:g}/s, idle worker",
            "",
            f"{p50:.1f}",
            f"{p99:.1f}",
        ],
    ]
    body = table(
        [
            f"scenario ({workers} worker process(es), concurrency {concurrency} each)",
            "runs/s",
            "p50 ms",
            "p99 ms",
        ],
        rows,
    )
    print(body)
    if write and workers == 1:
        write_section(
            "Workers",
            f"`python -m bench.workers --runs {runs} --concurrency {concurrency} "
            f"--latency-runs {latency_runs} --rate {rate:g} --write` on {machine()}; "
            "real Redis and RabbitMQ on the same machine, one `python -m workers` process "
            "(uvloop).\n\n"
            + body
            + "\n\nLatency is `run.started` minus `run.queued` (both stamped at millisecond "
            "resolution): the confirmed publish, the delivery, reading the run and the claim. "
            "Throughput counts every event append a story run makes (its claim, deltas, "
            "completed message and terminal event), each one Redis script call.",
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-runs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.concurrency, args.latency_runs, args.rate, args.write))
