"""A small OpenAI-compatible chat-completions server for the llm tool's tests (real HTTP).

``POST /chat/completions`` with ``stream: true`` streams the reply word by word as
``data: {"choices": [{"delta": {"content": ...}}]}`` lines, then ``data: [DONE]``.
The reply is ``"echo: <last user message>"``; requests are recorded in ``app.state.requests``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

API_KEY = "sk-test-double"


def create_app() -> FastAPI:
    app = FastAPI()
    app.state.requests = []

    @app.post("/chat/completions", response_model=None)
    async def completions(request: Request) -> StreamingResponse | JSONResponse:
        body: dict[str, Any] = await request.json()
        app.state.requests.append({"headers": dict(request.headers), "body": body})
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        text = "echo: " + body["messages"][-1]["content"]
        words = text.split(" ")

        async def chunks() -> AsyncIterator[bytes]:
            yield b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n'
            for i, word in enumerate(words):
                piece = word if i == len(words) - 1 else word + " "
                chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app
