"""A runrelay run (and session) read as a Durable Stream, from `runrelay api` + `worker`.

`/ds/runs/{id}` serves the run's native log read-only: one JSON message per event, the
offset's sequence number is the event id, and the stream closes after the terminal
event. Every read mode must deliver exactly what the log holds, through to the close.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from api.ds.protocol import offset
from shared.models import TERMINAL_EVENTS, StoredEvent
from tests.conformance.conftest import MakeRunSystem, RunSystem
from tests.faults.conftest import ALICE, BOB, post_run

pytestmark = pytest.mark.timeout(60)
AUTH = {"Authorization": f"Bearer {ALICE}"}
# ~20 events over 2 s: live readers join long before the end.
COUNTDOWN = {"seconds": 2.0, "interval_s": 0.1}


def client(system: RunSystem, token: str = ALICE) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{system.port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def as_messages(events: list[StoredEvent]) -> list[Any]:
    return [orjson.loads(e.json) for e in events]


async def catch_up(http: httpx.AsyncClient, url: str, start: str = "-1") -> tuple[list[Any], Any]:
    """Every message from `start` to the end; the last response's headers."""
    got: list[Any] = []
    at = start
    while True:
        page = await http.get(url, params={"offset": at})
        assert page.status_code == 200, page.text
        got += page.json()
        at = page.headers["Stream-Next-Offset"]
        if page.headers.get("Stream-Up-To-Date") == "true":
            return got, page.headers


async def long_poll(http: httpx.AsyncClient, url: str) -> tuple[list[Any], list[str]]:
    """Long-poll from the start until the stream says it is closed; the offsets seen."""
    got: list[Any] = []
    offsets: list[str] = []
    at = "-1"
    while True:
        page = await http.get(url, params={"offset": at, "live": "long-poll"})
        assert page.status_code in (200, 204), page.text
        if page.status_code == 200:
            got += page.json()
        at = page.headers["Stream-Next-Offset"]
        offsets.append(at)
        if page.headers.get("Stream-Closed") == "true":
            return got, offsets


async def sse(http: httpx.AsyncClient, url: str) -> tuple[list[Any], list[dict[str, Any]]]:
    """One SSE response from the start: its data messages and its control events."""
    got: list[Any] = []
    controls: list[dict[str, Any]] = []
    async with http.stream("GET", url, params={"offset": "-1", "live": "sse"}) as r:
        assert r.status_code == 200
        event, data = "", []
        async for line in r.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:])
            elif not line and event:
                value = orjson.loads("\n".join(data))
                if event == "data":
                    got += value
                else:
                    controls.append(value)
                event, data = "", []
    return got, controls


async def test_a_live_run_reads_to_its_close_by_catch_up_long_poll_and_sse(
    run_system: MakeRunSystem,
) -> None:
    async with run_system() as system, client(system) as http:
        run_id = await post_run(system.port, "countdown", COUNTDOWN)
        url = f"/ds/runs/{run_id}"
        # Both live readers start while the run is still counting down.
        polled = asyncio.create_task(long_poll(http, url))
        streamed = asyncio.create_task(sse(http, url))
        (by_poll, poll_offsets), (by_sse, controls) = await asyncio.gather(polled, streamed)
        await system.ended(run_id)
        logged = await system.logged(run_id)
        assert logged[-1].type in TERMINAL_EVENTS
        assert [e.id for e in logged] == list(range(1, len(logged) + 1))
        expected = as_messages(logged)
        assert by_poll == expected
        assert by_sse == expected
        # The offset is the event id: the last one is the terminal event's.
        assert poll_offsets[-1] == offset(logged[-1].id)
        assert controls[-1] == {
            "streamNextOffset": offset(logged[-1].id),
            "streamClosed": True,
            "upToDate": True,
        }
        assert len(poll_offsets) > 2  # it did wait live, not read one finished page
        # Catch-up after the end, and from the middle (offset = an event id).
        caught, headers = await catch_up(http, url)
        assert caught == expected
        assert headers["Stream-Closed"] == "true"
        middle = logged[len(logged) // 2].id
        assert (await catch_up(http, url, offset(middle)))[0] == expected[middle:]
        # A closed stream answers a live read at once.
        tail = await http.get(url, params={"offset": offset(logged[-1].id), "live": "long-poll"})
        assert tail.status_code == 204
        assert tail.headers["Stream-Closed"] == "true"


async def test_a_run_stream_is_read_only_owned_and_bounded_by_retention(
    run_system: MakeRunSystem,
) -> None:
    async with run_system(stream_max_events="10") as system:
        run_id = await post_run(system.port, "countdown", {"seconds": 1.0, "interval_s": 0.05})
        await system.ended(run_id)
        logged = await system.logged(run_id)
        assert logged[0].id > 1  # trimmed to the newest 10
        url = f"/ds/runs/{run_id}"
        async with client(system) as alice, client(system, BOB) as bob:
            head = await alice.head(url)
            assert head.status_code == 200
            assert head.headers["Stream-Next-Offset"] == offset(logged[-1].id)
            assert head.headers["Stream-Closed"] == "true"
            assert head.headers["Content-Type"] == "application/json"
            start = offset(logged[0].id - 1)
            caught, headers = await catch_up(alice, url, start)
            assert caught == as_messages(logged)
            assert headers["Stream-Closed"] == "true"
            for older in ("-1", offset(logged[0].id - 2)):
                gone = await alice.get(url, params={"offset": older})
                assert gone.status_code == 410, older
            for method in ("POST", "PUT", "DELETE"):
                refused = await alice.request(
                    method, url, content=b"[1]", headers={"Content-Type": "application/json"}
                )
                assert refused.status_code == 405, method
            # Another owner's run answers exactly as a run that does not exist.
            theirs = await bob.get(url, params={"offset": "-1"})
            unknown = await alice.get("/ds/runs/run_nonexistent", params={"offset": "-1"})
            assert theirs.status_code == unknown.status_code == 404
            assert theirs.text.replace(run_id, "ID") == unknown.text.replace(
                "run_nonexistent", "ID"
            )
            assert (await bob.head(url)).status_code == 404

            session_id = (await alice.get(f"/v1/runs/{run_id}")).json()["session_id"]
            session = f"/ds/sessions/{session_id}"
            page = await alice.get(session, params={"offset": start})
            assert page.status_code == 200
            assert page.headers["Content-Type"] == "application/json"
            assert "Stream-Closed" not in page.headers  # a session can gain runs
            assert (await alice.post(session, content=b"[1]")).status_code == 405
            assert (await bob.get(session, params={"offset": "-1"})).status_code == 404
