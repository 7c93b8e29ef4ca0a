"""Tools for the worker tests (workers load them via RUNRELAY_TOOLS=tests.workers.sample_tools).

They leave traces in files (the worker may be another process), so a test can
see what the tool itself observed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel

from workers.context import RunContext
from workers.tools import tool


class TraceInput(BaseModel):
    trace: str  # a file the tool appends lines to
    seconds: float = 60.0


def _note(path: str, line: str) -> None:
    with Path(path).open("a") as f:
        f.write(line + "\n")


@tool("test.wait", TraceInput)
async def wait(ctx: RunContext, args: TraceInput) -> None:
    """Emits one event, then waits quietly (no appends) so only the lease loop can stop it."""
    _note(args.trace, f"started {ctx.run.attempt}")
    await ctx.tool_started()
    try:
        await asyncio.sleep(args.seconds)
    except asyncio.CancelledError:
        _note(args.trace, f"cancelled {ctx.cancelled.is_set()}")
        raise
    _note(args.trace, "finished")


class BoomInput(BaseModel):
    message: str = "boom"


@tool("test.boom", BoomInput)
async def boom(ctx: RunContext, args: BoomInput) -> None:
    await ctx.text("about to fail")
    raise ValueError(args.message)
