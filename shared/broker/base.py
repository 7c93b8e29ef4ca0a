"""The broker interface and the typed outcome of handling one message.

Handlers never ack or nack: they return an `Outcome`, and each backend maps
outcomes to broker operations in exactly one place:

- `Ack`: done (processed, or a harmless duplicate).
- `Retry(delay_s, reason)`: try again later; after `max_deliveries` the message
  goes to the dead-letter queue instead. A retry never holds a consumer slot
  while it waits.
- `Reject(reason)`: can never be processed; dead-letter it with the reason.

A handler that raises counts as `Retry(1.0, <the error>)`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

RUNS_EXCHANGE = "runrelay.runs"
RUNS_QUEUE = "runrelay.runs"
RUNS_ROUTING_KEY = "run.execute"
COMPLETIONS_EXCHANGE = "chat_operations"
COMPLETIONS_QUEUE = "chat_operation_complete"
COMPLETIONS_ROUTING_KEY = "operation.complete"
DEAD_EXCHANGE = "runrelay.dead"
DEAD_QUEUE = "runrelay.dead"


@dataclass(frozen=True, slots=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True)
class Retry:
    delay_s: float
    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str


Outcome = Ack | Retry | Reject


@dataclass(frozen=True, slots=True)
class Delivery:
    """One received message as handlers see it."""

    body: bytes
    deliveries: int  # 1 on first delivery, counting redeliveries and retries
    headers: dict[str, object] = field(default_factory=dict)


Handler = Callable[[Delivery], Awaitable[Outcome]]


@dataclass(frozen=True, slots=True)
class QueueStats:
    name: str
    messages: int
    consumers: int


def new_dead_letter_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    body: bytes
    reason: str
    source: str  # the queue it came from
    # What an operator replays it by, and when it died (unix time, 0 when unknown); not
    # part of equality: two letters are the same message when body, reason and source are.
    id: str = field(default_factory=new_dead_letter_id, compare=False)
    dead_at: float = field(default_factory=time.time, compare=False)


class Consumer(Protocol):
    async def stop(self) -> None:
        """Stop taking new messages; messages being handled finish and are settled."""


class Broker(Protocol):
    async def connect(self) -> None:
        """Connect and declare the topology; raise `BackendUnavailable` if unreachable."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise `BackendUnavailable` unless connected."""

    async def publish_run(self, body: bytes) -> None:
        """Persistent, confirmed publish to `runrelay.runs`; `PublishFailed` otherwise."""

    async def publish_completion(self, body: bytes) -> None:
        """Persistent, confirmed publish to `chat_operations` / `operation.complete`."""

    async def consume_runs(self, handler: Handler, prefetch: int) -> Consumer: ...

    async def consume_completions(self, handler: Handler, prefetch: int) -> Consumer: ...

    async def stats(self) -> list[QueueStats]:
        """Depth and consumers of the runs, completions and dead-letter queues."""

    async def take_dead_letters(self, limit: int) -> list[DeadLetter]:
        """Remove and return up to `limit` dead letters (operators and tests inspect them)."""

    async def list_dead_letters(self, limit: int) -> list[DeadLetter]:
        """Up to `limit` dead letters, oldest first, left where they are."""

    async def replay_dead_letter(self, letter_id: str) -> DeadLetter:
        """Publish dead letter `letter_id` back to its source queue and remove it.

        Raises `NotFound` when no dead letter has that id (already replayed or purged).
        """

    async def purge_dead_letters(self) -> int:
        """Remove every dead letter; how many there were."""
