"""Build the backends a process needs from settings: real (Redis, RabbitMQ) or embedded."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from shared.appender import Appender
from shared.broker.base import Broker, Names
from shared.dispatch import Dispatch
from shared.errors import BackendUnavailable, ConfigError
from shared.eventlog.base import EventLog, RunStore, Scheduler, Stores, WorkerRegistry
from shared.eventlog.streams import StreamStore
from shared.lifecycle import Runs
from shared.settings import Settings


@dataclass
class Runtime:
    """Everything stateful one process holds; API, worker and consumer share one in `dev`.

    The stores (`log`, `store`, `scheduler`, `workers`) are the backend's primitives;
    `runs` (the lifecycle) and `dispatch` (queueing) are the policy every process uses.
    """

    settings: Settings
    stores: Stores
    broker: Broker
    embedded: bool
    runs: Runs = field(init=False)
    dispatch: Dispatch = field(init=False)
    appender: Appender = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.runs = Runs(
            self.stores,
            publish_grace_s=settings.publish_grace_s,
            max_active_per_owner=settings.max_active_runs_per_owner,
        )
        self.appender = Appender(self.stores.log, linger_s=settings.append_linger_ms / 1000)
        self.dispatch = Dispatch(
            self.stores.scheduler, self.broker, publish_grace_s=settings.publish_grace_s
        )

    @property
    def log(self) -> EventLog:
        return self.stores.log

    @property
    def store(self) -> RunStore:
        return self.stores.runs

    @property
    def scheduler(self) -> Scheduler:
        return self.stores.scheduler

    @property
    def workers(self) -> WorkerRegistry:
        return self.stores.workers

    @property
    def streams(self) -> StreamStore:
        return self.stores.streams

    @property
    def names(self) -> Names:
        """This deployment's RabbitMQ names and operation-id tag."""
        return Names.for_prefix(self.settings.key_prefix)

    @classmethod
    def build(cls, settings: Settings, *, allow_embedded: bool = False) -> Runtime:
        """Real backends when their URLs are set; embedded ones only where allowed (dev)."""
        missing = [
            name
            for name, url in (
                ("RUNRELAY_REDIS_URL", settings.redis_url),
                ("RUNRELAY_AMQP_URL", settings.amqp_url),
            )
            if not url
        ]
        if missing and not allow_embedded:
            raise ConfigError(
                f"{' and '.join(missing)} must be set (e.g. redis://127.0.0.1:6379/0 and "
                "amqp://guest:guest@127.0.0.1:5672/); only `runrelay dev` runs without them"
            )
        return cls(settings, _build_stores(settings), _build_broker(settings), bool(missing))

    async def start(self) -> None:
        """Reach both backends, or raise `BackendUnavailable` naming the setting to check."""
        with naming_setting("RUNRELAY_REDIS_URL"):
            await self.log.ping()
        with naming_setting("RUNRELAY_AMQP_URL"):
            await self.broker.connect()

    async def close(self) -> None:
        await self.appender.close()
        await self.broker.close()
        await self.log.close()


@contextlib.contextmanager
def naming_setting(name: str) -> Iterator[None]:
    """A backend that cannot be reached at start is reported with the setting that names it.

    The operator reading "cannot start" should know at once which variable to check.
    """
    try:
        yield
    except BackendUnavailable as exc:
        if name in str(exc):  # the backend named it already
            raise
        raise BackendUnavailable(f"{exc} (check {name})") from exc


def _build_stores(settings: Settings) -> Stores:
    if settings.redis_url:
        from shared.eventlog.redis_records import redis_stores

        return redis_stores(
            settings.redis_target() or settings.redis_url,
            prefix=settings.key_prefix,
            ttl_s=settings.stream_ttl_s,
            max_events=settings.stream_max_events,
            min_replicas=settings.redis_min_replicas,
            min_replicas_timeout_ms=settings.redis_min_replicas_timeout_ms,
        )
    from shared.eventlog.memory import memory_stores

    return memory_stores(
        prefix=settings.key_prefix,
        ttl_s=settings.stream_ttl_s,
        max_events=settings.stream_max_events,
    )


def _build_broker(settings: Settings) -> Broker:
    if settings.amqp_url:
        from shared.broker.rabbitmq import RabbitBroker

        return RabbitBroker(
            settings.amqp_url,
            max_deliveries=settings.completion_max_redeliveries,
            names=Names.for_prefix(settings.key_prefix),
        )
    from shared.broker.memory import MemoryBroker

    return MemoryBroker(
        max_deliveries=settings.completion_max_redeliveries,
        names=Names.for_prefix(settings.key_prefix),
    )
