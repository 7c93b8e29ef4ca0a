"""The in-process broker for `runrelay dev`: RabbitMQ's semantics with nothing installed.

Messages live in this process only (a restart loses them). Otherwise it
behaves like `RabbitBroker`: prefetch bounds the handlers running at once, a
`Retry` waits on a timer without holding a slot, rejected or exhausted
messages become dead letters with their reason and source queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from shared.broker.base import (
    Ack,
    DeadLetter,
    Delivery,
    Handler,
    Names,
    Outcome,
    QueueStats,
    Reject,
    Requeue,
    Retry,
    settle_outcome,
)
from shared.errors import BackendUnavailable, NotFound, PublishFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Message:
    body: bytes
    deliveries: int = 1
    requeues: int = 0


class _Queue:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ready: asyncio.Queue[_Message] = asyncio.Queue()
        self.consumers = 0


class MemoryBroker:
    """The `Broker` in this process's memory."""

    def __init__(self, max_deliveries: int = 5, names: Names | None = None) -> None:
        self.max_deliveries = max_deliveries
        self.names = names or Names()
        self._connected = False
        self._runs = _Queue(self.names.runs_queue)
        self._completions = _Queue(self.names.completions_queue)
        self._dead: deque[DeadLetter] = deque()
        self._timers: set[asyncio.TimerHandle] = set()
        self._consumers: set[_MemoryConsumer] = set()

    async def connect(self) -> None:
        self._connected = True

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.stop()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._connected = False

    async def ping(self) -> None:
        if not self._connected:
            raise BackendUnavailable("the in-memory broker is not connected")

    async def publish_run(self, body: bytes) -> None:
        self._put(self._runs, _Message(body))

    async def publish_completion(self, body: bytes) -> None:
        self._put(self._completions, _Message(body))

    def _put(self, queue: _Queue, message: _Message) -> None:
        if not self._connected:
            raise PublishFailed(f"cannot publish to {queue.name}: the broker is closed")
        queue.ready.put_nowait(message)

    async def consume_runs(self, handler: Handler, prefetch: int) -> _MemoryConsumer:
        return self._consume(self._runs, handler, prefetch)

    async def consume_completions(self, handler: Handler, prefetch: int) -> _MemoryConsumer:
        return self._consume(self._completions, handler, prefetch)

    def _consume(self, queue: _Queue, handler: Handler, prefetch: int) -> _MemoryConsumer:
        if not self._connected:
            raise BackendUnavailable("the in-memory broker is not connected")
        consumer = _MemoryConsumer(self, queue, handler, max(1, prefetch))
        self._consumers.add(consumer)
        return consumer

    async def _handle(self, queue: _Queue, handler: Handler, message: _Message) -> None:
        delivery = Delivery(
            body=message.body, deliveries=message.deliveries, requeues=message.requeues
        )
        outcome = await settle_outcome(queue.name, handler, delivery)
        self._settle(queue, message, outcome)

    def _settle(self, queue: _Queue, message: _Message, outcome: Outcome) -> None:
        """The one place where an outcome becomes queue operations."""
        match outcome:
            case Ack():
                pass
            case Reject(reason=reason):
                self._dead.append(DeadLetter(message.body, reason, queue.name))
            case Retry(reason=reason) if message.deliveries >= self.max_deliveries:
                reason = f"max deliveries exceeded: {reason}"
                self._dead.append(DeadLetter(message.body, reason, queue.name))
            case Retry(delay_s=delay_s):
                again = _Message(message.body, message.deliveries + 1, message.requeues)
                self._later(max(0.0, delay_s), queue, again)
            case Requeue(delay_s=delay_s):
                again = _Message(message.body, message.deliveries, message.requeues + 1)
                self._later(max(0.0, delay_s), queue, again)

    def _later(self, delay_s: float, queue: _Queue, message: _Message) -> None:
        def due() -> None:
            self._timers.discard(timer)
            queue.ready.put_nowait(message)

        timer = asyncio.get_running_loop().call_later(delay_s, due)
        self._timers.add(timer)

    async def stats(self) -> list[QueueStats]:
        await self.ping()
        return [
            QueueStats(q.name, q.ready.qsize(), q.consumers)
            for q in (self._runs, self._completions)
        ] + [QueueStats(self.names.dead_queue, len(self._dead), 0)]

    async def take_dead_letters(self, limit: int) -> list[DeadLetter]:
        await self.ping()
        return [self._dead.popleft() for _ in range(min(limit, len(self._dead)))]

    async def list_dead_letters(self, limit: int) -> list[DeadLetter]:
        await self.ping()
        return list(self._dead)[:limit]

    async def replay_dead_letter(self, letter_id: str) -> DeadLetter:
        await self.ping()
        letter = next((d for d in self._dead if d.id == letter_id), None)
        queue = {q.name: q for q in (self._runs, self._completions)}.get(
            letter.source if letter else ""
        )
        if letter is None or queue is None:
            raise NotFound(f"dead letter {letter_id} not found")
        self._put(queue, _Message(letter.body))
        self._dead.remove(letter)
        return letter

    async def purge_dead_letters(self) -> int:
        await self.ping()
        count = len(self._dead)
        self._dead.clear()
        return count


class _MemoryConsumer:
    def __init__(
        self, broker: MemoryBroker, queue: _Queue, handler: Handler, prefetch: int
    ) -> None:
        self._broker = broker
        self._queue = queue
        self._handler = handler
        self._slots = asyncio.Semaphore(prefetch)
        self._tasks: set[asyncio.Task[None]] = set()
        queue.consumers += 1
        self._loop = asyncio.create_task(self._take(), name=f"consume {queue.name}")

    async def _take(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                message = await self._queue.ready.get()
            except asyncio.CancelledError:
                self._slots.release()
                raise
            task = asyncio.create_task(self._run(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, message: _Message) -> None:
        try:
            await self._broker._handle(self._queue, self._handler, message)
        finally:
            self._slots.release()

    async def stop(self) -> None:
        if self._loop.done():
            return
        self._loop.cancel()
        await asyncio.gather(self._loop, return_exceptions=True)
        self._queue.consumers -= 1
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._broker._consumers.discard(self)
