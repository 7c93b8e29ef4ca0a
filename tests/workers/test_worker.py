"""The worker loop in this process, on the real backends and the embedded ones (dev)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.support.http import serve_app
from tests.support.wait import wait_for
from tests.workers import llm_double
from tests.workers.support import events, request_body, started, submit, types, wait_status
from workers.tools.story import compose
from workers.worker import Worker

TOOLS = ["tests.workers.sample_tools"]


@pytest.fixture
async def real(make_settings: Callable[..., Settings]) -> AsyncIterator[Worker]:
    """A started Worker on real Redis and RabbitMQ, stopped after the test."""
    async with started(make_settings(tools=TOOLS, lease_s=3)) as runtime:
        worker = Worker(runtime)
        await worker.start()
        try:
            yield worker
        finally:
            await worker.stop(grace_s=0)


async def test_story_runs_to_completion_with_its_text(real: Worker) -> None:
    runtime = real.runtime
    run = await submit(runtime, "story", {"prompt": "a test", "paragraphs": 2, "delay_ms": 0})

    done = await wait_status(runtime, run, "completed")

    log = await events(runtime, run)
    kinds = [e["type"] for e in log]
    assert kinds[:2] == ["run.queued", "run.started"]
    assert kinds[-2:] == ["output.message.completed", "run.completed"]
    assert [e["id"] for e in log] == list(range(1, len(log) + 1))
    text = "".join(e["data"]["delta"] for e in log if e["type"] == "output.message.delta")
    assert text == "\n\n".join(compose("a test", 2))
    assert log[-2]["data"]["message"]["content"][0]["text"] == text
    assert log[1]["data"] == {"attempt": 1, "worker": real.worker_id}
    assert done.worker is None and done.finished_at is not None


async def test_unknown_tool_and_bad_input_fail_the_run_and_the_worker_keeps_serving(
    real: Worker,
) -> None:
    runtime = real.runtime
    unknown = await submit(runtime, "no-such-tool", {})
    bad = await submit(runtime, "story", {"prompt": "x", "paragraphs": 99})
    raising = await submit(runtime, "test.boom", {"message": "kaput"})
    fine = await submit(runtime, "story", {"prompt": "after", "paragraphs": 1, "delay_ms": 0})

    assert (await wait_status(runtime, unknown, "failed")).error == "unknown tool: no-such-tool"
    error = (await wait_status(runtime, bad, "failed")).error
    assert error is not None and "paragraphs" in error
    assert (await wait_status(runtime, raising, "failed")).error == "kaput"
    await wait_status(runtime, fine, "completed")
    last = (await events(runtime, raising))[-1]
    assert last["type"] == "run.failed" and last["data"] == {"status": "failed", "error": "kaput"}


async def test_a_duplicated_message_executes_the_run_once(real: Worker) -> None:
    runtime = real.runtime
    run = await submit(runtime, "story", {"prompt": "dup", "paragraphs": 1, "delay_ms": 0})
    for _ in range(3):
        await runtime.broker.publish_run(request_body(run.run_id))

    await wait_status(runtime, run, "completed")
    # The copies are settled (acked as duplicates) once the queue is empty again.
    await wait_for(lambda: _queue_empty(real), timeout=10)
    kinds = await types(runtime, run)
    assert kinds.count("run.started") == 1 and kinds.count("run.completed") == 1


async def _queue_empty(worker: Worker) -> bool:
    stats = {s.name: s for s in await worker.runtime.broker.stats()}
    return stats[worker.runtime.names.runs_queue].messages == 0 and not worker.executions


async def test_a_malformed_message_is_dead_lettered_with_a_reason(real: Worker) -> None:
    runtime = real.runtime
    # Unique bodies: the vhost is shared by the session, so other tests' dead letters
    # may be in the queue too.
    tag = uuid.uuid4().hex
    malformed = b"{not json " + tag.encode()
    unknown = b'{"run_id": "run_missing_%s", "attempt": 1}' % tag.encode()
    await runtime.broker.publish_run(malformed)
    await runtime.broker.publish_run(unknown)
    after = await submit(runtime, "story", {"prompt": "p", "paragraphs": 1, "delay_ms": 0})

    await wait_status(runtime, after, "completed")
    reasons: dict[bytes, str] = {}

    async def both_dead() -> bool:
        reasons.update((d.body, d.reason) for d in await runtime.broker.take_dead_letters(100))
        return malformed in reasons and unknown in reasons

    await wait_for(both_dead, timeout=10, message="our two messages never reached runrelay.dead")
    assert reasons[malformed].startswith("malformed run message")
    assert reasons[unknown] == f"unknown run: run_missing_{tag}"


async def test_cancelling_a_queued_run_means_it_never_starts(real: Worker) -> None:
    runtime = real.runtime
    run = await submit(runtime, "story", {"prompt": "q"}, publish=False)
    await runtime.runs.cancel(run)
    await runtime.broker.publish_run(request_body(run.run_id))
    marker = await submit(runtime, "story", {"prompt": "m", "paragraphs": 1, "delay_ms": 0})

    await wait_status(runtime, marker, "completed")
    await wait_for(lambda: _queue_empty(real), timeout=10)
    assert await types(runtime, run) == ["run.queued", "run.cancelled"]


async def test_cancelling_a_running_run_stops_its_tool(real: Worker, tmp_path: Path) -> None:
    runtime = real.runtime
    trace = tmp_path / "trace"
    run = await submit(runtime, "test.wait", {"trace": str(trace), "seconds": 60})
    await wait_for(lambda: trace.exists(), timeout=10)

    await runtime.runs.cancel(run)

    await wait_for(lambda: "cancelled True" in trace.read_text(), timeout=2)
    await wait_for(lambda: run.run_id not in real.executions, timeout=2)
    assert (await types(runtime, run))[-1] == "run.cancelled"


async def test_the_llm_tool_streams_from_an_openai_compatible_endpoint(
    make_settings: Callable[..., Settings],
) -> None:
    app = llm_double.create_app()
    async with serve_app(app) as base_url:
        settings = make_settings(
            llm_base_url=base_url, llm_api_key=llm_double.API_KEY, llm_model="tiny"
        )
        async with started(settings) as runtime:
            worker = Worker(runtime)
            await worker.start()
            try:
                ok = await submit(runtime, "llm", {"prompt": "hello there world"})
                chat = await submit(
                    runtime, "llm", {"messages": [{"role": "user", "content": "two words"}]}
                )
                neither = await submit(runtime, "llm", {})
                await wait_status(runtime, ok, "completed")
                await wait_status(runtime, chat, "completed")
                assert "exactly one of prompt or messages" in (
                    (await wait_status(runtime, neither, "failed")).error or ""
                )
            finally:
                await worker.stop(grace_s=0)
            log = await events(runtime, ok)
    deltas = [e["data"]["delta"] for e in log if e["type"] == "output.message.delta"]
    assert deltas == ["echo: ", "hello ", "there ", "world"]
    completed = next(e for e in log if e["type"] == "output.message.completed")
    assert completed["data"]["message"]["content"][0]["text"] == "echo: hello there world"
    first = app.state.requests[0]
    assert first["body"]["model"] == "tiny" and first["body"]["stream"] is True


async def test_the_llm_tool_fails_clearly_without_a_base_url(
    make_settings: Callable[..., Settings],
) -> None:
    async with started(make_settings()) as runtime:
        worker = Worker(runtime)
        await worker.start()
        try:
            run = await submit(runtime, "llm", {"prompt": "hi"})
            failed = await wait_status(runtime, run, "failed")
        finally:
            await worker.stop(grace_s=0)
    assert failed.error is not None and "RUNRELAY_LLM_BASE_URL" in failed.error


async def test_embedded_backends_run_the_basic_flow(tmp_path: Path) -> None:
    """`runrelay dev`: a Worker on a shared embedded runtime it does not own."""
    from shared.settings import load_settings

    settings = load_settings(_env_file=None, tools=TOOLS, lease_s=1)
    async with started(settings) as runtime:
        assert runtime.embedded
        worker = Worker(runtime)
        await worker.start()
        try:
            story = await submit(runtime, "story", {"prompt": "dev", "paragraphs": 1})
            unknown = await submit(runtime, "nope", {})
            trace = tmp_path / "trace"
            waiting = await submit(runtime, "test.wait", {"trace": str(trace)})
            await wait_status(runtime, story, "completed")
            await wait_status(runtime, unknown, "failed")
            await wait_for(lambda: trace.exists(), timeout=5)
            await runtime.runs.cancel(waiting)
            await wait_for(lambda: "cancelled True" in trace.read_text(), timeout=2)
            assert [w["worker_id"] for w in await runtime.workers.live()] == [worker.worker_id]
        finally:
            await worker.stop(grace_s=0)
        # The runtime is the caller's: still usable after the worker stopped.
        await runtime.log.ping()
        await runtime.broker.ping()
        assert await runtime.workers.live() == []


async def test_the_reaper_republishes_a_run_whose_publish_was_lost(
    make_settings: Callable[..., Settings],
) -> None:
    async with started(make_settings(publish_grace_s=0.5)) as runtime:
        run = await submit(runtime, "story", {"prompt": "lost", "paragraphs": 1}, publish=False)
        worker = Worker(runtime)
        await worker.start()
        try:
            await wait_status(runtime, run, "completed")
        finally:
            await worker.stop(grace_s=0)
        assert (await types(runtime, run)).count("run.started") == 1
