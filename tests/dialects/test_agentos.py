"""An AgentOS-style client against runrelay: form posts, ``data:`` lines, ``/resume``.

The client below is written the way such clients are: raw httpx, no runrelay SDK.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.dialects.conftest import System
from workers.tools.story import compose

TEAM_NAMES = {
    "run.started": "TeamRunStarted",
    "output.message.delta": "TeamRunContent",
    "output.message.completed": "TeamRunContentCompleted",
    "run.completed": "TeamRunCompleted",
}
META = {"replay", "catch_up", "subscribed"}


async def data_lines(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Every ``data:`` payload of an SSE response, as an AgentOS client reads them."""
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            yield json.loads(line[len("data:") :].strip())


async def read(response: httpx.Response, limit: int | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async for data in data_lines(response):
        out.append(data)
        if limit is not None and len(out) >= limit:
            break
    return out


async def expected_team_events(system: System, run_id: str) -> list[tuple[int, str]]:
    """(event_index, name) the team stream must carry: unnamed types skipped, the rest
    numbered from 0 with no gaps."""
    native = await system.native_events(run_id)
    names = [TEAM_NAMES[e["type"]] for e in native if e["type"] in TEAM_NAMES]
    return list(enumerate(names))


def indexed(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(e["event_index"], e["event"]) for e in events if e["event"] not in META]


async def start_team_run(
    http: httpx.AsyncClient, team: str, first: int
) -> tuple[list[dict[str, Any]], str, str]:
    """Stream a background team run, read `first` events, drop the connection."""
    form = {"message": "a relay at night", "stream": "true", "background": "true"}
    async with http.stream("POST", f"/teams/{team}/runs", data=form) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        phase1 = await read(response, first)
    return phase1, phase1[0]["run_id"], phase1[0]["session_id"]


async def test_lists_configured_agents_and_teams(system: System) -> None:
    async with system.client() as http:
        agents = (await http.get("/agents")).json()
        teams = (await http.get("/teams")).json()
    assert {a["id"]: a["name"] for a in agents} == {
        "story": "Story",
        "slow": "Slow story",
        "countdown": "Countdown",
    }
    assert {t["id"]: t["tool"] for t in teams} == {"story": "story", "slow": "story"}


async def test_team_run_dropped_mid_stream_resumes_live_with_catch_up(system: System) -> None:
    async with system.client() as http:
        # Given a client that read 6 events of a running team run and dropped,
        phase1, run_id, session_id = await start_team_run(http, "slow", 6)
        seen = phase1[-1]["event_index"] + 1  # events read
        # when the run has moved on while it was away (and still runs),
        await system.wait_run(run_id, lambda r: r.last_event_id >= seen + 10)
        form = {"last_event_index": str(phase1[-1]["event_index"]), "session_id": session_id}
        async with http.stream("POST", f"/teams/slow/runs/{run_id}/resume", data=form) as resp:
            assert resp.status_code == 200, await resp.aread()
            phase2 = await read(resp)
    # then it is told what it missed, gets it, is subscribed, and follows to the end.
    names = [e["event"] for e in phase2]
    catch_up, subscribed = phase2[0], phase2[names.index("subscribed")]
    assert catch_up["event"] == "catch_up" and catch_up["status"] == "RUNNING"
    assert catch_up["run_id"] == run_id
    assert catch_up["missed_events"] == catch_up["current_event_count"] - seen > 0
    assert subscribed["current_event_count"] == catch_up["current_event_count"]
    before_subscribed = indexed(phase2[: names.index("subscribed")])
    assert before_subscribed[-1][0] == catch_up["current_event_count"] - 1
    assert names[-1] == "TeamRunCompleted"
    # Every event once, in order, across both connections.
    assert indexed(phase1) + indexed(phase2) == await expected_team_events(system, run_id)
    text = "".join(e["content"] for e in phase1 + phase2 if e["event"] == "TeamRunContent")
    assert text == "\n\n".join(compose("a relay at night", 6))
    assert all(e["session_id"] == session_id for e in phase1 + phase2)


async def test_team_run_resumed_after_it_finished_gets_a_replay(system: System) -> None:
    async with system.client() as http:
        phase1, run_id, session_id = await start_team_run(http, "story", 6)
        final = await system.wait_run(run_id, lambda r: r.terminal)
        form = {"last_event_index": str(phase1[-1]["event_index"]), "session_id": session_id}
        async with http.stream("POST", f"/teams/story/runs/{run_id}/resume", data=form) as resp:
            phase2 = await read(resp)
        # Resuming from the very end: only the replay notice, and the stream closes.
        total = len(await expected_team_events(system, final.run_id))
        form["last_event_index"] = str(total - 1)
        end = await http.post(f"/teams/story/runs/{run_id}/resume", data=form)
    replay = phase2[0]
    assert replay == {
        "event": "replay",
        "run_id": run_id,
        "session_id": session_id,
        "status": "COMPLETED",
        "total_events": total,
        "last_event_index_requested": phase1[-1]["event_index"],
    }
    assert "catch_up" not in [e["event"] for e in phase2]
    assert indexed(phase1) + indexed(phase2) == await expected_team_events(system, run_id)
    end_events = [json.loads(line[5:]) for line in end.text.splitlines() if line[:5] == "data:"]
    assert [e["event"] for e in end_events] == ["replay"]


async def test_resume_without_an_index_replays_everything(system: System) -> None:
    async with system.client() as http:
        _, run_id, _ = await start_team_run(http, "story", 1)
        await system.wait_run(run_id, lambda r: r.terminal)
        resp = await http.post(f"/teams/story/runs/{run_id}/resume", data={"session_id": ""})
    events = [json.loads(line[5:]) for line in resp.text.splitlines() if line.startswith("data:")]
    assert events[0]["last_event_index_requested"] is None
    assert indexed(events) == await expected_team_events(system, run_id)


def contiguous(events: list[dict[str, Any]], start: int = 0) -> list[int]:
    """The indexes of the non-meta events, asserting what an AgentOS client checks."""
    indexes = [e["event_index"] for e in events if e["event"] not in META]
    assert indexes == list(range(start, start + len(indexes))), indexes
    return indexes


async def test_event_index_counts_sent_events_from_0_live_and_replayed(system: System) -> None:
    """countdown appends tool.progress (never sent) between ToolCallStarted and -Completed."""
    async with system.client() as http:
        form = {"message": "ten", "stream": "true", "background": "true"}
        async with http.stream("POST", "/agents/countdown/runs", data=form) as response:
            first = await read(response, 2)  # RunStarted, ToolCallStarted; then drop
        run_id = first[0]["run_id"]
        # Live, nothing missed (progress only since): subscribed, then on from index 2.
        live_form = {"last_event_index": "1"}
        async with http.stream(
            "POST", f"/agents/countdown/runs/{run_id}/resume", data=live_form
        ) as resp:
            rest = await read(resp)
        await system.wait_run(run_id, lambda r: r.terminal)
        replayed = await http.post(f"/agents/countdown/runs/{run_id}/resume", data={})
        from_one = await http.post(
            f"/agents/countdown/runs/{run_id}/resume", data={"last_event_index": "1"}
        )
        summary = (await http.get(f"/agents/countdown/runs/{run_id}")).json()
    assert rest[0]["event"] == "subscribed" and rest[0]["current_event_count"] == 2
    assert contiguous(first) + contiguous(rest, 2) == [0, 1, 2, 3]
    assert [e["event"] for e in first + rest[1:]] == [
        "RunStarted",
        "ToolCallStarted",
        "ToolCallCompleted",
        "RunCompleted",
    ]
    again = [json.loads(line[5:]) for line in replayed.text.splitlines() if line[:5] == "data:"]
    assert again[0]["total_events"] == summary["event_count"] == 4
    assert contiguous(again) == [0, 1, 2, 3]
    tail = [json.loads(line[5:]) for line in from_one.text.splitlines() if line[:5] == "data:"]
    assert contiguous(tail, 2) == [2, 3]


async def test_streaming_without_background_cancels_the_run_on_disconnect(
    system: System,
) -> None:
    async with system.client() as http:
        form = {"message": "a short life", "stream": "true", "background": "false"}
        async with http.stream("POST", "/agents/slow/runs", data=form) as response:
            first = await read(response, 3)
        run_id = first[0]["run_id"]
        assert [e["event"] for e in first][:1] == ["RunStarted"]
        cancelled = await system.wait_run(run_id, lambda r: r.terminal)
        status = (await http.get(f"/agents/slow/runs/{run_id}")).json()
    assert cancelled.status == "cancelled"
    assert status["status"] == "CANCELLED"


async def test_background_without_stream_answers_the_run_at_once(system: System) -> None:
    async with system.client() as http:
        form = {"message": "later", "background": "true", "stream": "false", "user_id": "u1"}
        created = await http.post("/agents/story/runs", data=form)
        assert created.status_code == 202, created.text
        body = created.json()
        assert body["status"] in {"PENDING", "RUNNING"} and body["agent_id"] == "story"
        await system.wait_run(body["run_id"], lambda r: r.terminal)
        status = await http.get(f"/agents/story/runs/{body['run_id']}")
    assert status.json()["status"] == "COMPLETED"


async def test_neither_stream_nor_background_answers_the_finished_run(system: System) -> None:
    async with system.client() as http:
        # multipart, as some clients post it
        files = {"message": (None, "in one go"), "stream": (None, "false")}
        response = await http.post("/agents/story/runs", files=files)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "COMPLETED"
    assert response.json()["content"] == "\n\n".join(compose("in one go", 2))


async def test_resume_is_404_for_another_owner_or_another_session(system: System) -> None:
    async with system.client() as http:
        _, run_id, session_id = await start_team_run(http, "story", 1)
        wrong_session = await http.post(
            f"/teams/story/runs/{run_id}/resume", data={"session_id": "sess_other"}
        )
        bad_index = await http.post(
            f"/teams/story/runs/{run_id}/resume", data={"last_event_index": "-2"}
        )
        unknown_team = await http.get(f"/teams/nope/runs/{run_id}")
    async with system.client("bob") as bob:
        other_owner = await bob.post(
            f"/teams/story/runs/{run_id}/resume", data={"session_id": session_id}
        )
        other_status = await bob.get(f"/teams/story/runs/{run_id}")
    assert wrong_session.status_code == 404
    assert other_owner.status_code == 404 and other_status.status_code == 404
    assert other_owner.json()["error"]["code"] == "not_found"
    assert bad_index.status_code == 400
    assert unknown_team.status_code == 404
