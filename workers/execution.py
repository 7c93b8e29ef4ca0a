"""One claimed attempt of one run on this worker: the tool, its lease, and its one ending.

Two tasks race per run, and this is who wins:

- the *run task* calls the tool and, when the tool returns or raises, appends the
  terminal event (shielded from cancellation, held by this worker and attempt);
- the *lease task* extends the lease every ``min(lease_s / 3, 0.5)`` s. When the
  lease cannot be extended (the run was cancelled, or the reaper gave it to
  another attempt) it sets ``ctx.cancelled`` and cancels the run task, which then
  writes nothing more: the run already has its next owner or its terminal event.

An append the tool makes after losing the run is refused (`AppendRefused`), which
ends the tool the same way. `hand_back` (worker shutdown) returns the run to the
queue for the next attempt before cancelling the tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from shared import tracing
from shared.errors import AppendRefused, BackendUnavailable, NotFound
from shared.models import RunRecord, RunStatus, describe_invalid
from shared.runtime import Runtime
from workers import metrics
from workers.context import Delegated, RunContext
from workers.tools import get_tool

log = logging.getLogger(__name__)

_LEASE_TICK_MAX_S = 0.5


class Execution:
    """Runs `run` (already claimed by `worker_id`) until it ends here; see the module doc."""

    def __init__(self, runtime: Runtime, run: RunRecord, worker_id: str) -> None:
        self.runtime = runtime
        self.run = run
        self.worker_id = worker_id
        self.ctx = RunContext(runtime, run, worker_id)
        self.outcome = "lost"
        self._stopped_by: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._began = time.monotonic()

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name=f"run {self.run.run_id}")
        return self._task

    @property
    def task(self) -> asyncio.Task[None]:
        assert self._task is not None, "start() first"
        return self._task

    # The run task --------------------------------------------------------------------
    async def _run(self) -> None:
        run = self.run
        metrics.RUNS_STARTED.labels(run.tool).inc()
        metrics.ACTIVE_RUNS.inc()
        lease = asyncio.create_task(self._keep_lease(), name=f"lease {run.run_id}")
        # The second phase of a delegated run is its continuation (same tool, same attempt).
        phase = "runrelay.continue" if run.operation_result is not None else "runrelay.tool"
        try:
            with tracing.span(phase, {"runrelay.run_id": run.run_id, "runrelay.tool": run.tool}):
                ending = await self._call_tool()
                if ending is not None:
                    status, error = ending
                    # Stop extending first: the terminal append clears the lease anyway.
                    lease.cancel()
                    await asyncio.shield(self._finish(status, error))
        finally:
            self.ctx.close()
            lease.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease
            metrics.ACTIVE_RUNS.dec()
            metrics.RUNS_FINISHED.labels(run.tool, self.outcome).inc()
            metrics.RUN_DURATION.labels(run.tool).observe(time.monotonic() - self._began)

    async def _call_tool(self) -> tuple[RunStatus, str | None] | None:
        """Run the tool; the ending to append, or None when the run is not ours any more."""
        run = self.run
        tool = get_tool(run.tool)
        if tool is None:
            return RunStatus.FAILED, f"unknown tool: {run.tool}"
        try:
            args = tool.input_model.model_validate(run.input)
        except ValidationError as exc:
            return RunStatus.FAILED, f"invalid input for {run.tool}: {describe_invalid(exc)}"
        try:
            return await self._tool_then_flush(tool.fn, args)
        except asyncio.CancelledError:
            if self._stopped_by is None:
                raise  # not ours: the worker is being torn down
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            self.outcome = self._stopped_by
            log.info("run %s stopped on this worker: %s", run.run_id, self._stopped_by)
            return None
        except AppendRefused as exc:
            self.outcome = "cancelled" if exc.run_status == RunStatus.CANCELLED else "lost"
            log.info("run %s: append refused (%s); tool stopped", run.run_id, exc)
            return None
        except NotFound:
            self.outcome = "vanished"
            log.warning(
                "run %s no longer exists in Redis (its data was lost); tool stopped", run.run_id
            )
            return None
        except Delegated as exc:
            # Waiting for an external completion: no terminal event, the lease stops.
            self.outcome = "delegated"
            log.info("run %s: %s; waiting", run.run_id, exc)
            return None
        except BackendUnavailable as exc:
            # The event log failed, not the tool: a terminal append now could only record
            # "Redis unavailable" as the run's result. End nothing here; the lease runs out
            # and the reaper gives the run to the next attempt once Redis answers again.
            self.outcome = "lost"
            log.warning("run %s: attempt abandoned, backend unavailable: %s", run.run_id, exc)
            return None

    async def _tool_then_flush(
        self, fn: Callable[[RunContext, Any], Awaitable[object]], args: Any
    ) -> tuple[RunStatus, str | None]:
        """The tool's ending, once everything it emitted is stored (the terminal event
        must come after all of it). A refused or failed batch raises here as it would
        at the tool's next emit."""
        try:
            await fn(self.ctx, args)
        except (AppendRefused, NotFound, BackendUnavailable):
            raise
        except Exception as exc:
            log.info("run %s: tool %s raised %r", self.run.run_id, self.run.tool, exc)
            await self.ctx.flush()
            return RunStatus.FAILED, str(exc) or type(exc).__name__
        await self.ctx.flush()
        return RunStatus.COMPLETED, None

    async def _finish(self, status: RunStatus, error: str | None) -> None:
        expect = {"worker": self.worker_id, "attempt": str(self.run.attempt)}
        try:
            await self.runtime.runs.finish(self.run, status, error=error, expect=expect)
        except AppendRefused as exc:
            self.outcome = "cancelled" if exc.run_status == RunStatus.CANCELLED else "lost"
            return
        except Exception:
            # Redis is unreachable: the lease runs out and the reaper retries the run.
            log.exception("run %s: could not append its terminal event", self.run.run_id)
            self.outcome = "lost"
            return
        self.outcome = status.value

    # The lease task -------------------------------------------------------------------
    async def _keep_lease(self) -> None:
        settings = self.runtime.settings
        interval = min(settings.lease_s / 3, _LEASE_TICK_MAX_S)
        while True:
            await asyncio.sleep(interval)
            until = time.time() + settings.lease_s
            try:
                held = await self.runtime.runs.refresh_lease(
                    self.run, worker=self.worker_id, lease_until=until
                )
                if held is not None:
                    await self.runtime.scheduler.schedule(self.run.run_id, until)
            except Exception:
                # A short outage: keep trying; if it outlasts the lease, the reaper takes over
                # and the next successful check tells us.
                log.warning("run %s: lease refresh failed", self.run.run_id, exc_info=True)
                continue
            if held is None:
                await self._lost()
                return

    async def _lost(self) -> None:
        try:
            current = await self.runtime.runs.get(self.run.run_id)
            reason = "cancelled" if current.status == RunStatus.CANCELLED else "lost"
        except NotFound:
            # The record itself is gone: Redis lost its data (a restart without persistence).
            # Nothing can be written for this run any more, so stop the tool and say why.
            log.warning(
                "run %s no longer exists in Redis (its data was lost); tool stopped",
                self.run.run_id,
            )
            reason = "vanished"
        except Exception:
            reason = "lost"
        self.stop(reason)

    def stop(self, reason: str) -> None:
        """Stop the tool cooperatively: set `ctx.cancelled`, cancel the run task."""
        if self._stopped_by is not None:
            return
        self._stopped_by = reason
        self.ctx.cancelled.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # Shutdown ------------------------------------------------------------------------------
    async def hand_back(self) -> None:
        """Give the run to the next attempt (`run.retrying` "worker_shutdown") and stop here."""
        run = self.run
        expect = {
            "worker": self.worker_id,
            "attempt": str(run.attempt),
            "status": RunStatus.RUNNING.value,
        }
        try:
            await self.runtime.dispatch.requeue(
                run.run_id,
                run.attempt + 1,
                lambda: self.runtime.runs.retry(run, "worker_shutdown", expect=expect),
            )
        except AppendRefused:
            pass  # it ended (or moved on) meanwhile; nothing to hand back
        except Exception:
            log.exception("run %s: hand back failed; its lease will expire", run.run_id)
        else:
            log.info("run %s handed back for attempt %d", run.run_id, run.attempt + 1)
        self.stop("handed_back")
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
