"""Who may see what, and how the API says no: 401, 404 without leaks, 400, 413, 422."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest

from tests.api.conftest import Api, MakeApi

SECRET = "s3cret-for-tests-only-0123456789abcdef"


async def other_owners_run(api: Api) -> dict[str, str]:
    async with api.client("bob") as bob:
        return await api.create_run(bob)


async def test_another_owners_run_is_404_on_every_route(make_api: MakeApi) -> None:
    async with make_api() as api, api.client("alice") as alice:
        run = await other_owners_run(api)
        rid, sid = run["run_id"], run["session_id"]
        unknown = (await alice.get("/v1/runs/run_doesnotexist")).json()
        assert unknown["error"]["code"] == "not_found"
        attempts = [
            alice.get(f"/v1/runs/{rid}"),
            alice.get(f"/v1/runs/{rid}/events"),
            alice.get(f"/v1/runs/{rid}/events", headers={"Accept": "application/json"}),
            alice.get(f"/v1/runs/{rid}/events", headers={"Last-Event-ID": "abc"}),
            alice.post(f"/v1/runs/{rid}/cancel"),
            alice.get(f"/v1/sessions/{sid}/events"),
        ]
        for attempt in attempts:
            response = await attempt
            assert response.status_code == 404, response.request.url
            assert response.json()["error"]["code"] == "not_found"
        # The same message shape as an unknown run: nothing tells the two apart.
        mine = (await alice.get(f"/v1/runs/{rid}")).json()["error"]["message"]
        assert mine == unknown["error"]["message"].replace("run_doesnotexist", rid)
        # Using someone else's session id gives alice a session of her own, not theirs.
        joined = await alice.post(
            "/v1/runs", json={"tool": "story", "input": {"prompt": "hi"}, "session_id": sid}
        )
        assert joined.status_code == 202
        listed = await alice.get("/v1/runs", params={"session_id": sid})
        assert [r["run_id"] for r in listed.json()["runs"]] == [joined.json()["run_id"]]
        assert (await api.runtime.runs.get(rid)).status == "queued"  # cancel did nothing


async def test_credentials_are_required_and_checked(make_api: MakeApi) -> None:
    async with make_api(jwt_secret=SECRET) as api, httpx.AsyncClient(base_url=api.url) as anon:
        for method, path in [("GET", "/v1/runs"), ("POST", "/v1/runs"), ("GET", "/v1/status")]:
            response = await anon.request(method, path, json={"tool": "story"})
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["code"] == "unauthorized"
        bad = await anon.get("/v1/runs", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401

        # ?access_token= for EventSource, static tokens and HS256 JWTs all name an owner.
        created = await anon.post(
            "/v1/runs",
            params={"access_token": "tok-bob"},
            json={"tool": "story", "input": {"prompt": "hi"}},
        )
        assert created.status_code == 202
        token = jwt.encode({"sub": "bob", "exp": int(time.time()) + 60}, SECRET, "HS256")
        as_bob = {"Authorization": f"Bearer {token}"}
        listed = await anon.get("/v1/runs", headers=as_bob)
        assert [r["run_id"] for r in listed.json()["runs"]] == [created.json()["run_id"]]

        expired = jwt.encode({"sub": "bob", "exp": int(time.time()) - 60}, SECRET, "HS256")
        no_sub = jwt.encode({"owner": "bob"}, SECRET, "HS256")
        wrong_key = jwt.encode({"sub": "bob"}, "another-secret-of-32-bytes-or-more!!", "HS256")
        unsigned = jwt.encode({"sub": "bob"}, None, algorithm="none")
        for rejected in (expired, no_sub, wrong_key, unsigned):
            response = await anon.get("/v1/runs", headers={"Authorization": f"Bearer {rejected}"})
            assert response.status_code == 401, rejected


async def test_open_mode_only_when_allowed(make_api: MakeApi) -> None:
    async with make_api(api_tokens=None) as api, httpx.AsyncClient(base_url=api.url) as anon:
        assert (await anon.get("/v1/runs")).status_code == 401
    async with (
        make_api(api_tokens=None, allow_open=True) as api,
        httpx.AsyncClient(base_url=api.url) as anon,
    ):
        created = await anon.post("/v1/runs", json={"tool": "story", "input": {"prompt": "hi"}})
        assert created.status_code == 202
        run = await api.runtime.runs.get(created.json()["run_id"])
        assert run.owner == "anonymous"


@pytest.mark.parametrize("cursor", ["abc", "-5", "1.5", "0x1", "99"])
async def test_bad_cursors_are_400_before_any_stream(make_api: MakeApi, cursor: str) -> None:
    async with make_api() as api, api.client() as http:
        run = await api.create_run(http)
        for request in (
            http.get(run["events_url"], headers={"Last-Event-ID": cursor}),
            http.get(run["events_url"], params={"after": cursor}),
            http.get(f"/v1/sessions/{run['session_id']}/events", params={"since_id": cursor}),
        ):
            response = await request
            assert response.status_code == 400, (cursor, response.text)
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"]["code"] == "bad_cursor"


async def test_oversized_body_is_413(make_api: MakeApi) -> None:
    async with make_api(max_body_bytes=2048) as api, api.client() as http:
        big = {"tool": "story", "input": {"text": "x" * 4096}}
        response = await http.post("/v1/runs", json=big)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"

        async def chunks() -> AsyncIterator[
            bytes
        ]:  # no Content-Length: the bytes are counted as they arrive
            yield b'{"tool": "story", "input": {"text": "'
            for _ in range(8):
                yield b"y" * 512
            yield b'"}}'

        streamed = await http.post(
            "/v1/runs", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        assert (await http.get("/v1/runs")).json()["runs"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tool": "Bad Tool!", "input": {}}, "tool"),
        ({"tool": "story", "input": [1, 2]}, "input"),
        ({"input": {}}, "tool"),
        ({"tool": "story", "stream": "maybe"}, "stream"),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field(
    make_api: MakeApi, body: dict[str, object], field: str
) -> None:
    async with make_api() as api, api.client() as http:
        response = await http.post("/v1/runs", json=body)
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["field"] == field and field in error["message"]


async def test_bad_session_id_and_unknown_routes(make_api: MakeApi) -> None:
    async with make_api() as api, api.client() as http:
        bad = await http.post(
            "/v1/runs", json={"tool": "story", "input": {"prompt": "hi"}, "session_id": "a b"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["field"] == "session_id"
        missing = await http.get("/v1/nothing-here")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_access_log_never_shows_the_token(
    make_api: MakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runrelay.api.access")
    async with make_api() as api, httpx.AsyncClient(base_url=api.url) as anon:
        await anon.get("/v1/runs", params={"access_token": "tok-alice", "limit": 5})
    lines = [r.getMessage() for r in caplog.records if r.name == "runrelay.api.access"]
    assert any("/v1/runs?access_token=REDACTED&limit=5" in line for line in lines), lines
    assert not any("tok-alice" in line for line in lines)
