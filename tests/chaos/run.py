"""One chaos run: start the system, run workload and nemesis together, heal, check, report.

    result = await chaos(redis_url, seconds=30, seed=1)
    print(result.summary())
    result.violations  # [] when every run, reader and completion came through

After the workload's last run is created the nemesis stops and every fault is undone;
then the readers drain (each gives up at its run's deadline) and the checker compares
what they saw with the event log. A process that exited without the nemesis stopping
it counts as a violation too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shared.settings import Settings
from tests.chaos.checker import (
    CATEGORIES,
    Violation,
    check,
    published_operations,
    server_errors,
)
from tests.chaos.nemesis import KINDS, Nemesis
from tests.chaos.system import System, chaos_system
from tests.chaos.workload import Workload
from tests.faults.conftest import TOKENS
from tests.support.redis_keys import delete_prefix

__all__ = ["ChaosResult", "chaos", "chaos_settings"]

log = logging.getLogger("chaos")

FAULTS_PER_KIND_GOAL = 5


def chaos_settings(redis_url: str, prefix: str) -> Settings:
    """Short leases and graces so that recovery fits in seconds, not minutes."""
    return Settings(
        redis_url=redis_url,
        amqp_url="amqp://unused",  # each process gets the throwaway node through its proxy
        key_prefix=prefix,
        api_tokens=TOKENS,
        lease_s=2.0,
        publish_grace_s=3.0,
        max_attempts=5,
        shutdown_grace_s=2.0,
        operation_timeout_s=60.0,
        early_completion_s=30.0,
        stream_ttl_s=900,
        heartbeat_s=1.0,
        retry_ms=0,
        worker_concurrency=16,
    )


@dataclass
class ChaosResult:
    seconds: float
    seed: int
    runs: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    logs: Path | None = None  # kept when there were violations

    def tally(self) -> Counter[str]:
        return Counter(v.category for v in self.violations)

    def summary(self) -> str:
        c, tally = self.counts, self.tally()
        statuses = ", ".join(
            f"{k.split(':', 1)[1]} {n}" for k, n in sorted(c.items()) if k.startswith("status:")
        )
        rows = [
            ("seconds / seed", f"{self.seconds:g} / {self.seed}"),
            ("runs", f"{self.runs} ({statuses})"),
            ("events in their logs", str(c["events"])),
            ("readers", f"{c['readers']} ({c['reconnects']} reconnects)"),
            ("completions applied", str(c["completions applied"])),
            *((f"fault {kind}", str(self.faults[kind])) for kind in KINDS),
            *((category, str(tally[category])) for category in CATEGORIES),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"| {name:<{width}} | {value} |" for name, value in rows]
        verdict = "PASS" if not self.violations else f"FAIL: {len(self.violations)} violations"
        head = [f"| {'':<{width}} | count |", f"|{'-' * (width + 2)}|-------|"]
        return "\n".join([*head, *lines, verdict])

    def report(self) -> str:
        parts = [self.summary()]
        if self.violations:
            parts += ["", "violations:", *(f"  {v}" for v in self.violations[:200])]
            parts += ["", "faults:", *(f"  {line}" for line in self.timeline)]
            parts.append(f"process logs kept in {self.logs}")
        return "\n".join(parts)


async def chaos(
    redis_url: str,
    *,
    seconds: float,
    seed: int,
    rate: float = 1.0,
    deadline_s: float = 90.0,
) -> ChaosResult:
    """Run the system under the nemesis for `seconds`; the result names every violation."""
    prefix = f"chaos-{seed}-{uuid.uuid4().hex[:6]}:"
    settings = chaos_settings(redis_url, prefix)
    result = ChaosResult(seconds, seed)
    # At least one round of every kind, and about FAULTS_PER_KIND_GOAL rounds in 5 minutes.
    gap_s = min(seconds / (len(KINDS) + 1), 300 / (len(KINDS) * (FAULTS_PER_KIND_GOAL + 2)))
    try:
        async with chaos_system(settings) as system:
            workload = Workload(
                system.balancer.port, random.Random(seed), rate=rate, deadline_s=deadline_s
            )
            nemesis = Nemesis(system, random.Random(seed + 1), seconds=seconds, gap_s=gap_s)
            stop = asyncio.Event()
            creating = asyncio.create_task(workload.create_until(stop))
            try:
                await nemesis.run()
            finally:
                stop.set()
                await creating
            await system.heal()
            supervisor = asyncio.create_task(_supervise(system))
            try:
                await workload.drain()
            finally:
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
            system.note_crashes()
            result.violations, result.counts = await check(
                system.runtime, workload.runs, published_operations(system.root)
            )
            result.violations += server_errors(system.root)
            result.violations += [Violation("other", "process", c) for c in system.crashes]
            result.runs = len(workload.runs)
            result.faults = nemesis.injected
            result.timeline = nemesis.timeline
            if result.violations:
                system.keep = True
                result.logs = system.root
    finally:
        await asyncio.to_thread(delete_prefix, redis_url, prefix)
    return result


async def _supervise(system: System) -> None:
    """While the readers drain, restart any process that died (and note it as a crash)."""
    while True:
        await asyncio.sleep(1.0)  # a supervisor's polling period
        await system.heal()
