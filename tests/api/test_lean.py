"""The stream GETs served before FastAPI (api/lean.py) answer exactly as FastAPI's routes do.

Each request goes to the same server twice: once as it comes (the lean path serves it)
and once with the lean path switched off (FastAPI's routing, dependencies and middleware
serve it). Status, the headers a client reads and the whole body must be the same.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from api.lean import LeanStreams
from tests.api.conftest import TOKENS, Api, MakeApi
from tests.api.test_resume import produce

_READ = ("content-type", "cache-control", "x-accel-buffering", "www-authenticate")


Answer = tuple[int, dict[str, str], bytes]


async def _answer(api: Api, path: str, headers: dict[str, str]) -> Answer:
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as http:
        response = await http.get(path, headers=headers)
    seen = {name: response.headers[name] for name in _READ if name in response.headers}
    return response.status_code, seen, response.content


async def test_the_lean_path_answers_as_fastapi_does(
    make_api: MakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[str] = []
    lean_call = LeanStreams.__call__

    async def counted(self: LeanStreams, scope: Any, receive: Any, send: Any) -> None:
        served.append(scope["path"])
        await lean_call(self, scope, receive, send)

    monkeypatch.setattr(LeanStreams, "__call__", counted)
    alice = {"Authorization": f"Bearer {TOKENS['alice']}"}
    bob = {"Authorization": f"Bearer {TOKENS['bob']}"}
    async with make_api() as api:
        async with api.client("alice") as http:
            run_id = (await api.create_run(http))["run_id"]
            last = await produce(api, run_id, 6)  # ended: every stream below ends by itself
            session = (await http.get(f"/v1/runs/{run_id}")).json()["session_id"]
        events = f"/v1/runs/{run_id}/events"
        cases: list[tuple[str, dict[str, str]]] = [
            (events, alice),  # the whole run, from event 1
            (events, alice | {"Last-Event-ID": "3"}),  # a resume
            (f"{events}?after=4", alice),
            (f"{events}?%61fter=4", alice),  # the name percent-encoded: still `after`
            (f"{events}?access_token={TOKENS['alice']}&after=2", {}),  # an EventSource's token
            (events, alice | {"Last-Event-ID": str(last)}),  # nothing left: 204
            (events, {"Authorization": "Bearer not-a-token"}),  # 401
            (events, {}),  # no credentials: 401
            (events, bob),  # another owner's run: 404, before any replay
            ("/v1/runs/no-such-run/events", alice),  # 404
            (events, alice | {"Last-Event-ID": "x1"}),  # a bad cursor: 400
            (events, alice | {"Last-Event-ID": str(last + 5)}),  # past the end: 400
            (f"/v1/sessions/{session}/events", bob),  # another owner's session: 404
            (f"/api/chat/tasks/{run_id}/stream?last_message_id=0-3", alice),
            (f"/api/chat/tasks/{run_id}/stream?last_message_id=3", alice),  # 400
            ("/stream?topic=bad/topic", alice),  # 400
        ]
        for path, headers in cases:
            lean = await _answer(api, path, headers)
            assert served.pop() == path.partition("?")[0], path  # the lean path served it
            streams, api.app.streams = api.app.streams, None  # type: ignore[attr-defined]
            try:
                routed = await _answer(api, path, headers)
            finally:
                api.app.streams = streams  # type: ignore[attr-defined]
            assert not served, path  # and FastAPI this one
            assert lean == routed, path
        status, _, body = await _answer(api, events, alice)
        assert status == 200 and body.count(b"\nid: ") == last  # every event once, then its end
        _, _, body = await _answer(api, f"{events}?%61fter=4", alice)
        assert body.count(b"\nid: ") == last - 4 and b"\nid: 5\n" in body  # resumed after 4


async def _first_read(api: Api, path: str) -> bytes:
    """What a raw client's first read of `path` returns (alice's token)."""
    reader, writer = await api.raw_get(path)
    try:
        async with asyncio.timeout(20):
            return await reader.read(65536)
    finally:
        writer.close()


async def test_a_stream_opens_with_its_start_and_backlog_in_one_write(make_api: MakeApi) -> None:
    """A new stream's response head, its ``retry:`` line and the events behind its cursor
    reach the client together: the first read has them all (one write, not a head first
    and the backlog a round trip later)."""
    async with make_api() as api:
        async with api.client("alice") as http:
            run_id = (await api.create_run(http))["run_id"]
        run = await api.producer.start(run_id)
        await api.runtime.runs.emit(run, "output.message.delta", {"delta": "d0"})
        head = await api.runtime.runs.get(run_id, "alice")
        first = await _first_read(api, f"/v1/runs/{run_id}/events")
        assert first.startswith(b"HTTP/1.1 200 "), first
        assert b"\r\n\r\n" in first and b"retry: " in first
        for n in range(1, head.last_event_id + 1):  # every event stored so far
            assert b"\nid: %d\n" % n in first, (n, first)
        await api.producer.finish(run)
