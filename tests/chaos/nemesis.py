"""The nemesis: faults at random moments drawn from the seed, every kind in every round.

    nemesis = Nemesis(system, random.Random(seed), seconds=300)
    await nemesis.run()          # returns after `seconds` and a whole round
    nemesis.injected             # Counter of fault kind -> times

The faults come in rounds: each round is every kind once, in an order shuffled by the
seed, and a round that has begun is finished even past `seconds`, so every kind is
injected equally often (at least once) and none is left out by chance. What a fault
hits (which worker, which process's Redis) and for how long is drawn from the seed too.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable

from tests.chaos.system import Slot, System

__all__ = ["KINDS", "Nemesis"]

log = logging.getLogger("chaos.nemesis")

KINDS = (
    "worker_kill9",
    "worker_sigterm",
    "consumer_kill9",
    "redis_reset",
    "redis_stall",
    "amqp_reset",
    "rabbit_kill9",
    "api_kill9",
)


class Nemesis:
    def __init__(self, system: System, rng: random.Random, *, seconds: float, gap_s: float) -> None:
        self.system = system
        self.rng = rng
        self.seconds = seconds
        self.gap_s = gap_s
        self.injected: Counter[str] = Counter()
        self.timeline: list[str] = []  # "t=12.3 redis_stall worker-2 3.1s", for the report
        self._restarts: set[asyncio.Task[None]] = set()
        self._faults: dict[str, Callable[[], Awaitable[str]]] = {
            "worker_kill9": self.worker_kill9,
            "worker_sigterm": self.worker_sigterm,
            "consumer_kill9": self.consumer_kill9,
            "redis_reset": self.redis_reset,
            "redis_stall": self.redis_stall,
            "amqp_reset": self.amqp_reset,
            "rabbit_kill9": self.rabbit_kill9,
            "api_kill9": self.api_kill9,
        }

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + self.seconds
        try:
            while True:
                kinds = list(KINDS)
                self.rng.shuffle(kinds)
                if loop.time() >= end:
                    return  # only between rounds: every kind as often as every other
                for kind in kinds:
                    # The pause is the schedule (faults at random moments), not a wait.
                    await asyncio.sleep(self.gap_s * self.rng.uniform(0.5, 1.5))
                    self.system.note_crashes()
                    what = await self._faults[kind]()
                    self.injected[kind] += 1
                    self.timeline.append(f"t={loop.time() - start:6.1f} {kind} {what}")
                    log.info("nemesis: %s", self.timeline[-1])
        finally:
            await asyncio.gather(*self._restarts)

    def _later(self, delay_s: float, slot: Slot) -> None:
        """Restart `slot` after `delay_s`, while the nemesis goes on."""

        async def restart() -> None:
            await asyncio.sleep(delay_s)  # how long the process stays down: the fault itself
            await self.system.start_slot(slot)

        task = asyncio.create_task(restart(), name=f"restart {slot.name}")
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    def _pick(self, kind: str) -> Slot | None:
        slots = [s for s in self.system.slots.values() if s.kind == kind and s.alive()]
        return self.rng.choice(slots) if slots else None

    async def _kill9(self, kind: str) -> str:
        slot = self._pick(kind)
        if slot is None or slot.proc is None:
            return "(none running)"
        self.system.stopping(slot)
        slot.proc.kill9()
        await slot.proc.wait_async(10)
        down = self.rng.uniform(0.2, 2.0)
        self._later(down, slot)
        return f"{slot.name} pid {slot.proc.pid}, restart in {down:.1f}s"

    async def worker_kill9(self) -> str:
        return await self._kill9("worker")

    async def consumer_kill9(self) -> str:
        return await self._kill9("consumer")

    async def api_kill9(self) -> str:
        return await self._kill9("api")

    async def worker_sigterm(self) -> str:
        slot = self._pick("worker")
        if slot is None or slot.proc is None:
            return "(none running)"
        self.system.stopping(slot)
        slot.proc.terminate()
        grace = self.system.settings.shutdown_grace_s
        code = await slot.proc.wait_async(grace + 15)
        if code != 0:
            self.system.crashes.append(f"{slot.name} exited {code} after SIGTERM, not 0")
        self._later(self.rng.uniform(0.0, 1.0), slot)
        return f"{slot.name} pid {slot.proc.pid} exited {code}"

    def _with_redis(self) -> Slot:
        slots = [s for s in self.system.slots.values() if s.redis is not None]
        return self.rng.choice(slots)

    async def redis_reset(self) -> str:
        slot = self._with_redis()
        assert slot.redis is not None
        cut = await slot.redis.cut_all()
        return f"{slot.name}: {cut} connections reset"

    async def redis_stall(self) -> str:
        slot = self._with_redis()
        assert slot.redis is not None
        stall = self.rng.uniform(1.0, 6.0)
        slot.redis.stall()
        try:
            await asyncio.sleep(stall)  # the stall's length is the fault
        finally:
            slot.redis.resume()
        return f"{slot.name}: stalled {stall:.1f}s"

    async def amqp_reset(self) -> str:
        slot = self.rng.choice(list(self.system.slots.values()))
        cut = await slot.amqp.cut_all()
        return f"{slot.name}: {cut} connections reset"

    async def rabbit_kill9(self) -> str:
        node = self.system.node
        await asyncio.to_thread(node.kill)
        down = self.rng.uniform(0.5, 3.0)
        await asyncio.sleep(down)  # the outage's length is the fault
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.to_thread(node.start)
        return f"down {down:.1f}s, restart took {loop.time() - began:.1f}s"
