"""The chat task stream read by the AI SDK's own client code (Node, ``ai`` pinned in
tests/dialects/node/package-lock.json), plus the wire details it depends on.

The ``ai`` version is one whose chunk schemas are strict (``z.strictObject``), so an
extra field in any chunk fails these tests the way it would fail a real client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.dialects.chat import MessageState
from shared.models import StoredEvent
from tests.api.conftest import TOKENS
from tests.dialects.conftest import System
from workers.tools.story import compose

NODE_DIR = Path(__file__).parent / "node"
STAMP = NODE_DIR / "node_modules" / ".runrelay-lock-sha256"
# Slower than the 0.1 s heartbeat, so pings sit between deltas in every stream.
PACED = {"paragraphs": 1, "delay_ms": 250}
CHUNK_KEYS = {
    "start": {"type", "messageId"},
    "text-start": {"type", "id"},
    "text-delta": {"type", "id", "delta"},
    "text-end": {"type", "id"},
    "finish": {"type"},
}


@pytest.fixture(scope="session")
def node_reader() -> list[str]:
    """``node read_stream.mjs`` with ``ai`` installed by ``npm ci`` when missing or stale."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "the chat dialect test needs Node.js 18+ and npm on PATH (node: "
            f"{node or 'missing'}, npm: {npm or 'missing'}); install them, e.g. "
            "'apt-get install nodejs npm'",
            pytrace=False,
        )
    lock = hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text() != lock:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci failed in {NODE_DIR}:\n{done.stdout}\n{done.stderr}")
        STAMP.write_text(lock)
    return [node, str(NODE_DIR / "read_stream.mjs")]


async def read_with_ai_sdk(node_reader: list[str], url: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *node_reader,
        url,
        TOKENS["alice"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"the AI SDK rejected the stream:\n{err.decode()}"
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def create_story(http: httpx.AsyncClient, prompt: str) -> str:
    body = {"tool": "story", "input": {"prompt": prompt, **PACED}}
    created = await http.post("/v1/runs", json=body)
    assert created.status_code == 202, created.text
    return str(created.json()["run_id"])


async def test_ai_sdk_reads_a_fresh_and_a_mid_message_resumed_stream(
    system: System, node_reader: list[str]
) -> None:
    full = "\n\n".join(compose("the chat", 1))
    async with system.client() as http:
        run_id = await create_story(http, "the chat")
        stream_url = f"{system.url}/api/chat/tasks/{run_id}/stream"
        fresh = asyncio.create_task(
            read_with_ai_sdk(node_reader, stream_url + "?last_message_id=0-0")
        )
        # Cut after the third delta (ids: 1 queued, 2 started, 3.. deltas), while the run runs.
        cut = 5
        await system.wait_run(run_id, lambda r: r.last_event_id > cut)
        resumed = await read_with_ai_sdk(node_reader, f"{stream_url}?last_message_id=0-{cut}")
        whole = await fresh
        events = await system.native_events(run_id)
    before_cut = "".join(
        e["data"]["delta"] for e in events if e["type"] == "output.message.delta" and e["id"] <= cut
    )
    assert whole == {
        "id": run_id,
        "text": full,
        "parts": [{"type": "text", "state": "done"}],
        "errors": [],
    }
    # A fresh parser that joins mid-message holds exactly the text after the cut.
    assert before_cut and resumed["text"] == full[len(before_cut) :]
    assert resumed["parts"] == [{"type": "text", "state": "done"}] and resumed["errors"] == []


async def test_a_finished_task_resumed_at_its_end_is_204_for_the_ai_sdk(
    system: System, node_reader: list[str]
) -> None:
    async with system.client() as http:
        created = await http.post(
            "/v1/runs", json={"tool": "story", "input": {"prompt": "done", "delay_ms": 0}}
        )
        run_id = created.json()["run_id"]
        run = await system.wait_run(run_id, lambda r: r.terminal)
        url = f"{system.url}/api/chat/tasks/{run_id}/stream?last_message_id=0-{run.last_event_id}"
        assert await read_with_ai_sdk(node_reader, url) == {"status": 204}
        status = (await http.get(f"/api/chat/tasks/{run_id}")).json()
    assert status["status"] == "completed"
    assert status["last_message_id"] == f"0-{run.last_event_id}"


async def test_wire_format_ids_heartbeats_and_done(system: System) -> None:
    async with system.client() as http:
        run_id = await create_story(http, "wire")
        url = f"/api/chat/tasks/{run_id}/stream"
        async with http.stream("GET", url, params={"last_message_id": "0-0"}) as response:
            assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
            assert response.headers["content-type"].startswith("text/event-stream")
            got = await raw_frames(response)
    datas = [f.data for f in got if f.data is not None]
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    for chunk in chunks:
        assert set(chunk) == CHUNK_KEYS[chunk["type"]], chunk
    types = [c["type"] for c in chunks]
    assert types[:2] == ["start", "text-start"] and types[-2:] == ["text-end", "finish"]
    assert any("ping" in f.comments for f in got), "no heartbeat between paced deltas"
    ids = [f.id for f in got if f.id is not None]
    assert ids == sorted(ids, key=lambda i: int(i.split("-")[1])) and ids[0].startswith("0-")


async def test_bad_cursor_other_owner_and_webhook_errors(system: System) -> None:
    async with system.client() as http:
        run_id = await create_story(http, "errors")
        malformed = await http.get(f"/api/chat/tasks/{run_id}/stream?last_message_id=5")
        too_far = await http.get(f"/api/chat/tasks/{run_id}/stream?last_message_id=0-999")
        no_key = await http.post("/api/chat/operations/op_x/complete", json={"success": True})
        unknown_op = await http.post(
            "/api/chat/operations/op_x/complete",
            json={"success": True},
            headers={"X-API-Key": "test-internal-key"},
        )
    async with system.client("bob") as bob:
        other = await bob.get(f"/api/chat/tasks/{run_id}/stream")
        # A bad cursor on another owner's task: 404 first, nothing said about the cursor.
        other_bad = await bob.get(f"/api/chat/tasks/{run_id}/stream?last_message_id=5")
        other_status = await bob.get(f"/api/chat/tasks/{run_id}")
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "bad_cursor"
    assert too_far.status_code == 400
    assert other.status_code == 404 and other_status.status_code == 404
    assert other_bad.status_code == 404
    assert no_key.status_code == 401 and unknown_op.status_code == 404


@dataclass
class RawFrame:
    id: str | None = None
    data: str | None = None
    comments: list[str] = field(default_factory=list)


async def raw_frames(response: httpx.Response) -> list[RawFrame]:
    """Blank-line separated frames, ids kept as the strings the wire carries."""
    out, current = [], RawFrame()
    async for line in response.aiter_lines():
        if line == "":
            out.append(current)
            current = RawFrame()
        elif line.startswith(":"):
            current.comments.append(line[1:].strip())
        elif line.startswith("id: "):
            current.id = line[4:]
        elif line.startswith("data: "):
            current.data = line[6:]
    return out


def _event(event_id: int, type_: str, data: dict[str, Any]) -> StoredEvent:
    body = {"id": event_id, "run_id": "r", "session_id": "s", "type": type_, "data": data}
    return StoredEvent(event_id, type_, json.dumps(body).encode())


def test_tool_calls_map_to_input_and_output_and_survive_a_resume() -> None:
    log = [
        _event(1, "run.queued", {}),
        _event(2, "tool.started", {"tool_call": {"id": "c1", "name": "t", "arguments": {"q": 1}}}),
        _event(3, "output.message.delta", {"delta": "a"}),
        _event(4, "tool.completed", {"tool_call_id": "c1", "tool_name": "t", "output": 7}),
        _event(5, "output.message.completed", {"message": {"content": []}}),
        _event(6, "run.failed", {"status": "failed", "error": "boom"}),
    ]
    fresh = MessageState("r")
    chunks = [c for e in log for c in fresh.feed(e)]
    assert chunks == [
        {"type": "start", "messageId": "r"},
        {"type": "tool-input-available", "toolCallId": "c1", "toolName": "t", "input": {"q": 1}},
        {"type": "text-start", "id": "txt-3"},
        {"type": "text-delta", "id": "txt-3", "delta": "a"},
        {"type": "tool-output-available", "toolCallId": "c1", "output": 7},
        {"type": "text-end", "id": "txt-3"},
        {"type": "error", "errorText": "boom"},
        {"type": "finish"},
    ]
    # Resumed after event 3: the parser needs the start, the open text and the open tool.
    resumed = MessageState("r")
    for event in log[:3]:
        resumed.feed(event)
    assert resumed.reopen() == [
        {"type": "start", "messageId": "r"},
        {"type": "text-start", "id": "txt-3"},
        {"type": "tool-input-available", "toolCallId": "c1", "toolName": "t", "input": {"q": 1}},
    ]
    assert resumed.feed(log[3]) == [
        {"type": "tool-output-available", "toolCallId": "c1", "output": 7}
    ]
