"""Resume exactness: whatever the disconnect points, a client gets ids 1..N once, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conftest import Api, MakeApi
from tests.api.sse_client import events

# The API runs once per test; hypothesis varies the runs and cuts within it.
PROPERTY = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


async def read_with_cuts(
    http: httpx.AsyncClient, url: str, cuts: list[int], how: str, until: int | None = None
) -> list[tuple[int, str]]:
    """Follow `url`, disconnecting after each count in `cuts`; resume from the last id seen."""
    seen: list[tuple[int, str]] = []
    pending = sorted(set(cuts))
    while True:
        cursor = seen[-1][0] if seen else None
        headers, params = {}, {}
        if cursor is not None and how == "header":
            headers["Last-Event-ID"] = str(cursor)
        elif cursor is not None:
            params[how] = str(cursor)
        async with http.stream("GET", url, headers=headers, params=params) as response:
            if response.status_code == 204:
                return seen
            assert response.status_code == 200, await response.aread()
            async for frame in events(response):
                assert frame.id is not None and frame.event is not None
                seen.append((frame.id, frame.event))
                if until is not None and frame.id >= until:
                    return seen  # a session stream does not end by itself
                if pending and len(seen) >= pending[0]:
                    pending.pop(0)
                    break  # the client drops here
            else:
                if until is None:
                    return seen  # the server closed after the terminal event


async def produce(api: Api, run_id: str, n: int) -> int:
    run = await api.producer.start(run_id)
    for i in range(n):
        await api.runtime.runs.emit(run, "output.message.delta", {"delta": f"d{i}"})
        if i % 3 == 0:
            await asyncio.sleep(0)  # let readers interleave with the producer
    return await api.producer.finish(run)


@given(
    n=st.integers(min_value=0, max_value=30),
    cuts=st.lists(st.integers(min_value=1, max_value=32), max_size=4),
    how=st.sampled_from(["header", "after", "since_id", "last_event_id"]),
)
@PROPERTY
async def test_run_stream_resumes_exactly(
    make_api: MakeApi, n: int, cuts: list[int], how: str
) -> None:
    async with make_api() as api, api.client() as http:
        created = await api.create_run(http)
        producer = asyncio.create_task(produce(api, created["run_id"], n))
        seen = await read_with_cuts(http, created["events_url"], cuts, how)
        last = await producer
        assert [i for i, _ in seen] == list(range(1, last + 1))
        assert seen[-1][1] == "run.completed"


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=8), min_size=1, max_size=3),
    cuts=st.lists(st.integers(min_value=1, max_value=30), max_size=4),
    how=st.sampled_from(["header", "after"]),
)
@PROPERTY
async def test_session_stream_spanning_runs_resumes_exactly(
    make_api: MakeApi, sizes: list[int], cuts: list[int], how: str
) -> None:
    async with make_api() as api, api.client() as http:
        first = await api.create_run(http)
        session = first["session_id"]
        ids = [first["run_id"]] + [
            (await api.create_run(http, session_id=session))["run_id"] for _ in sizes[1:]
        ]
        total = len(ids) + sum(n + 2 for n in sizes)  # queued + started + n + terminal
        url = f"/v1/sessions/{session}/events"

        async def all_runs() -> Any:
            pairs = zip(ids, sizes, strict=True)
            return await asyncio.gather(*(produce(api, r, n) for r, n in pairs))

        producer = asyncio.create_task(all_runs())
        seen = await read_with_cuts(http, url, cuts, how, until=total)
        await producer
        assert [i for i, _ in seen] == list(range(1, total + 1))
        assert sum(t == "run.completed" for _, t in seen) == len(ids)
