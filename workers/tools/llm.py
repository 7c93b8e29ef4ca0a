"""`llm`: stream a chat completion from an OpenAI-compatible endpoint as text deltas.

Settings: ``RUNRELAY_LLM_BASE_URL`` (e.g. ``https://api.openai.com/v1``; the tool
POSTs to ``<base>/chat/completions``), ``RUNRELAY_LLM_API_KEY``, ``RUNRELAY_LLM_MODEL``.
Input: ``{"prompt": "..."}`` or ``{"messages": [{"role": ..., "content": ...}, ...]}``.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, Field, model_validator

from workers.context import RunContext
from workers.tools.registry import tool

_ERROR_BODY_CHARS = 300


class ChatMessage(BaseModel):
    role: str = Field(min_length=1)
    content: str


class LlmInput(BaseModel):
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)

    @model_validator(mode="after")
    def _one_source(self) -> LlmInput:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class LlmError(RuntimeError):
    pass


@tool("llm", LlmInput)
async def llm(ctx: RunContext, args: LlmInput) -> None:
    """Stream a chat completion from the OpenAI-compatible endpoint RUNRELAY_LLM_BASE_URL."""
    settings = ctx.settings
    if not settings.llm_base_url:
        raise LlmError("the llm tool needs RUNRELAY_LLM_BASE_URL (an OpenAI-compatible endpoint)")
    messages = (
        [m.model_dump() for m in args.messages]
        if args.messages is not None
        else [{"role": "user", "content": args.prompt}]
    )
    body: dict[str, Any] = {
        "model": args.model or settings.llm_model,
        "messages": messages,
        "stream": True,
    }
    if args.temperature is not None:
        body["temperature"] = args.temperature
    headers = {"Accept": "text/event-stream"}
    if settings.llm_api_key is not None:
        headers["Authorization"] = f"Bearer {settings.llm_api_key.get_secret_value()}"
    url = settings.llm_base_url.rstrip("/") + "/chat/completions"
    async with ctx.http() as client, client.stream("POST", url, json=body, headers=headers) as resp:
        if resp.status_code >= 400:
            detail = (await resp.aread())[:_ERROR_BODY_CHARS].decode(errors="replace")
            raise LlmError(f"LLM endpoint answered HTTP {resp.status_code}: {detail}")
        async for line in resp.aiter_lines():
            delta = _delta(line)
            if delta is _DONE:
                break
            if delta:
                await ctx.text(delta)
    await ctx.complete_message()


_DONE = "\x00done"


def _delta(line: str) -> str | None:
    """The text in one SSE line of a streamed completion, `_DONE` at the end, else None."""
    if not line.startswith("data:"):
        return None  # blank separators, comments, event: lines
    payload = line[5:].strip()
    if payload == "[DONE]":
        return _DONE
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise LlmError(f"LLM endpoint sent a malformed chunk: {payload[:100]!r}") from exc
    if isinstance(chunk, dict) and "error" in chunk:
        raise LlmError(f"LLM endpoint reported an error: {chunk['error']}")
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not choices:
        return None
    content = (choices[0].get("delta") or {}).get("content")
    return content if isinstance(content, str) else None
