"""Fixtures every test can use: the real backends, per-test isolation, settings.

Backends come from ``RUNRELAY_TEST_REDIS_URL`` / ``RUNRELAY_TEST_AMQP_URL`` (``scripts/test``
sets them) or the local defaults. A missing backend fails the tests, naming it; it never
skips them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import pytest
import redis

from shared.settings import Settings, load_settings
from tests.support.procs import Processes, running_processes
from tests.support.rabbit_node import temp_vhost
from tests.support.redis_keys import delete_prefix

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
_KEEP = ("RUNRELAY_TEST_",)


@pytest.fixture(scope="session", autouse=True)
def _clean_environment() -> Iterator[None]:
    """Tests see no developer RUNRELAY_* variables (only the RUNRELAY_TEST_* ones)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("RUNRELAY_") and not name.startswith(_KEEP):
                mp.delenv(name)
        yield


def _run(coro: Coroutine[Any, Any, None]) -> None:
    # Sync session fixtures may be set up while some event loop exists; use a fresh one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("RUNRELAY_TEST_REDIS_URL") or DEFAULT_REDIS_URL
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis backend unreachable at {url}: {exc}. Run scripts/test (it starts or "
            "installs redis-server), start one with 'redis-server --daemonize yes --port 6379', "
            "or set RUNRELAY_TEST_REDIS_URL.",
            pytrace=False,
        )
    finally:
        client.close()
    return url


async def _check_amqp(url: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(url, timeout=5)
    await connection.close()


def _verify_amqp(url: str, what: str) -> None:
    try:
        _run(_check_amqp(url))
    except Exception as exc:
        pytest.fail(
            f"RabbitMQ backend unusable ({what}): {type(exc).__name__}: {exc}. Run scripts/test "
            "(it starts or installs rabbitmq-server), start one with 'rabbitmq-server -detached', "
            "or set RUNRELAY_TEST_AMQP_URL (amqp://user:pass@host:5672/).",
            pytrace=False,
        )


def _can_manage_vhosts(base_url: str) -> bool:
    # rabbitmqctl reaches only the local node; a remote broker keeps the URL's vhost.
    host = urlsplit(base_url).hostname or "127.0.0.1"
    has_ctl = shutil.which("rabbitmqctl") or os.path.exists("/usr/lib/rabbitmq/bin/rabbitmqctl")
    return host in {"127.0.0.1", "localhost", "::1"} and bool(has_ctl)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A fresh vhost for this pytest session on the test broker, deleted at the end."""
    base = os.environ.get("RUNRELAY_TEST_AMQP_URL") or DEFAULT_AMQP_URL
    _verify_amqp(base, base.rpartition("@")[2])
    with contextlib.ExitStack() as stack:
        url = base
        if _can_manage_vhosts(base):
            try:
                url = stack.enter_context(temp_vhost(base))
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                print(f"amqp_url: no throwaway vhost ({exc}); using {base}", file=sys.stderr)
            else:
                _verify_amqp(url, f"throwaway vhost {url.rpartition('/')[2]}")
        yield url


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    value = f"rrtest:{uuid4().hex[:10]}:"
    yield value
    delete_prefix(redis_url, value)


@pytest.fixture
def make_settings(redis_url: str, amqp_url: str, prefix: str) -> Callable[..., Settings]:
    """``make_settings(**overrides)`` -> Settings on the test backends with this test's prefix.

    A developer's ``.env`` is ignored (``_env_file=None``).
    """

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "amqp_url": amqp_url,
            "key_prefix": prefix,
            "_env_file": None,
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def processes() -> Iterator[Processes]:
    """``processes.spawn(args, env, log_path=...)``; every process is killed (by pid) after."""
    with running_processes() as procs:
        yield procs
