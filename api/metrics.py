"""Prometheus metrics of the API process.

Module-level and registered once: tests build many apps in one process, and a
second registration of the same name would raise.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

OPEN_STREAMS = Gauge("runrelay_api_open_streams", "SSE streams open now")
EVENTS_SENT = Counter("runrelay_api_events_sent_total", "Events written to SSE streams")
RESUMES = Counter("runrelay_api_resumes_total", "Streams opened with a cursor past 0")
GAPS = Counter("runrelay_api_stream_gaps_total", "stream.gap frames sent (events lost)")
SLOW_CLIENT_FALLBACKS = Counter(
    "runrelay_api_slow_client_fallbacks_total",
    "Subscribers whose buffer overflowed and who fell back to reading the log",
)
RUNS_CREATED = Counter("runrelay_api_runs_created_total", "Runs created", ["tool"])
