"""Fan-out with runrelay's worker append path as the producer, against the bare ceiling.

    python -m bench.writefanout [--runs 100] [--subs 5] [--events 1000]

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
"""

from __future__ import annotations

import argparse

import uvloop

from bench import scenarios as sc
from bench.report import machine, table
from bench.servers import pin, raise_fd_limit
from bench.workers import REDIS_URL

CASES = (
    ("runrelay", "worker", "runrelay API", "worker append path (shared.appender)"),
    ("runrelay", "pipelined", "runrelay API", "pipelined APPEND script"),
    ("ceiling", "xadd", "minimal asyncio ceiling", "plain pipelined XADD"),
    ("ceiling", "pipelined", "minimal asyncio ceiling", "pipelined APPEND script"),
)


async def main(runs: int, subs: int, events: int) -> list[list[str]]:
    ctx = sc.Ctx(REDIS_URL, quick=False)
    found = {}
    rows = []
    for kind, producer, server, label in CASES:
        r = await sc.fanout(ctx, kind, runs, subs, events, producer)
        found[(kind, producer)] = r
        rows.append(
            [
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
    ceiling = found[("ceiling", "xadd")]["rate"]
    for row, (kind, producer, _, _) in zip(rows, CASES, strict=True):
        row.append(f"{found[(kind, producer)]['rate'] / ceiling:.2f}x")
    print(machine())
    print(
        table(
            [
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
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--subs", type=int, default=5)
    parser.add_argument("--events", type=int, default=1000)
    a = parser.parse_args()
    pin(1)
    raise_fd_limit()
    uvloop.run(main(a.runs, a.subs, a.events))
