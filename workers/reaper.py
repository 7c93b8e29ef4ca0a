"""The reaper: finds runs nobody is moving forward and moves them, in every worker.

Every run has one due time in the deadlines set (`EventLog.schedule`): creation
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
from shared.lifecycle import record_from
from shared.models import RunStatus
from shared.runtime import Runtime
from workers import metrics
from workers.execution import publish_attempt, seconds_since

log = logging.getLogger(__name__)

INTERVAL_S = 0.5
BATCH = 200


class Reaper:
    """``await reaper.sweep()`` once, or ``task = reaper.start()`` to sweep every ~0.5 s."""

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
        due = await self.runtime.log.due(time.time(), BATCH)
        for run_id in due:
            try:
                await self.check(run_id)
            except Exception:
                log.warning("reaper: checking run %s failed", run_id, exc_info=True)
        return len(due)

    async def check(self, run_id: str) -> None:
        runtime = self.runtime
        settings = runtime.settings
        fields = await runtime.log.get_run(run_id)
        if fields is None:
            await runtime.log.unschedule(run_id)
            return
        run = record_from(fields)
        now = time.time()
        if run.terminal:
            await runtime.log.unschedule(run_id)
        elif run.status == RunStatus.RUNNING:
            lease = fields.get("lease_until", "")
            # A running run without a lease (e.g. resumed after an operation) is held
            # for one lease period from its last change.
            lease_end = (
                float(lease) if lease else now - seconds_since(run.updated_at) + (settings.lease_s)
            )
            if lease_end > now:
                await runtime.log.schedule(run_id, lease_end)
                return
            expect = {"status": RunStatus.RUNNING.value, "attempt": str(run.attempt)}
            # Compare only fields that exist: a missing field never equals "".
            for name in ("worker", "lease_until", "updated_at"):
                if name in fields:
                    expect[name] = fields[name]
            await self._worker_lost(run_id, fields, expect)
        elif run.status == RunStatus.QUEUED:
            await runtime.log.schedule(run_id, now + settings.publish_grace_s)
            if await publish_attempt(runtime.broker, run_id, run.attempt):
                metrics.REAPER_ACTIONS.labels("republished").inc()
                log.info("reaper: run %s still queued; republished attempt %d", run_id, run.attempt)
        elif run.status == RunStatus.WAITING:
            deadline = now - seconds_since(run.updated_at) + settings.operation_timeout_s
            if deadline > now:
                await runtime.log.schedule(run_id, deadline)
                return
            expect = {"status": RunStatus.WAITING.value, "updated_at": fields["updated_at"]}
            try:
                await runtime.runs.finish(
                    run, RunStatus.FAILED, error="operation_timeout", expect=expect
                )
            except AppendRefused:
                return
            metrics.REAPER_ACTIONS.labels("operation_timeout").inc()
            log.info("reaper: run %s failed: operation_timeout", run_id)

    async def _worker_lost(
        self, run_id: str, fields: dict[str, str], expect: dict[str, str]
    ) -> None:
        runtime = self.runtime
        run = record_from(fields)
        worker = fields.get("worker") or "?"
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
            await runtime.runs.retry(run, "worker_lost", expect=expect)
        except AppendRefused:
            return
        metrics.REAPER_ACTIONS.labels("retried").inc()
        log.warning(
            "reaper: run %s lost by worker %s; retrying as attempt %d",
            run_id,
            worker,
            run.attempt + 1,
        )
        # Scheduled before the publish: a lost publish is republished after the grace.
        await runtime.log.schedule(run_id, time.time() + runtime.settings.publish_grace_s)
        await publish_attempt(runtime.broker, run_id, run.attempt + 1)
