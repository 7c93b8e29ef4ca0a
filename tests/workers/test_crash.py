"""Workers as real processes: many at once, kill -9, SIGTERM drain, cancel across processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from shared.models import RunRecord
from shared.runtime import Runtime
from shared.settings import Settings
from tests.support.procs import Processes
from tests.support.wait import wait_for
from tests.workers.support import (
    events,
    spawn_worker,
    started,
    submit,
    types,
    wait_status,
    worker_id_of,
)

COUNTDOWN = {"seconds": 4, "interval_s": 0.2}


async def test_three_workers_execute_300_runs_exactly_once(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    settings = make_settings(publish_grace_s=120, lease_s=10)
    async with started(settings) as runtime:
        for i in range(3):
            await spawn_worker(processes, runtime, tmp_path / f"w{i}.log")
        story = {"prompt": "short", "paragraphs": 1, "delay_ms": 0}
        runs = []
        for start in range(0, 300, 50):
            runs += await asyncio.gather(
                *(submit(runtime, "story", story) for _ in range(start, start + 50))
            )
        pending = {run.run_id for run in runs}

        async def all_done() -> bool:
            records = await asyncio.gather(*(runtime.runs.get(r) for r in list(pending)))
            pending.difference_update(r.run_id for r in records if r.terminal)
            return not pending

        await wait_for(all_done, timeout=60, interval=0.2, message="runs still open")

        executed_by = set()
        for run in runs:
            log = await events(runtime, run)
            kinds = [e["type"] for e in log]
            assert kinds.count("run.started") == 1, (run.run_id, kinds)
            assert "run.retrying" not in kinds
            assert kinds[-1] == "run.completed"
            executed_by.add(next(e["data"]["worker"] for e in log if e["type"] == "run.started"))
        assert len(executed_by) == 3


async def test_a_run_of_a_killed_worker_is_retried_on_another(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    settings = make_settings(lease_s=2, max_attempts=3)
    async with started(settings) as runtime:
        first = await spawn_worker(processes, runtime, tmp_path / "first.log")
        run = await submit(runtime, "countdown", COUNTDOWN)
        await wait_for(lambda: _has(runtime, run, "tool.progress"), timeout=10)
        second = await spawn_worker(processes, runtime, tmp_path / "second.log")
        second_id = await worker_id_of(runtime, second)

        first.kill9()

        # Lease 2 s + a reaper sweep + the 4 s countdown again.
        done = await wait_status(runtime, run, "completed", "failed", timeout=20)
        assert done.status == "completed", second.output()
        log = await events(runtime, run)
        retrying = [e for e in log if e["type"] == "run.retrying"]
        assert [e["data"] for e in retrying] == [{"attempt": 2, "reason": "worker_lost"}]
        started_events = [e["data"] for e in log if e["type"] == "run.started"]
        assert started_events[1] == {"attempt": 2, "worker": second_id}
        assert [e["type"] for e in log].count("run.completed") == 1
        assert "lost by worker" in second.output()


async def test_a_killed_workers_run_fails_worker_lost_on_its_last_attempt(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    settings = make_settings(lease_s=2, max_attempts=1)
    async with started(settings) as runtime:
        first = await spawn_worker(processes, runtime, tmp_path / "first.log")
        run = await submit(runtime, "countdown", {"seconds": 30, "interval_s": 0.2})
        await wait_for(lambda: _has(runtime, run, "tool.progress"), timeout=10)
        second = await spawn_worker(processes, runtime, tmp_path / "second.log")

        first.kill9()

        failed = await wait_status(runtime, run, "completed", "failed", timeout=10)
        assert failed.status == "failed" and failed.error == "worker_lost"
        last = (await events(runtime, run))[-1]
        assert last["type"] == "run.failed" and last["data"]["error"] == "worker_lost"
        assert "failed worker_lost" in second.output()


async def test_sigterm_drains_and_hands_an_unfinished_run_to_another_worker(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    settings = make_settings(lease_s=5, shutdown_grace_s=0.5)
    async with started(settings) as runtime:
        first = await spawn_worker(processes, runtime, tmp_path / "first.log")
        first_id = await worker_id_of(runtime, first)
        run = await submit(runtime, "countdown", COUNTDOWN)
        await wait_for(lambda: _has(runtime, run, "tool.progress"), timeout=10)
        second = await spawn_worker(processes, runtime, tmp_path / "second.log")

        first.terminate()

        assert await first.wait_async(10) == 0, first.output()
        done = await wait_status(runtime, run, "completed", "failed", timeout=15)
        assert done.status == "completed"
        log = await events(runtime, run)
        assert [e["data"] for e in log if e["type"] == "run.retrying"] == [
            {"attempt": 2, "reason": "worker_shutdown"}
        ]
        workers = [e["data"]["worker"] for e in log if e["type"] == "run.started"]
        assert workers == [first_id, await worker_id_of(runtime, second)]
        # A clean exit leaves no stale heartbeat behind.
        assert first_id not in {w["worker_id"] for w in await runtime.workers.live()}


async def test_cancel_reaches_the_tool_in_a_worker_process(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    settings = make_settings(lease_s=30)
    async with started(settings) as runtime:
        await spawn_worker(processes, runtime, tmp_path / "worker.log")
        trace = tmp_path / "trace"
        run = await submit(runtime, "test.wait", {"trace": str(trace), "seconds": 120})
        await wait_for(lambda: trace.exists(), timeout=10)

        await runtime.runs.cancel(run)

        # The lease check runs every 0.5 s: the tool hears of it well within a second.
        await wait_for(lambda: "cancelled True" in trace.read_text(), timeout=2)
        kinds = await types(runtime, run)
        assert kinds[-1] == "run.cancelled" and kinds.count("run.cancelled") == 1
        assert "finished" not in trace.read_text()


async def _has(runtime: Runtime, run: RunRecord, kind: str) -> bool:
    return kind in await types(runtime, run)
