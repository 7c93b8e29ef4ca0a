"""The append path on one Redis node against a 3-shard Redis Cluster, with and without WAIT.

    python -m bench.cluster [--events 20000] [--runs 100] [--producers 16] [--write]

All three targets are throwaway servers started here, side by side in one run: one
node; 3 masters; 3 masters with a replica each and ``RUNRELAY_REDIS_MIN_REPLICAS=1``
(every append waits for its replica). Each append is one `Runs.emit`, as a worker makes
it. Reported per target: appends/s, and the Redis CPU (all nodes, user + sys) spent per
1,000 appends, which is what a capacity model multiplies out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterator

from bench.append import _rate, _started
from bench.keys import bench_prefix
from bench.report import machine, table, write_section
from shared.eventlog.redis_records import redis_stores
from shared.lifecycle import Runs
from shared.models import RunStatus
from tests.support.redis_cluster import ThrowawayCluster, node_command
from tests.support.redis_node import ThrowawayRedis


def _cpu_s(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        for line in node_command(port, "INFO", "cpu").splitlines():
            name, _, value = line.partition(":")
            if name in ("used_cpu_sys", "used_cpu_user"):
                total += float(value)
    return total


async def _measure(url: str, ports: list[int], events: int, nruns: int, producers: int,
                   min_replicas: int = 0) -> tuple[float, float]:  # fmt: skip
    stores = redis_stores(
        url,
        prefix=bench_prefix(),
        ttl_s=60,
        max_events=100_000,
        min_replicas=min_replicas,
    )
    runs = Runs(stores)
    try:
        targets = await _started(runs, nruns)
        before = _cpu_s(ports)
        rate = await _rate(runs, targets, events, producers)
        cpu = _cpu_s(ports) - before
        for run in targets:
            await runs.finish(run, RunStatus.COMPLETED)
    finally:
        await stores.log.close()
    return rate, cpu / events * 1000


@contextlib.contextmanager
def _targets() -> Iterator[list[tuple[str, str, list[int], int]]]:
    with (
        ThrowawayRedis() as node,
        ThrowawayCluster(masters=3) as shards,
        ThrowawayCluster(masters=3, replicas=1) as replicated,
    ):
        yield [
            ("one node", node.url, [node.port], 0),
            ("3-shard cluster", shards.url, shards.ports, 0),
            ("3 shards + replicas, MIN_REPLICAS=1", replicated.url, replicated.ports, 1),
        ]


async def main(events: int, nruns: int, producers: int, write: bool) -> None:
    rows = []
    with _targets() as targets:
        for label, url, ports, min_replicas in targets:
            started = time.perf_counter()
            rate, cpu = await _measure(url, ports, events, nruns, producers, min_replicas)
            rows.append([label, f"{rate:,.0f}", f"{cpu * 1000:.0f}"])
            print(f"{label}: {rate:,.0f}/s in {time.perf_counter() - started:.1f}s")
    body = table(["target", "appends/s", "Redis CPU-ms per 1,000 appends"], rows)
    print(machine())
    print(body)
    if write:
        cmd = f"python -m bench.cluster --events {events} --runs {nruns} --producers {producers}"
        write_section(
            "Cluster",
            f"`{cmd}` — {machine()}; throwaway servers on 127.0.0.1 started by the bench, "
            f"{nruns} runs, {producers} producers in one process, ~200-byte events.\n\n" + body,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    a = parser.parse_args()
    asyncio.run(main(a.events, a.runs, a.producers, a.write))
