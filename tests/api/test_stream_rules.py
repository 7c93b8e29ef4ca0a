"""SSE rules over time: heartbeats, connection ageing, backend loss, shutdown, gaps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from api import sse
from api.app import create_app
from api.server import build_server
from shared.errors import BackendUnavailable
from shared.runtime import Runtime
from shared.settings import Settings
from tests.api.conftest import MakeApi
from tests.api.sse_client import frames
from tests.support.http import serve_app
from tests.support.wait import wait_for


async def test_idle_stream_gets_heartbeats_that_never_move_the_cursor(make_api: MakeApi) -> None:
    async with make_api(heartbeat_s=0.2) as api, api.client() as http:
        created = await api.create_run(http)
        run = await api.producer.start(created["run_id"])
        async with http.stream("GET", created["events_url"]) as response:
            stream = frames(response)
            pings = 0
            ids: list[int] = []
            async for frame in stream:
                if frame.id is not None:
                    ids.append(frame.id)
                elif frame.comments == ["ping"]:
                    pings += 1
                    assert frame.id is None and frame.event is None
                    if pings == 3:
                        break
            await api.producer.emit(run, 1)
            nxt = await anext(f async for f in stream if f.id is not None)
        assert ids == [1, 2] and nxt.id == 3


async def test_old_connections_close_at_an_event_boundary_and_resume_exactly(
    make_api: MakeApi,
) -> None:
    async with make_api(max_connection_s=0.4, heartbeat_s=0.1) as api, api.client() as http:
        created = await api.create_run(http)
        run = await api.producer.start(created["run_id"])
        seen: list[int] = []
        connections = 0
        producer: asyncio.Task[int] | None = None
        while True:
            headers = {"Last-Event-ID": str(seen[-1])} if seen else {}
            async with http.stream("GET", created["events_url"], headers=headers) as response:
                if response.status_code == 204:
                    break
                raw = b""
                async for chunk in response.aiter_raw():
                    raw += chunk
            connections += 1
            assert raw.endswith(b"\n\n")  # the server never cuts a frame in half
            text = raw.decode()
            seen += [int(line[4:]) for line in text.split("\n") if line.startswith("id: ")]
            if producer is None:
                # The first connection aged out idle; now events flow across the next ones.
                async def produce() -> int:
                    for _ in range(30):
                        await api.producer.emit(run, 1)
                        await asyncio.sleep(0.02)  # pace the producer across connections
                    return await api.producer.finish(run)

                producer = asyncio.create_task(produce())
            if "event: run.completed" in text:
                break
        assert producer is not None
        last = await producer
        assert seen == list(range(1, last + 1))
        assert connections >= 2


async def test_streams_end_with_an_error_frame_when_the_log_fails(make_api: MakeApi) -> None:
    async with make_api() as api, api.client() as http:
        created = await api.create_run(http)
        await api.producer.start(created["run_id"])
        async with http.stream("GET", created["events_url"]) as response:
            stream = frames(response)
            while (await anext(stream)).id != 2:
                pass
            original = api.runtime.log.wait

            async def broken(*args: object, **kwargs: object) -> object:
                raise BackendUnavailable("Redis at test is unavailable")

            api.runtime.log.wait = broken  # type: ignore[method-assign,assignment]
            try:
                await api.runtime.log.wake(api.hub._wake_key)
                rest = [f async for f in stream]
            finally:
                api.runtime.log.wait = original  # type: ignore[method-assign]
        assert rest[-1].event == "error" and rest[-1].id is None
        assert rest[-1].json["code"] == "backend_unavailable"


async def test_shutdown_ends_open_streams_at_an_event_boundary(make_api: MakeApi) -> None:
    async with make_api() as api, api.client() as http:
        created = await api.create_run(http)
        await api.producer.start(created["run_id"])
        async with http.stream("GET", created["events_url"]) as response:
            stream = frames(response)
            while (await anext(stream)).id != 2:
                pass
            api.hub.drain()  # what api.server.Server does first when told to stop
            assert [f async for f in stream] == []
        assert (await api.runtime.runs.get(created["run_id"])).status == "running"


def test_the_served_app_uses_uvloop_and_httptools_without_access_log() -> None:
    from fastapi import FastAPI

    server = build_server(FastAPI(), "127.0.0.1", 0)
    assert (server.config.loop, server.config.http, server.config.access_log) == (
        "uvloop",
        "httptools",
        False,
    )


def test_sse_framing_is_exact() -> None:
    assert sse.frame(7, "output.message.delta", b'{"a":1}') == (
        b'id: 7\nevent: output.message.delta\ndata: {"a":1}\n\n'
    )
    assert sse.gap(3, 9) == b'event: stream.gap\ndata: {"from":3,"to":9}\n\n'
    assert sse.retry(2000) == b"retry: 2000\n\n"
    try:
        sse.frame(1, "evil\nid: 99", b"{}")
    except ValueError:
        pass
    else:
        raise AssertionError("a type with a line break must be refused")


async def test_a_trimmed_log_reports_the_gap_once(make_api: MakeApi) -> None:
    async with make_api(stream_max_events=10) as api, api.client() as http:
        created = await api.create_run(http)
        run = await api.producer.start(created["run_id"])
        await api.producer.emit(run, 20)
        last = await api.producer.finish(run)
        async with http.stream("GET", created["events_url"], params={"after": 3}) as response:
            got = [f async for f in frames(response)]
        gap = [f for f in got if f.event == "stream.gap"]
        assert len(gap) == 1 and gap[0].json == {"from": 4, "to": last - 10}
        assert [f.id for f in got if f.id is not None] == list(range(last - 9, last + 1))


async def test_unreachable_backend_fails_startup_clearly(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1/0", api_tokens="t:o")
    app = create_app(Runtime.build(settings))
    try:
        async with serve_app(app):
            raise AssertionError("the API must not start without Redis")
    except RuntimeError:
        pass
    error = app.state.startup_error
    assert error is not None and "127.0.0.1:1" in str(error)


async def test_open_streams_per_owner_are_bounded(make_api: MakeApi) -> None:
    async with make_api(max_streams_per_owner=1) as api, api.client() as http:
        created = await api.create_run(http)
        await api.producer.start(created["run_id"])
        async with http.stream("GET", created["events_url"]) as first:
            assert first.status_code == 200
            second = await http.get(created["events_url"])
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "too_many_streams"
            async with api.client("bob") as bob:  # the bound is per owner
                assert (await bob.get("/v1/runs")).status_code == 200
        await wait_for(lambda: api.hub.subscribers == 0, message="first stream released")
        async with http.stream("GET", created["events_url"]) as third:
            assert third.status_code == 200


async def test_the_retry_line_comes_at_once_with_or_without_a_backlog(make_api: MakeApi) -> None:
    """A new stream's ``retry:`` line goes out with the backlog the hub brings (one write),
    and at once when there is none to bring: a client resuming at the last event of a
    quiet run has it before any heartbeat (an hour away here) or event."""
    async with make_api(heartbeat_s=3600) as api, api.client() as http:
        created = await api.create_run(http)
        await api.producer.start(created["run_id"])  # ids 1, 2

        async def first_bytes(headers: dict[str, str], until: bytes) -> bytes:
            async with http.stream("GET", created["events_url"], headers=headers) as response:
                raw = b""
                async for chunk in response.aiter_raw():
                    raw += chunk
                    if until in raw and raw.endswith(b"\n\n"):
                        return raw
            raise AssertionError("the stream ended")

        fresh = await asyncio.wait_for(first_bytes({}, b"id: 2\n"), 10)
        assert fresh.startswith(sse.retry(api.runtime.settings.retry_ms))
        assert [line for line in fresh.split(b"\n") if line.startswith(b"id: ")] == [
            b"id: 1",
            b"id: 2",
        ]
        at_end = await asyncio.wait_for(first_bytes({"Last-Event-ID": "2"}, b"retry: "), 10)
        assert at_end == sse.retry(api.runtime.settings.retry_ms)
