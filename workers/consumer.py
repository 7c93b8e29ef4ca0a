"""The completion consumer: takes `chat_operation_complete` and requeues delegated runs.

    consumer = CompletionConsumer(runtime)      # runtime started by the caller (runrelay dev)
    await consumer.start()
    ...
    await consumer.stop()

    run_consumer(load_settings())               # `runrelay consumer`: own runtime, signals

It never runs tool code: `workers.completion.handle_completion` appends
`operation.completed` (the run goes back to `queued` with the result) and
publishes a run request; a worker then runs the tool's second phase under its
lease. Between messages it holds nothing, so any number may run side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from shared import tracing
from shared.broker.base import Consumer, Delivery, Outcome
from shared.errors import BackendUnavailable
from shared.runtime import Runtime, naming_setting
from shared.settings import Settings
from workers.completion import handle_completion
from workers.metrics import serve_metrics

log = logging.getLogger(__name__)

PREFETCH = 16


class CompletionConsumer:
    """Consumes completions on `runtime` until stopped; `owns_runtime` as for `Worker`."""

    def __init__(
        self, runtime: Runtime, *, owns_runtime: bool = False, prefetch: int = PREFETCH
    ) -> None:
        self.runtime = runtime
        self.owns_runtime = owns_runtime
        self.prefetch = prefetch
        self._consumer: Consumer | None = None

    async def start(self) -> None:
        if self.owns_runtime:
            await self.runtime.start()
        with naming_setting("RUNRELAY_AMQP_URL"):
            self._consumer = await self.runtime.broker.consume_completions(
                self._on_message, prefetch=self.prefetch
            )
        log.info("completion consumer started (prefetch %d)", self.prefetch)

    async def stop(self) -> None:
        """Take no new messages; those being handled finish and are settled."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
        if self.owns_runtime:
            await self.runtime.close()
        log.info("completion consumer stopped")

    async def _on_message(self, delivery: Delivery) -> Outcome:
        outcome = await handle_completion(self.runtime, delivery)
        log.debug("completion handled: %r", outcome)
        return outcome

    async def run_until_signal(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
            log.info("completion consumer: signal received; stopping")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()


def run_consumer(settings: Settings) -> None:
    """`runrelay consumer`: real backends required; SIGTERM/SIGINT stop it cleanly (exit 0)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    tracing.configure("runrelay-consumer")
    runtime = Runtime.build(settings)
    serve_metrics(settings)
    try:
        import uvloop

        uvloop.run(CompletionConsumer(runtime, owns_runtime=True).run_until_signal())
    except BackendUnavailable as exc:
        raise SystemExit(f"runrelay consumer: cannot start: {exc}") from None
