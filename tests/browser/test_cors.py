"""A chat UI on another origin creates a run and follows it, through CORS.

Given `runrelay dev` with tokens and ``RUNRELAY_CORS_ORIGINS`` naming a page's origin (the
same host, another port), when that page `fetch`es ``POST /v1/runs`` with a bearer token
and an Idempotency-Key (a preflighted request) and then follows the run with an
``EventSource`` on ``?access_token=``, then it receives every event up to
``run.completed`` and reads the created run's id from the JSON answer.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page

from tests.browser.test_dashboard import TIMEOUT_MS, run_text
from tests.support.devserver import start_dev
from tests.support.http import serve_app
from tests.support.procs import Processes

pytestmark = pytest.mark.timeout(90)

TOKEN = "tok-cors"
PAGE = """<!doctype html><title>chat</title><body><pre id="text"></pre><script>
const api = %(api)s, token = %(token)s;
async function go() {
  const created = await fetch(api + "/v1/runs", {
    method: "POST",
    headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json",
              "Idempotency-Key": "cors-1"},
    body: JSON.stringify({tool: "story", input: {prompt: "a harbour", paragraphs: 2}}),
  });
  const run = await created.json();
  document.body.dataset.runId = run.run_id;
  const es = new EventSource(
    `${api}/v1/runs/${run.run_id}/events?access_token=${encodeURIComponent(token)}`);
  const ids = [];
  es.addEventListener("output.message.delta", (m) => {
    ids.push(Number(m.lastEventId));
    document.getElementById("text").textContent += JSON.parse(m.data).data.delta;
  });
  es.addEventListener("run.completed", (m) => {
    ids.push(Number(m.lastEventId));
    es.close();
    document.body.dataset.ids = JSON.stringify(ids);
    document.body.dataset.done = "true";
  });
}
go().catch((e) => { document.body.dataset.error = String(e); });
</script></body>"""


async def test_a_page_on_another_origin_creates_and_follows_a_run(
    page: Page, processes: Processes, tmp_path: Path
) -> None:
    html: dict[str, bytes] = {}

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/html; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": html["page"]})

    async with serve_app(app, lifespan="off") as origin:
        env: dict[str, str | None] = {
            "RUNRELAY_REDIS_URL": None,
            "RUNRELAY_AMQP_URL": None,
            "RUNRELAY_API_TOKENS": f"{TOKEN}:alice",
            "RUNRELAY_CORS_ORIGINS": origin,
        }
        dev = await start_dev(processes, tmp_path, env)
        assert dev.url != origin
        html["page"] = (PAGE % {"api": json.dumps(dev.url), "token": json.dumps(TOKEN)}).encode()
        await page.goto(f"{origin}/")
        await page.wait_for_selector(
            "body[data-done=true], body[data-error]", state="attached", timeout=TIMEOUT_MS
        )
        assert await page.get_attribute("body", "data-error") is None

        run_id = await page.get_attribute("body", "data-run-id")
        assert run_id and run_id.startswith("run_")
        ids = json.loads(await page.get_attribute("body", "data-ids") or "[]")
        assert ids == sorted(set(ids)) and len(ids) > 2
        text = await page.text_content("#text")
        assert text and text == await run_text(dev.url, run_id, token=TOKEN)
