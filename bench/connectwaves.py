"""Connect waves into one server: its CPU per connect as the followed logs pile up.

    python -m bench.connectwaves [--runs 2000] [--waves 5] [--kinds runrelay,pubsub]

For each server kind (`bench.servers`: the runrelay API, the bare ASGI design), one
server takes `waves` successive waves of `runs` new idle SSE clients, one per new
running run (so after the last wave it follows runs x waves logs); each wave is
connected as `bench.idlememory` does (500 at a time, until every response head is
in). Reported: the time to connect them all and the server's CPU meanwhile, per
connect. Unlike `bench.idlememory` (one wave of 2,000), this shows what each
connect costs a process that already follows thousands of logs: a cost per hub read
that grows with the follows shows up here and hardly there.
"""

from __future__ import annotations

import argparse
import time

import uvloop

from bench import scenarios as sc
from bench.client import Fleet
from bench.producer import Producer
from bench.report import machine, table
from bench.servers import pin, raise_fd_limit, spawn
from bench.workers import REDIS_URL

NAMES = {"runrelay": "runrelay API", "pubsub": "bare ASGI design (baseline b)"}


async def waves(kind: str, n_runs: int, n_waves: int) -> dict[str, float]:
    prefix = sc._prefix()
    with spawn(kind, prefix, REDIS_URL) as (port, pid):
        prod = Producer(REDIS_URL, prefix)
        fleets: list[Fleet] = []
        made = []
        try:
            warm = await prod.runs(50)
            made += warm
            fleets.append(Fleet(port))
            await fleets[0].connect([sc._path(kind, prod, r) for r in warm])
            batches = [await prod.runs(n_runs) for _ in range(n_waves)]
            for runs in batches:
                made += runs
            connect_s, cpu0 = 0.0, sc.cpu_s(pid)
            for runs in batches:
                fleet = Fleet(port)
                fleets.append(fleet)
                t0 = time.perf_counter()
                await fleet.connect([sc._path(kind, prod, r) for r in runs])
                connect_s += time.perf_counter() - t0
            cpu = sc.cpu_s(pid) - cpu0
        finally:
            for fleet in fleets:
                fleet.close()
            await prod.finish(made)
            await prod.close()
    n = n_runs * n_waves
    return {"connect_s": connect_s, "cpu_ms_per_conn": cpu * 1000 / n, "n": n}


async def main(n_runs: int, n_waves: int, kinds: list[str]) -> None:
    rows = []
    # Unmeasured: the clients' first connects of this size cost them more than later ones,
    # and that went to whichever server was measured first (bench.idlememory says more).
    await waves("pubsub", n_runs, 1)
    for kind in kinds:
        r = await waves(kind, n_runs, n_waves)
        rows.append(
            [
                NAMES[kind],
                f"{n_waves} x {n_runs:,}",
                f"{r['connect_s']:.2f}",
                f"{r['cpu_ms_per_conn']:.3f}",
            ]
        )
        print(rows[-1], flush=True)
    print(machine())
    print(table(["server", "waves x clients", "connect s", "server CPU ms per connect"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--waves", type=int, default=5)
    parser.add_argument("--kinds", default="runrelay,pubsub")
    a = parser.parse_args()
    pin(1)
    raise_fd_limit()
    uvloop.run(main(a.runs, a.waves, a.kinds.split(",")))
