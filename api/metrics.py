"""Prometheus metrics of the API process.

Module-level and registered once: tests build many apps in one process, and a
second registration of the same name would raise.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class Tally:
    """A count kept as a plain number and read when scraped (`_Tallies`).

    prometheus-client's `Counter` takes a lock on every increment (about 1 µs): the
    hub's direct write counts once per subscriber per batch, and that was 1.5% of a
    connect wave's CPU (py-spy). The event loop's thread is the only one that counts.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount

    def dec(self, amount: int = 1) -> None:
        self.value -= amount


OPEN_STREAMS = Tally()  # runrelay_api_open_streams
EVENTS_SENT = Tally()  # runrelay_api_events_sent_total


class _Tallies(Collector):
    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "runrelay_api_open_streams", "SSE streams open now", value=OPEN_STREAMS.value
        )
        yield CounterMetricFamily(
            "runrelay_api_events_sent", "Events written to SSE streams", value=EVENTS_SENT.value
        )


REGISTRY.register(_Tallies())
RESUMES = Counter("runrelay_api_resumes_total", "Streams opened with a cursor past 0")
GAPS = Counter("runrelay_api_stream_gaps_total", "stream.gap frames sent (events lost)")
SLOW_CLIENT_FALLBACKS = Counter(
    "runrelay_api_slow_client_fallbacks_total",
    "Subscribers whose buffer overflowed and who fell back to reading the log",
)
RUNS_CREATED = Counter("runrelay_api_runs_created_total", "Runs created", ["tool"])
