"""The RabbitMQ broker (aio-pika): SPEC §6 topology, confirmed persistent publishes.

    broker = RabbitBroker("amqp://guest:guest@127.0.0.1:5672/")
    await broker.connect()
    consumer = await broker.consume_runs(handler, prefetch=4)
    ...
    await consumer.stop()
    await broker.close()

The connection is robust: when RabbitMQ goes away, aio-pika reconnects (waiting
longer the longer the broker stays away), re-declares the topology and resumes
the consumers. Publishing while disconnected raises `PublishFailed` at once.
Given several URLs (the nodes of one cluster, comma-separated), the first that
answers is used, and each reconnect attempt takes the next node in turn.

A `Retry` is an ack plus a confirmed re-publish into `runrelay.retry.<queue>`,
a consumer-less queue whose per-message TTL dead-letters the message back to
its source after the delay, so a waiting retry holds no prefetch slot. Like any
per-message TTL, a message expires only at the head of its retry queue: a long
delay ahead of a short one holds the short one back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.connection import make_url
from aio_pika.robust_connection import RobustConnection

from shared import tracing
from shared.broker.base import (
    COMPLETIONS_EXCHANGE,
    COMPLETIONS_ROUTING_KEY,
    RUNS_ROUTING_KEY,
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
    new_dead_letter_id,
    settle_outcome,
)
from shared.errors import BackendUnavailable, NotFound, PublishFailed

log = logging.getLogger(__name__)

DELIVERIES_HEADER = "x-runrelay-deliveries"
REQUEUES_HEADER = "x-runrelay-requeues"
REASON_HEADER = "x-runrelay-reason"
SOURCE_HEADER = "x-runrelay-source"
DEAD_ID_HEADER = "x-runrelay-dead-id"
DEAD_AT_HEADER = "x-runrelay-dead-at"
_DEAD_HEADERS = frozenset({REASON_HEADER, SOURCE_HEADER, DEAD_ID_HEADER, DEAD_AT_HEADER})
# How many dead letters a replay looks through for the id it was given.
_REPLAY_SCAN = 10_000
# Headers the broker adds on its own; a re-published message must start afresh.
_BROKER_HEADERS = frozenset(
    {
        "x-death",
        "x-delivery-count",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)

RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 5.0
BROKER_LIMIT_FACTOR = 20


def broker_delivery_limit(max_deliveries: int) -> int:
    """The runs queue's own `x-delivery-limit`: far above ours, never the one that decides.

    A quorum queue counts every return, and an AMQP connection reset returns every
    unacked message — a worker holds its whole prefetch while it waits for a slot. With
    the broker's limit at ours, a few resets during a backlog dead-lettered valid run
    requests. Our count (`Retry`, in `_settle`) is the authoritative one; the broker's
    only stops a message that kills every consumer that takes it, forever.
    """
    return BROKER_LIMIT_FACTOR * max_deliveries


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a source queue's messages are published, and where its retries wait."""

    queue: str
    exchange: str
    routing_key: str
    arguments: dict[str, Any]
    passive: bool = False  # use the queue as it exists (see `_adopt_runs_queue`)

    @property
    def retry_queue(self) -> str:
        return f"runrelay.retry.{self.queue}"


class _BackoffConnection(RobustConnection):
    """A robust connection whose pause between attempts grows while the broker is away,
    and whose reconnect attempts go round the cluster's `nodes` (the connected one first)."""

    _base_interval: float = RECONNECT_FIRST_S
    _down_since: float | None = None
    nodes: tuple[str, ...] = ()
    _node = 0

    @property
    def reconnect_interval(self) -> float:
        if self._down_since is None:
            return self._base_interval
        waited = time.monotonic() - self._down_since
        return min(RECONNECT_MAX_S, max(self._base_interval, waited / 2))

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._base_interval = float(value)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if self._down_since is None and not self._close_called:
            self._down_since = time.monotonic()
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        await super()._on_connected()
        self._down_since = None

    async def _RobustConnection__connect_transport(self) -> None:
        # aio-pika's one place where a reconnect attempt is made (a private name; the
        # several-URLs contract test fails if an upgrade renames it). Each attempt goes
        # to the next node, so a dead node costs one failed attempt per round.
        if len(self.nodes) > 1:
            self._node = (self._node + 1) % len(self.nodes)
            self.url = make_url(self.nodes[self._node])
        connect = super()._RobustConnection__connect_transport  # type: ignore[misc]
        await connect()


def outgoing_message(
    body: bytes,
    headers: dict[str, Any] | None = None,
    expiration_s: float | None = None,
) -> aio_pika.Message:
    """Every message this broker publishes: persistent, so it survives a broker restart."""
    return aio_pika.Message(
        body,
        headers=headers or {},
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        expiration=None if expiration_s is None else max(0.0, expiration_s),
    )


def deliveries_of(message: AbstractIncomingMessage) -> int:
    """1 on first delivery; our retries count via our header, broker redeliveries via its own."""
    headers = message.headers or {}
    ours = headers.get(DELIVERIES_HEADER)
    count = ours if isinstance(ours, int) and ours >= 1 else 1
    # Quorum queues count returns (consumer crash, channel closed); classic ones only flag them.
    returned = headers.get("x-delivery-count")
    if isinstance(returned, int):
        return count + returned
    return count + (1 if message.redelivered else 0)


def _masked(url: str) -> str:
    parts = urlsplit(url)
    vhost = parts.path.lstrip("/") or "/"
    return f"{parts.hostname or 'localhost'}:{parts.port or 5672} (vhost {vhost})"


def _instrument() -> None:
    """aio-pika's OpenTelemetry instrumentation: a span per publish and per delivery, the
    trace context injected into and read from the message headers (shared.tracing)."""
    try:
        from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor
    except ImportError:
        return
    instrumentor = AioPikaInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


class RabbitBroker:
    """The `Broker` on RabbitMQ. `name` is the connection name operators see in RabbitMQ.

    `url` may list the nodes of one cluster, comma-separated, tried in order.
    """

    def __init__(
        self,
        url: str,
        *,
        max_deliveries: int = 5,
        name: str = "runrelay",
        publish_timeout_s: float = 10.0,
        connect_timeout_s: float = 10.0,
        names: Names | None = None,
    ) -> None:
        self.max_deliveries = max_deliveries
        self.names = names = names or Names()
        self._urls = [part.strip() for part in url.split(",") if part.strip()]
        self._where = ", ".join(_masked(node) for node in self._urls)
        self._name = name
        self._publish_timeout_s = publish_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._runs = _Route(
            names.runs_queue,
            names.runs_exchange,
            RUNS_ROUTING_KEY,
            {
                "x-queue-type": "quorum",
                # RabbitMQ < 4.0 has no default limit: a message that keeps
                # crashing consumers would be redelivered forever.
                "x-delivery-limit": broker_delivery_limit(max_deliveries),
                "x-dead-letter-exchange": names.dead_exchange,
            },
        )
        # External services may declare it as a classic queue with no arguments.
        # Another deployment's queue on the same exchange and key (see `Names`).
        self._completions = _Route(
            names.completions_queue, COMPLETIONS_EXCHANGE, COMPLETIONS_ROUTING_KEY, {}
        )
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._admin: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._dead_queue: AbstractQueue | None = None
        self._consumers: set[_RabbitConsumer] = set()

    async def _connect_first(self) -> AbstractRobustConnection:
        """A robust connection to the first node that answers, the others its fallbacks.

        Each attempt is bounded by `connect_timeout_s`, and the connection is built here
        rather than by `connect_robust`, so that an attempt that times out can still be
        closed (with its reconnect task) instead of leaking it.
        """
        failures = []
        for index, url in enumerate(self._urls):
            connection = _BackoffConnection(
                make_url(url),
                client_properties={"connection_name": self._name},
                reconnect_interval=RECONNECT_FIRST_S,
            )
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    await connection.connect(timeout=self._connect_timeout_s)
            except Exception as exc:  # every failure here means the same thing to the caller
                await _close_quietly(connection, self._connect_timeout_s)
                failures.append(f"{_masked(url)}: {_described(exc, self._connect_timeout_s)}")
                continue
            connection.nodes = (*self._urls[index:], *self._urls[:index])
            return connection
        raise BackendUnavailable(f"RabbitMQ unreachable at {'; '.join(failures)}")

    async def connect(self) -> None:
        """Connect and declare the topology, each step within `connect_timeout_s`, or raise.

        Every step is bounded: a broker that accepts the connection but never answers
        an RPC (seen after a kill -9, while it recovers its quorum queues) must not
        leave the process waiting forever with nothing said.
        """
        if tracing.enabled():
            _instrument()
        connection = await self._connect_first()
        step = "declaring the topology"
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._adopt_runs_queue(connection)
                self._publisher = await connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                self._admin = await connection.channel(publisher_confirms=False)
                await self._declare(self._publisher, self._admin)
        except Exception as exc:
            await _close_quietly(connection, self._connect_timeout_s)
            self._publisher = self._admin = self._dead_queue = None
            self._exchanges.clear()
            raise BackendUnavailable(self._startup_failure(step, exc)) from exc
        self._connection = connection

    def _startup_failure(self, step: str, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            limit = self._connect_timeout_s
            return f"RabbitMQ at {self._where} did not answer within {limit} s ({step})"
        return f"RabbitMQ at {self._where} failed while {step}: {type(exc).__name__}: {exc}"

    async def _adopt_runs_queue(self, connection: AbstractRobustConnection) -> None:
        """Use a runs queue that an earlier runrelay declared with another delivery limit.

        Queue arguments cannot change after the fact (RabbitMQ refuses the declaration),
        so a deployment upgraded from the old limit keeps its queue as it is, with a
        warning, rather than failing to start. A probe channel, since the refusal closes it.
        """
        probe = await connection.channel(publisher_confirms=False)
        route = self._runs
        try:
            await probe.declare_queue(route.queue, durable=True, arguments=route.arguments)
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            if "x-delivery-limit" not in str(exc):
                raise
            log.warning(
                "%s exists with another x-delivery-limit (%s); using it as it is. A broker-side "
                "limit near %d dead-letters valid requests after that many connection resets: "
                "delete the queue while it is empty and restart to get %d",
                route.queue,
                exc,
                self.max_deliveries,
                route.arguments["x-delivery-limit"],
            )
            self._runs = replace(route, passive=True)
        finally:
            await _close_quietly(probe, self._connect_timeout_s)

    async def _declare(self, channel: AbstractRobustChannel, admin: AbstractRobustChannel) -> None:
        names = self.names
        dead = await channel.declare_exchange(
            names.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_queue = await channel.declare_queue(names.dead_queue, durable=True)
        await dead_queue.bind(dead)
        self._exchanges[names.dead_exchange] = dead
        for route in (self._runs, self._completions):
            exchange = await channel.declare_exchange(
                route.exchange, aio_pika.ExchangeType.DIRECT, durable=True
            )
            queue = await channel.declare_queue(
                route.queue, durable=True, arguments=route.arguments, passive=route.passive
            )
            await queue.bind(exchange, route.routing_key)
            await channel.declare_queue(
                route.retry_queue,
                durable=True,
                arguments={
                    "x-dead-letter-exchange": route.exchange,
                    "x-dead-letter-routing-key": route.routing_key,
                },
            )
            self._exchanges[route.exchange] = exchange
        self._exchanges[""] = channel.default_exchange
        self._dead_queue = await admin.declare_queue(names.dead_queue, durable=True)

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.stop()
        if self._connection is not None:
            # Bounded: a process shutting down (or giving up at start) must not hang on
            # a broker that stopped answering.
            await _close_quietly(self._connection, self._connect_timeout_s)
        self._connection = None
        self._publisher = self._admin = self._dead_queue = None
        self._exchanges.clear()

    def _connected(self) -> bool:
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    async def ping(self) -> None:
        if not self._connected():
            raise BackendUnavailable(f"not connected to RabbitMQ at {self._where}")

    async def publish_run(self, body: bytes) -> None:
        await self._publish(self.names.runs_exchange, RUNS_ROUTING_KEY, body)

    async def publish_completion(self, body: bytes) -> None:
        await self._publish(COMPLETIONS_EXCHANGE, COMPLETIONS_ROUTING_KEY, body)

    async def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: dict[str, Any] | None = None,
        expiration_s: float | None = None,
    ) -> None:
        where = f"{exchange or '(default)'} / {routing_key}"
        target = self._exchanges.get(exchange)
        if target is None or not self._connected():
            raise PublishFailed(f"cannot publish to {where}: not connected to {self._where}")
        message = outgoing_message(body, headers, expiration_s)
        publisher = self._publisher
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                if publisher is not None:
                    # Just after a reconnect the connection is back before this channel
                    # is: wait for it (within the same bound) rather than fail the publish
                    # and leave the run to the reaper.
                    await publisher.ready()
                await target.publish(message, routing_key, mandatory=True)
        except TimeoutError as exc:
            raise PublishFailed(
                f"publish to {where} not confirmed within {self._publish_timeout_s} s"
            ) from exc
        except aio_pika.exceptions.PublishError as exc:
            raise PublishFailed(f"publish to {where} was unroutable (no queue bound)") from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise PublishFailed(f"RabbitMQ refused (nacked) the publish to {where}") from exc
        except Exception as exc:  # connection or channel lost mid-publish
            raise PublishFailed(f"publish to {where} failed: {type(exc).__name__}: {exc}") from exc

    async def consume_runs(self, handler: Handler, prefetch: int) -> _RabbitConsumer:
        return await self._consume(self._runs, handler, prefetch)

    async def consume_completions(self, handler: Handler, prefetch: int) -> _RabbitConsumer:
        return await self._consume(self._completions, handler, prefetch)

    async def _consume(self, route: _Route, handler: Handler, prefetch: int) -> _RabbitConsumer:
        if self._connection is None:
            raise BackendUnavailable(f"not connected to RabbitMQ at {self._where}")
        channel: AbstractRobustChannel | None = None
        try:
            # Bounded like `connect`: a consume the broker never confirms is a failure.
            async with asyncio.timeout(self._connect_timeout_s):
                # One channel per consumer: QoS is per channel, and the robust channel
                # restores the QoS, the queue and the consumer after a reconnect.
                channel = await self._connection.channel(publisher_confirms=False)
                await channel.set_qos(prefetch_count=prefetch)
                queue = await channel.declare_queue(
                    route.queue, durable=True, arguments=route.arguments, passive=route.passive
                )
                consumer = _RabbitConsumer(self, route, handler, channel, queue)
                await consumer.start()
        except Exception as exc:
            if channel is not None:
                await _close_quietly(channel, self._connect_timeout_s)
            raise BackendUnavailable(
                self._startup_failure(f"starting to consume {route.queue}", exc)
            ) from exc
        self._consumers.add(consumer)
        return consumer

    async def _handle(
        self, route: _Route, handler: Handler, message: AbstractIncomingMessage
    ) -> None:
        requeues = (message.headers or {}).get(REQUEUES_HEADER)
        delivery = Delivery(
            body=message.body,
            deliveries=deliveries_of(message),
            headers=dict(message.headers),
            requeues=requeues if isinstance(requeues, int) and requeues > 0 else 0,
        )
        outcome = await settle_outcome(route.queue, handler, delivery)
        await self._settle(route, message, delivery, outcome)

    async def _settle(
        self,
        route: _Route,
        message: AbstractIncomingMessage,
        delivery: Delivery,
        outcome: Outcome,
    ) -> None:
        """The one place where an outcome becomes broker operations."""
        headers = {k: v for k, v in message.headers.items() if k not in _BROKER_HEADERS}
        try:
            match outcome:
                case Ack():
                    pass
                case Reject(reason=reason):
                    await self._dead_letter(route, message.body, headers, reason)
                case Retry(reason=reason) if delivery.deliveries >= self.max_deliveries:
                    await self._dead_letter(
                        route, message.body, headers, f"max deliveries exceeded: {reason}"
                    )
                case Retry(delay_s=delay_s):
                    headers[DELIVERIES_HEADER] = delivery.deliveries + 1
                    await self._publish(
                        "", route.retry_queue, message.body, headers, expiration_s=delay_s
                    )
                case Requeue(delay_s=delay_s):
                    # The deliveries so far stay as they were: this wait is not the message's.
                    headers[DELIVERIES_HEADER] = delivery.deliveries
                    headers[REQUEUES_HEADER] = delivery.requeues + 1
                    await self._publish(
                        "", route.retry_queue, message.body, headers, expiration_s=delay_s
                    )
            await message.ack()
        except PublishFailed:
            # Not dead-lettered nor scheduled: give it back so it is not lost.
            log.warning(
                "could not settle a message from %s; requeueing", route.queue, exc_info=True
            )
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        except Exception:
            # The channel is gone; RabbitMQ redelivers the unacked message.
            log.warning("could not ack a message from %s", route.queue, exc_info=True)

    async def _dead_letter(
        self, route: _Route, body: bytes, headers: dict[str, Any], reason: str
    ) -> None:
        headers = {
            **headers,
            REASON_HEADER: reason,
            SOURCE_HEADER: route.queue,
            DEAD_ID_HEADER: new_dead_letter_id(),
            # Milliseconds as an integer: an AMQP float header is 32-bit (±2 minutes).
            DEAD_AT_HEADER: int(time.time() * 1000),
        }
        await self._publish(self.names.dead_exchange, route.queue, body, headers)

    def _admin_channel(self) -> AbstractRobustChannel:
        if self._admin is None or not self._connected():
            raise BackendUnavailable(f"not connected to RabbitMQ at {self._where}")
        return self._admin

    async def stats(self) -> list[QueueStats]:
        channel = await self._admin_channel().get_underlay_channel()
        result = []
        try:
            for name in (self._runs.queue, self._completions.queue, self.names.dead_queue):
                ok = await channel.queue_declare(name, passive=True, timeout=5)
                result.append(QueueStats(name, ok.message_count or 0, ok.consumer_count or 0))
        except Exception as exc:
            raise BackendUnavailable(f"RabbitMQ at {self._where}: stats failed: {exc}") from exc
        return result

    async def take_dead_letters(self, limit: int) -> list[DeadLetter]:
        self._admin_channel()
        queue = self._dead_queue
        assert queue is not None
        letters: list[DeadLetter] = []
        while len(letters) < limit:
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                break
            letters.append(_dead_letter(message))
            await message.ack()
        return letters

    async def _hold_dead_letters(self, limit: int) -> list[AbstractIncomingMessage]:
        """Take up to `limit` dead letters unacked: invisible to others until settled.

        RabbitMQ has no "peek"; a message given back with ``nack(requeue=True)`` returns
        to its place in the (classic) dead-letter queue, so holding then giving back is
        a non-destructive read. If this process dies meanwhile, the broker gives them
        back itself when the channel closes.
        """
        self._admin_channel()
        queue = self._dead_queue
        assert queue is not None
        held: list[AbstractIncomingMessage] = []
        try:
            while len(held) < limit:
                message = await queue.get(no_ack=False, fail=False, timeout=5)
                if message is None:
                    break
                held.append(message)
        except Exception as exc:
            await _give_back(held)
            raise BackendUnavailable(
                f"RabbitMQ at {self._where}: reading dead letters: {exc}"
            ) from exc
        return held

    async def list_dead_letters(self, limit: int) -> list[DeadLetter]:
        held = await self._hold_dead_letters(limit)
        await _give_back(held)
        return [_dead_letter(m) for m in held]

    async def replay_dead_letter(self, letter_id: str) -> DeadLetter:
        held = await self._hold_dead_letters(_REPLAY_SCAN)
        try:
            for index, message in enumerate(held):
                letter = _dead_letter(message)
                if letter.id != letter_id:
                    continue
                headers = {
                    k: v
                    for k, v in message.headers.items()
                    if k not in _BROKER_HEADERS
                    and k not in _DEAD_HEADERS
                    and k != DELIVERIES_HEADER
                }
                # Through the default exchange, straight to the queue it died in: that
                # works for every source, including ones the broker dead-lettered itself.
                await self._publish("", letter.source, message.body, headers)
                await message.ack()
                del held[index]
                return letter
        finally:
            await _give_back(held)
        raise NotFound(f"dead letter {letter_id} not found")

    async def purge_dead_letters(self) -> int:
        self._admin_channel()
        queue = self._dead_queue
        assert queue is not None
        try:
            purged = await queue.purge(timeout=5)
        except Exception as exc:
            raise BackendUnavailable(f"RabbitMQ at {self._where}: purge failed: {exc}") from exc
        return int(getattr(purged, "message_count", 0) or 0)


def _described(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s} s"
    return f"{type(exc).__name__}: {exc}"


async def _close_quietly(
    closable: AbstractRobustConnection | AbstractRobustChannel, timeout_s: float
) -> None:
    """Close what a failed start opened, bounded: the broker may not answer the close either."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout_s):
            await closable.close()


async def _give_back(messages: list[AbstractIncomingMessage]) -> None:
    for message in messages:
        with contextlib.suppress(Exception):
            await message.nack(requeue=True)


def _dead_letter(message: AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers
    # Messages the broker dead-lettered itself (quorum delivery limit) carry
    # x-first-death-* instead of our headers, and no id: theirs is derived from them.
    reason = _text(headers.get(REASON_HEADER, headers.get("x-first-death-reason", "unknown")))
    source = _text(headers.get(SOURCE_HEADER, headers.get("x-first-death-queue", "unknown")))
    dead_at_ms = headers.get(DEAD_AT_HEADER)
    dead_at = dead_at_ms / 1000 if isinstance(dead_at_ms, int) else _first_death_time(headers)
    letter_id = headers.get(DEAD_ID_HEADER)
    if letter_id is None:
        seed = message.body + f"|{reason}|{source}|{dead_at}".encode()
        letter_id = hashlib.sha256(seed).hexdigest()[:16]
    return DeadLetter(message.body, reason, source, _text(letter_id), float(dead_at))


def _first_death_time(headers: Mapping[str, Any]) -> float:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[-1], Mapping):
        when = deaths[-1].get("time")
        if isinstance(when, datetime):
            return when.timestamp()
    return 0.0


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _RabbitConsumer:
    def __init__(
        self,
        broker: RabbitBroker,
        route: _Route,
        handler: Handler,
        channel: AbstractRobustChannel,
        queue: AbstractQueue,
    ) -> None:
        self._broker = broker
        self._route = route
        self._handler = handler
        self._channel = channel
        self._queue = queue
        self._tag: str | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            return  # left unacked: closing the channel in stop() gives it back
        # Our own task, so that stop() can wait for it and a channel close does not cancel it.
        task = asyncio.create_task(self._broker._handle(self._route, self._handler, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._tag)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._channel.close()
        self._broker._consumers.discard(self)
