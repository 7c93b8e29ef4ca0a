"""OpenTelemetry traces that follow a run across processes; off unless ``OTEL_*`` asks.

    tracing.configure("runrelay-worker")       # once at process start; False: stays off
    with tracing.span("runrelay.claim", {"runrelay.run_id": run_id}): ...

One trace per run: the API's request and ``runrelay.create`` → the publish (aio-pika
instrumentation, which carries the context in the AMQP message headers) → the worker's
``runrelay.claim`` → ``runrelay.tool`` → one ``runrelay.append`` per stored batch (not
per delta) → for a delegated run, the completion consumer's ``runrelay.complete`` → its
publish → ``runrelay.claim`` → ``runrelay.continue``. The completion comes from an
external service that does not carry our context, so the consumer takes it from the
operation record (`shared.models.Operation.trace`), where the tool stored it.

Off (the default: no ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``…_TRACES_ENDPOINT`` or
``OTEL_TRACES_EXPORTER``, or ``OTEL_SDK_DISABLED=true``, or ``runrelay[otel]`` not
installed) every function here returns at its first line: no span, no context lookup.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

_on = False


def enabled() -> bool:
    return _on


def wanted(env: Mapping[str, str]) -> bool:
    """Whether the standard OpenTelemetry settings in `env` ask for traces."""
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "")
    if exporter:
        return exporter.lower() != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(service: str) -> bool:
    """At process start: export traces over OTLP (HTTP) when ``OTEL_*`` says so.

    The exporter reads its own ``OTEL_EXPORTER_OTLP_*`` settings; ``OTEL_SERVICE_NAME``
    overrides `service`. Returns whether tracing is on.
    """
    if _on or not wanted(os.environ):
        return _on
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_* settings ask for traces but runrelay[otel] is not installed")
        return False
    name = os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    enable()
    log.info("OpenTelemetry traces on (service %s)", name)
    return True


def enable() -> None:
    """Trace from now on, to the global tracer provider (tests set theirs first)."""
    global _on
    _on = True


def disable() -> None:
    global _on
    _on = False


@contextlib.contextmanager
def span(
    name: str, attributes: Mapping[str, str | int] | None = None, *, parent: Any = None
) -> Iterator[None]:
    """A span around the block, child of `parent` (a `context_of` result) or the current."""
    if not _on:
        yield
        return
    from opentelemetry import trace

    tracer = trace.get_tracer("runrelay")
    with tracer.start_as_current_span(name, context=parent, attributes=dict(attributes or {})):
        yield


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers (``traceparent``), to store or send."""
    if not _on:
        return {}
    from opentelemetry import propagate

    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


def context_of(headers: Mapping[str, str] | None) -> Any:
    """The context `carrier` wrote (None when tracing is off or nothing was stored)."""
    if not _on or not headers:
        return None
    from opentelemetry import propagate

    return propagate.extract(dict(headers))


def current() -> Any:
    """The current context, to parent spans started later elsewhere (None when off)."""
    if not _on:
        return None
    from opentelemetry import context

    return context.get_current()


class Spans:
    """Spans started now and ended together later (the appender's one per batch)."""

    def __init__(self) -> None:
        self._open: list[Any] = []

    def start(self, name: str, parent: Any, attributes: Mapping[str, str | int]) -> None:
        if not _on:
            return
        from opentelemetry import trace

        tracer = trace.get_tracer("runrelay")
        self._open.append(tracer.start_span(name, context=parent, attributes=dict(attributes)))

    def end(self) -> None:
        for opened in self._open:
            opened.end()
        self._open.clear()
