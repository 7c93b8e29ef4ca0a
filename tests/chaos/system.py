"""The system under chaos: every shipped process, each behind proxies the nemesis can break.

    async with chaos_system(settings) as system:
        system.balancer.port        # where clients go: the API processes behind a FaultProxy
        slot = system.slots["worker-1"]  # a process, its Redis proxy, its AMQP proxy
        system.stopping(slot); slot.proc.kill9(); await system.start_slot(slot)

Two `runrelay api` behind a round-robin balancer, two `runrelay worker`, one `runrelay
consumer`, `runrelay generator`; RabbitMQ is a throwaway node (it gets `kill -9`),
Redis is the shared one under a prefix of the run's own. Every process reaches Redis
and RabbitMQ through a FaultProxy of its own, so one process's connections can be reset
or stalled. Every process is killed by pid on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from shared.runtime import Runtime
from shared.settings import Settings
from tests.faults.conftest import process_env, spawn_api
from tests.support.devserver import RUNRELAY
from tests.support.ports import free_port
from tests.support.procs import Proc, Processes
from tests.support.proxy import FaultProxy
from tests.support.rabbit_node import RabbitNode
from tests.support.shipped import spawn_role, via
from tests.support.wait import wait_for

__all__ = ["Balancer", "Slot", "System", "chaos_system"]

GENERATOR_DELAY_S = 0.5
READY_S = 60.0


class Balancer(FaultProxy):
    """A FaultProxy that spreads new connections over the live API ports, round-robin."""

    def __init__(self) -> None:
        self.targets: list[int] = []
        self._next = 0
        super().__init__(0)

    @property
    def target_port(self) -> int:
        if not self.targets:
            return 1  # nothing listens there: the client's connection is reset
        self._next += 1
        return self.targets[self._next % len(self.targets)]

    @target_port.setter
    def target_port(self, port: int) -> None:
        self.targets = [port] if port else []


@dataclass
class Slot:
    """One process of the system and the proxies only it uses."""

    name: str
    kind: str  # api, worker, consumer, generator
    amqp: FaultProxy
    redis: FaultProxy | None  # the generator needs no Redis
    proc: Proc | None = None
    port: int = 0  # the API's own port
    expected_exit: bool = False  # the nemesis stopped it; anything else is a crash

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()


@dataclass
class System:
    settings: Settings
    root: Path
    node: RabbitNode
    runtime: Runtime  # the harness's own view: straight to Redis, for waiting and checking
    balancer: Balancer
    generator_port: int
    processes: Processes = field(default_factory=Processes)
    slots: dict[str, Slot] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)  # exits nobody asked for
    keep: bool = False  # keep the logs in `root` (set when the checker found something)
    _spawns: int = 0

    def env(self, slot: Slot) -> dict[str, str | None]:
        """The process's environment: the chaos settings, its own proxies as backends."""
        assert self.settings.redis_url is not None
        extra = {
            "RUNRELAY_AMQP_URL": via(self.node.url, slot.amqp.port),
            "RUNRELAY_LEASE_S": str(self.settings.lease_s),
            "RUNRELAY_MAX_ATTEMPTS": str(self.settings.max_attempts),
            "RUNRELAY_PUBLISH_GRACE_S": str(self.settings.publish_grace_s),
            "RUNRELAY_SHUTDOWN_GRACE_S": str(self.settings.shutdown_grace_s),
            "RUNRELAY_OPERATION_TIMEOUT_S": str(self.settings.operation_timeout_s),
            "RUNRELAY_EARLY_COMPLETION_S": str(self.settings.early_completion_s),
            "RUNRELAY_STREAM_TTL_S": str(self.settings.stream_ttl_s),
            "RUNRELAY_WORKER_CONCURRENCY": str(self.settings.worker_concurrency),
            "RUNRELAY_GENERATOR_URL": f"http://127.0.0.1:{self.generator_port}",
        }
        if slot.redis is not None:
            extra["RUNRELAY_REDIS_URL"] = via(self.settings.redis_url, slot.redis.port)
        return process_env(self.settings, **extra)

    def log_path(self, slot: Slot) -> Path:
        self._spawns += 1
        return self.root / f"{slot.name}.{self._spawns}.log"

    async def start_slot(self, slot: Slot) -> None:
        """Start the slot's process and wait until it serves; retried while it cannot start
        (a restart may fall into a RabbitMQ outage, and then the process exits at once)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_S
        while True:
            try:
                await self._spawn(slot)
                slot.expected_exit = False
                return
            except AssertionError:
                if slot.proc is not None:
                    slot.proc.kill9()
                if loop.time() > deadline:
                    raise
            await asyncio.sleep(0.5)  # pacing between start attempts, not a wait

    async def _spawn(self, slot: Slot) -> None:
        log_path = self.log_path(slot)
        env = self.env(slot)
        if slot.kind == "api":
            slot.proc, slot.port = await spawn_api(
                self.processes, self.settings, log_path, **_strings(env)
            )
            self.balancer.targets.append(slot.port)
        elif slot.kind in ("worker", "consumer"):
            slot.proc = await spawn_role(
                self.processes,
                slot.kind,
                self.settings,
                log_path,
                runtime=self.runtime,
                **_strings(env),
            )
        else:
            args = ["generator", "--port", str(self.generator_port), "--via", "queue"]
            proc = slot.proc = self.processes.spawn(
                [RUNRELAY, *args, "--delay-s", str(GENERATOR_DELAY_S)],
                env,
                log_path=log_path,
                cwd=self.root,
            )
            await wait_for(
                lambda: _answers(proc, self.generator_port),
                timeout=30,
                message="runrelay generator never listened",
            )

    def stopping(self, slot: Slot) -> None:
        """The nemesis is about to stop `slot`: take it out of the balancer first."""
        slot.expected_exit = True
        if slot.kind == "api" and slot.port in self.balancer.targets:
            self.balancer.targets.remove(slot.port)

    def note_crashes(self) -> None:
        """Record processes that exited without the nemesis stopping them."""
        for slot in self.slots.values():
            if slot.proc is not None and not slot.alive() and not slot.expected_exit:
                tail = slot.proc.output().splitlines()[-15:]
                self.crashes.append(
                    f"{slot.name} (pid {slot.proc.pid}) exited {slot.proc.returncode} "
                    "unasked; last lines:\n    " + "\n    ".join(tail)
                )
                slot.expected_exit = True  # reported once; the supervisor restarts it

    async def heal(self) -> None:
        """Undo every fault: proxies flowing, RabbitMQ up, every process running."""
        for slot in self.slots.values():
            slot.amqp.resume()
            if slot.redis is not None:
                slot.redis.resume()
        if not self.node.running():
            await asyncio.to_thread(self.node.start)
        self.note_crashes()
        for slot in self.slots.values():
            if not slot.alive():
                await self.start_slot(slot)


def _strings(env: dict[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in env.items() if v is not None}


async def _answers(proc: Proc, port: int) -> bool:
    if not proc.alive():
        raise AssertionError(f"exited early:\n{proc.output()}")
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            await http.get(f"http://127.0.0.1:{port}/")
    except httpx.TransportError:
        return False
    return True


SLOTS = (
    ("generator", "generator"),
    ("api-1", "api"),
    ("api-2", "api"),
    ("worker-1", "worker"),
    ("worker-2", "worker"),
    ("consumer", "consumer"),
)


@contextlib.asynccontextmanager
async def chaos_system(settings: Settings) -> AsyncIterator[System]:
    """The whole system, started; every process, proxy and the RabbitMQ node gone on exit."""
    assert settings.redis_url is not None
    root = Path(tempfile.mkdtemp(prefix="rr-chaos-"))
    redis_port = urlsplit(settings.redis_url).port or 6379
    proxies: list[FaultProxy] = []
    node = RabbitNode(root / "rabbit")
    (root / "rabbit").mkdir(exist_ok=True)
    system: System | None = None
    try:
        await asyncio.to_thread(node.start)
        runtime = Runtime.build(settings.model_copy(update={"amqp_url": node.url}))
        await runtime.log.ping()
        balancer = Balancer()
        await balancer.start()
        proxies.append(balancer)
        system = System(settings, root, node, runtime, balancer, free_port())
        for name, kind in SLOTS:
            amqp = await FaultProxy(node.port).start()
            redis = await FaultProxy(redis_port).start() if kind != "generator" else None
            proxies += [p for p in (amqp, redis) if p is not None]
            system.slots[name] = Slot(name, kind, amqp, redis)
        await system.start_slot(system.slots["generator"])
        await asyncio.gather(
            *(system.start_slot(s) for s in system.slots.values() if s.kind != "generator")
        )
        yield system
    finally:
        if system is not None:
            system.processes.cleanup()
            await system.runtime.log.close()
        for proxy in proxies:
            await proxy.close()
        await asyncio.to_thread(node.kill)
        if system is None or not system.keep:
            shutil.rmtree(root, ignore_errors=True)
