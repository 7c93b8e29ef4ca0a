"""`countdown`: `tool.progress` once per interval for `seconds`, between tool.started/completed."""

from __future__ import annotations

import asyncio
import math

from pydantic import BaseModel, Field

from workers.context import RunContext
from workers.tools.registry import tool


class CountdownInput(BaseModel):
    seconds: float = Field(ge=0, le=3600)
    interval_s: float = Field(default=1.0, gt=0, le=60)


@tool("countdown", CountdownInput)
async def countdown(ctx: RunContext, args: CountdownInput) -> None:
    """Report progress once per `interval_s` for `seconds`: a tool call with no text."""
    await ctx.tool_started(args.model_dump())
    loop = asyncio.get_running_loop()
    start = loop.time()
    steps = math.ceil(args.seconds / args.interval_s) if args.seconds else 0
    for step in range(steps):
        left = max(0.0, args.seconds - step * args.interval_s)
        await ctx.progress(step / steps, f"{left:g}s left")
        # Paced from the start, not from each step, so slow appends do not stretch it.
        until = start + min((step + 1) * args.interval_s, args.seconds)
        await asyncio.sleep(max(0.0, until - loop.time()))
    await ctx.progress(1.0, "done")
    await ctx.tool_completed({"seconds": args.seconds})
