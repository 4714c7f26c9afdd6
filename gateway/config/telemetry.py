"""The ``telemetry:`` section: request traces (OpenTelemetry), off by default.

Where traces go and how many are kept is the standard ``OTEL_*`` environment's to say
(read by the OpenTelemetry SDK, not here: ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_TRACES_SAMPLER``, ``OTEL_SERVICE_NAME``, ...), so a gateway joins an existing
tracing set-up without a vgate-specific spelling of it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TelemetrySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    traces: bool = Field(
        False,
        description="One OpenTelemetry span per request (GenAI semantic conventions), with "
        "children for auth, the limiter, the cache, the queue and each upstream attempt, "
        "exported over OTLP/HTTP as the OTEL_* environment says; a client's traceparent is "
        "continued and sent on to the engine.",
    )
