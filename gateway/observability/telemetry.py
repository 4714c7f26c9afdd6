"""The request telemetry a gateway runs: traces, the JSON request log, routing evidence.

Built once from the settings (:func:`build_telemetry`); each part is None when off.
The pipeline asks :attr:`Telemetry.watching` once per request: when it is false and
the request asks for no evidence, nothing beyond the ``Server-Timing`` marks is done.
"""

from __future__ import annotations

import asyncio

from opentelemetry.sdk.trace import SpanProcessor

from gateway.config.settings import Settings
from gateway.observability.explain import ExplainGate
from gateway.observability.logs import RequestLog
from gateway.observability.tracing import RequestTracer, build_provider


class Telemetry:
    """What reports on requests (see the module docstring)."""

    __slots__ = ("explain", "request_log", "tracer", "watching")

    def __init__(
        self,
        tracer: RequestTracer | None = None,
        request_log: RequestLog | None = None,
        explain: ExplainGate | None = None,
    ) -> None:
        self.tracer = tracer
        self.request_log = request_log
        self.explain = explain or ExplainGate(None)
        self.watching = tracer is not None or request_log is not None
        """Whether every request is followed (traced or logged)."""

    async def aclose(self) -> None:
        """Flush the traces still queued (at the gateway's exit; the export blocks, so it
        runs in a thread, and the caller bounds how long it waits)."""
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)


def build_telemetry(settings: Settings, processor: SpanProcessor | None = None) -> Telemetry:
    """The telemetry ``settings`` ask for; ``processor`` replaces the OTLP exporter (tests
    of an in-process gateway pass the SDK's in-memory exporter here)."""
    tracer = None
    if settings.telemetry.traces:
        tracer = RequestTracer(build_provider(processor))
    request_log = RequestLog() if settings.server.log_format == "json" else None
    return Telemetry(tracer, request_log, ExplainGate(settings.auth.admin_key))
