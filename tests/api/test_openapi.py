"""The served OpenAPI schema says what the API really answers (schemathesis holds it to
that in tests/faults/test_schema.py); here, the declarations clients read first."""

from __future__ import annotations

import httpx

from tests.api.conftest import MakeApi


async def test_schema_declares_sse_streams_and_the_one_error_shape(make_api: MakeApi) -> None:
    async with make_api() as api, httpx.AsyncClient(base_url=api.url) as http:
        schema = (await http.get("/openapi.json")).json()

    events = schema["paths"]["/v1/runs/{run_id}/events"]["get"]["responses"]
    assert set(events["200"]["content"]) == {"text/event-stream", "application/json"}
    assert "204" in events
    error = {"$ref": "#/components/schemas/ErrorBody"}
    assert events["404"]["content"]["application/json"]["schema"] == error
    # Our 422 is the same error shape, never FastAPI's HTTPValidationError.
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    created = schema["paths"]["/v1/runs"]["post"]["responses"]
    assert created["422"]["content"]["application/json"]["schema"] == error
    assert set(created["200"]["content"]) == {"text/event-stream"}
    published = schema["paths"]["/v1/topics/{topic}/events"]["post"]["responses"]["201"]
    assert published["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Published"
    }
