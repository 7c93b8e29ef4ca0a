"""Backend fixtures for the contract suites: every test runs over memory and real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from shared.eventlog.base import EventLog
from shared.eventlog.memory import MemoryEventLog
from shared.eventlog.redis import RedisEventLog
from shared.lifecycle import Runs

MakeLog = Callable[..., EventLog]


@pytest.fixture(params=["memory", "redis"])
async def make_log(request: pytest.FixtureRequest) -> AsyncIterator[MakeLog]:
    made: list[EventLog] = []

    def make(**kw: Any) -> EventLog:
        kw.setdefault("prefix", request.getfixturevalue("prefix"))
        kw.setdefault("ttl_s", 3600)
        kw.setdefault("max_events", 100_000)
        log: EventLog
        if request.param == "redis":
            log = RedisEventLog(request.getfixturevalue("redis_url"), **kw)
        else:
            log = MemoryEventLog(**kw)
        made.append(log)
        return log

    yield make
    for log in made:
        await log.close()


@pytest.fixture
def log(make_log: MakeLog) -> EventLog:
    return make_log()


@pytest.fixture
def runs(log: EventLog) -> Runs:
    return Runs(log)
