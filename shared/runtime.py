"""Build the backends a process needs from settings: real (Redis, RabbitMQ) or embedded."""

from __future__ import annotations

from dataclasses import dataclass

from shared.broker.base import Broker, Names
from shared.errors import ConfigError
from shared.eventlog.base import EventLog
from shared.lifecycle import Runs
from shared.settings import Settings


@dataclass
class Runtime:
    """Everything stateful one process holds; API, worker and consumer share one in `dev`."""

    settings: Settings
    log: EventLog
    broker: Broker
    runs: Runs
    embedded: bool

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
        log = _build_log(settings)
        broker = _build_broker(settings)
        runs = Runs(
            log,
            publish_grace_s=settings.publish_grace_s,
            max_active_per_owner=settings.max_active_runs_per_owner,
        )
        return cls(settings, log, broker, runs, embedded=bool(missing))

    async def start(self) -> None:
        await self.log.ping()
        await self.broker.connect()

    async def close(self) -> None:
        await self.broker.close()
        await self.log.close()


def _build_log(settings: Settings) -> EventLog:
    if settings.redis_url:
        from shared.eventlog.redis import RedisEventLog

        return RedisEventLog(
            settings.redis_url,
            prefix=settings.key_prefix,
            ttl_s=settings.stream_ttl_s,
            max_events=settings.stream_max_events,
        )
    from shared.eventlog.memory import MemoryEventLog

    return MemoryEventLog(
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
