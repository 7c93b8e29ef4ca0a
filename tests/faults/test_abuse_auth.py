"""Who may see what: tokens never logged, other owners' ids look unknown, bad JWTs refused.

Also proven elsewhere: topics are per owner
(tests/dialects/test_topics.py::test_topics_are_per_owner), the AgentOS resume is 404 for
another owner or session
(tests/dialects/test_agentos.py::test_resume_is_404_for_another_owner_or_another_session),
the webhook's 503 without a key and 401 with a wrong one
(tests/operations/test_webhook.py::test_without_a_configured_key_the_webhook_is_unavailable,
tests/operations/test_webhook.py::test_the_webhook_checks_the_key_the_operation_and_the_body).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest

from shared.settings import Settings
from tests.faults.conftest import ALICE, BOB, MakeStack, spawn_api
from tests.support.procs import Processes

pytestmark = pytest.mark.timeout(60)

SECRET = "jwt-secret-for-tests-" + "0123456789abcdef" * 4
UNKNOWN_RUN = "run_00000000000000000000000000000000"
UNKNOWN_SESSION = "sess_00000000000000000000000000000000"


async def test_tokens_in_urls_never_reach_the_access_log(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    settings = make_settings()
    api, port = await spawn_api(processes, settings, tmp_path / "api.log")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        created = await http.post(
            "/v1/runs",
            params={"access_token": ALICE},
            json={"tool": "story", "input": {"prompt": "hi"}},
        )
        assert created.status_code == 202, created.text
        run_id = created.json()["run_id"]
        for params in (
            {"access_token": ALICE},
            {"access_token": ALICE, "after": "0"},
            {"after": "0", "access_token": "not-a-real-token-but-secret-looking"},
        ):
            response = await http.get(
                f"/v1/runs/{run_id}/events", params=params, headers={"Accept": "application/json"}
            )
            assert response.status_code in (200, 401)
        output = api.output()
    assert f"/v1/runs/{run_id}/events" in output, output  # the access log is on and was read
    assert ALICE not in output and "secret-looking" not in output
    assert "access_token=REDACTED" in output


def _same_answer(
    theirs: httpx.Response, their_ids: tuple[str, str], unknown: httpx.Response
) -> None:
    def masked(text: str, ids: tuple[str, ...]) -> str:
        for value in ids:
            text = text.replace(value, "<id>")
        return text

    assert theirs.status_code == unknown.status_code, (theirs.text, unknown.text)
    assert masked(theirs.text, their_ids) == masked(unknown.text, (UNKNOWN_RUN, UNKNOWN_SESSION))
    assert theirs.headers.get("content-type") == unknown.headers.get("content-type")


async def test_another_owners_ids_answer_exactly_like_unknown_ids_on_every_route(
    make_stack: MakeStack,
) -> None:
    async with make_stack(heartbeat_s=0.5) as stack:
        run_id = await stack.create("story", {"prompt": "mine", "paragraphs": 1, "delay_ms": 0})
        await stack.ended(run_id)
        async with stack.client(ALICE) as alice:
            session_id = (await alice.get(f"/v1/runs/{run_id}")).json()["session_id"]
        # (method, path template, kwargs): {run} and {session} are filled with ids.
        probes: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/v1/runs/{run}", {}),
            ("POST", "/v1/runs/{run}/cancel", {}),
            ("GET", "/v1/runs/{run}/events", {}),
            ("GET", "/v1/runs/{run}/events", {"headers": {"Accept": "application/json"}}),
            ("GET", "/v1/runs/{run}/events", {"headers": {"Last-Event-ID": "1"}}),
            ("GET", "/v1/sessions/{session}/events", {}),
            ("GET", "/v1/runs?session_id={session}", {}),
            ("GET", "/agents/story/runs/{run}", {}),
            ("POST", "/agents/story/runs/{run}/resume", {"data": {"session_id": "{session}"}}),
            ("GET", "/teams/story/runs/{run}", {}),
            ("POST", "/teams/story/runs/{run}/resume", {"data": {"last_event_index": "0"}}),
            ("GET", "/api/chat/tasks/{run}", {}),
            ("GET", "/api/chat/tasks/{run}/stream", {}),
            ("GET", "/api/chat/tasks/{run}/stream?last_message_id=0-1", {}),
        ]
        async with stack.client(BOB) as bob:
            for method, template, kw in probes:
                theirs = await bob.request(
                    method, _fill(template, run_id, session_id), **_args(kw, run_id, session_id)
                )
                unknown = await bob.request(
                    method,
                    _fill(template, UNKNOWN_RUN, UNKNOWN_SESSION),
                    **_args(kw, UNKNOWN_RUN, UNKNOWN_SESSION),
                )
                assert theirs.status_code in (200, 404), (template, theirs.text)
                _same_answer(theirs, (run_id, session_id), unknown)
                if theirs.status_code == 404:
                    error = theirs.json()["error"]
                    assert error["code"] == "not_found"
        # Bob's actions changed nothing of Alice's.
        async with stack.client(ALICE) as alice:
            assert (await alice.get(f"/v1/runs/{run_id}")).json()["status"] == "completed"


def _fill(text: str, run: str, session: str) -> str:
    return text.replace("{run}", run).replace("{session}", session)


def _args(kw: dict[str, Any], run: str, session: str) -> dict[str, Any]:
    out = dict(kw)
    if "data" in kw:
        out["data"] = {k: _fill(v, run, session) for k, v in kw["data"].items()}
    return out


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(jwt.encode({"sub": "alice"}, "not-the-secret-" * 3, "HS256"), id="forged"),
        pytest.param(
            jwt.encode({"sub": "alice", "exp": int(time.time()) - 60}, SECRET, "HS256"),
            id="expired",
        ),
        pytest.param(
            f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'alice'})}.", id="alg-none"
        ),
        pytest.param(jwt.encode({"sub": "alice"}, SECRET, "HS512"), id="other-alg"),
        pytest.param(jwt.encode({"user": "alice"}, SECRET, "HS256"), id="no-sub"),
        pytest.param("garbage.garbage.garbage", id="garbage"),
    ],
)
async def test_bad_jwts_are_401(make_stack: MakeStack, token: str) -> None:
    async with make_stack(worker=False, jwt_secret=SECRET) as stack:
        async with stack.client(token) as http:
            for method, path in [("GET", "/v1/runs"), ("POST", "/v1/runs")]:
                response = await http.request(method, path, json={"tool": "story"})
                assert response.status_code == 401, response.text
                assert response.json()["error"]["code"] == "unauthorized"
        good = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, SECRET, "HS256")
        async with stack.client(good) as http:
            assert (await http.get("/v1/runs")).status_code == 200


async def test_webhook_keys_are_checked_before_the_operation_is_looked_up(
    make_stack: MakeStack,
) -> None:
    async with (
        make_stack(worker=False, internal_api_key="hook-key") as stack,
        stack.client(None) as http,
    ):
        for path in (
            "/v1/operations/op_unknown/complete",
            "/api/chat/operations/op_unknown/complete",
        ):
            for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
                response = await http.post(path, json={"success": True}, headers=headers)
                assert response.status_code == 401, (path, headers, response.text)
            right = await http.post(path, json={"success": True}, headers={"X-API-Key": "hook-key"})
            assert right.status_code == 404, right.text
