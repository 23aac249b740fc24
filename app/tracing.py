"""OpenTelemetry tracing: a span for each execution of a run and for each step, off
unless the standard ``OTEL_*`` variables ask for it.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp`` over
HTTP/protobuf, or ``console``) or an ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set,
and ``OTEL_SDK_DISABLED`` is not ``true``. The SDK reads the rest of its configuration
(endpoint, headers, sampler, ``OTEL_SERVICE_NAME``, batching) from the same variables.

A run is one trace whatever process executes it: its trace id is the run's id (a UUID is
128 bits, like a trace id), so the spans of a run resumed a day later on another machine
land in the same trace. Each execution's span hangs under a virtual root span derived
from the run id, and each step's span under its execution's. Outbound requests (``http``,
``call``, models, tools, webhooks) carry the current span as ``traceparent``
(``inject``), through the outbound client's transport.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)

log = logging.getLogger(__name__)

_tracer: Tracer = trace.NoOpTracer()
_provider: Any = None  # the SDK's TracerProvider, when tracing is on


def enabled_by(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(environ: Mapping[str, str] = os.environ) -> bool:
    """Set up tracing for this process when the environment asks for it (the lifespan
    calls this); True when it is on."""
    global _tracer, _provider
    if not enabled_by(environ):
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
                "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
            )
            if protocol != "http/protobuf":
                log.warning(
                    "tracing: OTLP protocol %r is not supported; using http/protobuf", protocol
                )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name != "none":
            log.warning("tracing: unknown exporter %r in OTEL_TRACES_EXPORTER; ignored", name)
    if not exporters:
        return False
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": "stepwise"}
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("stepwise")
    log.info("tracing on: exporting spans to %s", ", ".join(names))
    return True


def shutdown() -> None:
    """Flush the spans still buffered and turn tracing off (the lifespan's end)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _provider = None
    _tracer = trace.NoOpTracer()


def _run_root(run_id: str) -> otel_context.Context:
    """The context of a run's virtual root span: trace id = the run's UUID."""
    try:
        trace_id = uuid.UUID(run_id).int
    except ValueError:
        trace_id = uuid.uuid5(uuid.NAMESPACE_URL, run_id).int
    root = SpanContext(
        trace_id=trace_id,
        span_id=(trace_id & ((1 << 64) - 1)) or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(root))


@contextmanager
def run_span(run_id: str) -> Iterator[Span]:
    """One execution of a run (from a claim or hand-over to its pause, end or loss)."""
    if _provider is None:  # off: no span, no context change on the hot path
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        "stepwise.run",
        context=_run_root(run_id),
        kind=SpanKind.INTERNAL,
        attributes={"stepwise.run_id": run_id},
    ) as span:
        yield span


@contextmanager
def step_span(run_id: str, node: str, step: str, visit: int) -> Iterator[Span]:
    if _provider is None:
        yield trace.INVALID_SPAN
        return
    with _tracer.start_as_current_span(
        f"stepwise.step {node}",
        kind=SpanKind.INTERNAL,
        attributes={
            "stepwise.run_id": run_id,
            "stepwise.node": node,
            "stepwise.step": step,
            "stepwise.visit": visit,
        },
    ) as span:
        yield span


def end_step(span: Span, status: str, attempts: int, error_code: str | None) -> None:
    span.set_attribute("stepwise.status", status)
    span.set_attribute("stepwise.attempts", attempts)
    if error_code is not None:
        span.set_attribute("stepwise.error_code", error_code)
        span.set_status(Status(StatusCode.ERROR, error_code))


def inject(headers: MutableMapping[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) for the current span, if one is recording."""
    if _provider is not None:
        propagate.inject(headers)
