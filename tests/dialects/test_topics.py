"""Topic streams: publishers append, a subscriber drops and resumes, owners stay apart."""

from __future__ import annotations

import asyncio

import httpx

from tests.api.sse_client import Frame, frames
from tests.dialects.conftest import System

PER_PUBLISHER = 15


async def publish_all(http: httpx.AsyncClient, topic: str, name: str) -> list[int]:
    ids = []
    for i in range(PER_PUBLISHER):
        response = await http.post(
            f"/v1/topics/{topic}/events", json={"type": "note", "data": {"from": name, "n": i}}
        )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


async def read_until(
    http: httpx.AsyncClient, topic: str, cursor: int | None, stop: int, *, then_ping: bool = False
) -> list[Frame]:
    """Read `stop` events (and then a heartbeat, if asked: the stream stays open); drop."""
    headers = {"Last-Event-ID": str(cursor)} if cursor is not None else {}
    got: list[Frame] = []
    async with http.stream("GET", "/stream", params={"topic": topic}, headers=headers) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for frame in frames(resp):
            if frame.id is not None:
                got.append(frame)
            enough = len(got) >= stop
            if enough and (not then_ping or "ping" in frame.comments):
                break
    return got


async def test_subscriber_that_drops_and_resumes_gets_every_event_once(system: System) -> None:
    topic = "news.room"
    async with system.client() as sub, system.client() as pub1, system.client() as pub2:
        # Given a subscriber following the topic from its start,
        reader = asyncio.create_task(read_until(sub, topic, None, 10))
        # when two publishers publish concurrently and the subscriber drops after 10,
        published = await asyncio.gather(
            publish_all(pub1, topic, "one"), publish_all(pub2, topic, "two")
        )
        first = await reader
        # then resuming with Last-Event-ID gets the rest, and then heartbeats (no end).
        left = 2 * PER_PUBLISHER - 10
        rest = await read_until(sub, topic, first[-1].id, left, then_ping=True)
        after = await sub.get("/stream", params={"topic": topic, "after": "999"})
    ids = [f.id for f in first + rest]
    assert ids == list(range(1, 2 * PER_PUBLISHER + 1))
    assert sorted(published[0] + published[1]) == ids
    bodies = [f.json for f in first + rest]
    for name in ("one", "two"):
        mine = [b["data"]["n"] for b in bodies if b["data"]["from"] == name]  # type: ignore[index]
        assert mine == list(range(PER_PUBLISHER))
    assert {f.event for f in first + rest} == {"note"}
    assert all(b["topic"] == topic for b in bodies)
    assert after.status_code == 400


async def test_topics_are_per_owner(system: System) -> None:
    async with system.client() as alice, system.client("bob") as bob:
        await alice.post("/v1/topics/shared-name/events", json={"data": "for alice"})
        # Bob's topic of the same name is empty: a cursor of 1 was never handed out to him,
        past_end = await bob.get(
            "/stream", params={"topic": "shared-name"}, headers={"Last-Event-ID": "1"}
        )
        # and what he publishes there is his alone, starting at id 1.
        mine = await bob.post("/v1/topics/shared-name/events", json={"data": "for bob"})
        seen = await read_until(bob, "shared-name", None, 1)
        bad = await bob.post("/v1/topics/bad%20name/events", json={"data": 1})
        bad_type = await bob.post("/v1/topics/ok/events", json={"type": "a\nb", "data": 1})
        unstorable = await bob.post("/v1/topics/ok/events", json={"data": 2**70})
    assert past_end.status_code == 400
    assert mine.json() == {"id": 1}
    assert [f.json["data"] for f in seen] == ["for bob"]
    assert bad.status_code == 400 and bad_type.status_code == 422
    assert unstorable.status_code == 400 and unstorable.json()["error"]["field"] == "data"
