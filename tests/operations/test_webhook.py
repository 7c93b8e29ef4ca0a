"""The completion webhook's answers (SPEC §4), and the retry schedule of early completions."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from api.app import create_app
from shared.settings import Settings, load_settings
from tests.operations.conftest import API_KEY, MakeSystem
from tests.support.http import serve_app
from tests.workers.support import started, types, wait_status
from workers.completion import early_delay


async def test_without_a_configured_key_the_webhook_is_unavailable(
    make_settings: Callable[..., Settings],
) -> None:
    async with started(make_settings(internal_api_key=None)) as runtime:
        app = create_app(runtime, manage_runtime=False, allow_open=True)
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as http:
            response = await http.post(
                "/v1/operations/op_1/complete",
                json={"success": True},
                headers={"X-API-Key": "anything"},
            )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "webhook_disabled"


async def test_the_webhook_checks_the_key_the_operation_and_the_body(
    make_system: MakeSystem,
) -> None:
    async with make_system(generator="accept") as system, system.client() as http:
        run = await system.submit()
        op_id = await system.operation_of(run)
        url = f"/v1/operations/{op_id}/complete"

        missing = await http.post(url, json={"success": True})
        wrong = await http.post(url, json={"success": True}, headers={"X-API-Key": "nope"})
        unknown = await http.post(
            "/v1/operations/op_unknown/complete",
            json={"success": True},
            headers={"X-API-Key": API_KEY},
        )
        bad = await http.post(url, json={"success": "yes"}, headers={"X-API-Key": API_KEY})
        assert (missing.status_code, wrong.status_code) == (401, 401)
        assert unknown.status_code == 404
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "success"
        assert await types(system.runtime, run) == [
            "run.queued",
            "run.started",
            "tool.started",
            "operation.accepted",
        ]

        ok = await http.post(
            url, json={"success": True, "result": {"name": "x"}}, headers={"X-API-Key": API_KEY}
        )
        assert ok.status_code == 200 and ok.json() == {"status": "accepted"}
        await wait_status(system.runtime, run, "completed")
        kinds = await types(system.runtime, run)

        repeat = await http.post(url, json={"success": True}, headers={"X-API-Key": API_KEY})
        assert repeat.status_code == 200
        assert await types(system.runtime, run) == kinds


def test_the_key_is_also_read_from_chat_internal_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_INTERNAL_API_KEY", "from-chat")
    settings = load_settings(_env_file=None)
    assert settings.internal_api_key is not None
    assert settings.internal_api_key.get_secret_value() == "from-chat"


def test_early_completions_back_off_then_wait_out_the_budget_then_give_up() -> None:
    delays = [early_delay(n, 60.0, 5) for n in range(1, 6)]
    assert delays[:3] == [0.2, 0.4, 0.8]
    assert delays[3] == pytest.approx(60.0 - 1.4)
    assert delays[4] is None
    assert early_delay(1, 0.0, 5) is None
    long = [early_delay(n, 3.0, 50) for n in range(1, 8)]
    assert long[:3] == [0.2, 0.4, 0.8]
    assert long[3] == pytest.approx(1.6)  # the rest of the budget
    assert long[4:] == [None, None, None]
