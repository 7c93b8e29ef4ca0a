"""OpenTelemetry: one trace follows a delegated run from the API through the worker, the
external service and the completion consumer back to the worker's continuation.

The API, worker and consumer each have their own runtime and RabbitMQ connection, as
separate processes would, but share this process: the SDK's in-memory exporter can
only see spans of its own process, and exporting from subprocesses would need an OTLP
collector in the test. What crosses between them is what crosses between processes:
the AMQP message headers (aio-pika instrumentation) and the operation record in Redis.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared import tracing
from tests.operations.conftest import MakeSystem
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(60)
_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()  # the global provider can be set once per process
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    tracing.enable()
    try:
        yield _EXPORTER
    finally:
        tracing.disable()
        AioPikaInstrumentor().uninstrument()


def attribute(span: ReadableSpan, name: str) -> object:
    return (span.attributes or {}).get(name)


async def test_one_trace_spans_api_worker_and_consumer_for_a_delegated_run(
    spans: InMemorySpanExporter, make_system: MakeSystem
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with make_system() as system, system.client() as http:
        created = await http.post(
            "/v1/runs",
            json={"tool": "generate_agent", "input": {"instructions": "a weather agent"}},
            headers={"traceparent": traceparent},  # the caller's trace, continued
        )
        assert created.status_code == 202, created.text
        run_id = created.json()["run_id"]

        def continued() -> bool:
            names = [s.name for s in spans.get_finished_spans()]
            return "runrelay.continue" in names

        await wait_for(continued, timeout=30, message="the continuation never ended")
        run = (await http.get(f"/v1/runs/{run_id}")).json()
        assert run["status"] == "completed", run

    ours = [s for s in spans.get_finished_spans() if s.context is not None]
    trace_id = int("0af7651916cd43dd8448eb211c80319c", 16)
    in_trace = [s for s in ours if s.context is not None and s.context.trace_id == trace_id]
    names = [s.name for s in in_trace]
    for name in ("runrelay.create", "runrelay.tool", "runrelay.complete", "runrelay.continue"):
        assert names.count(name) == 1, (name, names)
    assert names.count("runrelay.claim") == 2  # the first call, then the continuation
    # Publishes and deliveries: the request, and the consumer's requeue.
    assert sum(s.kind == SpanKind.PRODUCER for s in in_trace) >= 2
    assert sum(s.kind == SpanKind.CONSUMER for s in in_trace) >= 2
    appends = [s for s in in_trace if s.name == "runrelay.append"]
    assert appends and all(attribute(s, "runrelay.run_id") == run_id for s in appends)
    # Batched: fewer append spans than events appended through them.
    events = sum(int(str(attribute(s, "runrelay.events"))) for s in appends)
    assert events >= len(appends)
    run_spans = [s for s in ours if attribute(s, "runrelay.run_id") == run_id]
    assert {s.context.trace_id for s in run_spans if s.context is not None} == {trace_id}
