"""The coalescing appender: a worker's emits, batched per run, many runs per round trip.

    stream = appender.stream(owner, session_id, run_id, rule)  # one per attempt
    await stream.put("output.message.delta", body)   # returns once queued
    await stream.flush()                              # everything put is stored (or raises)

Like a Kafka producer's ``linger.ms`` and batching, applied to the atomic append:

- Events put on one run's stream while an earlier batch of that run is in flight
  wait together and go out as ONE `EventLog.append_batches` batch: one script call,
  N events, consecutive ids, the status and the holder checked once. A run has at
  most one batch in flight, so its order is the order of `put`.
- Batches of many runs that are ready together share one pipelined round trip.
- When nothing is in flight, a put goes out at once: a quiet run is not delayed.
  While rounds are in flight, new events wait for one to return, or at most
  `linger_s`, then go out on their own round (up to `max_rounds` at once).
- A refused batch refuses the run's stream: that batch, everything queued after it
  and every later `put` or `flush` raise the batch's error (`AppendRefused`,
  `NotFound` or `BackendUnavailable`). Since the batch is atomic, none of its events
  is stored; the tool sees the error at its next emit at the latest.
- Queued bytes are bounded per run (`max_run_bytes`) and per process (`max_bytes`):
  a `put` over either bound waits until a round has drained some.

One flusher task per process, started by the first `put`; each round is its own
task. Nothing here awaits while holding a decision: every state change happens
between awaits, on the event loop's one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from shared import tracing
from shared.errors import BackendUnavailable, RunRelayError
from shared.eventlog.base import Batch, EventLog, Transition

log = logging.getLogger(__name__)

# One script call holds Redis for its whole batch (~4 us an event), and Redis writes a
# reader's reply at most 64 KB per pass of its event loop: with 500-event batches an
# API's tail read of 15,000 events took 376 ms while appends ran, and its clients got
# nothing meanwhile. 200 keeps each pass short (100 x 5 fan-out: 0.47x -> 0.57-0.60x
# of the bare ceiling; docs/benchmarks.md).
_MAX_BATCH_EVENTS = 200
_MAX_BATCH_BYTES = 256 * 1024


class RunStream:
    """One attempt's ordered emits into its run's log; see the module doc."""

    __slots__ = (
        "_appender",
        "_drained",
        "bytes",
        "error",
        "inflight",
        "owner",
        "pending",
        "rule",
        "run_id",
        "session_id",
        "trace",
    )

    def __init__(
        self, appender: Appender, owner: str, session_id: str, run_id: str, rule: Transition
    ) -> None:
        self._appender = appender
        self.owner = owner
        self.session_id = session_id
        self.run_id = run_id
        self.rule = rule
        self.pending: list[tuple[str, bytes]] = []
        self.bytes = 0  # queued and in-flight body bytes
        self.inflight = False
        self.error: RunRelayError | None = None
        self._drained: asyncio.Future[None] | None = None
        self.trace: object = None  # the emitting span's context, for the batches' spans

    async def put(self, type_: str, body: bytes) -> None:
        """Queue one event; raises the error of an earlier refused batch, if any."""
        if self.error is not None:
            raise self.error
        if self.trace is None and tracing.enabled():
            self.trace = tracing.current()
        self.pending.append((type_, body))
        self.bytes += len(body)
        app = self._appender
        app.bytes += len(body)
        if not self.inflight and len(self.pending) == 1:
            app.ready(self)
        if self.bytes > app.max_run_bytes or app.bytes > app.max_bytes:
            await app.space(self)
            if self.error is not None:
                raise self.error
        elif len(self.pending) % _MAX_BATCH_EVENTS == 0:
            # A full batch waits: let the flusher send it while this tool queues the
            # next. A tool emitting in a loop that awaits nothing else would otherwise
            # hold the process until its byte bound, and its first batch with it.
            await asyncio.sleep(0)

    async def flush(self) -> None:
        """Wait until everything put is stored; raises the error that refused it."""
        while self.error is None and (self.pending or self.inflight):
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Drop what is not sent yet (the attempt is over); an in-flight batch completes."""
        self._appender.bytes -= sum(len(b) for _, b in self.pending)
        self.bytes -= sum(len(b) for _, b in self.pending)
        self.pending.clear()
        self._settle()

    def take(self) -> Batch:
        """The next batch: the oldest pending events, up to the batch bounds."""
        n, size = 0, 0
        for _, body in self.pending:
            if n >= _MAX_BATCH_EVENTS or (n and size + len(body) > _MAX_BATCH_BYTES):
                break
            n += 1
            size += len(body)
        events, self.pending = self.pending[:n], self.pending[n:]
        self.inflight = True
        return Batch(self.owner, self.session_id, self.run_id, events, self.rule)

    def done(self, batch: Batch, result: int | RunRelayError) -> None:
        """A round returned this stream's batch."""
        self.inflight = False
        sent = sum(len(b) for _, b in batch.events)
        if isinstance(result, RunRelayError):
            self.error = result
            sent += sum(len(b) for _, b in self.pending)
            self.pending.clear()
        self.bytes -= sent
        self._appender.bytes -= sent
        if self.pending:
            self._appender.ready(self)
        self._settle()

    def _settle(self) -> None:
        if self._drained is not None and (
            self.error is not None or not (self.pending or self.inflight)
        ):
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None


class Appender:
    """The process's batching of run appends; one per `Runtime` (see the module doc)."""

    def __init__(
        self,
        log_: EventLog,
        *,
        linger_s: float,
        max_rounds: int = 3,
        max_run_bytes: int = 1 << 20,
        max_bytes: int = 32 << 20,
    ) -> None:
        self.log = log_
        self.linger_s = linger_s
        self.max_rounds = max_rounds
        self.max_run_bytes = max_run_bytes
        self.max_bytes = max_bytes
        self.bytes = 0
        self._ready: dict[RunStream, None] = {}  # insertion-ordered: oldest first
        self._work = asyncio.Event()
        self._round_done = asyncio.Event()
        self._space = asyncio.Event()
        self._rounds: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None

    def stream(self, owner: str, session_id: str, run_id: str, rule: Transition) -> RunStream:
        return RunStream(self, owner, session_id, run_id, rule)

    def ready(self, stream: RunStream) -> None:
        self._ready[stream] = None
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_forever(), name="appender")
        self._work.set()

    async def space(self, stream: RunStream) -> None:
        """Wait until `stream` and the process are back under their byte bounds."""
        while stream.error is None and (
            stream.bytes > self.max_run_bytes or self.bytes > self.max_bytes
        ):
            self._space.clear()
            await self._space.wait()

    async def _flush_forever(self) -> None:
        while True:
            await self._work.wait()
            if self._rounds:
                # Rounds in flight: let this one fill for a moment (the linger), or
                # until a round returns and its runs' next batches are ready too.
                self._round_done.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._round_done.wait(), self.linger_s)
            while len(self._rounds) >= self.max_rounds:
                self._round_done.clear()
                await self._round_done.wait()
            self._work.clear()
            streams = [s for s in self._ready if not s.inflight and s.pending]
            self._ready.clear()
            if not streams:
                continue
            task = asyncio.create_task(self._round(streams, [s.take() for s in streams]))
            self._rounds.add(task)

    async def _round(self, streams: Sequence[RunStream], batches: list[Batch]) -> None:
        results: Sequence[int | RunRelayError] = ()
        spans = tracing.Spans()
        if tracing.enabled():
            for stream, batch in zip(streams, batches, strict=True):
                attributes: dict[str, str | int] = {
                    "runrelay.run_id": batch.run_id,
                    "runrelay.events": len(batch.events),
                }
                spans.start("runrelay.append", stream.trace, attributes)
        try:
            results = await self.log.append_batches(batches)
        except RunRelayError as exc:
            results = [exc] * len(batches)
        except Exception as exc:
            log.exception("appender round failed")
            results = [BackendUnavailable(f"append failed: {exc!r}")] * len(batches)
        finally:
            # Even when cancelled (shutdown), no stream may stay "in flight" forever:
            # an unanswered batch is as good as lost, which is what the error says.
            if not results:
                results = [BackendUnavailable("append interrupted")] * len(batches)
            task = asyncio.current_task()
            if task is not None:
                self._rounds.discard(task)
            for stream, batch, result in zip(streams, batches, results, strict=True):
                stream.done(batch, result)
            spans.end()
            self._round_done.set()
            self._space.set()

    async def close(self) -> None:
        """Wait for the rounds in flight, then stop the flusher."""
        if self._rounds:
            await asyncio.gather(*self._rounds, return_exceptions=True)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
