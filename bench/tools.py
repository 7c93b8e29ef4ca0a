"""Bench-only tools, loaded into a real `runrelay worker` with ``RUNRELAY_TOOLS=bench.tools``.

- `bench_tick`: one small delta every `interval_ms` (paced from the start, so a slow
  append does not stretch the run), `count` times: the end-to-end scenario's load.
- `bench_flood`: `count` small deltas as fast as the worker's append path takes
  them: one run emitting as fast as it can.

Each delta's ``created_at`` is stamped by `RunContext.emit` when the tool emits it,
before any batching, so the end-to-end latency includes the appender's linger.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from workers.context import RunContext
from workers.tools.registry import tool


class TickInput(BaseModel):
    count: int = Field(ge=1, le=1_000_000)
    interval_ms: float = Field(default=5.0, gt=0)
    size: int = Field(default=120, ge=1, le=10_000)


class FloodInput(BaseModel):
    count: int = Field(ge=1, le=10_000_000)
    size: int = Field(default=16, ge=1, le=10_000)


@tool("bench_tick", TickInput)
async def bench_tick(ctx: RunContext, args: TickInput) -> None:
    """One `size`-byte delta every `interval_ms`, `count` times (bench load)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    delta = "x" * args.size
    for i in range(args.count):
        await ctx.text(delta)
        await asyncio.sleep(max(0.0, start + (i + 1) * args.interval_ms / 1000 - loop.time()))


@tool("bench_flood", FloodInput)
async def bench_flood(ctx: RunContext, args: FloodInput) -> None:
    """`count` deltas of `size` bytes, as fast as the append path takes them (bench load)."""
    delta = "x" * args.size
    for _ in range(args.count):
        await ctx.text(delta)
