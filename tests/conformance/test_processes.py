"""Two `runrelay api` processes on one Redis: a Durable Stream written through one is read
through the other, byte-exact and in order, by catch-up, long-poll and SSE."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.conftest import spawn_api
from tests.support.procs import Processes

pytestmark = pytest.mark.timeout(60)
OPEN = {"RUNRELAY_ALLOW_ANONYMOUS": "1", "RUNRELAY_API_TOKENS": "", "RUNRELAY_DS_LONG_POLL_S": "10"}
CHUNKS = [bytes([i]) * (i + 1) + b"\r\n\x00\xff" for i in range(20)]


async def test_writes_through_one_process_read_through_another(
    processes: Processes, make_settings: Any, tmp_path: Path
) -> None:
    settings = make_settings()
    _, writer_port = await spawn_api(processes, settings, tmp_path / "a.log", **OPEN)
    _, reader_port = await spawn_api(processes, settings, tmp_path / "b.log", **OPEN)
    url = "/ds/two/processes"
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{writer_port}", timeout=15) as writer,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{reader_port}", timeout=15) as reader,
    ):
        octet = {"Content-Type": "application/octet-stream"}
        assert (await writer.put(url, headers=octet)).status_code == 201
        start = (await reader.head(url)).headers["Stream-Next-Offset"]

        async def sse() -> bytes:
            got = b""
            async with reader.stream("GET", url, params={"offset": start, "live": "sse"}) as r:
                assert r.headers["Stream-SSE-Data-Encoding"] == "base64"
                event = ""
                async for line in r.aiter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "data":
                        got += base64.b64decode(line[5:])
                    if len(got) >= sum(map(len, CHUNKS)):
                        return got
            return got

        # Live readers on the reader process, parked before anything is written.
        long_poll = asyncio.create_task(
            reader.get(url, params={"offset": start, "live": "long-poll"})
        )
        live = asyncio.create_task(sse())
        await asyncio.sleep(0)  # parked or not yet: either way every byte must arrive once
        for chunk in CHUNKS:
            assert (await writer.post(url, content=chunk, headers=octet)).status_code == 204

        first = await long_poll
        assert first.status_code == 200
        assert CHUNKS[0].startswith(first.content[: len(CHUNKS[0])])
        assert await live == b"".join(CHUNKS)

        caught_up = b""
        offset = "-1"
        while True:
            page = await reader.get(url, params={"offset": offset})
            caught_up += page.content
            if page.headers.get("Stream-Up-To-Date") == "true":
                break
            offset = page.headers["Stream-Next-Offset"]
        assert caught_up == b"".join(CHUNKS)
