"""Prometheus metrics of the worker, in the default registry.

`runrelay dev` serves them on the API's ``/metrics`` (same process); a standalone
worker or consumer serves them on ``RUNRELAY_METRICS_PORT`` when it is set.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from shared.settings import Settings

RUNS_STARTED = Counter(
    "runrelay_worker_runs_started_total", "Runs this worker claimed and started.", ["tool"]
)
RUNS_FINISHED = Counter(
    "runrelay_worker_runs_finished_total",
    "Runs this worker stopped executing, by how they ended here: completed, failed, "
    "cancelled, lost (taken over), handed_back (shutdown).",
    ["tool", "status"],
)
RUN_DURATION = Histogram(
    "runrelay_worker_run_duration_seconds",
    "From claim to the end of execution on this worker.",
    ["tool"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
QUEUE_LAG = Histogram(
    "runrelay_worker_queue_lag_seconds",
    "From run creation to its first claim (first attempts only).",
    ["tool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ACTIVE_RUNS = Gauge("runrelay_worker_active_runs", "Runs executing on this worker now.")
REAPER_ACTIONS = Counter(
    "runrelay_reaper_actions_total",
    "What the reaper did: retried, failed_worker_lost, republished, operation_timeout.",
    ["action"],
)


def serve_metrics(settings: Settings) -> None:
    """Serve the process's metrics over HTTP (a daemon thread) if a port is configured."""
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
