"""Helpers for the worker tests: submit runs like the API does, read logs, start workers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from shared.models import RunRecord, RunRequestMessage
from shared.runtime import Runtime
from shared.settings import Settings
from tests.support.devserver import RUNRELAY
from tests.support.procs import Proc, Processes
from tests.support.shipped import role_env
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[Runtime]:
    """A runtime on `settings` (real backends when their URLs are set), closed on exit."""
    runtime = Runtime.build(settings, allow_embedded=True)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.close()


def request_body(run_id: str, attempt: int = 1) -> bytes:
    return RunRequestMessage(run_id=run_id, attempt=attempt).model_dump_json().encode()


async def submit(
    runtime: Runtime, tool: str, input: Mapping[str, Any], *, publish: bool = True
) -> RunRecord:
    """Create a run and publish its request, as `POST /v1/runs` does."""
    run, _ = await runtime.runs.create(owner="tester", tool=tool, input=input)
    if publish:
        await runtime.broker.publish_run(request_body(run.run_id))
    return run


async def events(runtime: Runtime, run: RunRecord) -> list[dict[str, Any]]:
    key = runtime.log.keys.run_log(run.session_id, run.run_id)
    page = await runtime.log.read(key, 0, 100_000)
    return [event.decode() for event in page.events]


async def types(runtime: Runtime, run: RunRecord) -> list[str]:
    return [e["type"] for e in await events(runtime, run)]


async def wait_status(
    runtime: Runtime,
    run: RunRecord,
    *statuses: str,
    timeout: float = 15.0,  # noqa: ASYNC109
) -> RunRecord:
    async def reached() -> RunRecord | None:
        current = await runtime.runs.get(run.run_id)
        return current if current.status.value in statuses else None

    result: RunRecord = await wait_for(
        reached, timeout=timeout, message=f"run {run.run_id} never reached {statuses}"
    )
    return result


def worker_env(settings: Settings, **extra: str) -> dict[str, str | None]:
    """The environment of a worker process on the same backends and prefix as `settings`."""
    return role_env(settings, RUNRELAY_TOOLS="tests.workers.sample_tools", **extra)


async def spawn_worker(
    processes: Processes,
    runtime: Runtime,
    log_path: Path,
    *,
    ready_s: float = 20.0,
    **extra: str,
) -> Proc:
    """Start `runrelay worker` (the shipped entry point, on uvloop) and wait until it
    heartbeats (it is consuming by then)."""
    before = {w["worker_id"] for w in await runtime.workers.live()}
    proc = processes.spawn(
        [RUNRELAY, "worker"],
        worker_env(runtime.settings, **extra),
        log_path=log_path,
        cwd=REPO,
    )

    async def listed() -> bool:
        if not proc.alive():
            raise AssertionError(f"worker exited early:\n{proc.output()}")
        workers = await runtime.workers.live()
        return any(w["pid"] == proc.pid and w["worker_id"] not in before for w in workers)

    await wait_for(listed, timeout=ready_s, message=f"worker pid {proc.pid} never heartbeat")
    return proc


async def worker_id_of(runtime: Runtime, proc: Proc) -> str:
    for info in await runtime.workers.live():
        if info["pid"] == proc.pid:
            return str(info["worker_id"])
    raise AssertionError(f"no heartbeat from pid {proc.pid}")
