"""OpenTelemetry traces of requests, following the GenAI semantic conventions.

Off by default (``telemetry.traces``); when off nothing here is built and the request
path does no tracing work. When on, the SDK's ``TracerProvider`` is configured by the
standard ``OTEL_*`` environment (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_TRACES_SAMPLER`` and its argument,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) and exports over OTLP/HTTP in
batches, off the event loop.

One request is one ``SERVER`` span, ``{operation} {model}``, whose children are made
when the request ends from its :class:`~gateway.observability.timeline.Timeline`, with
the times recorded then (no context manager runs on the request path): ``vgate.auth``,
``vgate.limit``, ``vgate.cache``, ``vgate.queue``. Upstream attempts are the exception:
each ``CLIENT`` span starts as its attempt does, so the engine can be sent a
``traceparent`` naming it as the parent (vLLM started with ``--otlp-traces-endpoint``
then joins the trace), and ends with the attempt's outcome.

An incoming ``traceparent`` is continued when it is valid W3C (version 00, lower-case
hex, non-zero ids: anything else is ignored, never an error).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

from gateway.observability.timeline import AttemptMark, RequestRecord, Timeline

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def parse_traceparent(value: str | None) -> SpanContext | None:
    """The remote parent named by a W3C ``traceparent``, or None when it is absent or
    not exactly valid (hostile input: length, case, version and zero ids are checked)."""
    if value is None or len(value) != 55:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    trace_id, span_id = int(match.group(1), 16), int(match.group(2), 16)
    if not trace_id or not span_id:
        return None
    flags = trace.TraceFlags(int(match.group(3), 16) & 0x01)
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)


def format_traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def build_provider(processor: SpanProcessor | None = None) -> TracerProvider:
    """A provider configured by ``OTEL_*`` (sampler, resource, service name), exporting
    through ``processor`` (default: OTLP/HTTP in batches)."""
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "vgate"}))
    provider = TracerProvider(resource=resource)
    if processor is None:
        # OTEL_TRACES_EXPORTER is the SDK's own variable (its auto-configuration, which
        # vgate does not use, reads it): "none" makes spans that go nowhere.
        if "none" in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
            return provider
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    provider.add_span_processor(processor)
    return provider


class RequestTracer:
    """Makes :class:`RequestTrace` s; one per gateway."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("vgate")

    def begin(self, timeline: Timeline, traceparent: str | None) -> RequestTrace:
        """The trace of a request that began at ``timeline.begun``, continuing the
        client's ``traceparent`` when it is valid."""
        return RequestTrace(self._tracer, timeline, parse_traceparent(traceparent))

    def shutdown(self) -> None:
        """Flush what is queued and stop exporting (at the gateway's exit)."""
        self._provider.shutdown()


class RequestTrace:
    """One request's spans (see the module docstring)."""

    __slots__ = ("_offset_ns", "_root", "_root_context", "_tracer")

    def __init__(
        self, tracer: trace.Tracer, timeline: Timeline, parent: SpanContext | None
    ) -> None:
        self._tracer = tracer
        # perf_counter marks to wall-clock nanoseconds
        self._offset_ns = time.time_ns() - int(time.perf_counter() * 1e9)
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent else Context()
        self._root = tracer.start_span(
            "vgate.request", context, SpanKind.SERVER, start_time=self._ns(timeline.begun)
        )
        self._root_context = trace.set_span_in_context(self._root)

    def _ns(self, mark: float) -> int:
        return self._offset_ns + int(mark * 1e9)

    @property
    def trace_id(self) -> int:
        return self._root.get_span_context().trace_id

    def attempt_started(self, attempt: AttemptMark) -> str:
        """Start the span of an upstream attempt; the ``traceparent`` to send the engine."""
        span = self._tracer.start_span(
            "vgate.upstream",
            self._root_context,
            SpanKind.CLIENT,
            {"vgate.engine.id": attempt.engine},
            start_time=self._ns(attempt.started),
        )
        attempt.span = span
        return format_traceparent(span.get_span_context())

    def finish(self, record: RequestRecord, timeline: Timeline, now: float) -> None:
        """End every span: the stages as children, the attempts, then the request."""
        for name, start, end in (
            ("vgate.auth", timeline.begun, timeline.authed),
            ("vgate.limit", timeline.limiting, timeline.admitted),
            ("vgate.cache", timeline.admitted, timeline.looked_up),
            ("vgate.queue", timeline.queued, timeline.queue_left),
        ):
            if end:
                with self._child(name, start, end) as span:
                    if name == "vgate.cache" and record.cache is not None:
                        span.set_attribute("vgate.cache.status", record.cache)
        for attempt in timeline.attempts or ():
            self._end_attempt(attempt, now)
        root = self._root
        model = record.model
        root.update_name(f"{record.operation} {model}")
        attributes: dict[str, str | int | bool | float] = {
            "gen_ai.operation.name": record.operation,
            "gen_ai.provider.name": "vllm",
            "gen_ai.request.model": model,
            "gen_ai.response.model": record.variant or model,
            "http.response.status_code": record.status,
            "vgate.request.id": record.request_id,
            "vgate.route": record.label,
            "vgate.stream": record.stream,
        }
        optional = {
            "vgate.key.name": record.key,
            "vgate.variant": record.variant,
            "vgate.cache.status": record.cache,
            "vgate.engine.id": record.engine,
            "gen_ai.usage.input_tokens": record.input_tokens,
            "gen_ai.usage.output_tokens": record.output_tokens,
            "error.type": record.error,
        }
        attributes.update({k: v for k, v in optional.items() if v is not None})
        _add_server(attributes, record.engine_url)
        if record.first_token:
            ttft = record.first_token - timeline.begun
            attributes["gen_ai.server.time_to_first_token"] = ttft
            root.add_event(
                "gen_ai.first_token",
                {"gen_ai.server.time_to_first_token": ttft},
                self._ns(record.first_token),
            )
        root.set_attributes(attributes)
        if record.status >= 500:
            root.set_status(Status(StatusCode.ERROR, record.error))
        root.end(self._ns(now))

    @contextmanager
    def _child(self, name: str, start: float, end: float) -> Iterator[trace.Span]:
        span = self._tracer.start_span(name, self._root_context, start_time=self._ns(start))
        try:
            yield span
        finally:
            span.end(self._ns(end))

    def _end_attempt(self, attempt: AttemptMark, now: float) -> None:
        span = attempt.span
        if span is None:
            return
        attempt.span = None
        attributes: dict[str, str | int | bool | float] = {}
        _add_server(attributes, attempt.url)
        if attempt.status is not None:
            attributes["http.response.status_code"] = attempt.status
        if attempt.first_byte:
            attributes["vgate.upstream.first_byte_ms"] = round(
                (attempt.first_byte - attempt.started) * 1000.0, 3
            )
        if attempt.failure is not None:
            attributes["error.type"] = attempt.failure
            attributes["vgate.failover"] = True
            span.set_status(Status(StatusCode.ERROR, attempt.failure))
        span.set_attributes(attributes)
        span.end(self._ns(attempt.ended or now))


def _add_server(attributes: dict[str, str | int | bool | float], url: str | None) -> None:
    """``server.address`` and ``server.port`` of an engine URL (never its credentials)."""
    if url is None:
        return
    parts = urlsplit(url)
    if parts.hostname:
        attributes["server.address"] = parts.hostname
    try:
        port = parts.port
    except ValueError:
        return
    if port is not None:
        attributes["server.port"] = port
