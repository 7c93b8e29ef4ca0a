"""What one append costs inside Redis: the APPEND script per event, and its options.

    python -m bench.appendcost [--events 20000]

Runs `shared.eventlog.scripts.APPEND` on one started run, one event per call and then
in batches, and two variants of the batch script (the session entry as a reference
to the run event instead of a copy of the body; no PUBLISH at all), with ~230-byte
events; Redis CPU per event from INFO commandstats (``evalsha`` µs per call / N).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from bench.report import machine, table
from shared.eventlog import scripts
from shared.eventlog.base import encode_body
from shared.eventlog.redis_records import redis_stores
from shared.lifecycle import Runs
from shared.models import RunStatus, utcnow

REDIS_URL = os.environ.get("RUNRELAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_COPY = "'{\"id\":' .. sid .. ',\"run_event_id\":' .. id .. ',' .. body"
_REF = '\'{"id":\' .. sid .. \',"run_event_id":\' .. id .. \',"run_id":"r"}\''
VARIANTS = {
    "batch, session entry copies the body (shipped)": scripts.APPEND,
    "batch, session entry references the run event": scripts.APPEND.replace(_COPY, _REF),
    "batch, no PUBLISH": scripts.APPEND.replace("  redis.call('SPUBLISH', log, id)\n", "").replace(
        "  redis.call('SPUBLISH', slog, sid)\n", ""
    ),
}


async def _usec_per_call(client: aioredis.Redis) -> tuple[int, float]:
    stats = await client.info("commandstats")
    evalsha = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return int(evalsha["calls"]), float(evalsha["usec"])


async def main(events: int) -> list[list[str]]:
    prefix = f"rrbench:{uuid.uuid4().hex[:8]}:"
    stores = redis_stores(REDIS_URL, prefix=prefix, ttl_s=60, max_events=events * 8)
    runs = Runs(stores)
    client = aioredis.Redis.from_url(REDIS_URL)
    rows = []
    try:
        run, _ = await runs.create(owner="bench", tool="story", input={})
        started = await runs.start(run, worker="w", lease_until=time.time() + 600)
        assert started is not None
        k = stores.log.keys
        keys = [
            k.run(run.session_id, run.run_id),
            k.run_log(run.session_id, run.run_id),
            k.session(run.session_id, run.owner),
            k.session_log(run.session_id, run.owner),
            k.session_runs(run.session_id, run.owner),
        ]
        rule = ["", "0", ",running,", utcnow(), 60, events * 8, 2, "worker", "w", "attempt", "1", 0]
        body = encode_body(
            run.run_id, run.session_id, "output.message.delta", {"delta": "x" * 120}, utcnow()
        )
        for label, source, per_call in [
            ("one event per call (the old path)", scripts.APPEND, 1),
            *[(name, src, 100) for name, src in VARIANTS.items()],
        ]:
            sha = await client.script_load(source)
            calls0, usec0 = await _usec_per_call(client)
            args: list[Any] = [*rule, *(["output.message.delta", body] * per_call)]
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(events // per_call):
                    pipe.evalsha(sha, len(keys), *keys, *args)
                await pipe.execute()
            calls1, usec1 = await _usec_per_call(client)
            per_event = (usec1 - usec0) / ((calls1 - calls0) * per_call)
            rows.append([label, f"{per_call}", f"{per_event:.2f}", f"{1e6 / per_event:,.0f}"])
            print(rows[-1], flush=True)
        await runs.finish(started, RunStatus.COMPLETED)
    finally:
        await client.aclose()
        await stores.log.close()
    body_table = table(
        ["APPEND", "events per call", "Redis µs per event", "events/s of Redis CPU"], rows
    )
    print(machine())
    print(body_table)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    a = parser.parse_args()
    asyncio.run(main(a.events))
