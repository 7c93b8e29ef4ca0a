"""Idle followers: memory per SSE connection and connect time, runrelay against bare ASGI.

    python -m bench.idlememory [--layouts 2000x1,100x20] [--no-trace]

For each layout R x C (R running runs that emit nothing, C connections each; bench/
scenarios.py `idle`): the server's RSS growth / connections after a 50-connection
warm-up, the time to connect them all and the server's and Redis's CPU meanwhile (per
connection; Redis shares the machine's cores), for the runrelay API (bench/servers.py
``runrelay``) and for baseline (b), the bare ASGI design on the same server stack
(uvicorn + uvloop + httptools; one task and one ``asyncio.Queue`` per connection:
bench/baselines/pubsub_queue.py). Then the runrelay server again under tracemalloc:
what the connections allocated, by source line, per connection.

Before each layout the clients connect once to a bare design's server, unmeasured: a
client process's first connects of a size cost it more than later ones (its memory and
sockets are new), and that cost went to whichever server was measured first.
``BENCH_ORDER=pubsub,runrelay`` measures the bare design first.
"""

from __future__ import annotations

import argparse
import os
import tracemalloc

import uvloop

from bench import scenarios as sc
from bench.report import machine, table
from bench.servers import pin, raise_fd_limit
from bench.workers import REDIS_URL

# BENCH_ORDER=pubsub,runrelay: the bare design first (the order is no longer what
# decides the ratio: see docs/benchmarks.md, "Idle followers").
ORDER = tuple(os.environ.get("BENCH_ORDER", "runrelay,pubsub").split(","))
NAMES = {"runrelay": "runrelay API", "pubsub": "bare ASGI design (baseline b)"}


def _breakdown(path: str, n: int, top: int = 12) -> list[list[str]]:
    before = tracemalloc.Snapshot.load(f"{path}.1")
    after = tracemalloc.Snapshot.load(f"{path}.2")
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    rows = [["all", f"{total / n / 1024:.2f}", f"{sum(s.count_diff for s in stats) / n:.1f}"]]
    for s in stats[:top]:
        frame = s.traceback[0]
        where = frame.filename.split("site-packages/")[-1].split("wt-perf2/")[-1]
        rows.append(
            [
                f"`{where}:{frame.lineno}`",
                f"{s.size_diff / n / 1024:.2f}",
                f"{s.count_diff / n:.1f}",
            ]
        )
    return rows


async def main(layouts: list[tuple[int, int]], trace: bool) -> None:
    ctx = sc.Ctx(REDIS_URL, quick=False)
    rows = []
    for n_runs, per_run in layouts:
        # Unmeasured: the clients' own first connects of this size (their memory, their
        # sockets) would otherwise be paid by whichever server is measured first.
        await sc.idle(ctx, "pubsub", n_runs, per_run)
        found = {}
        for kind in ORDER:
            r = found[kind] = await sc.idle(ctx, kind, n_runs, per_run)
            print(kind, r, flush=True)
        bare = found["pubsub"]["connect_s"]
        for kind in ("runrelay", "pubsub"):
            r = found[kind]
            rows.append(
                [
                    f"{n_runs:,} runs x {per_run}",
                    NAMES[kind],
                    f"{r['kb_per_conn']:.1f}",
                    f"{r['connect_s']:.2f}",
                    f"{r['cpu_ms_per_conn']:.2f}",
                    f"{r['redis_us_per_conn']:.1f}",
                    f"{r['alive']:,}/{r['n']:,}",
                    f"{r['connect_s'] / bare:.2f}x",
                ]
            )
    print(machine())
    print(
        table(
            [
                "layout",
                "server",
                "KiB RSS per connection",
                "connect s",
                "server CPU ms per connect",
                "Redis CPU µs per connect",
                "open at the end",
                "connect time vs bare ASGI",
            ],
            rows,
        )
    )
    if not trace:
        return
    for n_runs, per_run in layouts:
        path = f"/tmp/bench-idle-{os.getpid()}-{n_runs}x{per_run}"
        r = await sc.idle(ctx, "runrelay", n_runs, per_run, trace=path)
        print(f"\ntracemalloc, runrelay API, {n_runs:,} runs x {per_run} (per connection):")
        print(table(["allocated at", "KiB", "blocks"], _breakdown(path, r["n"])))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layouts", default="2000x1,100x20")
    parser.add_argument("--no-trace", action="store_true")
    a = parser.parse_args()
    chosen = [tuple(int(x) for x in lay.split("x")) for lay in a.layouts.split(",")]
    pin(1)
    raise_fd_limit()
    uvloop.run(main([(r, c) for r, c in chosen], not a.no_trace))
