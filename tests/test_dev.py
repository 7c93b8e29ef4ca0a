"""`runrelay dev` end to end, as a newcomer meets it: start it, follow a story, stop it.

Given `scripts/dev` (embedded backends, nothing installed) or `runrelay dev` on the real
Redis and RabbitMQ, when `runrelay run story ... --follow` runs as a real CLI process, then
it prints exactly the run's text and exits 0, and SIGTERM stops dev with exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.devserver import REPO, RUNRELAY, start_dev
from tests.support.procs import Processes

STORY_INPUT = '{"prompt":"a knight","paragraphs":5}'
pytestmark = pytest.mark.timeout(120)


async def run_cli(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:  # noqa: ASYNC109
    proc = await asyncio.create_subprocess_exec(
        RUNRELAY, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run_text(url: str, run_id: str) -> str:
    """The run's whole text, from its event log as the API serves it (JSON pages)."""
    text: list[str] = []
    cursor = 0
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
        while True:
            page: dict[str, Any] = (
                await http.get(
                    f"/v1/runs/{run_id}/events",
                    params={"after": cursor, "limit": 1000},
                    headers={"Accept": "application/json"},
                )
            ).json()
            for event in page["events"]:
                if event["type"] == "output.message.delta":
                    text.append(event["data"]["delta"])
            cursor = page["next_cursor"]
            if not page["has_more"]:
                return "".join(text)


async def only_run(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
        runs: list[dict[str, Any]] = (await http.get("/v1/runs")).json()["runs"]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.parametrize("backends", ["embedded", "real"])
async def test_dev_serves_a_story_to_the_cli_and_stops_on_sigterm(
    backends: str, processes: Processes, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backends == "embedded":
        # The README's first command, exactly; no backend URLs anywhere.
        env: dict[str, str | None] = {"RUNRELAY_REDIS_URL": None, "RUNRELAY_AMQP_URL": None}
        dev = await start_dev(processes, tmp_path, env, command=[str(REPO / "scripts/dev")])
    else:
        env = {
            "RUNRELAY_REDIS_URL": request.getfixturevalue("redis_url"),
            "RUNRELAY_AMQP_URL": request.getfixturevalue("amqp_url"),
            "RUNRELAY_KEY_PREFIX": request.getfixturevalue("prefix"),
        }
        dev = await start_dev(processes, tmp_path, env)
    banner = dev.proc.output()
    assert f"dashboard:  {dev.url}/" in banner
    assert "the API is OPEN" in banner
    assert ("embedded" in banner) == (backends == "embedded")

    code, out, err = await run_cli(
        "run", "story", "--input", STORY_INPUT, "--follow", "--url", dev.url
    )

    assert code == 0, err
    run = await only_run(dev.url)
    assert run["status"] == "completed"
    text = await run_text(dev.url, run["run_id"])
    assert text.startswith("Once, a knight.")
    assert text.count("\n\n") == 4  # five paragraphs
    assert out == text + "\n"  # the CLI ends the line after the message

    dev.proc.terminate()
    assert await dev.proc.wait_async(30) == 0, dev.proc.output()
    assert "runrelay dev stopped" in dev.proc.output()


async def test_dev_lists_its_tools_and_refuses_unknown_ones_at_the_door(
    processes: Processes, tmp_path: Path
) -> None:
    env: dict[str, str | None] = {"RUNRELAY_REDIS_URL": None, "RUNRELAY_AMQP_URL": None}
    dev = await start_dev(processes, tmp_path, env)

    code, out, err = await run_cli("tools", "--url", dev.url)
    assert code == 0, err
    assert "story" in out and "prompt*: string" in out and "countdown" in out

    code, out, err = await run_cli("run", "stroy", "--url", dev.url)
    assert code == 4 and "unknown tool 'stroy'; known tools: countdown" in err, err
    code, out, err = await run_cli("run", "story", "--input", '{"prompt": 5}', "--url", dev.url)
    assert code == 4 and "input.prompt: 5 is not of type 'string'" in err, err
    async with httpx.AsyncClient(base_url=dev.url, timeout=10.0) as http:
        assert (await http.get("/v1/runs")).json()["runs"] == []
    dev.proc.terminate()
    assert await dev.proc.wait_async(30) == 0, dev.proc.output()


async def test_ctrl_c_prints_a_tail_command_that_reaches_the_same_api(
    processes: Processes, tmp_path: Path
) -> None:
    env: dict[str, str | None] = {"RUNRELAY_REDIS_URL": None, "RUNRELAY_AMQP_URL": None}
    dev = await start_dev(processes, tmp_path, env)
    slow = '{"prompt": "a slow one", "paragraphs": 3, "delay_ms": 200}'
    cli = await asyncio.create_subprocess_exec(
        RUNRELAY, "run", "story", "--input", slow, "--follow", "--url", dev.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert cli.stdout is not None
    assert await asyncio.wait_for(cli.stdout.read(4), 30)  # text is flowing
    cli.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(cli.communicate(), 30)

    assert cli.returncode == 130, err
    run_id = (await only_run(dev.url))["run_id"]
    assert f"runrelay tail {run_id} --since " in err.decode()
    assert f" --url {dev.url}" in err.decode()
    dev.proc.terminate()
    assert await dev.proc.wait_async(30) == 0, dev.proc.output()


def test_dev_points_generate_agent_at_its_own_generator_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runrelay.dev import dev_settings
    from shared.settings import load_settings

    own = dev_settings(load_settings(_env_file=None), "0.0.0.0", 8123)
    assert own.generator_url == "http://127.0.0.1:8123/generator"
    monkeypatch.setenv("RUNRELAY_GENERATOR_URL", "http://gen.internal:9000")
    explicit = load_settings(_env_file=None)
    assert dev_settings(explicit, "127.0.0.1", 8123).generator_url == "http://gen.internal:9000"


async def test_the_readme_python_snippet_runs_as_written(
    processes: Processes, tmp_path: Path
) -> None:
    """The README's Python block, saved to a file and run (only the URL is this dev's)."""
    readme = (REPO / "README.md").read_text()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "http://127.0.0.1:8000" in snippet
    env: dict[str, str | None] = {"RUNRELAY_REDIS_URL": None, "RUNRELAY_AMQP_URL": None}
    dev = await start_dev(processes, tmp_path, env)
    script = tmp_path / "fox.py"
    script.write_text(snippet.replace("http://127.0.0.1:8000", dev.url))
    python = str(Path(RUNRELAY).with_name("python"))
    proc = await asyncio.create_subprocess_exec(
        python, str(script), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = await run_text(dev.url, (await only_run(dev.url))["run_id"])
    assert out.decode() == text + "\n"
