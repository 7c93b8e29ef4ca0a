"""CORS is off unless RUNRELAY_CORS_ORIGINS names the origin (the browser test covers on)."""

from __future__ import annotations

from tests.api.conftest import MakeApi

ORIGIN = "http://127.0.0.1:3000"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
}


def cors_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower().startswith("access-control-")}


async def test_without_the_setting_no_cors_headers_are_sent(make_api: MakeApi) -> None:
    async with make_api() as api, api.client("alice") as http:
        preflight = await http.options("/v1/runs", headers=PREFLIGHT)
        assert cors_headers(dict(preflight.headers)) == {}
        listed = await http.get("/v1/runs", headers={"Origin": ORIGIN})
        assert listed.status_code == 200
        assert cors_headers(dict(listed.headers)) == {}


async def test_only_the_listed_origins_are_allowed(make_api: MakeApi) -> None:
    async with make_api(cors_origins=[ORIGIN]) as api, api.client("alice") as http:
        preflight = await http.options("/v1/runs", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        allowed = preflight.headers["access-control-allow-headers"].lower()
        for header in ("authorization", "idempotency-key", "last-event-id", "content-type"):
            assert header in allowed
        other = await http.options("/v1/runs", headers={**PREFLIGHT, "Origin": "http://evil"})
        assert "access-control-allow-origin" not in other.headers
        chat = await http.get("/v1/runs", headers={"Origin": ORIGIN})
        exposed = chat.headers["access-control-expose-headers"].lower()
        assert "x-vercel-ai-ui-message-stream" in exposed
