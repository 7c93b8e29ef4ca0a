"""Emit→deliver latency: measured from each event's own ``created_at``, once per event
however many clients follow the run, in /metrics and in the console's /v1/metrics."""

from __future__ import annotations

import asyncio
import calendar
import time

from prometheus_client import REGISTRY

from api.latency import created_epoch
from shared.eventlog.base import encode_body
from tests.api.conftest import MakeApi
from tests.api.sse_client import events
from tests.api.test_fanout import follow
from tests.support.wait import wait_for

AT = calendar.timegm((2026, 12, 1, 9, 14, 23, 0, 0, 0))


def test_created_at_is_read_from_the_stored_bytes_in_either_precision() -> None:
    def stored(at: str) -> bytes:
        return b'{"id":7,' + encode_body("run_1", "s", "x", {"created_at": "no"}, at)

    assert created_epoch(stored("2026-12-01T09:14:23.690Z")) == AT + 0.690
    assert created_epoch(stored("2026-12-01T09:14:23.690123Z")) == AT + 0.690123
    assert created_epoch(stored("2026-12-01T09:14:23Z")) == AT
    assert created_epoch(b'{"id":1,"type":"x"}') is None


def iso(at: float, digits: int) -> str:
    whole = int(at)
    fraction = f"{at - whole:.{digits}f}"[1:]
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + fraction + "Z"


def histogram() -> tuple[float, float]:
    name = "runrelay_api_deliver_latency_seconds"
    return (
        REGISTRY.get_sample_value(f"{name}_count") or 0.0,
        REGISTRY.get_sample_value(f"{name}_sum") or 0.0,
    )


async def test_each_event_is_timed_once_from_its_created_at_for_three_followers(
    make_api: MakeApi,
) -> None:
    async with make_api(admin_owners="alice") as api, api.client() as http:
        created = await api.create_run(http)
        run = await api.producer.start(created["run_id"])
        readers = [asyncio.create_task(follow(http, created["events_url"])) for _ in range(3)]
        await wait_for(lambda: api.hub.subscribers == 3, message="followers attached")
        count, total = histogram()

        # Events emitted 3 s ago (a slow pipe), in both precisions workers have written.
        old = time.time() - 3.0
        rule = api.runtime.runs.emit_rule(run, None)
        for i in range(50):
            body = encode_body(
                run.run_id, run.session_id, "tool.progress", {}, iso(old, 3 + i % 2 * 3)
            )
            await api.runtime.log.append(
                run.owner, run.session_id, run.run_id, "tool.progress", body, rule
            )
        last = await api.producer.finish(run)
        assert all(ids[-1] == last for ids in await asyncio.gather(*readers))

        new_count, new_total = histogram()
        assert new_count - count == 51  # 50 + the end, once each: not once per follower
        assert new_total - total >= 50 * 3.0
        snapshot = (await http.get("/v1/metrics")).json()["deliver_latency_s"]
        assert snapshot["count"] >= 51 and snapshot["p99"] >= 3.0
        text = (await http.get("/metrics")).text
        assert 'runrelay_api_deliver_latency_seconds_bucket{le="5.0"}' in text


async def test_a_backlog_the_hub_brings_is_not_timed_only_what_comes_after(
    make_api: MakeApi,
) -> None:
    """A client resuming a few events behind a quiet run: the hub's first read brings
    those events (stored before anyone followed), and their age is not the pipeline's
    latency; the run's next event is timed as usual."""
    async with make_api() as api, api.client() as http:
        created = await api.create_run(http)
        run = await api.producer.start(created["run_id"])
        await api.producer.emit(run, 5)  # ids 3..7, before anyone follows
        count, _ = histogram()
        seen: list[int] = []

        async def read() -> None:
            headers = {"Last-Event-ID": "2"}
            async with http.stream("GET", created["events_url"], headers=headers) as response:
                async for frame in events(response):
                    if frame.id is not None:
                        seen.append(frame.id)

        reader = asyncio.create_task(read())
        await wait_for(lambda: seen[-1:] == [7], message="the backlog arrived")
        assert histogram()[0] == count  # 5 events delivered, none timed
        last = await api.producer.finish(run)
        await reader
        assert seen == list(range(3, last + 1))
        assert histogram()[0] == count + 1  # the live terminal event
