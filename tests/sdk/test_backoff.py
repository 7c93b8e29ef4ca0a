"""Reconnect backoff: full jitter, bounded by min(max, base * 2**attempt)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from runrelay.client import backoff_delay


@given(
    attempt=st.integers(min_value=0, max_value=10_000),
    base=st.floats(min_value=0, max_value=10),
    cap=st.floats(min_value=0, max_value=120),
    seed=st.integers(),
)
def test_delay_is_within_zero_and_the_capped_exponential(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    delay = backoff_delay(attempt, base, cap, rng=random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(attempt, 62))


def test_jitter_is_full_spread_across_the_range_not_clustered_at_the_top() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(3, 0.5, 10.0, rng=rng) for _ in range(2000)]
    assert max(delays) <= 4.0
    assert min(delays) < 0.4  # full jitter reaches near zero
    assert max(delays) > 3.6
    assert 1.8 < sum(delays) / len(delays) < 2.2  # uniform on [0, 4] averages 2


def test_the_ceiling_stops_growing_at_the_maximum() -> None:
    rng = random.Random(2)
    assert all(backoff_delay(50, 0.5, 10.0, rng=rng) <= 10.0 for _ in range(500))
