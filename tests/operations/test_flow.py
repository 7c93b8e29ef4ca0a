"""Delegated runs end to end: API, worker, generator, completion consumer, real backends."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from shared.errors import PublishFailed
from tests.api.sse_client import Frame
from tests.api.sse_client import events as sse_events
from tests.operations.conftest import API_KEY, MakeSystem, handled, wait_handled
from tests.support.http import serve_app
from tests.support.wait import wait_for
from tests.workers import llm_double
from tests.workers.support import events, types, wait_status
from workers.generator import create_generator_app, fake_agent

INSTRUCTIONS = "Build a weather agent that answers in haiku"


async def test_a_client_that_leaves_while_waiting_resumes_into_the_whole_ending(
    make_system: MakeSystem,
) -> None:
    async with make_system() as system, system.client() as http:
        created = await http.post(
            "/v1/runs", json={"tool": "generate_agent", "input": {"instructions": INSTRUCTIONS}}
        )
        assert created.status_code == 202, created.text
        run_id = created.json()["run_id"]

        # The client follows until the external service has taken the work, then drops.
        seen = []
        async with http.stream("GET", f"/v1/runs/{run_id}/events") as response:
            async for frame in sse_events(response):
                seen.append(frame)
                if frame.event == "operation.accepted":
                    break
        cursor = seen[-1].id
        assert [f.event for f in seen] == [
            "run.queued",
            "run.started",
            "tool.started",
            "operation.accepted",
        ]
        waiting = await http.get(f"/v1/runs/{run_id}")
        assert waiting.json()["status"] == "waiting"
        assert waiting.json()["worker"] is None

        # The generator completes while nobody listens; the client comes back.
        await wait_for(
            lambda: _status(http, run_id, "completed"), timeout=20, message="never completed"
        )
        rest = []
        async with http.stream(
            "GET", f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(cursor)}
        ) as response:
            async for frame in sse_events(response):
                rest.append(frame)

        kinds = [f.event for f in rest]
        assert kinds[:4] == ["operation.completed", "run.started", "tool.completed", kinds[3]]
        assert kinds[-2:] == ["output.message.completed", "run.completed"]
        assert set(kinds[3:-2]) == {"output.message.delta"}
        assert [f.id for f in seen + rest] == list(range(1, len(seen) + len(rest) + 1))
        op_id = data(seen[-1])["operation_id"]
        assert data(rest[0]) == {
            "operation_id": op_id,
            "success": True,
            "result": fake_agent(INSTRUCTIONS),
            "error": None,
        }
        tool_done = data(rest[2])
        assert tool_done["success"] is True and tool_done["output"] == fake_agent(INSTRUCTIONS)
        assert tool_done["tool_call_id"] == data(seen[2])["tool_call"]["id"]
        text = "".join(data(f)["delta"] for f in rest if f.event == "output.message.delta")
        assert "generate_agent finished" in text


def data(frame: Frame) -> dict[str, Any]:
    value: dict[str, Any] = frame.json["data"]  # type: ignore[assignment]
    return value


async def _status(http: httpx.AsyncClient, run_id: str, status: str) -> bool:
    response = await http.get(f"/v1/runs/{run_id}")
    return bool(response.json()["status"] == status)


async def test_one_completion_sent_three_times_is_applied_once(make_system: MakeSystem) -> None:
    async with make_system(generator="accept") as system, system.client() as http:
        run = await system.submit()
        op_id = await system.operation_of(run)
        before = handled("applied", "duplicate", "ignored_ended")

        await system.complete(run, op_id)
        await system.complete(run, op_id)
        hook = await http.post(
            f"/v1/operations/{op_id}/complete",
            json={"success": True, "result": {"name": "weather-bot"}},
            headers={"X-API-Key": API_KEY},
        )
        assert hook.status_code == 200 and hook.json() == {"status": "accepted"}

        await wait_status(system.runtime, run, "completed")
        # The webhook may find the run done and publish nothing: two or three handled.
        await wait_handled(before, 2, "applied", "duplicate", "ignored_ended")
        kinds = await types(system.runtime, run)
        for once in ("operation.accepted", "operation.completed", "tool.completed"):
            assert kinds.count(once) == 1, kinds
        assert kinds[-1] == "run.completed"

        again = await http.post(
            f"/v1/operations/{op_id}/complete",
            json={"success": False, "error": "late"},
            headers={"X-API-Key": API_KEY},
        )
        assert again.status_code == 200
        assert await types(system.runtime, run) == kinds


async def test_a_completion_that_beats_operation_accepted_is_applied(
    make_system: MakeSystem,
) -> None:
    # The double publishes the completion before it answers 202.
    async with make_system(generator="early") as system:
        before = handled("early")
        run = await system.submit()

        await wait_status(system.runtime, run, "completed")
        kinds = await types(system.runtime, run)
        assert kinds.count("operation.completed") == 1
        assert kinds.index("operation.accepted") < kinds.index("operation.completed")
        assert handled("early") > before  # it really came too early and was retried


async def test_a_failed_operation_fails_the_run_after_its_tool_result(
    make_system: MakeSystem,
) -> None:
    async with make_system(generator="accept") as system:
        run = await system.submit()
        op_id = await system.operation_of(run)

        await system.complete(run, op_id, success=False, error="no such model")

        done = await wait_status(system.runtime, run, "failed")
        log = await events(system.runtime, run)
        tool_done = next(e for e in log if e["type"] == "tool.completed")
        assert tool_done["data"]["success"] is False
        assert tool_done["data"]["output"] == {"error": "no such model"}
        assert log[-1]["type"] == "run.failed" and done.error == "no such model"


async def test_a_completion_for_a_cancelled_run_is_recorded_and_ignored(
    make_system: MakeSystem,
) -> None:
    async with make_system(generator="accept") as system:
        run = await system.submit()
        op_id = await system.operation_of(run)
        await system.runtime.runs.cancel(await system.runtime.runs.get(run.run_id))
        before = handled("ignored_cancelled")

        await system.complete(run, op_id)

        await wait_handled(before, 1, "ignored_cancelled")
        kinds = await types(system.runtime, run)
        assert kinds[-1] == "run.cancelled" and "operation.completed" not in kinds


async def test_a_generator_answering_200_finishes_the_tool_at_once(
    make_system: MakeSystem,
) -> None:
    async with make_system(generator="ok") as system:
        run = await system.submit(INSTRUCTIONS)

        await wait_status(system.runtime, run, "completed")
        log = await events(system.runtime, run)
        kinds = [e["type"] for e in log]
        assert "operation.accepted" not in kinds and "operation.completed" not in kinds
        assert kinds.count("run.started") == 1
        tool_done = next(e for e in log if e["type"] == "tool.completed")
        assert tool_done["data"]["output"] == fake_agent(INSTRUCTIONS)
        assert kinds[-2:] == ["output.message.completed", "run.completed"]


async def test_a_generator_error_or_absence_fails_the_run_with_the_reason(
    make_system: MakeSystem,
) -> None:
    async with make_system(generator="fail") as system:
        run = await system.submit()
        failed = await wait_status(system.runtime, run, "failed")
        assert failed.error is not None and "HTTP 500" in failed.error
        assert "generator exploded" in failed.error

    async with make_system(generator="fail", generator_url="http://127.0.0.1:9") as system:
        run = await system.submit()
        failed = await wait_status(system.runtime, run, "failed")
        assert failed.error is not None and "unreachable" in failed.error


async def test_malformed_completions_are_dead_lettered_and_the_consumer_keeps_going(
    make_system: MakeSystem,
) -> None:
    async with make_system(generator="accept") as system:
        broker = system.runtime.broker
        marker = "malformed-marker"
        await broker.publish_completion(b"{not json " + marker.encode())
        await broker.publish_completion(
            orjson.dumps({"operation_id": marker, "task_id": "run_x", "result": None})
        )
        await broker.publish_completion(
            orjson.dumps({"operation_id": marker, "task_id": "run_x", "success": "yes"})
        )

        run = await system.submit()
        await system.complete(run, await system.operation_of(run))
        await wait_status(system.runtime, run, "completed")

        letters: list[str] = []

        async def all_dead() -> bool:
            taken = await broker.take_dead_letters(100)
            letters.extend(d.reason for d in taken if marker.encode() in d.body)
            return len(letters) >= 3

        await wait_for(all_dead, timeout=10, message="malformed completions not dead-lettered")
        assert sorted(letters) == sorted(
            [
                "malformed completion: body is not JSON",
                "malformed completion: success: Field required",
                "malformed completion: success: Input should be a valid boolean",
            ]
        ), letters


async def test_the_example_generator_can_report_through_the_webhook(
    make_system: MakeSystem,
) -> None:
    async with make_system(generator="accept") as system:
        run = await system.submit(INSTRUCTIONS)
        op_id = await system.operation_of(run)
        generator = create_generator_app(
            delay_s=0, via="webhook", publish=None, webhook_url=system.api_url, api_key=API_KEY
        )
        async with serve_app(generator) as url, httpx.AsyncClient(base_url=url) as http:
            body = {"instructions": INSTRUCTIONS, "operation_id": op_id, "task_id": run.run_id}
            accepted = await http.post("/api/generate-agent", json=body)
            assert accepted.status_code == 202
            assert accepted.json() == {"operation_id": op_id, "status": "accepted"}

            await wait_status(system.runtime, run, "completed")
        log = await events(system.runtime, run)
        done = next(e for e in log if e["type"] == "operation.completed")
        assert done["data"]["result"] == fake_agent(INSTRUCTIONS)


async def test_with_an_llm_configured_the_continuation_is_its_streamed_reply(
    make_system: MakeSystem,
) -> None:
    async with (
        serve_app(llm_double.create_app()) as llm_url,
        make_system(
            generator="accept", llm_base_url=llm_url, llm_api_key=llm_double.API_KEY
        ) as system,
    ):
        run = await system.submit()
        await system.complete(run, await system.operation_of(run))

        await wait_status(system.runtime, run, "completed")
        log = await events(system.runtime, run)
    text = "".join(e["data"]["delta"] for e in log if e["type"] == "output.message.delta")
    assert text.startswith("echo: The generate_agent tool finished.")
    assert '"name":"weather-bot"' in text
    assert [e["type"] for e in log][-2:] == ["output.message.completed", "run.completed"]


async def test_the_generator_publishes_again_while_the_broker_is_away() -> None:
    published: list[bytes] = []
    refusals = 3

    async def publish(body: bytes) -> None:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise PublishFailed("cannot publish: not connected (a broker restart)")
        published.append(body)

    generator = create_generator_app(
        delay_s=0, via="queue", publish=publish, webhook_url=None, api_key=None
    )
    async with serve_app(generator) as url, httpx.AsyncClient(base_url=url) as http:
        body = {"instructions": INSTRUCTIONS, "operation_id": "op_1", "task_id": "run_1"}
        assert (await http.post("/api/generate-agent", json=body)).status_code == 202
        await wait_for(lambda: published, timeout=10, message="never published")
    assert [orjson.loads(b)["operation_id"] for b in published] == ["op_1"]
