"""The /ds/ request path (api.ds.front) keeps every rule of the API's other routes:
credentials (401), owners, the body limit (413), CORS, the access log with its
redactions, and the protocol's answers for what it does not serve."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.api.conftest import MakeApi

ORIGIN = "https://app.example"
BYTES = {"Content-Type": "application/octet-stream"}


async def test_ds_requests_pass_auth_limits_cors_and_the_access_log(
    make_api: MakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runrelay.api.access")
    settings = {"max_body_bytes": 2048, "cors_origins": ORIGIN}
    async with (
        make_api(**settings) as api,
        api.client("alice") as alice,
        api.client("bob") as bob,
        httpx.AsyncClient(base_url=api.url) as anon,
    ):
        for who, headers in [(anon, {}), (anon, {"Authorization": "Bearer wrong"})]:
            refused = await who.get("/ds/s", params={"offset": "-1"}, headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["error"]["code"] == "unauthorized"
        assert (await anon.put("/ds/s", headers=BYTES)).status_code == 401

        assert (await alice.put("/ds/s", headers=BYTES)).status_code == 201
        assert (await alice.post("/ds/s", content=b"hello", headers=BYTES)).status_code == 204
        # Another owner's path is another stream; ?access_token= names an owner too.
        assert (await bob.get("/ds/s", params={"offset": "-1"})).status_code == 404
        read = await anon.get(
            "/ds/s",
            params={"offset": "-1", "access_token": "tok-alice"},
            headers={"Origin": ORIGIN},
        )
        assert (read.status_code, read.content) == (200, b"hello")
        assert read.headers["access-control-allow-origin"] == ORIGIN  # RUNRELAY_CORS_ORIGINS
        assert read.headers["x-content-type-options"] == "nosniff"

        big = await alice.post("/ds/s", content=b"x" * 4096, headers=BYTES)
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "payload_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for _ in range(8):
                yield b"y" * 512

        streamed = await alice.post("/ds/s", content=chunks(), headers=BYTES)
        assert streamed.status_code == 413
        assert (await alice.get("/ds/s", params={"offset": "-1"})).content == b"hello"

        patched = await alice.patch("/ds/s", content=b"z", headers=BYTES)
        assert patched.status_code == 405
        assert "POST" in patched.headers["allow"]
        assert (await anon.options("/ds/s")).status_code == 204  # a preflight needs no token
    lines = [r.getMessage() for r in caplog.records if r.name == "runrelay.api.access"]
    assert any('"GET /ds/s?offset=-1&access_token=REDACTED" 200' in line for line in lines)
    assert any('"POST /ds/s" 413' in line for line in lines), lines
