"""The reaper: finds runs nobody is moving forward and moves them, in every worker.

Every run has one due time in the deadlines set (`Scheduler.schedule`): creation
schedules it a publish grace ahead, a claim and each lease refresh move it to the
lease's end. Every ~0.5 s the reaper looks at the runs that are due:

- running, lease expired: the worker died (or froze). Attempts left: `run.retrying`
  ("worker_lost") and a new run request for the next attempt; none left:
  `run.failed` with error "worker_lost".
- queued past its publish grace: the API died between create and publish, or a
  publish was lost: publish the same attempt again (a duplicate is dropped by the
  claim).
- waiting longer than ``RUNRELAY_OPERATION_TIMEOUT_S``: `run.failed` "operation_timeout".
- terminal or gone: forget it.

Any number of reapers may race over the same run: every change is a
compare-and-set on what was read (status, worker, lease end), so exactly one
wins, and the attempt number fences off a worker that comes back late.
"""

from __future__ import annotations

import asyncio
import logging
import time

from shared.errors import AppendRefused
from shared.models import RunRecord, RunStatus, seconds_since
from shared.runtime import Runtime
from workers import metrics

log = logging.getLogger(__name__)

INTERVAL_S = 0.5
BATCH = 200


class Reaper:
    """``await reaper.sweep()`` once, or ``await reaper.run_forever()`` (in a task) to sweep
    every ~0.5 s."""

    def __init__(self, runtime: Runtime, *, interval_s: float = INTERVAL_S) -> None:
        self.runtime = runtime
        self.interval_s = interval_s

    async def run_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.warning("reaper sweep failed; trying again", exc_info=True)
            await asyncio.sleep(self.interval_s)

    async def sweep(self) -> int:
        """Look at every due run once; returns how many were due."""
        due = await self.runtime.scheduler.due(time.time(), BATCH)
        for run_id in due:
            try:
                await self.check(run_id)
            except Exception:
                log.warning("reaper: checking run %s failed", run_id, exc_info=True)
        return len(due)

    async def check(self, run_id: str) -> None:
        runtime = self.runtime
        settings = runtime.settings
        scheduler = runtime.scheduler
        run = await runtime.store.get_run(run_id)
        if run is None:
            await scheduler.unschedule(run_id)
            return
        now = time.time()
        if run.terminal:
            await scheduler.unschedule(run_id)
        elif run.status == RunStatus.RUNNING:
            # A running run without a lease (e.g. resumed after an operation) is held
            # for one lease period from its last change.
            lease_end = run.lease_until or now - seconds_since(run.updated_at) + settings.lease_s
            if lease_end > now:
                await scheduler.schedule(run_id, lease_end)
                return
            # Compare-and-set on what was read. Only fields that are set are compared:
            # a missing field never equals "".
            expect = {
                "status": RunStatus.RUNNING.value,
                "attempt": str(run.attempt),
                "updated_at": run.updated_at,
            }
            if run.worker is not None:
                expect["worker"] = run.worker
            if run.lease_until is not None:
                expect["lease_until"] = repr(run.lease_until)
            await self._worker_lost(run, expect)
        elif run.status == RunStatus.QUEUED:
            if await runtime.dispatch.publish(run_id, run.attempt):
                metrics.REAPER_ACTIONS.labels("republished").inc()
                log.info("reaper: run %s still queued; republished attempt %d", run_id, run.attempt)
        elif run.status == RunStatus.WAITING:
            deadline = now - seconds_since(run.updated_at) + settings.operation_timeout_s
            if deadline > now:
                await scheduler.schedule(run_id, deadline)
                return
            expect = {"status": RunStatus.WAITING.value, "updated_at": run.updated_at}
            try:
                await runtime.runs.finish(
                    run, RunStatus.FAILED, error="operation_timeout", expect=expect
                )
            except AppendRefused:
                return
            metrics.REAPER_ACTIONS.labels("operation_timeout").inc()
            log.info("reaper: run %s failed: operation_timeout", run_id)

    async def _worker_lost(self, run: RunRecord, expect: dict[str, str]) -> None:
        runtime = self.runtime
        run_id = run.run_id
        worker = run.worker or "?"
        if run.attempt >= runtime.settings.max_attempts:
            try:
                await runtime.runs.finish(run, RunStatus.FAILED, error="worker_lost", expect=expect)
            except AppendRefused:
                return  # another reaper, the worker itself or a cancel got there first
            metrics.REAPER_ACTIONS.labels("failed_worker_lost").inc()
            log.warning(
                "reaper: run %s lost by worker %s on its last attempt %d: failed worker_lost",
                run_id,
                worker,
                run.attempt,
            )
            return
        try:
            await runtime.dispatch.requeue(
                run_id,
                run.attempt + 1,
                lambda: runtime.runs.retry(run, "worker_lost", expect=expect),
            )
        except AppendRefused:
            return
        metrics.REAPER_ACTIONS.labels("retried").inc()
        log.warning(
            "reaper: run %s lost by worker %s; retrying as attempt %d",
            run_id,
            worker,
            run.attempt + 1,
        )
