"""What a tool sees of its run: the input, and the ways to emit events and notice cancellation.

    async def my_tool(ctx: RunContext, args: MyInput) -> None:
        await ctx.tool_started({"query": args.query})
        await ctx.progress(0.5, "half way")
        await ctx.text("Hello ")
        await ctx.text("world")
        await ctx.complete_message()          # output.message.completed with "Hello world"
        await ctx.tool_completed({"hits": 3})

Every emit is a conditional append held by this worker and attempt, made through
the process's coalescing appender (`shared.appender`): ``await ctx.text(...)``
returns as soon as the chunk is queued (it waits only when this run or this process
has too many bytes queued), and chunks waiting together are stored as one atomic
batch. Each event's ``created_at`` is stamped when the tool emits it, before any
batching. When the run was cancelled or handed to another worker the batch is
refused, and the tool's next emit (or `flush`) raises `AppendRefused`, which ends
the tool (the worker writes nothing more). The worker flushes after the tool
returns, before the terminal event; ``await ctx.flush()`` waits for the stored
state at any other point. Long waits need no polling: the
worker cancels the tool's task when its lease is lost (cancel included) and sets
`cancelled`, so a tool that must clean up catches `asyncio.CancelledError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import httpx

from shared import tracing
from shared.broker.base import new_operation_id
from shared.eventlog.base import encode_body
from shared.models import Operation, RunRecord, utcnow
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
        self._stream = runtime.appender.stream(
            run.owner, run.session_id, run.run_id, runtime.runs.emit_rule(run, worker_id)
        )

    @property
    def input(self) -> dict[str, Any]:
        return self.run.input

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def run_id(self) -> str:
        return self.run.run_id

    async def emit(self, type_: str, data: Mapping[str, Any]) -> None:
        """Queue one event (output.*, tool.*, custom.*) for appending, stamped now.

        Raises the error that refused an earlier batch of this attempt (`AppendRefused`,
        `NotFound`, `BackendUnavailable`).
        """
        run = self.run
        body = encode_body(run.run_id, run.session_id, type_, data, utcnow())
        await self._stream.put(type_, body)

    async def flush(self) -> None:
        """Wait until every event emitted so far is stored; raises what refused one."""
        await self._stream.flush()

    def close(self) -> None:
        """The attempt is over here: drop what is not sent yet."""
        self._stream.close()

    async def text(self, delta: str) -> None:
        """Stream a piece of assistant text (`output.message.delta`)."""
        self._message.append(delta)
        await self.emit("output.message.delta", {"delta": delta})

    async def complete_message(self) -> None:
        """`output.message.completed` with all text streamed since the last one."""
        text, self._message = "".join(self._message), []
        message = {"role": "assistant", "content": [{"type": "text", "text": text}]}
        await self.emit("output.message.completed", {"message": message})

    async def progress(self, value: float, message: str = "") -> None:
        """`tool.progress` for this run's tool call; `value` is clamped to 0..1."""
        data = {
            "tool_call_id": self.tool_call_id,
            "progress": min(1.0, max(0.0, value)),
            "message": message,
        }
        await self.emit("tool.progress", data)

    async def tool_started(self, arguments: Mapping[str, Any] | None = None) -> None:
        call = {"id": self.tool_call_id, "name": self.run.tool, "arguments": dict(arguments or {})}
        await self.emit("tool.started", {"tool_call": call})

    async def tool_completed(self, output: object = None, *, success: bool = True) -> None:
        data = {
            "tool_call_id": self.tool_call_id,
            "tool_name": self.run.tool,
            "success": success,
            "output": output,
        }
        await self.emit("tool.completed", data)

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        """A new `httpx.AsyncClient` (use it in ``async with``); kwargs override the defaults."""
        kwargs.setdefault("timeout", _HTTP_TIMEOUT)
        return httpx.AsyncClient(**kwargs)

    async def start_operation(self, tool_name: str | None = None) -> Operation:
        """Record a new operation of this run, before the external service hears of it.

        Stored first so that a completion arriving before `delegate` finds it.
        """
        op = Operation(
            operation_id=new_operation_id(self.runtime.names.tag),
            task_id=self.run.run_id,
            session_id=self.run.session_id,
            tool_call_id=self.tool_call_id,
            tool_name=tool_name or self.run.tool,
            trace=tracing.carrier(),  # the completion consumer continues this trace
        )
        ttl = int(self.settings.operation_timeout_s + self.settings.stream_ttl_s)
        await self.runtime.store.put_operation(op, ttl)
        return op

    async def delegate(self, operation: Operation) -> NoReturn:
        """Let the run wait for `operation` (`operation.accepted`); never returns.

        Raises `Delegated`, which the worker takes as "let go of the run": no terminal
        event, no lease, the slot freed. The completion consumer requeues the run with
        the result, and a worker calls the tool again: see `completed_operation`.
        """
        data = {
            "operation_id": operation.operation_id,
            "tool_call_id": operation.tool_call_id,
            "tool_name": operation.tool_name,
        }
        await self.flush()  # everything emitted before comes before `operation.accepted`
        await self.runtime.runs.delegate(self.run, data, worker=self.worker_id)
        # Nobody holds a lease now: the reaper fails the run if no completion comes.
        # (Should this fail, the reaper still finds the run at the old lease end.)
        with contextlib.suppress(Exception):
            await self.runtime.scheduler.schedule(
                self.run.run_id, time.time() + self.settings.operation_timeout_s
            )
        raise Delegated(operation.operation_id)

    async def completed_operation(self) -> CompletedOperation | None:
        """The completion this run was requeued with, or None on a first call of the tool."""
        record = await self.runtime.store.get_run(self.run.run_id)
        if record is None or record.operation_id is None or record.operation_result is None:
            return None
        operation_id, result = record.operation_id, record.operation_result
        op = await self.runtime.store.get_operation(operation_id)
        return CompletedOperation(
            operation_id=operation_id,
            tool_call_id=op.tool_call_id if op is not None else self.tool_call_id,
            tool_name=op.tool_name if op is not None else self.run.tool,
            success=bool(result.get("success")),
            result=result.get("result"),
            error=result.get("error"),
        )


class Delegated(BaseException):
    """Raised by `RunContext.delegate`: the run now waits for an external completion.

    A BaseException, so a tool's broad ``except Exception`` cannot swallow it.
    """

    def __init__(self, operation_id: str) -> None:
        super().__init__(f"delegated to operation {operation_id}")
        self.operation_id = operation_id


@dataclass(frozen=True, slots=True)
class CompletedOperation:
    """What the external service reported for this run's operation."""

    operation_id: str
    tool_call_id: str
    tool_name: str
    success: bool
    result: Any
    error: str | None
