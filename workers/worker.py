"""The worker: takes run requests from the queue, claims runs, and executes their tools.

    worker = Worker(runtime)            # runtime started by the caller (runrelay dev)
    await worker.start()
    ...
    await worker.stop(grace_s=30)

    run_worker(load_settings())         # `runrelay worker`: own runtime, signals, exit 0

Claim, then ack: a message is acked as soon as its run is claimed, and from then
on the run's durability is its lease in Redis, not the unacked message. That is
why a run may outlast RabbitMQ's consumer timeout, and why a redelivered copy of
the message is harmless (the claim is a compare-and-set on the attempt). See
docs/workers.md for the whole story.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from typing import Any

from pydantic import ValidationError

from shared import tracing
from shared.broker.base import Ack, Consumer, Delivery, Outcome, Reject, Retry
from shared.errors import BackendUnavailable, NotFound
from shared.models import (
    RunRecord,
    RunRequestMessage,
    RunStatus,
    describe_invalid,
    seconds_since,
    utcnow,
)
from shared.runtime import Runtime, naming_setting
from shared.settings import Settings
from workers import metrics
from workers.execution import Execution
from workers.reaper import Reaper
from workers.tools import load_tool_modules, tool_names, tool_specs

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
HEARTBEAT_TTL_S = 3 * HEARTBEAT_S


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Consumes `runrelay.runs` and runs up to ``RUNRELAY_WORKER_CONCURRENCY`` runs at once.

    `owns_runtime=True` makes `start` start the runtime and `stop` close it (the
    `runrelay worker` process); otherwise the caller owns it (`runrelay dev`).
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        worker_id: str | None = None,
        owns_runtime: bool = False,
        reaper: bool = True,
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.worker_id = worker_id or new_worker_id()
        self.owns_runtime = owns_runtime
        self.executions: dict[str, Execution] = {}
        self._slots = asyncio.Semaphore(self.settings.worker_concurrency)
        self._stopping = asyncio.Event()
        self._consumer: Consumer | None = None
        self._background: list[asyncio.Task[None]] = []
        self._reaper = Reaper(runtime) if reaper else None
        self._started_at = utcnow()
        self._stopped = False
        self._tool_specs: list[dict[str, Any]] = []

    # Lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the tools, start consuming, heartbeating and reaping."""
        load_tool_modules(self.settings.tools)
        self._tool_specs = tool_specs()
        if self.owns_runtime:
            await self.runtime.start()
        with naming_setting("RUNRELAY_AMQP_URL"):
            self._consumer = await self.runtime.broker.consume_runs(
                self._on_message, prefetch=self.settings.worker_concurrency
            )
        # After consuming starts, so a listed worker is one that takes runs.
        await self._heartbeat_once()
        self._background.append(asyncio.create_task(self._heartbeats(), name="worker heartbeat"))
        if self._reaper is not None:
            self._background.append(asyncio.create_task(self._reaper.run_forever(), name="reaper"))
        log.info(
            "worker %s started: concurrency %d, tools %s",
            self.worker_id,
            self.settings.worker_concurrency,
            ", ".join(tool_names()),
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: take no new runs, give running ones `grace_s`, hand the rest back."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        # Before stopping the consumer: handlers waiting for a slot must give their
        # message back now, or the consumer would wait for them.
        self._stopping.set()
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
        tasks = [e.task for e in self.executions.values()]
        if tasks:
            log.info("worker %s draining %d runs (grace %.1f s)", self.worker_id, len(tasks), grace)
            if grace > 0:
                await asyncio.wait(tasks, timeout=grace)
        left = list(self.executions.values())
        if left:
            log.info("worker %s handing back %d unfinished runs", self.worker_id, len(left))
            await asyncio.gather(*(e.hand_back() for e in left), return_exceptions=True)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.runtime.workers.remove(self.worker_id)
        if self.owns_runtime:
            await self.runtime.close()
        log.info("worker %s stopped", self.worker_id)

    async def run_until_signal(self) -> None:
        """Start, run until SIGTERM or SIGINT, then drain (a second signal skips the grace)."""
        loop = asyncio.get_running_loop()
        signals = asyncio.Queue[int]()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signals.put_nowait, sig)
        try:
            await self.start()
            received = await signals.get()
            log.info("worker %s got %s; draining", self.worker_id, signal.Signals(received).name)
            drain = asyncio.create_task(self.stop())
            hurry = asyncio.create_task(signals.get())
            await asyncio.wait({drain, hurry}, return_when=asyncio.FIRST_COMPLETED)
            if not drain.done():
                log.info("worker %s: second signal; handing back at once", self.worker_id)
                for execution in list(self.executions.values()):
                    await execution.hand_back()
                await drain
            hurry.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    # Handling one run request ------------------------------------------------------------
    async def _on_message(self, delivery: Delivery) -> Outcome:
        try:
            request = RunRequestMessage.model_validate_json(delivery.body)
        except ValidationError as exc:
            return Reject(f"malformed run message: {describe_invalid(exc)}")
        try:
            run = await self.runtime.runs.get(request.run_id)
        except NotFound:
            return Reject(f"unknown run: {request.run_id}")
        if request.attempt != run.attempt or run.status != RunStatus.QUEUED:
            # A stale or duplicate delivery: the run moved on without this message.
            log.debug("run %s: dropping delivery for attempt %d", run.run_id, request.attempt)
            return Ack()
        if not await self._take_slot():
            return await self._give_back(delivery)
        with tracing.span("runrelay.claim", {"runrelay.run_id": run.run_id}):
            # The execution's task starts inside: its spans are children of the claim.
            return await self._claim(run)

    async def _claim(self, run: RunRecord) -> Outcome:
        try:
            lease_until = time.time() + self.settings.lease_s
            claimed = await self.runtime.runs.start(
                run, worker=self.worker_id, lease_until=lease_until
            )
            if claimed is None:
                self._slots.release()
                return Ack()  # another worker has it, or it was cancelled meanwhile
            await self.runtime.scheduler.schedule(run.run_id, lease_until)
        except BaseException:
            self._slots.release()
            raise
        if claimed.attempt == 1:
            metrics.QUEUE_LAG.labels(claimed.tool).observe(max(0.0, seconds_since(run.created_at)))
        execution = Execution(self.runtime, claimed, self.worker_id)
        self.executions[claimed.run_id] = execution
        execution.start().add_done_callback(lambda _: self._done(claimed.run_id))
        return Ack()

    def _done(self, run_id: str) -> None:
        self.executions.pop(run_id, None)
        self._slots.release()

    async def _take_slot(self) -> bool:
        """Wait for a free slot; False when the worker started draining first."""
        if self._stopping.is_set():
            return False
        acquire = asyncio.ensure_future(self._slots.acquire())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({acquire, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not acquire.done():
                acquire.cancel()
        if acquire.done() and not acquire.cancelled():
            if self._stopping.is_set():
                self._slots.release()
                return False
            return True
        return False

    async def _give_back(self, delivery: Delivery) -> Outcome:
        """Return an unclaimed request to the queue as a fresh message (no delivery counted)."""
        try:
            await self.runtime.broker.publish_run(delivery.body)
        except Exception as exc:
            return Retry(1.0, f"worker shutting down; republish failed: {exc}")
        return Ack()

    # Heartbeats -------------------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._heartbeat_once()
            except Exception:
                log.warning("worker heartbeat failed", exc_info=True)

    async def _heartbeat_once(self) -> None:
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "concurrency": self.settings.worker_concurrency,
            "active": len(self.executions),
            "started_at": self._started_at,
            "tools": tool_names(),
        }
        # With every heartbeat, so the API's memory of them never lapses while we run; and
        # first, so a worker that is listed has its tools known.
        await self.runtime.workers.advertise_tools(self._tool_specs, time.time())
        await self.runtime.workers.heartbeat(self.worker_id, info, HEARTBEAT_TTL_S)


def run_worker(settings: Settings) -> None:
    """`runrelay worker`: real backends, uvloop, SIGTERM/SIGINT drain, exit 0 when drained.

    Raises `ConfigError` for missing settings or tool modules; exits with a message
    naming the backend when Redis or RabbitMQ cannot be reached.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    load_tool_modules(settings.tools)
    tracing.configure("runrelay-worker")
    runtime = Runtime.build(settings)
    metrics.serve_metrics(settings)
    try:
        import uvloop

        uvloop.run(_serve(runtime))
    except BackendUnavailable as exc:
        raise SystemExit(f"runrelay worker: cannot start: {exc}") from None


async def _serve(runtime: Runtime) -> None:
    worker = Worker(runtime, owns_runtime=True)
    try:
        await worker.run_until_signal()
    except BaseException:
        with contextlib.suppress(Exception):
            await runtime.close()
        raise
