"""The one way a run request reaches the queue: the reaper's look first, then the publish.

    await runtime.dispatch.publish(run.run_id, run.attempt)        # a new or requeued run
    await runtime.dispatch.requeue(run.run_id, next_attempt, change)

Every path that queues a run (a create, a completion, a worker handing a run back, the
reaper retrying or republishing one) calls this. The order is the policy: the reaper
is scheduled to look at the run after ``RUNRELAY_PUBLISH_GRACE_S`` *before* the run
changes and the request is published, so if this process dies at any point after, or
the broker does not confirm the publish, the reaper finds the run still `queued` and
publishes it again. A publish the broker did not confirm is logged, not raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from shared.broker.base import Broker
from shared.errors import PublishFailed
from shared.eventlog.base import Scheduler
from shared.models import RunRequestMessage

log = logging.getLogger(__name__)


class Dispatch:
    """Schedules the reaper's look and publishes run requests (see the module doc)."""

    def __init__(self, scheduler: Scheduler, broker: Broker, *, publish_grace_s: float) -> None:
        self._scheduler = scheduler
        self._broker = broker
        self._grace_s = publish_grace_s

    async def publish(self, run_id: str, attempt: int) -> bool:
        """Schedule, then publish `attempt`; False (logged) when the broker did not confirm."""
        await self._scheduler.schedule(run_id, time.time() + self._grace_s)
        return await self.publish_only(run_id, attempt)

    async def requeue(
        self, run_id: str, attempt: int, change: Callable[[], Awaitable[object]]
    ) -> bool:
        """Schedule, make `change` (the append that queues the run), publish `attempt`.

        An exception from `change` (the run moved on: `AppendRefused`) propagates and
        nothing is published; the early schedule is harmless, the reaper finds the run
        as it is.
        """
        await self._scheduler.schedule(run_id, time.time() + self._grace_s)
        await change()
        return await self.publish_only(run_id, attempt)

    async def publish_only(self, run_id: str, attempt: int) -> bool:
        """Publish without scheduling: for callers whose run already has its look due."""
        try:
            await self.send(run_id, attempt)
        except PublishFailed as exc:
            log.warning(
                "run %s attempt %d not published (the reaper retries): %s", run_id, attempt, exc
            )
            return False
        return True

    async def send(self, run_id: str, attempt: int) -> None:
        """Publish the request for `attempt`; `PublishFailed` when the broker did not confirm."""
        body = RunRequestMessage(run_id=run_id, attempt=attempt).model_dump_json().encode()
        await self._broker.publish_run(body)
