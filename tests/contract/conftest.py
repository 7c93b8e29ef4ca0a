"""Backend fixtures for the contract suites: every test runs over memory, one real Redis
node and a real (throwaway, 3-master) Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from shared.eventlog.base import EventLog, RunStore, Scheduler, Stores, WorkerRegistry
from shared.eventlog.memory import memory_stores
from shared.eventlog.redis_records import redis_stores
from shared.lifecycle import Runs
from tests.support.redis_cluster import ThrowawayCluster

MakeStores = Callable[..., Stores]


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    """A throwaway 3-master Redis Cluster for the session; its URL."""
    with ThrowawayCluster(masters=3) as cluster:
        yield cluster.url


@pytest.fixture(params=["memory", "redis", "cluster"])
async def make_stores(request: pytest.FixtureRequest) -> AsyncIterator[MakeStores]:
    made: list[Stores] = []

    def make(**kw: Any) -> Stores:
        kw.setdefault("prefix", request.getfixturevalue("prefix"))
        kw.setdefault("ttl_s", 3600)
        kw.setdefault("max_events", 100_000)
        if request.param == "redis":
            stores = redis_stores(request.getfixturevalue("redis_url"), **kw)
        elif request.param == "cluster":
            stores = redis_stores(request.getfixturevalue("redis_cluster"), **kw)
        else:
            stores = memory_stores(**kw)
        made.append(stores)
        return stores

    yield make
    for stores in made:
        await stores.log.close()


@pytest.fixture
def stores(make_stores: MakeStores) -> Stores:
    return make_stores()


@pytest.fixture
def log(stores: Stores) -> EventLog:
    return stores.log


@pytest.fixture
def store(stores: Stores) -> RunStore:
    return stores.runs


@pytest.fixture
def scheduler(stores: Stores) -> Scheduler:
    return stores.scheduler


@pytest.fixture
def workers(stores: Stores) -> WorkerRegistry:
    return stores.workers


@pytest.fixture
def runs(stores: Stores) -> Runs:
    return Runs(stores)
