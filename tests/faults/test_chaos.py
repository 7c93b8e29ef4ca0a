"""The chaos run in the suite: every fault kind once, under a steady workload, then the checker.

`scripts/chaos --seconds 300` is the long version (docs/reliability.md, "The chaos run").
"""

from __future__ import annotations

import pytest

from tests.chaos.nemesis import KINDS
from tests.chaos.run import chaos

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def test_a_chaos_round_of_every_fault_loses_repeats_and_strands_nothing(
    redis_url: str,
) -> None:
    result = await chaos(redis_url, seconds=20, seed=7)
    print(result.summary())
    assert all(result.faults[kind] >= 1 for kind in KINDS), result.faults
    assert not result.violations, result.report()
