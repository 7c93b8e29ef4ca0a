"""The broker contract, told once and run over every backend: memory and real RabbitMQ.

Each RabbitMQ test gets a vhost of its own on the shared broker (deleted after),
so concurrent test runs never see each other's queues. The reconnect test runs
a throwaway rabbitmq-server of its own and stops it; the shared one is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from shared.broker.base import (
    COMPLETIONS_QUEUE,
    DEAD_EXCHANGE,
    DEAD_QUEUE,
    RUNS_QUEUE,
    Ack,
    Broker,
    DeadLetter,
    Delivery,
    Names,
    Outcome,
    QueueStats,
    Reject,
    Retry,
    new_operation_id,
    operation_tag,
)
from shared.broker.memory import MemoryBroker
from shared.broker.rabbitmq import RabbitBroker, outgoing_message
from shared.errors import BackendUnavailable, NotFound, PublishFailed
from tests.support.proxy import FaultProxy
from tests.support.rabbit_node import DEFAULT_AMQP_URL, rabbit_node, rabbitmqctl, temp_vhost
from tests.support.shipped import via
from tests.support.wait import wait_for

MAX_DELIVERIES = 3


@pytest.fixture
def vhost_url() -> Iterator[str]:
    with temp_vhost(os.environ.get("RUNRELAY_TEST_AMQP_URL") or DEFAULT_AMQP_URL) as url:
        yield url


@pytest.fixture(params=["memory", "rabbitmq"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    backend: Broker
    if request.param == "memory":
        backend = MemoryBroker(max_deliveries=MAX_DELIVERIES)
    else:
        backend = RabbitBroker(request.getfixturevalue("vhost_url"), max_deliveries=MAX_DELIVERIES)
    await backend.connect()
    yield backend
    await backend.close()


@dataclass
class Recorder:
    """A real handler: records what it saw and answers with the outcome `decide` picks."""

    decide: Callable[[Delivery], Outcome] = lambda delivery: Ack()
    seen: list[Delivery] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    async def __call__(self, delivery: Delivery) -> Outcome:
        self.seen.append(delivery)
        self.times.append(asyncio.get_running_loop().time())
        return self.decide(delivery)


async def dead_letters(broker: Broker, count: int) -> list[DeadLetter]:
    """Wait until `count` dead letters have been taken; return them."""
    taken: list[DeadLetter] = []

    async def enough() -> bool:
        taken.extend(await broker.take_dead_letters(10))
        return len(taken) >= count

    await wait_for(enough, message=f"{count} dead letters")
    return taken


async def stats_of(broker: Broker, name: str) -> QueueStats:
    return next(s for s in await broker.stats() if s.name == name)


async def test_a_published_run_reaches_its_consumer(broker: Broker) -> None:
    handler = Recorder()
    consumer = await broker.consume_runs(handler, prefetch=1)

    await broker.publish_run(b'{"run_id": "r1", "attempt": 1}')

    await wait_for(lambda: handler.seen, message="run delivered")
    await consumer.stop()
    assert [(d.body, d.deliveries) for d in handler.seen] == [
        (b'{"run_id": "r1", "attempt": 1}', 1)
    ]
    assert (await stats_of(broker, RUNS_QUEUE)).messages == 0


async def test_a_published_completion_reaches_its_consumer(broker: Broker) -> None:
    handler = Recorder()
    consumer = await broker.consume_completions(handler, prefetch=1)

    await broker.publish_completion(b'{"operation_id": "o1", "task_id": "r1", "success": true}')

    await wait_for(lambda: handler.seen, message="completion delivered")
    await consumer.stop()
    assert handler.seen[0].body == b'{"operation_id": "o1", "task_id": "r1", "success": true}'


async def test_stats_count_waiting_messages_and_consumers(broker: Broker) -> None:
    await broker.publish_run(b"a")
    await broker.publish_run(b"b")

    async def two_waiting() -> bool:
        return (await stats_of(broker, RUNS_QUEUE)).messages == 2

    await wait_for(two_waiting, message="two runs waiting")
    consumer = await broker.consume_completions(Recorder(), prefetch=1)

    async def one_consumer() -> bool:
        return (await stats_of(broker, COMPLETIONS_QUEUE)).consumers == 1

    await wait_for(one_consumer, message="completion consumer counted")
    await consumer.stop()
    assert {s.name for s in await broker.stats()} == {RUNS_QUEUE, COMPLETIONS_QUEUE, DEAD_QUEUE}


async def test_prefetch_bounds_the_handlers_running_at_once(broker: Broker) -> None:
    gate = asyncio.Event()
    running = 0
    peak = 0
    done: list[bytes] = []

    async def handler(delivery: Delivery) -> Outcome:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        done.append(delivery.body)
        return Ack()

    consumer = await broker.consume_runs(handler, prefetch=2)
    for i in range(5):
        await broker.publish_run(str(i).encode())

    await wait_for(lambda: running == 2, message="two handlers running")
    gate.set()
    await wait_for(lambda: len(done) == 5, message="all five handled")
    await consumer.stop()
    assert peak == 2
    assert sorted(done) == [b"0", b"1", b"2", b"3", b"4"]


async def test_a_rejected_message_becomes_a_dead_letter_with_reason_and_source(
    broker: Broker,
) -> None:
    reject = Recorder(decide=lambda d: Reject("malformed: not JSON"))
    runs = await broker.consume_runs(reject, prefetch=1)
    completions = await broker.consume_completions(reject, prefetch=1)

    await broker.publish_run(b"not json")
    letters = await dead_letters(broker, 1)
    await broker.publish_completion(b"{also not json")
    letters += await dead_letters(broker, 1)

    await runs.stop()
    await completions.stop()
    assert letters == [
        DeadLetter(b"not json", "malformed: not JSON", RUNS_QUEUE),
        DeadLetter(b"{also not json", "malformed: not JSON", COMPLETIONS_QUEUE),
    ]
    assert await broker.take_dead_letters(10) == []
    assert len(reject.seen) == 2  # rejected once, never redelivered


async def test_dead_letters_are_listed_in_place_replayed_to_their_queue_and_purged(
    broker: Broker,
) -> None:
    accept = {"now": False}
    handler = Recorder(decide=lambda d: Ack() if accept["now"] else Reject("not yet"))
    runs = await broker.consume_runs(handler, prefetch=1)
    completions = await broker.consume_completions(handler, prefetch=1)
    for count, publish, body in [
        (1, broker.publish_run, b"r1"),
        (2, broker.publish_completion, b"c1"),
        (3, broker.publish_run, b"r2"),
    ]:
        await publish(body)
        await wait_for(functools.partial(_listed, broker, count), message=f"{count} dead letters")

    listed = await broker.list_dead_letters(10)
    assert [(d.body, d.reason, d.source) for d in listed] == [
        (b"r1", "not yet", RUNS_QUEUE),
        (b"c1", "not yet", COMPLETIONS_QUEUE),
        (b"r2", "not yet", RUNS_QUEUE),
    ]
    # Listing takes nothing away and the ids are stable, so an operator can act on them.
    assert [d.id for d in await broker.list_dead_letters(10)] == [d.id for d in listed]
    assert len({d.id for d in listed}) == 3
    assert all(time.time() - 60 < d.dead_at <= time.time() for d in listed)

    accept["now"] = True
    assert (await broker.replay_dead_letter(listed[1].id)).body == b"c1"
    await wait_for(lambda: [d.body for d in handler.seen][-1:] == [b"c1"], message="replayed")
    assert len(handler.seen) == 4  # back on the completions queue, handled once more
    assert [d.body for d in await broker.list_dead_letters(10)] == [b"r1", b"r2"]
    with pytest.raises(NotFound):
        await broker.replay_dead_letter(listed[1].id)

    assert await broker.purge_dead_letters() == 2
    assert await broker.list_dead_letters(10) == []
    await runs.stop()
    await completions.stop()


async def _listed(broker: Broker, count: int) -> bool:
    return len(await broker.list_dead_letters(10)) >= count


async def test_a_retry_comes_back_later_and_dead_letters_after_max_deliveries(
    broker: Broker,
) -> None:
    handler = Recorder(decide=lambda d: Retry(0.1, "generator busy"))
    consumer = await broker.consume_runs(handler, prefetch=1)

    await broker.publish_run(b"r1")

    letters = await dead_letters(broker, 1)
    await consumer.stop()
    assert letters == [DeadLetter(b"r1", "max deliveries exceeded: generator busy", RUNS_QUEUE)]
    assert [d.deliveries for d in handler.seen] == [1, 2, 3]
    gaps = [
        later - earlier for earlier, later in zip(handler.times, handler.times[1:], strict=False)
    ]
    assert all(gap >= 0.09 for gap in gaps), gaps


async def test_a_handler_whose_backend_is_away_is_requeued_past_max_deliveries_never_dead(
    broker: Broker,
) -> None:
    # Redis away for longer than MAX_DELIVERIES attempts: the message waits, uncounted.
    away = MAX_DELIVERIES + 1

    async def redis_away_then_back(delivery: Delivery) -> Outcome:
        handler.seen.append(delivery)
        if len(handler.seen) <= away:
            raise BackendUnavailable("Redis at 127.0.0.1:1 is unavailable")
        return Ack()

    handler = Recorder()
    consumer = await broker.consume_completions(redis_away_then_back, prefetch=1)
    await broker.publish_completion(b"c1")

    await wait_for(lambda: len(handler.seen) == away + 1, timeout=30, message="not redelivered")
    await consumer.stop()
    assert await broker.take_dead_letters(10) == []
    assert [d.deliveries for d in handler.seen] == [1] * (away + 1)
    assert [d.requeues for d in handler.seen] == list(range(away + 1))


async def test_two_deployments_on_one_broker_keep_their_own_runs_and_both_hear_completions(
    vhost_url: str,
) -> None:
    ours = RabbitBroker(vhost_url, names=Names.for_prefix("runrelay:"))
    theirs = RabbitBroker(vhost_url, names=Names.for_prefix("acme:"))
    assert theirs.names.runs_queue == "runrelay.acme.runs"
    assert theirs.names.completions_queue == "chat_operation_complete.acme"
    await ours.connect()
    await theirs.connect()
    try:
        our_runs, their_runs = Recorder(), Recorder()
        our_done, their_done = Recorder(), Recorder()
        consumers = [
            await ours.consume_runs(our_runs, prefetch=4),
            await theirs.consume_runs(their_runs, prefetch=4),
            await ours.consume_completions(our_done, prefetch=4),
            await theirs.consume_completions(their_done, prefetch=4),
        ]
        await ours.publish_run(b"ours")
        await theirs.publish_run(b"theirs")
        await ours.publish_completion(b"done")  # the external contract: one exchange, one key

        await wait_for(
            lambda: (
                len(our_done.seen) == len(their_done.seen) == 1
                and len(our_runs.seen) == len(their_runs.seen) == 1
            ),
            timeout=10,
        )
        for consumer in consumers:
            await consumer.stop()
        assert [d.body for d in our_runs.seen] == [b"ours"]
        assert [d.body for d in their_runs.seen] == [b"theirs"]
        assert [d.body for d in our_done.seen] == [d.body for d in their_done.seen] == [b"done"]
    finally:
        await ours.close()
        await theirs.close()


def test_operation_ids_name_their_deployment() -> None:
    default, acme = Names.for_prefix("runrelay:"), Names.for_prefix("acme:")
    assert default == Names() and default.tag == ""
    assert operation_tag(new_operation_id(default.tag)) == ""
    assert operation_tag(new_operation_id(acme.tag)) == acme.tag != ""
    assert operation_tag("op_ghost") is None  # not minted by runrelay: handled as before
    # Prefixes that differ only in characters a queue name should not carry stay apart.
    assert Names.for_prefix("a b:").runs_queue != Names.for_prefix("a_b:").runs_queue


async def test_a_waiting_retry_holds_no_consumer_slot(broker: Broker) -> None:
    handler = Recorder(decide=lambda d: Retry(60.0, "later") if d.body == b"slow" else Ack())
    consumer = await broker.consume_runs(handler, prefetch=1)

    await broker.publish_run(b"slow")
    await broker.publish_run(b"fast")

    await wait_for(lambda: [d.body for d in handler.seen] == [b"slow", b"fast"])
    await consumer.stop()


async def test_a_handler_that_raises_is_retried(broker: Broker) -> None:
    def fail_first(delivery: Delivery) -> Outcome:
        if delivery.deliveries == 1:
            raise RuntimeError("tool crashed")
        return Ack()

    handler = Recorder(decide=fail_first)
    consumer = await broker.consume_runs(handler, prefetch=1)

    await broker.publish_run(b"r1")

    await wait_for(lambda: len(handler.seen) == 2, message="redelivered after the crash")
    await consumer.stop()
    assert [(d.body, d.deliveries) for d in handler.seen] == [(b"r1", 1), (b"r1", 2)]
    assert await broker.take_dead_letters(10) == []


async def test_stop_waits_for_the_message_in_hand_and_settles_it(broker: Broker) -> None:
    gate = asyncio.Event()
    finished: list[bytes] = []

    async def handler(delivery: Delivery) -> Outcome:
        await gate.wait()
        finished.append(delivery.body)
        return Ack()

    consumer = await broker.consume_runs(handler, prefetch=1)
    await broker.publish_run(b"r1")

    async def in_hand() -> bool:
        return (await stats_of(broker, RUNS_QUEUE)).messages == 0

    await wait_for(in_hand, message="r1 taken by the consumer")
    stopping = asyncio.create_task(consumer.stop())
    finished_early, _ = await asyncio.wait({stopping}, timeout=0.3)
    assert not finished_early, "stop() returned while a handler was running"

    gate.set()
    await stopping
    assert finished == [b"r1"]
    await broker.publish_run(b"r2")

    async def r2_waits_alone() -> bool:
        runs = await stats_of(broker, RUNS_QUEUE)
        return runs.messages == 1 and runs.consumers == 0

    await wait_for(r2_waits_alone, message="r1 acked, r2 not consumed after stop")
    assert finished == [b"r1"]


async def test_a_closed_broker_refuses_to_publish(broker: Broker) -> None:
    await broker.close()

    with pytest.raises(PublishFailed):
        await broker.publish_run(b"r1")
    with pytest.raises(BackendUnavailable):
        await broker.ping()


# RabbitMQ only: properties the memory broker has no equivalent for.


def test_rabbit_messages_are_persistent() -> None:
    assert int(outgoing_message(b"r1").delivery_mode) == 2


async def test_rabbit_unroutable_publish_raises(vhost_url: str) -> None:
    broker = RabbitBroker(vhost_url)
    await broker.connect()
    vhost = unquote(urlsplit(vhost_url).path.lstrip("/"))
    await asyncio.to_thread(rabbitmqctl, "delete_queue", "-p", vhost, RUNS_QUEUE)
    try:
        with pytest.raises(PublishFailed, match="unroutable"):
            await broker.publish_run(b"r1")
    finally:
        await broker.close()


async def test_rabbit_unreachable_names_the_host_but_not_the_password() -> None:
    with rabbit_port_nobody_listens_on() as port:
        broker = RabbitBroker(f"amqp://guest:s3cret@127.0.0.1:{port}/", connect_timeout_s=5)
        with pytest.raises(BackendUnavailable) as caught:
            await broker.connect()
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "s3cret" not in str(caught.value)


@contextlib.contextmanager
def rabbit_port_nobody_listens_on() -> Iterator[int]:
    """A port bound (so nobody else takes it) but not listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


@pytest.mark.timeout(90)
async def test_rabbit_consumers_resume_and_persistent_messages_survive_a_broker_restart() -> None:
    with rabbit_node() as node:
        broker = RabbitBroker(node.url)
        await broker.connect()
        runs = Recorder()
        await broker.consume_runs(runs, prefetch=1)
        await broker.publish_run(b"before")
        await wait_for(lambda: runs.seen, message="run delivered before the restart")
        await broker.publish_completion(b"queued across the restart")

        await asyncio.to_thread(node.stop)

        async def down() -> bool:
            try:
                await broker.ping()
            except BackendUnavailable:
                return True
            return False

        await wait_for(down, message="broker noticed the outage")
        with pytest.raises(PublishFailed):
            await broker.publish_run(b"during")

        await asyncio.to_thread(node.start)

        await wait_for(
            functools.partial(publishes, broker, b"after"),
            timeout=30,
            interval=0.2,
            message="publish after restart",
        )
        await wait_for(lambda: len(runs.seen) == 2, timeout=30, message="consumer resumed")
        completions = Recorder()
        await broker.consume_completions(completions, prefetch=1)
        await wait_for(lambda: completions.seen, message="persistent completion survived")
        await broker.close()
        assert [d.body for d in runs.seen] == [b"before", b"after"]
        assert [d.body for d in completions.seen] == [b"queued across the restart"]


async def test_rabbit_a_message_redelivered_after_a_lost_connection_counts_again(
    vhost_url: str,
) -> None:
    broker = RabbitBroker(vhost_url)
    await broker.connect()
    gate = asyncio.Event()
    seen: list[int] = []

    async def handler(delivery: Delivery) -> Outcome:
        seen.append(delivery.deliveries)
        if delivery.deliveries == 1:
            await gate.wait()  # still in hand when the connection drops
        return Ack()

    try:
        await broker.consume_runs(handler, prefetch=1)
        await broker.publish_run(b"r1")
        await wait_for(lambda: seen == [1], message="first delivery in hand")

        vhost = unquote(urlsplit(vhost_url).path.lstrip("/"))
        await asyncio.to_thread(
            rabbitmqctl, "close_all_connections", "-p", vhost, "test: consumer lost"
        )

        await wait_for(lambda: seen == [1, 2], timeout=30, message="redelivered, counted as 2")
        gate.set()
    finally:
        gate.set()
        await broker.close()


async def test_rabbit_connection_resets_past_our_delivery_limit_never_dead_letter_a_run(
    vhost_url: str,
) -> None:
    """A quorum queue counts every return, and a reset returns every unacked message (a
    worker holds its prefetch while it waits for a slot). A reset is not the message's
    fault: more of them than our delivery limit still end with the request handled."""
    broker = RabbitBroker(vhost_url, max_deliveries=MAX_DELIVERIES)
    await broker.connect()
    gate = asyncio.Event()
    seen: list[int] = []
    resets = MAX_DELIVERIES + 1

    async def handler(delivery: Delivery) -> Outcome:
        seen.append(delivery.deliveries)
        if len(seen) <= resets:
            await gate.wait()  # still in hand when the connection drops
        return Ack()

    vhost = unquote(urlsplit(vhost_url).path.lstrip("/"))
    try:
        await broker.consume_runs(handler, prefetch=1)
        await broker.publish_run(b"r1")
        for n in range(1, resets + 1):
            await wait_for(functools.partial(_at_least, seen, n), timeout=30, message=f"#{n}")
            await asyncio.to_thread(rabbitmqctl, "close_all_connections", "-p", vhost, "reset")
        await wait_for(lambda: len(seen) > resets, timeout=30, message="dead-lettered")
        # The broker did count the returns: past our limit, and still handed to us.
        assert seen[-1] > MAX_DELIVERIES, seen
        # The last reset may still be healing the admin channel: read once it answers.
        [letters] = await wait_for(lambda: _dead_letters_once_connected(broker), timeout=30)
        assert letters == []
    finally:
        gate.set()
        await broker.close()


async def test_rabbit_a_runs_queue_an_older_runrelay_declared_is_used_as_it_is(
    vhost_url: str,
) -> None:
    """Queue arguments cannot change: the queue of a deployment upgraded from the old
    broker-side limit is kept (with a warning) rather than refusing to start."""
    import aio_pika  # the old declaration, as the earlier release made it

    connection = await aio_pika.connect(vhost_url)
    channel = await connection.channel()
    old: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-delivery-limit": 5,
        "x-dead-letter-exchange": DEAD_EXCHANGE,
    }
    await channel.declare_queue(RUNS_QUEUE, durable=True, arguments=old)
    await connection.close()
    broker = RabbitBroker(vhost_url)
    await broker.connect()
    seen: list[bytes] = []

    async def handler(delivery: Delivery) -> Outcome:
        seen.append(delivery.body)
        return Ack()

    try:
        await broker.consume_runs(handler, prefetch=1)
        await broker.publish_run(b"r1")
        await wait_for(lambda: seen == [b"r1"], message="run request through the old queue")
    finally:
        await broker.close()


def _at_least(seen: list[int], n: int) -> bool:
    return len(seen) >= n


@pytest.mark.timeout(30)
async def test_rabbit_with_several_urls_starts_on_one_that_answers_and_reconnects_to_the_next(
    vhost_url: str,
) -> None:
    """RUNRELAY_AMQP_URL listing a cluster's nodes: a dead first node is skipped at start,
    and when the connected node goes away the reconnect goes to the next one."""
    with rabbit_port_nobody_listens_on() as dead:
        async with (
            FaultProxy(amqp_port(vhost_url)) as first,
            FaultProxy(amqp_port(vhost_url)) as second,
        ):
            urls = [via(vhost_url, port) for port in (dead, first.port, second.port)]
            broker = RabbitBroker(",".join(urls), connect_timeout_s=5)
            await broker.connect()
            try:
                runs = Recorder()
                await broker.consume_runs(runs, prefetch=1)
                assert first.active_connections == 1 and second.connections_total == 0
                first.refuse_new(True)
                await first.cut_all()  # that node is gone for good

                await wait_for(
                    functools.partial(publishes, broker, b"after the node went away"),
                    timeout=20,
                    interval=0.1,
                    message="never reconnected",
                )
                await wait_for(lambda: runs.seen, timeout=20, message="the consumer never resumed")
                assert second.active_connections == 1
            finally:
                await broker.close()


def amqp_port(url: str) -> int:
    return urlsplit(url).port or 5672


async def publishes(broker: Broker, body: bytes) -> bool:
    """Publish a run request; False while the broker cannot take it (reconnecting)."""
    try:
        await broker.publish_run(body)
    except PublishFailed:
        return False
    return True


async def _dead_letters_once_connected(broker: Broker) -> list[list[DeadLetter]] | None:
    """[the dead letters] (truthy even when empty), or None while the channel reconnects."""
    try:
        return [list(await broker.list_dead_letters(10))]
    except BackendUnavailable:
        return None
