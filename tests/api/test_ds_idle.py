"""Idle Durable Streams readers wait in the server's ``receive()`` (api.ds.reads._park):
a client that goes away frees its reader at once, not when the wait would have ended,
and a long-poll that waited still answers through the middleware (its status in the
access log, CORS headers on it)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.api.conftest import Api, MakeApi
from tests.support.wait import wait_for

JSON = {"Content-Type": "application/json"}
ORIGIN = "http://127.0.0.1:3000"


async def _park(api: Api, query: str) -> asyncio.StreamWriter:
    """A raw GET of ``/ds/idle?<query>`` by alice, once the hub holds its subscription."""
    subscribed = api.hub.subscribers
    _, writer = await api.raw_get(f"/ds/idle?{query}")
    await wait_for(lambda: api.hub.subscribers > subscribed, timeout=10, message="never parked")
    return writer


@pytest.mark.parametrize("live", ["long-poll", "sse"])
async def test_a_parked_reader_lets_go_as_soon_as_its_client_leaves(
    make_api: MakeApi, live: str
) -> None:
    # Waits far longer than the test: only the client leaving can free the reader.
    async with make_api(ds_long_poll_s=120, ds_sse_max_s=120) as api, api.client() as alice:
        assert (await alice.put("/ds/idle", headers=JSON)).status_code == 201
        before = api.hub.subscribers
        writers = [await _park(api, f"offset=now&live={live}") for _ in range(3)]
        assert api.hub.subscribers == before + 3
        writers.pop().close()
        await wait_for(
            lambda: api.hub.subscribers == before + 2, timeout=10, message="reader kept on"
        )
        for writer in writers:
            writer.close()
        await wait_for(lambda: api.hub.subscribers == before, timeout=10, message="readers kept on")
        # The stream itself is as it was: the readers only went away.
        again = await alice.get("/ds/idle", params={"offset": "-1"})
        assert (again.status_code, again.json()) == (200, [])


async def test_a_long_poll_that_waited_answers_through_the_middleware(
    make_api: MakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runrelay.api.access")
    async with make_api(cors_origins=[ORIGIN]) as api, api.client() as alice:
        assert (await alice.put("/ds/idle", headers=JSON)).status_code == 201
        subscribed = api.hub.subscribers
        params = {"offset": "now", "live": "long-poll"}
        poll = asyncio.create_task(alice.get("/ds/idle", params=params, headers={"Origin": ORIGIN}))
        await wait_for(lambda: api.hub.subscribers > subscribed, timeout=10, message="no wait")
        posted = await alice.post("/ds/idle", content=b'{"n":1}', headers=JSON)
        assert posted.status_code == 204, posted.text
        answer = await asyncio.wait_for(poll, 20)
        assert (answer.status_code, answer.json()) == (200, [{"n": 1}])
        # The CORS middleware's own answer for a listed origin (the protocol's is `*`).
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert answer.headers["stream-next-offset"] == posted.headers["stream-next-offset"]
    lines = [r.getMessage() for r in caplog.records if r.name == "runrelay.api.access"]
    assert any('"GET /ds/idle?offset=now&live=long-poll" 200' in line for line in lines), lines
