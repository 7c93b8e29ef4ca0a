"""Emit→deliver latency: now - an event's ``created_at``, when the tail hub first hands
its frame to subscribers (once per event, however many subscribers).

The hub decodes no event, so ``created_at`` is cut out of the stored bytes: the body is
written by `shared.eventlog.base.encode_body`, whose last field is ``"created_at":"…"``.
Both precisions are read (``…:23.690Z`` and ``…:23.690123Z``, and none). The date part
changes once a second, so its conversion is cached.

The histogram goes to ``/metrics``; the last observations, kept briefly, give the
console's p50/p99 of the last few seconds (`recent_quantiles`).
"""

from __future__ import annotations

import calendar
import functools
import time
from collections import deque
from collections.abc import Iterable, Sequence

from prometheus_client import Histogram

DELIVER_LATENCY = Histogram(
    "runrelay_api_deliver_latency_seconds",
    "From an event's created_at (stamped when emitted) to the API handing it to subscribers",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

_MARK = b'"created_at":"'
WINDOW_S = 10.0
_RECENT: deque[tuple[float, float]] = deque(maxlen=4096)  # (monotonic time, latency)


def created_epoch(body: bytes) -> float | None:
    """The Unix time of the ``created_at`` in an event's stored JSON, or None."""
    at = body.rfind(_MARK)
    if at < 0:
        return None
    start = at + len(_MARK)
    whole = _seconds_of(body[start : start + 19])  # 2026-12-01T09:14:23
    end = body.find(b"Z", start + 19)
    if whole is None or end < 0:
        return None
    fraction = body[start + 19 : end]  # b"", b".690" or b".690123"
    try:
        return whole + (float(fraction) if fraction else 0.0)
    except ValueError:
        return None


@functools.lru_cache(maxsize=8)
def _seconds_of(date: bytes) -> int | None:
    try:
        return calendar.timegm(time.strptime(date.decode(), "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, UnicodeDecodeError):
        return None


def observe(bodies: Iterable[bytes]) -> None:
    """Record the latency of each event just handed out (negative clock skew counts 0)."""
    now = time.time()
    mono = time.monotonic()
    for body in bodies:
        created = created_epoch(body)
        if created is not None:
            latency = max(0.0, now - created)
            DELIVER_LATENCY.observe(latency)
            _RECENT.append((mono, latency))


def recent_quantiles(qs: Sequence[float]) -> dict[str, float | int]:
    """``{"p50": …, "p99": …, "count": n}`` over the last `WINDOW_S` seconds' deliveries
    (at most the last 4096); without any, only the count (0)."""
    horizon = time.monotonic() - WINDOW_S
    values = sorted(latency for at, latency in _RECENT if at >= horizon)
    out: dict[str, float | int] = {"count": len(values)}
    if values:
        for q in qs:
            out[f"p{round(q * 100)}"] = values[min(len(values) - 1, int(q * len(values)))]
    return out
