"""Two deployments on one RabbitMQ vhost, told apart only by `RUNRELAY_KEY_PREFIX`.

Each has its own `runrelay worker` and `runrelay consumer`; one external generator
(`runrelay generator`) serves both and publishes every completion to the one exchange
and routing key the external contract names. Neither deployment may take, dead-letter
or need the reaper for the other's run requests or completions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shared.models import RunRecord
from shared.runtime import Runtime
from shared.settings import Settings
from tests.faults.invariants import run_ended_once
from tests.support.procs import Proc, Processes
from tests.support.shipped import spawn_generator, spawn_role
from tests.support.wait import wait_for
from tests.workers.support import started, submit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

STORY = {"prompt": "two harbours", "paragraphs": 1, "delay_ms": 5}


async def test_two_deployments_on_one_vhost_each_complete_their_own_runs_and_nothing_is_dead(
    make_settings: Callable[..., Settings], processes: Processes, tmp_path: Path
) -> None:
    base = make_settings()
    # Long enough that a run only the reaper could rescue fails the deadline below.
    common = {"publish_grace_s": 60.0, "lease_s": 5.0}
    gen, gen_url = await spawn_generator(processes, base, tmp_path / "generator.log")
    deployments = [
        make_settings(key_prefix=f"{base.key_prefix}{name}:", generator_url=gen_url, **common)
        for name in ("east", "west")
    ]
    async with started(deployments[0]) as east, started(deployments[1]) as west:
        procs: list[Proc] = []
        for settings, runtime in zip(deployments, (east, west), strict=True):
            name = settings.key_prefix.rstrip(":").rsplit(":", 1)[-1]
            for role in ("worker", "consumer"):
                procs.append(
                    await spawn_role(
                        processes, role, settings, tmp_path / f"{name}-{role}.log", runtime=runtime
                    )
                )
        # Each deployment's runs back to back, not alternating: on a shared queue RabbitMQ
        # hands messages to the two workers in turn, so alternating runs could all land on
        # their own deployment's worker by luck (seen: the shared-queue bug passed 1 in 2).
        submitted: list[tuple[Runtime, RunRecord]] = []
        for runtime in (east, east, east, west, west, west):
            submitted.append((runtime, await submit(runtime, "story", STORY)))
        for runtime in (east, east, west, west):
            instructions = {"instructions": "a weather agent"}
            submitted.append((runtime, await submit(runtime, "generate_agent", instructions)))

        async def all_ended() -> bool:
            records = [await runtime.runs.get(run.run_id) for runtime, run in submitted]
            return all(record.terminal for record in records)

        await wait_for(all_ended, timeout=45, message="a deployment's runs did not all end")
        for runtime, run in submitted:
            log = await run_ended_once(runtime, run.run_id)
            assert log[-1]["type"] == "run.completed", (run.tool, log[-1])
            assert "run.retrying" not in [e["type"] for e in log], log
        for runtime in (east, west):
            assert await runtime.broker.take_dead_letters(100) == []
    for proc in [*procs, gen]:
        assert "republished" not in proc.output(), proc.output()[-2000:]
        assert "unknown run" not in proc.output(), proc.output()[-2000:]
