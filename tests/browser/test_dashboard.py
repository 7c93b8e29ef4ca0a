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
from tests.browser.gateway import Gateway
from tests.support.devserver import start_dev
from tests.support.http import serve_app
from tests.support.procs import Processes
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(120)

# ~130 deltas at 60 ms: about 8 s, so the server closes the stream several times.
STORY: dict[str, Any] = {"prompt": "a knight errant", "paragraphs": 12, "delay_ms": 60}
TIMEOUT_MS = 30_000


async def run_text(url: str, run_id: str, token: str | None = None) -> str:
    text: list[str] = []
    cursor = 0
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=url, timeout=10.0, headers=auth) as http:
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


async def start_story(page: Page, url: str) -> str:
    """Open the dashboard at `url`, start STORY from its form; return the followed run id."""
    await page.goto(f"{url}/")
    await page.wait_for_selector("body[data-ready=true]", timeout=TIMEOUT_MS)
    await page.fill("#tool", "story")
    await page.fill("#input", json.dumps(STORY))
    await page.click("#start")
    await page.wait_for_function(
        "document.getElementById('follow-run').textContent.startsWith('run_')",
        timeout=TIMEOUT_MS,
    )
    return (await page.text_content("#follow-run")) or ""


async def wait_last_id(page: Page, at_least: int) -> None:
    await page.wait_for_function(
        f"(JSON.parse(localStorage.getItem('runrelay.follow')) || {{}}).lastId >= {at_least}",
        timeout=TIMEOUT_MS,
    )


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
    run_id = await start_story(page, dev.url)

    await wait_last_id(page, 50)  # mid-run: past the server's first 2 s cap, far from the end
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


async def test_the_page_recreates_its_event_source_when_the_browser_gives_up(
    page: Page, processes: Processes, tmp_path: Path
) -> None:
    """A 502 makes the browser stop reconnecting (readyState CLOSED); the page takes over."""
    env: dict[str, str | None] = {"RUNRELAY_REDIS_URL": None, "RUNRELAY_AMQP_URL": None}
    dev = await start_dev(processes, tmp_path, env)
    gateway = Gateway(dev.url)
    async with serve_app(gateway, lifespan="off") as url:
        run_id = await start_story(page, url)
        await wait_last_id(page, 30)

        gateway.fail_streams = True
        gateway.end_streams()
        # The browser's own reconnect gets a 502 and gives up for good; any request after
        # that is the page recreating its EventSource.
        await wait_for(lambda: gateway.refused >= 2, timeout=20, message="never recreated")
        gateway.fail_streams = False

        await page.wait_for_selector("body[data-follow-done=true]", timeout=TIMEOUT_MS)
        expected = await run_text(dev.url, run_id)
        assert await page.text_content("#text") == expected
        assert await page.text_content("#follow-status") == "completed"
