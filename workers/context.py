"""What a tool sees of its run: the input, and the ways to emit events and notice cancellation.

    async def my_tool(ctx: RunContext, args: MyInput) -> None:
        await ctx.tool_started({"query": args.query})
        await ctx.progress(0.5, "half way")
        await ctx.text("Hello ")
        await ctx.text("world")
        await ctx.complete_message()          # output.message.completed with "Hello world"
        await ctx.tool_completed({"hits": 3})

Every emit is a conditional append held by this worker and attempt: when the run
was cancelled or handed to another worker it raises `AppendRefused`, which ends
the tool (the worker writes nothing more). Long waits need no polling: the
worker cancels the tool's task when its lease is lost (cancel included) and sets
`cancelled`, so a tool that must clean up catches `asyncio.CancelledError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx

from shared.models import RunRecord
from shared.runtime import Runtime
from shared.settings import Settings

_HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class RunContext:
    """One attempt of one run, as handed to its tool by the worker."""

    def __init__(self, runtime: Runtime, run: RunRecord, worker_id: str) -> None:
        self.runtime = runtime
        self.run = run
        self.worker_id = worker_id
        # Set by the worker when the run stops being ours (cancelled, taken over, shutdown).
        self.cancelled = asyncio.Event()
        self.tool_call_id = f"call_{run.run_id}_{run.attempt}"
        self._message: list[str] = []

    @property
    def input(self) -> dict[str, Any]:
        return self.run.input

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def run_id(self) -> str:
        return self.run.run_id

    async def emit(self, type_: str, data: Mapping[str, Any]) -> int:
        """Append one event (output.*, tool.*, custom.*); returns its id."""
        return await self.runtime.runs.emit(self.run, type_, data, worker=self.worker_id)

    async def text(self, delta: str) -> int:
        """Stream a piece of assistant text (`output.message.delta`)."""
        self._message.append(delta)
        return await self.emit("output.message.delta", {"delta": delta})

    async def complete_message(self) -> int:
        """`output.message.completed` with all text streamed since the last one."""
        text, self._message = "".join(self._message), []
        message = {"role": "assistant", "content": [{"type": "text", "text": text}]}
        return await self.emit("output.message.completed", {"message": message})

    async def progress(self, value: float, message: str = "") -> int:
        """`tool.progress` for this run's tool call; `value` is clamped to 0..1."""
        data = {
            "tool_call_id": self.tool_call_id,
            "progress": min(1.0, max(0.0, value)),
            "message": message,
        }
        return await self.emit("tool.progress", data)

    async def tool_started(self, arguments: Mapping[str, Any] | None = None) -> int:
        call = {"id": self.tool_call_id, "name": self.run.tool, "arguments": dict(arguments or {})}
        return await self.emit("tool.started", {"tool_call": call})

    async def tool_completed(self, output: object = None, *, success: bool = True) -> int:
        data = {
            "tool_call_id": self.tool_call_id,
            "tool_name": self.run.tool,
            "success": success,
            "output": output,
        }
        return await self.emit("tool.completed", data)

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        """A new `httpx.AsyncClient` (use it in ``async with``); kwargs override the defaults."""
        kwargs.setdefault("timeout", _HTTP_TIMEOUT)
        return httpx.AsyncClient(**kwargs)

    async def delegate(self, **operation: Any) -> None:
        """Hand the work to an external service and let the run wait (`operation.accepted`)."""
        # TODO(delegated operations): record the operation, append operation.accepted via
        # runtime.runs.delegate, and tell the worker to let go of the run without a
        # terminal event; the completion consumer continues it.
        raise NotImplementedError("delegated operations are not available yet")
