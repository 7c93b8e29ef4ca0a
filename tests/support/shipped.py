"""The shipped entry points (`runrelay worker|consumer|generator`) as subprocesses on uvloop.

    worker = await spawn_role(processes, "worker", settings, tmp_path / "w.log", runtime=rt)
    consumer = await spawn_role(processes, "consumer", settings, tmp_path / "c.log", runtime=rt)

Each is started exactly as an operator starts it, from the environment, and waited for
until it serves: a worker until it heartbeats, a consumer until RabbitMQ lists it on the
deployment's completion queue, a generator until its port answers. `runrelay api` is
`tests.faults.conftest.spawn_api`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from shared.runtime import Runtime
from shared.settings import Settings
from tests.support.devserver import REPO, RUNRELAY
from tests.support.ports import free_port
from tests.support.procs import Proc, Processes
from tests.support.wait import wait_for

__all__ = ["role_env", "spawn_generator", "spawn_role", "via"]


def via(url: str, port: int) -> str:
    """`url` with its host and port replaced by 127.0.0.1:`port` (a proxy in front of it)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def redis_port(settings: Settings) -> int:
    """The port of the Redis `settings` name (where a proxy in front of it forwards)."""
    assert settings.redis_url is not None
    return urlsplit(settings.redis_url).port or 6379


def role_env(settings: Settings, **extra: str) -> dict[str, str | None]:
    """The environment of a runrelay process on the backends and prefix of `settings`."""
    env: dict[str, str | None] = {
        "RUNRELAY_REDIS_URL": settings.redis_url,
        "RUNRELAY_AMQP_URL": settings.amqp_url,
        "RUNRELAY_KEY_PREFIX": settings.key_prefix,
        "RUNRELAY_LEASE_S": str(settings.lease_s),
        "RUNRELAY_MAX_ATTEMPTS": str(settings.max_attempts),
        "RUNRELAY_PUBLISH_GRACE_S": str(settings.publish_grace_s),
        "RUNRELAY_SHUTDOWN_GRACE_S": str(settings.shutdown_grace_s),
        "RUNRELAY_WORKER_CONCURRENCY": str(settings.worker_concurrency),
        "RUNRELAY_GENERATOR_URL": settings.generator_url,
        "RUNRELAY_METRICS_PORT": None,
        "PYTHONPATH": str(REPO),
        "PORT": None,
    }
    env.update(extra)
    return env


async def spawn_role(
    processes: Processes,
    role: str,
    settings: Settings,
    log_path: Path,
    *,
    runtime: Runtime,
    **extra: str,
) -> Proc:
    """`runrelay worker` or `runrelay consumer`, once it serves (`runtime` observes it)."""
    assert role in ("worker", "consumer"), role
    known = {w["worker_id"] for w in await runtime.workers.live()}
    proc = processes.spawn(
        [RUNRELAY, role], role_env(settings, **extra), log_path=log_path, cwd=REPO
    )

    async def serving() -> bool:
        if not proc.alive():
            raise AssertionError(f"runrelay {role} exited early:\n{proc.output()}")
        if role == "worker":
            workers = await runtime.workers.live()
            return any(w["pid"] == proc.pid and w["worker_id"] not in known for w in workers)
        return "completion consumer started" in proc.output()

    await wait_for(serving, timeout=30, message=f"runrelay {role} (pid {proc.pid}) never served")
    return proc


async def spawn_generator(
    processes: Processes, settings: Settings, log_path: Path, *, delay_s: float = 0.3
) -> tuple[Proc, str]:
    """`runrelay generator` (queue mode) on a free port; (process, its URL) once it answers."""
    port = free_port()
    proc = processes.spawn(
        [RUNRELAY, "generator", "--port", str(port), "--delay-s", str(delay_s)],
        role_env(settings),
        log_path=log_path,
        cwd=REPO,
    )

    async def answers() -> bool:
        if not proc.alive():
            raise AssertionError(f"runrelay generator exited early:\n{proc.output()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    await wait_for(answers, timeout=30, message="runrelay generator never listened")
    return proc, f"http://127.0.0.1:{port}"
