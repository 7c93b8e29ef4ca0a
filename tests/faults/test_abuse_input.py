"""Bad input: every malformed request is a clear 4xx naming the field; the process serves on.

Property tests of the SDK's SSE parser live in tests/sdk/test_sse.py
(test_any_chunking_decodes_to_the_encoded_items,
test_arbitrary_bytes_never_crash_and_chunking_never_matters); here, the broker message
models and their handlers get arbitrary bytes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.broker.base import Ack, Delivery, Reject, Retry
from shared.runtime import Runtime
from shared.settings import Settings, load_settings
from tests.faults.conftest import ALICE, MakeStack
from workers.completion import handle_completion
from workers.worker import Worker

pytestmark = pytest.mark.timeout(120)

UNICODE = "Zo\u00eb \U0001f98a \u202e\u0000 \U0001d518\u6f22\u5b57 \ud7ff"


def _error(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


async def test_malformed_requests_are_4xx_naming_the_field(make_stack: MakeStack) -> None:
    async with make_stack(worker=False, max_body_bytes=64 * 1024) as stack:
        run_id = await stack.create("story", {"prompt": "x"})
        other = await stack.create("story", {"prompt": "y"})
        async with stack.client(ALICE) as http:
            # (request, expected status, field named)
            cases: list[tuple[dict[str, Any], int, str | None]] = [
                (
                    {"content": b"{not json", "headers": {"content-type": "application/json"}},
                    422,
                    None,
                ),
                ({"content": b"[]", "headers": {"content-type": "application/json"}}, 422, None),
                ({"json": {"input": {}}}, 422, "tool"),
                ({"json": {"tool": 12}}, 422, "tool"),
                ({"json": {"tool": "Story Teller"}}, 422, "tool"),
                ({"json": {"tool": UNICODE}}, 422, "tool"),
                ({"json": {"tool": "story", "input": "prompt"}}, 422, "input"),
                ({"json": {"tool": "story", "input": [1]}}, 422, "input"),
                ({"json": {"tool": "story", "stream": [1]}}, 422, "stream"),
                (
                    {"json": {"tool": "story", "input": {"prompt": "hi"}, "session_id": UNICODE}},
                    400,
                    "session_id",
                ),
                ({"json": {"tool": "story", "session_id": 5}}, 422, "session_id"),
                (
                    {
                        "json": {"tool": "story", "input": {"prompt": "hi"}},
                        "headers": {"Idempotency-Key": "a b"},
                    },
                    400,
                    "Idempotency-Key",
                ),
                ({"json": {"tool": "story", "input": {"x": "y" * 70_000}}}, 413, None),
                # Valid JSON that cannot be stored: a 70-bit integer, a lone surrogate.
                ({"json": {"tool": "story", "input": {"prompt": "x", "n": 2**70}}}, 400, "input"),
                (
                    {
                        "content": b'{"tool": "story", "input": {"prompt": "x", "s": "\\ud800"}}',
                        "headers": {"content-type": "application/json"},
                    },
                    400,
                    "input",
                ),
            ]
            for request, status, field in cases:
                response = await http.post("/v1/runs", **request)
                assert response.status_code == status, (request, response.text)
                error = _error(response)
                assert error["message"], error
                if field is not None:
                    assert error.get("field") == field or field in error["message"], error

            # Unicode everywhere a string may hold it is just data.
            accepted = await http.post(
                "/v1/runs",
                json={"tool": "story", "input": {"prompt": UNICODE, UNICODE: [UNICODE]}},
            )
            assert accepted.status_code == 202, accepted.text

            # Cursors: negative, huge, non-numeric, unicode digits, another run's.
            await _finish(stack, other)
            last = (await http.get(f"/v1/runs/{other}")).json()["last_event_id"]
            for name, value in [
                ("Last-Event-ID", "-1"),
                ("Last-Event-ID", "99999999999999999999999"),
                ("Last-Event-ID", "abc"),
                ("Last-Event-ID", "١٢"),
                ("Last-Event-ID", str(last)),  # valid for the other run, not for this one
                ("after", "1e3"),
                ("since_id", "-5"),
            ]:
                if name == "Last-Event-ID":
                    response = await http.get(
                        # bytes, so a non-ASCII digit goes out raw as a client might send it
                        f"/v1/runs/{run_id}/events",
                        headers={name: value.encode()},  # type: ignore[arg-type]
                    )
                else:
                    response = await http.get(f"/v1/runs/{run_id}/events", params={name: value})
                assert response.status_code == 400, (name, value, response.text)
                error = _error(response)
                # A well-formed cursor past the end is named generically ("cursor").
                assert error["code"] == "bad_cursor" and error.get("field") in (name, "cursor")

            for params, field in [
                ({"limit": "-1"}, "limit"),
                ({"limit": "x"}, "limit"),
                ({"status": "bogus"}, "status"),
            ]:
                response = await http.get("/v1/runs", params=params)
                assert response.status_code == 422, response.text
                assert _error(response).get("field") == field

        # Headers with CR/LF (and a bare CR) are refused at the HTTP layer; still serving.
        for raw in (
            b"Idempotency-Key: a\rb\r\n",
            b"X-Evil: 1\r\n injected: yes\r\n",
            b"Last-Event-ID: 1\nX-Split: 2\r\n",
        ):
            status = await _raw_request(stack.port, raw)
            assert 400 <= status < 500, (raw, status)
        async with stack.client(ALICE) as http:
            assert (await http.get("/livez")).status_code == 200
            assert (await http.get(f"/v1/runs/{run_id}")).status_code == 200


async def _finish(stack: Any, run_id: str) -> None:
    runs = stack.runtime.runs
    run = await runs.get(run_id)
    await runs.cancel(run)


async def _raw_request(port: int, extra_header: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + ALICE.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 16\r\n"
            + extra_header
            + b"\r\n"
            + b'{"tool":"story"}'
        )
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1]) if line else 400
    finally:
        writer.close()


async def test_too_many_streams_per_owner_is_429_and_a_slot_frees_on_close(
    make_stack: MakeStack,
) -> None:
    async with make_stack(worker=False, max_streams_per_owner=2, heartbeat_s=5) as stack:
        run_id = await stack.create("story", {"prompt": "x"})
        async with stack.client(ALICE) as http:
            path = f"/v1/runs/{run_id}/events"
            async with http.stream("GET", path) as one, http.stream("GET", path) as two:
                assert one.status_code == two.status_code == 200
                third = await http.get(path)
                assert third.status_code == 429
                assert "RUNRELAY_MAX_STREAMS_PER_OWNER" in third.text or "streams" in third.text
            async with stack.client("tok-bob") as bob:
                assert (await bob.get("/v1/runs")).status_code == 200

            async def freed() -> bool:
                async with http.stream("GET", path) as again:
                    return again.status_code == 200

            from tests.support.wait import wait_for

            await wait_for(freed, timeout=10)


# --- broker messages: arbitrary bytes never crash a handler ---------------------------------

_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=12,
)


def _bodies(fields: dict[str, Any]) -> st.SearchStrategy[bytes]:
    shaped = st.fixed_dictionaries({}, optional={k: v | _JSONISH for k, v in fields.items()})
    return st.one_of(
        st.binary(max_size=300),
        _JSONISH.map(lambda v: json.dumps(v).encode()),
        shaped.map(lambda v: json.dumps(v).encode()),
    )


def _embedded(make: Callable[..., Settings] | None = None) -> Runtime:
    return Runtime.build(load_settings(_env_file=None), allow_embedded=True)


_RUN_FIELDS = {"run_id": st.text(max_size=140), "attempt": st.integers()}
_COMPLETION_FIELDS = {
    "operation_id": st.text(max_size=140),
    "task_id": st.text(max_size=140),
    "success": st.booleans(),
    "result": _JSONISH,
    "error": st.text(),
}
_PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(body=_bodies(_RUN_FIELDS))
def test_any_run_request_body_is_acked_or_rejected_with_a_reason(body: bytes) -> None:
    async def handle() -> object:
        runtime = _embedded()
        await runtime.start()
        try:
            return await Worker(runtime)._on_message(Delivery(body, 1))
        finally:
            await runtime.close()

    outcome = asyncio.run(handle())
    assert isinstance(outcome, Ack | Reject), outcome
    if isinstance(outcome, Reject):
        assert outcome.reason


@_PROPERTY
@given(body=_bodies(_COMPLETION_FIELDS))
def test_any_completion_body_is_handled_without_raising(body: bytes) -> None:
    async def handle() -> object:
        runtime = _embedded()
        await runtime.start()
        try:
            return await handle_completion(runtime, Delivery(body, 1))
        finally:
            await runtime.close()

    outcome = asyncio.run(handle())
    assert isinstance(outcome, Ack | Reject | Retry), outcome
    if isinstance(outcome, Reject | Retry):
        assert outcome.reason


async def test_too_many_active_runs_per_owner_is_429_until_one_ends(make_stack: MakeStack) -> None:
    async with make_stack(worker=False, max_active_runs_per_owner=3) as stack:
        body = {"tool": "story", "input": {"prompt": "x"}}
        runs = [await stack.create("story", {"prompt": "x"}) for _ in range(3)]
        async with stack.client(ALICE) as alice, stack.client("tok-bob") as bob:
            refused = await alice.post("/v1/runs", json=body)
            assert refused.status_code == 429, refused.text
            error = _error(refused)
            assert error["code"] == "too_many_runs"
            assert "RUNRELAY_MAX_ACTIVE_RUNS_PER_OWNER" in error["message"]
            # The same limit on every way in: the AgentOS dialect creates runs too.
            agent = await alice.post(
                "/agents/story/runs", data={"message": "x", "background": "true", "stream": "false"}
            )
            assert agent.status_code == 429, agent.text
            # Per owner: Bob is not affected.
            assert (await bob.post("/v1/runs", json=body)).status_code == 202

            # A run that ends frees its place.
            assert (await alice.post(f"/v1/runs/{runs[0]}/cancel")).status_code == 200
            assert (await alice.post("/v1/runs", json=body)).status_code == 202
            assert (await alice.post("/v1/runs", json=body)).status_code == 429

            # A place held by a run that is gone (a crash between its end and its removal)
            # is found and freed when the limit is reached.
            await stack.runtime.store.drop_active("alice", [runs[1]])
            assert await stack.runtime.store.admit_active("alice", "run_gone", 3)
            assert (await alice.post("/v1/runs", json=body)).status_code == 202
            assert "run_gone" not in await stack.runtime.store.active_runs("alice", 10)
