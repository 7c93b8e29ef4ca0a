"""Fan-out with runrelay's worker append path as the producer, against the bare ceiling.

    python -m bench.writefanout [--runs 100] [--subs 5] [--events 1000]
                                [--cases worker,pipelined,xadd,ceiling-pipelined] [--rounds 1]

R runs x S subscribers x E events in a burst (bench/scenarios.py `fanout`): this
process (CPU 1) is the producer and the raw SSE clients, the server a child on
CPU 0. Rows, all in the same run:

- runrelay API, producer = the worker append path: one task per run emitting
  through `shared.appender` under `Runs.emit_rule`, stamped at emit, flushed, then
  the terminal event (`Producer.append_as_worker`);
- runrelay API, producer = the suite's pipelined APPEND script (`Producer.append`);
- minimal asyncio ceiling, producer = plain pipelined XADD (`Producer.append_xadd`);
- minimal asyncio ceiling, producer = the pipelined APPEND script.

deliveries/s = events received by all clients / (first append → last client done).
`--cases` picks rows (e.g. ``worker,xadd``: the issue's target pair); with `--rounds N`
the picked cases run N times, interleaved, and the table shows every round (the
ratio is to the ceiling + plain XADD of the same round) and the median ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import uvloop

from bench import scenarios as sc
from bench.report import machine, table
from bench.servers import pin, raise_fd_limit
from bench.workers import REDIS_URL

CASES = {
    "worker": ("runrelay", "worker", "runrelay API", "worker append path (shared.appender)"),
    "pipelined": ("runrelay", "pipelined", "runrelay API", "pipelined APPEND script"),
    "xadd": ("ceiling", "xadd", "minimal asyncio ceiling", "plain pipelined XADD"),
    "ceiling-pipelined": (
        "ceiling",
        "pipelined",
        "minimal asyncio ceiling",
        "pipelined APPEND script",
    ),
}


async def main(runs: int, subs: int, events: int, cases: list[str], rounds: int) -> list[list[str]]:
    ctx = sc.Ctx(REDIS_URL, quick=False)
    if "xadd" not in cases:
        cases = [*cases, "xadd"]  # the reference every ratio is to
    rows: list[list[str]] = []
    ratios: dict[str, list[float]] = {case: [] for case in cases}
    for n in range(1, rounds + 1):
        found: dict[str, dict[str, float]] = {}
        first = len(rows)
        for case in cases:
            kind, producer, server, label = CASES[case]
            r = await sc.fanout(ctx, kind, runs, subs, events, producer)
            found[case] = r
            rows.append(
                [
                    f"{n}",
                    f"{time.strftime('%H:%M', time.gmtime())} UTC, load {os.getloadavg()[0]:.1f}",
                    server,
                    label,
                    f"{r['append_rate']:,.0f}",
                    f"{r['rate']:,.0f}",
                    f"{r['cpu_per_1k'] * 1000:.2f}",
                    f"{r['busy']:.0%}",
                    f"{r['delivered']:,}/{r['expected']:,}",
                ]
            )
            print(rows[-1], flush=True)
        ceiling = found["xadd"]["rate"]
        for row, case in zip(rows[first:], cases, strict=True):
            ratios[case].append(found[case]["rate"] / ceiling)
            row.append(f"{ratios[case][-1]:.2f}x")
    print(machine())
    print(
        table(
            [
                "round",
                "time, load",
                "server",
                "producer",
                "appends/s",
                "deliveries/s",
                "server CPU-µs per delivery",
                "server busy",
                "delivered/expected",
                "vs ceiling + plain XADD",
            ],
            rows,
        )
    )
    if rounds > 1:
        for case in cases:
            got = ", ".join(f"{x:.2f}x" for x in ratios[case])
            print(f"{case}: median {statistics.median(ratios[case]):.2f}x ({got})")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--subs", type=int, default=5)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rounds", type=int, default=1)
    a = parser.parse_args()
    picked = a.cases.split(",")
    unknown = sorted(set(picked) - set(CASES))
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)} (known: {', '.join(CASES)})")
    pin(1)
    raise_fd_limit()
    uvloop.run(main(a.runs, a.subs, a.events, picked, a.rounds))
