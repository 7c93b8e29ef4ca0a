"""The broker interface and the typed outcome of handling one message.

Handlers never ack or nack: they return an `Outcome`, and each backend maps
outcomes to broker operations in exactly one place:

- `Ack`: done (processed, or a harmless duplicate).
- `Retry(delay_s, reason)`: try again later; after `max_deliveries` the message
  goes to the dead-letter queue instead. A retry never holds a consumer slot
  while it waits.
- `Reject(reason)`: can never be processed; dead-letter it with the reason.
- `Requeue(delay_s, reason)`: the message is fine but a backend is not (Redis away,
  a connection reset): try again after `delay_s`, counting no delivery. It never
  reaches the dead-letter queue, however long the outage lasts, because an
  infrastructure error is not a property of the message.

`settle_outcome` runs a handler for the backends: a handler that raises
`BackendUnavailable` counts as `Requeue` (with a delay that grows with the
message's requeues, up to `REQUEUE_MAX_S`), any other exception as
`Retry(1.0, <the error>)`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from shared.errors import BackendUnavailable

log = logging.getLogger(__name__)

RUNS_EXCHANGE = "runrelay.runs"
RUNS_QUEUE = "runrelay.runs"
RUNS_ROUTING_KEY = "run.execute"
COMPLETIONS_EXCHANGE = "chat_operations"
COMPLETIONS_QUEUE = "chat_operation_complete"
COMPLETIONS_ROUTING_KEY = "operation.complete"
DEAD_EXCHANGE = "runrelay.dead"
DEAD_QUEUE = "runrelay.dead"

DEFAULT_PREFIX = "runrelay:"


def deployment_tag(prefix: str) -> str:
    """A short, stable name for the deployment of `prefix`; "" for the default prefix."""
    if prefix == DEFAULT_PREFIX:
        return ""
    return hashlib.sha256(prefix.encode()).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class Names:
    """The RabbitMQ names of one deployment (SPEC §6).

    The default prefix keeps the contract's names. Any other `RUNRELAY_KEY_PREFIX`
    puts its namespace into runrelay's own exchanges and queues, and gives the
    deployment its own queue on the external completion exchange, bound with the
    same routing key: every deployment on the broker gets a copy of each completion
    and keeps only its own (operation ids name their deployment, see `operation_tag`).
    """

    runs_exchange: str = RUNS_EXCHANGE
    runs_queue: str = RUNS_QUEUE
    completions_queue: str = COMPLETIONS_QUEUE
    dead_exchange: str = DEAD_EXCHANGE
    dead_queue: str = DEAD_QUEUE
    tag: str = ""

    @classmethod
    def for_prefix(cls, prefix: str) -> Names:
        tag = deployment_tag(prefix)
        if not tag:
            return cls()
        stem = prefix.rstrip(":")
        ns = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)
        if ns != stem or not ns:
            ns = f"{ns}-{tag}"  # distinct prefixes stay distinct after the substitution
        return cls(
            runs_exchange=f"runrelay.{ns}.runs",
            runs_queue=f"runrelay.{ns}.runs",
            completions_queue=f"{COMPLETIONS_QUEUE}.{ns}",
            dead_exchange=f"runrelay.{ns}.dead",
            dead_queue=f"runrelay.{ns}.dead",
            tag=tag,
        )


_OPERATION_ID = re.compile(r"op_(?:([0-9a-f]{8})_)?[0-9a-f]{32}")


def operation_tag(operation_id: str) -> str | None:
    """The deployment tag an operation id was minted with ("" = default); None if not ours."""
    match = _OPERATION_ID.fullmatch(operation_id)
    if match is None:
        return None
    return match.group(1) or ""


def new_operation_id(tag: str) -> str:
    """A fresh operation id naming the deployment `tag` (see `Names`)."""
    return f"op_{tag}_{uuid.uuid4().hex}" if tag else f"op_{uuid.uuid4().hex}"


REQUEUE_FIRST_S = 0.25
REQUEUE_MAX_S = 5.0


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


@dataclass(frozen=True, slots=True)
class Requeue:
    delay_s: float
    reason: str


Outcome = Ack | Retry | Reject | Requeue


@dataclass(frozen=True, slots=True)
class Delivery:
    """One received message as handlers see it."""

    body: bytes
    deliveries: int  # 1 on first delivery, counting redeliveries and retries
    headers: dict[str, object] = field(default_factory=dict)
    requeues: int = 0  # times it waited for a backend (`Requeue`); not deliveries


Handler = Callable[[Delivery], Awaitable[Outcome]]


def requeue_delay(requeues: int) -> float:
    """Doubling from `REQUEUE_FIRST_S` with each requeue, capped at `REQUEUE_MAX_S`."""
    return float(min(REQUEUE_MAX_S, REQUEUE_FIRST_S * 2 ** min(requeues, 16)))


async def settle_outcome(queue: str, handler: Handler, delivery: Delivery) -> Outcome:
    """The handler's outcome; an exception from it becomes one (see the module doc)."""
    try:
        return await handler(delivery)
    except BackendUnavailable as exc:
        log.warning("handling a message from %s: %s; requeued", queue, exc)
        return Requeue(requeue_delay(delivery.requeues), str(exc))
    except Exception as exc:
        log.warning("handler for %s raised; retrying", queue, exc_info=True)
        return Retry(1.0, repr(exc))


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
