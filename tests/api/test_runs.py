"""Creating, reading, listing and cancelling runs over HTTP; the run's stream end to end."""

from __future__ import annotations

import asyncio

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import MakeApi
from tests.api.sse_client import events, frames
from tests.support.wait import wait_for


async def test_created_run_streams_every_event_then_closes(make_api: MakeApi) -> None:
    async with make_api() as api, api.client() as http:
        created = await api.create_run(http, input={"prompt": "a story"})
        assert created["status"] == "queued"
        assert created["events_url"] == f"/v1/runs/{created['run_id']}/events"

        run = await api.producer.start(created["run_id"])
        await api.producer.emit(run, 5)
        last = await api.producer.finish(run)

        async with http.stream("GET", created["events_url"]) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            got = [f async for f in frames(response)]
        assert got[0].retry is not None
        ids = [f.id for f in got if f.id is not None]
        assert ids == list(range(1, last + 1))
        assert got[-1].event == "run.completed"
        assert got[1].event == "run.queued" and got[1].json["data"] == {
            "tool": "story",
            "input": {"prompt": "a story"},
            "attempt": 1,
        }


async def test_stream_true_answers_with_the_stream_from_event_one(make_api: MakeApi) -> None:
    async with make_api() as api, api.client() as http:
        body = {"tool": "story", "input": {"prompt": "hi"}, "stream": True}
        async with http.stream("POST", "/v1/runs", json=body) as response:
            assert response.status_code == 200
            stream = events(response)
            first = await anext(stream)
            assert (first.id, first.event) == (1, "run.queued")
            run = await api.producer.start(str(first.json["run_id"]))
            await api.producer.emit(run, 3)
            await api.producer.finish(run)
            rest = [f async for f in stream]
        assert [f.id for f in rest] == [2, 3, 4, 5, 6]
        assert rest[-1].event == "run.completed"


async def test_two_owners_using_one_session_id_get_two_sessions(make_api: MakeApi) -> None:
    async with make_api() as api, api.client("alice") as alice, api.client("bob") as bob:
        mine = await api.create_run(alice, session_id="chat-1")
        # Nothing tells bob that alice uses "chat-1": he gets a session of his own.
        theirs = await api.create_run(bob, session_id="chat-1")
        assert theirs["session_id"] == "chat-1"

        for http, run in ((alice, mine), (bob, theirs)):
            listed = (await http.get("/v1/runs", params={"session_id": "chat-1"})).json()
            assert [r["run_id"] for r in listed["runs"]] == [run["run_id"]]
            async with http.stream("GET", "/v1/sessions/chat-1/events") as response:
                first = await anext(events(response))
            assert first.json["run_id"] == run["run_id"]
        unknown = await bob.get("/v1/sessions/chat-2/events")
        assert unknown.status_code == 404


async def test_get_list_and_cancel(make_api: MakeApi) -> None:
    async with make_api() as api, api.client() as http:
        a = await api.create_run(http)
        b = await api.create_run(
            http, session_id=a["session_id"], tool="countdown", input={"seconds": 1}
        )

        got = (await http.get(f"/v1/runs/{a['run_id']}")).json()
        assert got["run_id"] == a["run_id"] and got["status"] == "queued"
        assert got["last_event_id"] == 1 and "owner" not in got

        listed = (await http.get("/v1/runs", params={"session_id": a["session_id"]})).json()
        assert [r["run_id"] for r in listed["runs"]] == [b["run_id"], a["run_id"]]

        cancelled = (await http.post(f"/v1/runs/{a['run_id']}/cancel")).json()
        assert cancelled["status"] == "cancelled"
        again = await http.post(f"/v1/runs/{a['run_id']}/cancel")
        assert again.status_code == 200 and again.json()["last_event_id"] == 2

        only = (await http.get("/v1/runs", params={"status": "cancelled"})).json()["runs"]
        assert [r["run_id"] for r in only] == [a["run_id"]]
        bad = await http.get("/v1/runs", params={"limit": 500})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "limit"


async def test_idempotency_key_returns_the_same_run(make_api: MakeApi) -> None:
    async with make_api() as api, api.client() as http:
        headers = {"Idempotency-Key": "order-42"}
        body = {"tool": "story", "input": {"prompt": "hi"}}
        first = await http.post("/v1/runs", json=body, headers=headers)
        second = await http.post("/v1/runs", json=body, headers=headers)
        assert first.status_code == second.status_code == 202
        assert first.json()["run_id"] == second.json()["run_id"]
        runs = (await http.get("/v1/runs")).json()["runs"]
        assert len(runs) == 1


async def test_reconnect_at_the_end_of_a_finished_run_gets_204(make_api: MakeApi) -> None:
    async with make_api() as api, api.client() as http:
        created = await api.create_run(http)
        run = await api.producer.start(created["run_id"])
        last = await api.producer.finish(run)
        url = created["events_url"]
        assert (await http.get(url, headers={"Last-Event-ID": str(last)})).status_code == 204
        partial = await http.get(url, headers={"Last-Event-ID": str(last - 1)})
        assert partial.status_code == 200 and f"id: {last}\n" in partial.text


async def test_json_page_for_polling_clients(make_api: MakeApi) -> None:
    async with make_api() as api, api.client() as http:
        created = await api.create_run(http)
        run = await api.producer.start(created["run_id"])
        await api.producer.emit(run, 6)
        url = created["events_url"]
        headers = {"Accept": "application/json"}
        page = (await http.get(url, params={"after": 2, "limit": 3}, headers=headers)).json()
        assert [e["id"] for e in page["events"]] == [3, 4, 5]
        assert page["next_cursor"] == 5 and page["has_more"] is True
        assert page["last_id"] == 8 and page["status"] == "running"
        assert page["events"][0]["type"] == "output.message.delta"
        raw = await http.get(url, params={"after": 5}, headers=headers)
        assert raw.headers["content-type"] == "application/json"
        assert orjson.loads(raw.content)["has_more"] is False


async def test_publish_failure_is_503_and_the_run_ends_failed(make_api: MakeApi) -> None:
    async with make_api() as api, api.client() as http:
        await api.runtime.broker.close()
        response = await http.post("/v1/runs", json={"tool": "story", "input": {"prompt": "hi"}})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "publish_failed"
        runs = (await http.get("/v1/runs")).json()["runs"]
        assert len(runs) == 1 and runs[0]["status"] == "failed"
        assert runs[0]["error"].startswith("publish_failed: ")


async def test_closing_the_stream_never_cancels_the_run(make_api: MakeApi) -> None:
    async with make_api() as api, api.client() as http:
        created = await api.create_run(http)
        run = await api.producer.start(created["run_id"])
        async with http.stream("GET", created["events_url"]) as response:
            stream = events(response)
            assert (await anext(stream)).id == 1
        # The server notices the client left and lets go of the stream...
        await wait_for(lambda: api.hub.subscribers == 0, message="stream not released")
        # ...but the run goes on.
        await api.producer.emit(run, 2)
        assert (await api.runtime.runs.get(run.run_id)).status == "running"


async def test_health_metrics_docs_and_dashboard(make_api: MakeApi) -> None:
    async with make_api() as api, httpx.AsyncClient(base_url=api.url) as http:
        assert (await http.get("/livez")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["redis"] == "ok"
        assert "runrelay_api_open_streams" in (await http.get("/metrics")).text
        assert (await http.get("/docs")).status_code == 200
        assert (await http.get("/openapi.json")).json()["paths"]["/v1/runs"]
        assert "runrelay" in (await http.get("/")).text
        await api.runtime.broker.close()
        down = await http.get("/readyz")
        assert down.status_code == 503 and down.json()["rabbitmq"] != "ok"


async def test_metrics_count_the_events_written_and_the_streams_open(make_api: MakeApi) -> None:
    async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
        text = (await http.get("/metrics")).text
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name in ("runrelay_api_events_sent_total", "runrelay_api_open_streams")
        }

    async with make_api() as api, api.client() as http:
        created = await api.create_run(http)
        run = await api.producer.start(created["run_id"])
        before = await scrape(http)
        received: list[int] = []

        async def read(headers: dict[str, str]) -> None:
            async with http.stream("GET", created["events_url"], headers=headers) as response:
                received.extend(f.id for f in [x async for x in events(response)] if f.id)

        live = asyncio.create_task(read({}))  # the live phase: the hub's direct writes
        await wait_for(lambda: api.hub.subscribers == 1, message="following")
        assert (await scrape(http))["runrelay_api_open_streams"] == before[
            "runrelay_api_open_streams"
        ] + 1
        await api.producer.emit(run, 5)
        last = await api.producer.finish(run)
        await live
        await read({"Last-Event-ID": "2"})  # a replay
        after = await scrape(http)
        sent = after["runrelay_api_events_sent_total"] - before["runrelay_api_events_sent_total"]
        assert sent == len(received) == last + (last - 2)
        assert after["runrelay_api_open_streams"] == before["runrelay_api_open_streams"]


async def test_status_reports_queues_workers_and_runs(make_api: MakeApi) -> None:
    async with make_api(admin_owners="alice") as api, api.client() as http:
        await api.create_run(http)
        status = (await http.get("/v1/status")).json()
        assert {q["name"] for q in status["queues"]} >= {api.runtime.names.runs_queue}
        assert status["runs_by_status"] == {"queued": 1}
        assert status["workers"] == []
