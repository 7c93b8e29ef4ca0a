"""A standalone worker process serves its Prometheus metrics on RUNRELAY_METRICS_PORT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from shared.settings import Settings
from tests.support.ports import free_port
from tests.support.procs import Processes
from tests.support.wait import wait_for
from tests.workers.support import spawn_worker, started, submit, wait_status


async def test_a_worker_process_serves_its_metrics(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    port = free_port()
    async with started(make_settings()) as runtime:
        await spawn_worker(processes, runtime, tmp_path / "w.log", RUNRELAY_METRICS_PORT=str(port))
        run = await submit(runtime, "story", {"prompt": "m", "paragraphs": 1, "delay_ms": 0})
        await wait_status(runtime, run, "completed")

        async def scraped() -> str | None:
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            line = 'runrelay_worker_runs_finished_total{status="completed",tool="story"} 1.0'
            return text if line in text else None

        text = await wait_for(scraped, timeout=10, message="worker metrics never showed the run")
        assert 'runrelay_worker_runs_started_total{tool="story"} 1.0' in text
