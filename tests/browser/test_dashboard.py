"""The dashboard in a real browser: start a story, survive the server closing the stream
every 2 s and a page reload mid-run, end with the whole text shown exactly once.

Given `runrelay dev` with ``RUNRELAY_MAX_CONNECTION_S=2``, when the page starts a story
that lasts ~8 s and is reloaded halfway, then its text equals the run's text from the API
(no word missing, none repeated) and the run shows as completed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page

from tests.browser.conftest import ARTIFACTS
from tests.support.devserver import start_dev
from tests.support.procs import Processes

pytestmark = pytest.mark.timeout(120)

# ~130 deltas at 60 ms: about 8 s, so the server closes the stream several times.
STORY = {"prompt": "a knight errant", "paragraphs": 12, "delay_ms": 60}
TIMEOUT_MS = 30_000


async def run_text(url: str, run_id: str) -> str:
    text: list[str] = []
    cursor = 0
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
        while True:
            response = await http.get(
                f"/v1/runs/{run_id}/events",
                params={"after": cursor, "limit": 1000},
                headers={"Accept": "application/json"},
            )
            page: dict[str, Any] = response.json()
            text += [
                e["data"]["delta"] for e in page["events"] if e["type"] == "output.message.delta"
            ]
            cursor = page["next_cursor"]
            if not page["has_more"]:
                return "".join(text)


async def last_event_id(page: Page) -> int:
    saved = await page.evaluate("localStorage.getItem('runrelay.follow')")
    return int(json.loads(saved)["lastId"]) if saved else 0


async def test_a_reloaded_dashboard_resumes_the_run_and_shows_the_text_once(
    page: Page, processes: Processes, tmp_path: Path
) -> None:
    env: dict[str, str | None] = {
        "RUNRELAY_REDIS_URL": None,
        "RUNRELAY_AMQP_URL": None,
        "RUNRELAY_MAX_CONNECTION_S": "2",
        "RUNRELAY_RETRY_MS": "300",
    }
    dev = await start_dev(processes, tmp_path, env)
    await page.goto(f"{dev.url}/")
    await page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)

    await page.fill("#tool", "story")
    await page.fill("#input", json.dumps(STORY))
    await page.click("#start")
    await page.wait_for_function(
        "document.getElementById('follow-run').textContent.startsWith('run_')",
        timeout=TIMEOUT_MS,
    )
    run_id = (await page.text_content("#follow-run")) or ""

    # Mid-run: past the server's first 2 s connection cap, far from the end.
    await page.wait_for_function(
        "(JSON.parse(localStorage.getItem('runrelay.follow')) || {}).lastId >= 50",
        timeout=TIMEOUT_MS,
    )
    before_reload = await last_event_id(page)
    await page.reload()
    await page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    assert await last_event_id(page) >= before_reload  # resumed, not restarted

    await page.wait_for_selector("body[data-follow-done=true]", timeout=TIMEOUT_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    expected = await run_text(dev.url, run_id)
    assert expected.count("\n\n") == STORY["paragraphs"] - 1
    assert await page.text_content("#text") == expected
    assert await page.text_content("#follow-status") == "completed"
    # The stream really was cut and resumed: several connections for this run.
    streams = [
        line
        for line in dev.proc.output().splitlines()
        if f'"GET /v1/runs/{run_id}/events' in line and "limit=" not in line
    ]
    assert len(streams) >= 3, dev.proc.output()
