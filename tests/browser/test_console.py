"""The operator's console in a real browser: why a run failed, retrying it, the live
graphs, dead letters seen and replayed, and the workers that came and went. Each test
saves a screenshot into docs/.

Given `runrelay dev` (embedded, or on the real Redis and RabbitMQ for dead letters), when
an operator uses only the page at ``/``, then what they need is on it: the failure
reason, a retried run linked to the old one, graphs that move, a dead letter and its
replay.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page

from shared.broker.base import Names
from shared.broker.rabbitmq import RabbitBroker
from shared.settings import Settings
from tests.browser.test_dashboard import TIMEOUT_MS
from tests.support.devserver import REPO, start_dev
from tests.support.procs import Processes
from tests.support.shipped import spawn_role
from tests.workers.support import started

pytestmark = pytest.mark.timeout(120)
DOCS = REPO / "docs"
EMBEDDED: dict[str, str | None] = {"RUNRELAY_REDIS_URL": None, "RUNRELAY_AMQP_URL": None}


async def open_console(page: Page, url: str) -> None:
    await page.goto(f"{url}/")
    await page.wait_for_selector("body[data-console=ready]", state="attached", timeout=TIMEOUT_MS)


async def test_an_operator_finds_why_a_run_failed_retries_it_and_sees_the_graphs_move(
    page: Page, processes: Processes, tmp_path: Path
) -> None:
    dev = await start_dev(processes, tmp_path, EMBEDDED)
    async with httpx.AsyncClient(base_url=dev.url, timeout=10.0) as http:
        # The llm tool without RUNRELAY_LLM_BASE_URL fails on the worker, with a reason.
        failed = await http.post("/v1/runs", json={"tool": "llm", "input": {"prompt": "hi"}})
        run_id = failed.json()["run_id"]
        story = {"tool": "story", "input": {"prompt": "a mill", "paragraphs": 1}}
        for _ in range(3):
            await http.post("/v1/runs", json=story)
    await open_console(page, dev.url)

    await page.select_option("#filter-status", "failed")
    row = page.locator(f"#runs tr[data-run-id='{run_id}']")
    await row.locator("button", has_text="details").click(timeout=TIMEOUT_MS)
    reason = page.locator("#detail-error")
    await reason.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert "RUNRELAY_LLM_BASE_URL" in (await reason.text_content() or "")
    timeline = await page.text_content("#detail-events") or ""
    assert "run.failed" in timeline and "run.queued" in timeline

    await page.click("#detail-retry")
    await page.wait_for_function(
        f"document.getElementById('detail-id').textContent !== '{run_id}'", timeout=TIMEOUT_MS
    )
    retried = await page.text_content("#detail-id") or ""
    assert retried.startswith("run_")
    assert run_id in (await page.text_content("#detail-fields") or "")  # "retry of"
    async with httpx.AsyncClient(base_url=dev.url, timeout=10.0) as http:
        assert (await http.get(f"/v1/runs/{retried}")).json()["retry_of"] == run_id
    await page.screenshot(path=str(DOCS / "console-failed-run.png"), full_page=True)

    # The graphs poll the process's metrics: points accumulate and runs were counted.
    await page.wait_for_function(
        "Number(document.querySelector('[data-series=runs_created]')?.dataset.points) >= 3",
        timeout=TIMEOUT_MS,
    )
    await page.wait_for_function(
        "Number(document.querySelector('[data-series=queue\\\\:runrelay\\\\.runs]')"
        "?.dataset.points) >= 3",
        timeout=TIMEOUT_MS,
    )
    # A client following a run live: the hub times each event from its created_at.
    async with httpx.AsyncClient(base_url=dev.url, timeout=30.0) as http:
        followed = (await http.post("/v1/runs", json=story)).json()
        async with http.stream("GET", followed["events_url"]) as stream:
            await stream.aread()
    await page.wait_for_function(
        "(series.latency_p99 || []).some((ms) => ms > 0)", timeout=TIMEOUT_MS
    )
    await page.locator("#graphs-panel").screenshot(path=str(DOCS / "console-graphs.png"))


async def test_an_operator_sees_a_dead_letter_and_replays_it(
    page: Page,
    processes: Processes,
    tmp_path: Path,
    redis_url: str,
    amqp_url: str,
    prefix: str,
) -> None:
    env: dict[str, str | None] = {
        "RUNRELAY_REDIS_URL": redis_url,
        "RUNRELAY_AMQP_URL": amqp_url,
        "RUNRELAY_KEY_PREFIX": prefix,
    }
    dev = await start_dev(processes, tmp_path, env)
    broker = RabbitBroker(amqp_url, name="console-test", names=Names.for_prefix(prefix))
    await broker.connect()
    try:
        body = f"not json {uuid.uuid4().hex}"
        await broker.publish_run(body.encode())  # the worker dead-letters it
    finally:
        await broker.close()
    await open_console(page, dev.url)

    letter = page.locator("#dead tr", has_text=body)
    await letter.wait_for(timeout=TIMEOUT_MS)
    assert "malformed" in (await letter.text_content() or "")
    first_id = await letter.get_attribute("data-letter-id")
    await page.screenshot(path=str(DOCS / "console-dead-letters.png"), full_page=True)

    await letter.locator("button", has_text="replay").click()
    await page.wait_for_selector(
        f"body[data-replayed='{first_id}']", state="attached", timeout=TIMEOUT_MS
    )
    assert "Replayed" in (await page.text_content("#dead-action") or "")
    # Back on its queue, the worker refuses it again: a new dead letter, same body.
    await page.wait_for_function(
        f"[...document.querySelectorAll('#dead tr')].some(tr => "
        f"tr.textContent.includes('{body}') && tr.dataset.letterId !== '{first_id}')",
        timeout=TIMEOUT_MS,
    )


@pytest.mark.slow
async def test_an_operator_sees_which_workers_left_and_whether_they_stopped_or_were_lost(
    page: Page, processes: Processes, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    env: dict[str, str | None] = {
        "RUNRELAY_REDIS_URL": settings.redis_url,
        "RUNRELAY_AMQP_URL": settings.amqp_url,
        "RUNRELAY_KEY_PREFIX": settings.key_prefix,
    }
    dev = await start_dev(processes, tmp_path, env)
    async with started(settings) as runtime:
        stopped = await spawn_role(
            processes, "worker", settings, tmp_path / "w1.log", runtime=runtime
        )
        crashed = await spawn_role(
            processes, "worker", settings, tmp_path / "w2.log", runtime=runtime
        )
        stopped.terminate()  # SIGTERM: drains and says goodbye
        crashed.kill9()  # no goodbye: its heartbeat runs out
        assert await stopped.wait_async(30) == 0
    await open_console(page, dev.url)

    history = page.locator("#worker-history")
    stopped_row = history.locator(f"tr[data-left=clean]:has-text('{stopped.pid}')")
    lost_row = history.locator(f"tr[data-left=lost]:has-text('{crashed.pid}')")
    await stopped_row.wait_for(timeout=TIMEOUT_MS)
    await lost_row.wait_for(timeout=TIMEOUT_MS)  # within the heartbeat's TTL
    assert "stopped 20" in (await stopped_row.text_content() or "")
    assert "heartbeat ran out" in (await lost_row.text_content() or "")
    assert await history.locator("tr[data-left=live]").count() == 1  # dev's own worker
    await page.locator("#ops-panel").screenshot(path=str(DOCS / "console-workers.png"))


async def test_runs_lost_in_an_embedded_restart_show_as_gone_in_every_pane(
    page: Page, processes: Processes, tmp_path: Path
) -> None:
    dev = await start_dev(processes, tmp_path, EMBEDDED)
    slow = {"tool": "story", "input": {"prompt": "a long road", "paragraphs": 50, "delay_ms": 200}}
    async with httpx.AsyncClient(base_url=dev.url, timeout=10.0) as http:
        run_id = (await http.post("/v1/runs", json=slow)).json()["run_id"]
    await open_console(page, dev.url)
    await page.locator(f"#runs tr[data-run-id='{run_id}'] button", has_text="follow").click()
    await page.locator(f"#runs tr[data-run-id='{run_id}'] button", has_text="details").click()
    await page.wait_for_selector("#follow-status.status-running", timeout=TIMEOUT_MS)
    await page.wait_for_selector("#detail[data-state=running]", timeout=TIMEOUT_MS)
    assert await page.is_enabled("#cancel") and await page.is_enabled("#detail-cancel")

    # The embedded backend forgets everything; the page stays open at the same address.
    dev.proc.terminate()
    assert await dev.proc.wait_async(30) == 0
    port = int(dev.url.rsplit(":", 1)[1])
    (tmp_path / "again").mkdir()
    await start_dev(processes, tmp_path / "again", EMBEDDED, port=port)

    await page.wait_for_selector("#follow-status.status-gone", timeout=TIMEOUT_MS)
    await page.wait_for_selector("#detail[data-state=gone]", timeout=TIMEOUT_MS)
    assert await page.is_disabled("#cancel") and await page.is_disabled("#detail-cancel")
    assert "no longer exists" in (await page.text_content("#detail-error") or "")
    await page.wait_for_function(
        f"!document.querySelector(\"#runs tr[data-run-id='{run_id}']\")", timeout=TIMEOUT_MS
    )
    await page.reload()  # what the page saved says gone too, not running
    await page.wait_for_selector("#follow-status.status-gone", timeout=TIMEOUT_MS)
    assert await page.is_disabled("#cancel")
