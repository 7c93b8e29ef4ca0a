"""The tool catalogue: workers advertise their tools, and runs are checked at the door."""

from __future__ import annotations

import time

from api.catalogue import TOOL_MEMORY_S
from shared.runtime import Runtime
from tests.api.conftest import MakeApi
from workers.worker import Worker

STORY = {"tool": "story", "input": {"prompt": "x"}}


async def test_a_workers_tools_are_listed_and_stay_known_while_it_restarts(
    make_api: MakeApi,
) -> None:
    async with make_api(advertise_tools=False) as api, api.client() as http:
        assert (await http.get("/v1/tools")).json() == {"tools": []}
        refused = (await http.post("/v1/runs", json=STORY)).json()["error"]
        assert refused["field"] == "tool" and "no worker advertised any" in refused["message"]

        worker = Worker(api.runtime, reaper=False)
        await worker.start()
        try:
            listed = (await http.get("/v1/tools")).json()["tools"]
            story = next(t for t in listed if t["name"] == "story")
            assert story["description"].startswith("A deterministic story about the prompt")
            assert story["input_schema"]["required"] == ["prompt"]
            assert set(story["input_schema"]["properties"]) == {"prompt", "paragraphs", "delay_ms"}
        finally:
            await worker.stop(grace_s=0)

        # No live worker now, as while one restarts: its tools are still known, runs queue.
        assert await api.runtime.workers.live() == []
        assert "story" in [t["name"] for t in (await http.get("/v1/tools")).json()["tools"]]
        assert (await http.post("/v1/runs", json=STORY)).status_code == 202


async def test_unknown_tools_and_bad_input_are_422_naming_the_field_and_nothing_is_queued(
    make_api: MakeApi,
) -> None:
    cases = [
        ({"tool": "nope", "input": {}}, "tool", "known tools: countdown, edit_agent, "),
        ({"tool": "story", "input": {"prompt": 5}}, "input.prompt", "5 is not of type 'string'"),
        ({"tool": "story", "input": {}}, "input.prompt", "'prompt' is a required property"),
        (
            {"tool": "story", "input": {"prompt": "x", "paragraphs": 99}},
            "input.paragraphs",
            "99 is greater than the maximum of 50",
        ),
        ({"tool": "countdown", "input": {"seconds": "3"}}, "input.seconds", "is not of type"),
    ]
    async with make_api() as api, api.client() as http:
        queued = await _queued(api.runtime)
        for body, field, why in cases:
            response = await http.post("/v1/runs", json=body)
            assert response.status_code == 422, (body, response.text)
            error = response.json()["error"]
            assert error["field"] == field and why in error["message"], (body, error)
        assert (await http.get("/v1/runs")).json()["runs"] == []
        assert await _queued(api.runtime) == queued  # the vhost is the session's


async def test_a_tool_not_advertised_for_the_memory_window_is_refused(make_api: MakeApi) -> None:
    async with make_api() as api, api.client() as http:
        long_ago = time.time() - TOOL_MEMORY_S - 5
        await api.runtime.workers.advertise_tools(
            [{"name": "retired", "input_schema": {}}], long_ago
        )
        assert "retired" not in [t["name"] for t in (await http.get("/v1/tools")).json()["tools"]]
        refused = await http.post("/v1/runs", json={"tool": "retired", "input": {}})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "tool"


async def _queued(runtime: Runtime) -> int:
    stats = await runtime.broker.stats()
    return next(q.messages for q in stats if q.name == runtime.names.runs_queue)
