"""`generate_agent` / `edit_agent`: hand the work to the external generator, continue on its result.

The tool runs in two phases, each in a worker (docs/operations-delegated.md):

1. First call: record an operation, emit `tool.started`, ``POST
   {RUNRELAY_GENERATOR_URL}/api/generate-agent`` with ``{instructions, operation_id,
   task_id}``. 202 → `ctx.delegate` (the run waits; the worker lets it go). 200 → the
   JSON body is the result, go on at once. Any other status, a timeout or a
   connection error fails the run with the reason.
2. After the completion consumer requeued the run with the result, the tool is
   called again: `tool.completed`, then the continuation — a streamed LLM reply
   about the result when ``RUNRELAY_LLM_BASE_URL`` is set, else a short summary.
   A failed operation ends the run `failed` with its error, after `tool.completed`
   with ``success: false``.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from pydantic import BaseModel, Field

from workers.context import CompletedOperation, RunContext
from workers.tools.llm import LlmInput, llm
from workers.tools.registry import tool

_ERROR_BODY_CHARS = 300
_SUMMARY_FIELDS = 6


class GenerateAgentInput(BaseModel):
    instructions: str = Field(min_length=1, max_length=20_000)


class EditAgentInput(GenerateAgentInput):
    agent_id: str = Field(min_length=1, max_length=128)


class GeneratorError(RuntimeError):
    """The generator refused, failed, or could not be reached; the run fails with this."""


@tool("generate_agent", GenerateAgentInput)
async def generate_agent(ctx: RunContext, args: GenerateAgentInput) -> None:
    """Ask the external generator for an agent; the run waits until it reports completion."""
    await _delegated(ctx, "/api/generate-agent", args.model_dump())


@tool("edit_agent", EditAgentInput)
async def edit_agent(ctx: RunContext, args: EditAgentInput) -> None:
    """Ask the external generator to change an agent; the run waits for its completion."""
    await _delegated(ctx, "/api/edit-agent", args.model_dump())


async def _delegated(ctx: RunContext, path: str, arguments: dict[str, Any]) -> None:
    done = await ctx.completed_operation()
    if done is None:
        done = await _call_generator(ctx, path, arguments)
    output = done.result if done.success else {"error": done.error}
    await ctx.emit(
        "tool.completed",
        {
            "tool_call_id": done.tool_call_id,
            "tool_name": done.tool_name,
            "success": done.success,
            "output": output,
        },
    )
    if not done.success:
        raise GeneratorError(done.error or "the generator reported a failure")
    await _continue(ctx, done)


async def _call_generator(
    ctx: RunContext, path: str, arguments: dict[str, Any]
) -> CompletedOperation:
    """Phase one: the result at once (200), or `Delegated` raised through (202)."""
    settings = ctx.settings
    op = await ctx.start_operation()
    await ctx.tool_started(arguments)
    url = settings.generator_url.rstrip("/") + path
    body = {**arguments, "operation_id": op.operation_id, "task_id": op.task_id}
    timeout = settings.generator_timeout_s
    try:
        async with ctx.http(timeout=timeout) as client:
            response = await client.post(url, json=body)
    except httpx.TimeoutException as exc:
        raise GeneratorError(f"generator at {url} did not answer within {timeout:g} s") from exc
    except httpx.HTTPError as exc:
        raise GeneratorError(
            f"generator at {url} unreachable: {type(exc).__name__}: {exc}"
        ) from exc
    if response.status_code == 202:
        await ctx.delegate(op)
    if response.status_code != 200:
        detail = response.text[:_ERROR_BODY_CHARS]
        raise GeneratorError(f"generator answered HTTP {response.status_code}: {detail}")
    try:
        result = response.json()
    except ValueError as exc:
        raise GeneratorError("generator answered 200 with a body that is not JSON") from exc
    return CompletedOperation(
        operation_id=op.operation_id,
        tool_call_id=op.tool_call_id,
        tool_name=op.tool_name,
        success=True,
        result=result,
        error=None,
    )


async def _continue(ctx: RunContext, done: CompletedOperation) -> None:
    """The assistant's reply about the result: from the LLM when configured, else a summary."""
    if ctx.settings.llm_base_url:
        prompt = (
            f"The {done.tool_name} tool finished. Its result, as JSON:\n"
            f"{orjson.dumps(done.result).decode()}\n"
            "Tell the user briefly what was created."
        )
        await llm(ctx, LlmInput(prompt=prompt))
        return
    for piece in summary(done):
        await ctx.text(piece)
    await ctx.complete_message()


def summary(done: CompletedOperation) -> list[str]:
    """A short deterministic reply about the result, in a few deltas."""
    result = done.result
    pieces = [f"{done.tool_name} finished. "]
    if isinstance(result, dict):
        name = result.get("name")
        if isinstance(name, str) and name:
            pieces.append(f"Your agent '{name}' is ready. ")
        shown = [k for k in result if k != "name"][:_SUMMARY_FIELDS]
        if shown:
            pieces.append("It has: " + ", ".join(shown) + ".")
    elif result is None:
        pieces.append("It returned no details.")
    else:
        pieces.append("Result: " + orjson.dumps(result).decode()[:_ERROR_BODY_CHARS])
    return pieces
