"""What one append costs inside Redis: the APPEND script per event, and its options.

    python -m bench.appendcost [--events 20000] [--rounds 3]

Runs `shared.eventlog.scripts.APPEND` on one started run, one event per call and then
in batches, and three variants of the batch script (the events as two arguments each,
the framing before `frame_events`; the session entry as a reference to the run event
instead of a copy of the body; no PUBLISH at all), with ~230-byte events; Redis CPU
per event from INFO commandstats (``evalsha`` µs per call / N), and the client's CPU
to pack each call (redis-py's `pack_commands`, µs per event).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from bench.keys import bench_prefix
from bench.report import machine, table
from shared.eventlog import scripts
from shared.eventlog.base import encode_body
from shared.eventlog.redis_records import redis_stores
from shared.lifecycle import Runs
from shared.models import RunStatus, utcnow

REDIS_URL = os.environ.get("RUNRELAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_COPY = "'{\"id\":' .. sids .. ',\"run_event_id\":' .. ids .. ',' .. body"
_REF = '\'{"id":\' .. sids .. \',"run_event_id":\' .. ids .. \',"run_id":"r"}\''
# The script before `frame_events` (commit b6c7db0): the events as type, body, type,
# body, ... arguments, each id formatted at every use.
_BEFORE_EVENTS = """
local function append_events(run, log, sess, slog, maxlen, args, first, last)
  local n = (last - first + 1) / 2
  local id = redis.call('HINCRBY', run, 'last_event_id', n) - n
  local sid = redis.call('HINCRBY', sess, 'last_event_id', n) - n
  for i = first, last, 2 do
    id = id + 1
    sid = sid + 1
    local etype, body = args[i], args[i + 1]
    redis.call('XADD', log, 'MAXLEN', maxlen, '0-' .. id,
               't', etype, 'd', '{"id":' .. id .. ',' .. body)
    redis.call('XADD', slog, 'MAXLEN', maxlen, '0-' .. sid,
               't', etype, 'd', '{"id":' .. sid .. ',"run_event_id":' .. id .. ',' .. body)
  end
  redis.call('SPUBLISH', log, id)
  redis.call('SPUBLISH', slog, sid)
  return id
end
"""
_RULE = "\nlocal status = "  # where APPEND's own part starts, after append_events
_CALL = "ARGV[6], ARGV[first], ARGV[first + 1])"
_PER_ARG_SCRIPT = _BEFORE_EVENTS + scripts.APPEND[scripts.APPEND.index(_RULE) :].replace(
    _CALL, "ARGV[6], ARGV, first, #ARGV)"
)
assert _CALL in scripts.APPEND and _COPY in scripts.APPEND, "bench: APPEND moved; update"
VARIANTS = {
    "batch, events as 2 arguments each (before)": _PER_ARG_SCRIPT,
    "batch, events as 2 arguments per batch (shipped)": scripts.APPEND,
    "batch, session entry references the run event": scripts.APPEND.replace(_COPY, _REF),
    "batch, no PUBLISH": scripts.APPEND.replace("  redis.call('SPUBLISH', log, id)\n", "").replace(
        "  redis.call('SPUBLISH', slog, sid)\n", ""
    ),
}


async def _usec_per_call(client: aioredis.Redis) -> tuple[int, float]:
    stats = await client.info("commandstats")
    evalsha = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return int(evalsha["calls"]), float(evalsha["usec"])


async def _cost(
    runs: Runs, client: aioredis.Redis, source: str, per_call: int, events: int
) -> tuple[float, float]:
    """(Redis µs, client packing µs) per event of `events` appended to a fresh run."""
    run, _ = await runs.create(owner="bench", tool="story", input={})
    started = await runs.start(run, worker="w", lease_until=time.time() + 600)
    assert started is not None
    k = runs.log.keys
    keys = [
        k.run(run.session_id, run.run_id),
        k.run_log(run.session_id, run.run_id),
        k.session(run.session_id, run.owner),
        k.session_log(run.session_id, run.owner),
        k.session_runs(run.session_id, run.owner),
    ]
    rule = ["", "0", ",running,", utcnow(), 60, events * 2, 2, "worker", "w", "attempt", "1", 0]
    body = encode_body(
        run.run_id, run.session_id, "output.message.delta", {"delta": "x" * 120}, utcnow()
    )
    batch = [("output.message.delta", body)] * per_call
    sha = await client.script_load(source)

    def call() -> list[Any]:
        if source is _PER_ARG_SCRIPT:
            framed: Any = [p for e in batch for p in e]
        else:
            framed = scripts.frame_events(batch)
        return ["EVALSHA", sha, len(keys), *keys, *rule, *framed]

    calls = events // per_call
    packer = Connection()  # redis-py's command packing, as a pipeline's execute does
    t0 = time.process_time()
    for _ in range(calls):
        packer.pack_commands([call()])
    pack_us = (time.process_time() - t0) / (calls * per_call) * 1e6
    calls0, usec0 = await _usec_per_call(client)
    async with client.pipeline(transaction=False) as pipe:
        for _ in range(calls):
            pipe.execute_command(*call())
        await pipe.execute()
    calls1, usec1 = await _usec_per_call(client)
    await runs.finish(started, RunStatus.COMPLETED)
    return (usec1 - usec0) / ((calls1 - calls0) * per_call), pack_us


async def main(events: int, rounds: int) -> list[list[str]]:
    prefix = bench_prefix()
    stores = redis_stores(REDIS_URL, prefix=prefix, ttl_s=60, max_events=events * 2)
    runs = Runs(stores)
    client = aioredis.Redis.from_url(REDIS_URL)
    cases = [
        ("one event per call (the old path)", scripts.APPEND, 1),
        *[(name, src, 100) for name, src in VARIANTS.items()],
    ]
    found: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in cases}
    try:
        # Rounds interleave the cases (each on a fresh run) so the machine's load
        # moves all of them alike; the table shows each case's median round.
        for _ in range(rounds):
            for label, source, per_call in cases:
                found[label].append(await _cost(runs, client, source, per_call, events))
                print(label, found[label][-1], flush=True)
    finally:
        await client.aclose()
        await stores.log.close()
    rows = []
    for label, _, per_call in cases:
        redis_us = statistics.median(r for r, _ in found[label])
        pack_us = statistics.median(p for _, p in found[label])
        rows.append(
            [label, f"{per_call}", f"{redis_us:.2f}", f"{1e6 / redis_us:,.0f}", f"{pack_us:.2f}"]
        )
    body_table = table(
        [
            "APPEND",
            "events per call",
            "Redis µs per event (median round)",
            "events/s of Redis CPU",
            "client µs per event (arguments + redis-py packing)",
        ],
        rows,
    )
    print(machine())
    print(body_table)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    a = parser.parse_args()
    asyncio.run(main(a.events, a.rounds))
