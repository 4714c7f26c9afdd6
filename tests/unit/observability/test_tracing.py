"""Traceparent parsing is strict (hostile input) and request traces end as one tree."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.observability.timeline import AttemptMark, RequestRecord, Timeline
from gateway.observability.tracing import (
    RequestTracer,
    build_provider,
    format_traceparent,
    parse_traceparent,
)

VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_valid_traceparent_round_trips() -> None:
    context = parse_traceparent(VALID)
    assert context is not None and context.is_remote
    assert format_traceparent(context) == VALID


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        VALID.upper(),
        VALID + "-00",
        VALID[:-1],
        "01" + VALID[2:],  # only version 00 is read
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
        "\u00e9" * 55,
    ],
)
def test_anything_else_is_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_a_request_trace_is_a_server_span_with_its_stages_and_attempts() -> None:
    exporter = InMemorySpanExporter()
    tracer = RequestTracer(build_provider(SimpleSpanProcessor(exporter)))
    timeline = Timeline(100.0, detailed=True)
    timeline.authed, timeline.limiting, timeline.admitted, timeline.looked_up = (
        100.001, 100.001, 100.002, 100.003,
    )  # fmt: skip
    trace = tracer.begin(timeline, VALID)
    attempt = AttemptMark("http://user:secret@10.1.2.3:8001", "eng-a", 100.004)
    sent = trace.attempt_started(attempt)
    assert sent.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    attempt.ended, attempt.status, attempt.failure = 100.005, 503, "status"
    assert timeline.attempts is not None
    timeline.attempts.append(attempt)
    record = RequestRecord("req-1", "embeddings")
    record.model, record.status, record.key, record.input_tokens = "m", 200, "team", 3
    trace.finish(record, timeline, 100.01)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    stages = {"vgate.auth", "vgate.limit", "vgate.cache", "vgate.upstream"}
    assert set(spans) == {"embeddings m", *stages}
    root = spans["embeddings m"]
    assert root.attributes is not None and root.attributes["gen_ai.operation.name"] == "embeddings"
    assert root.attributes["gen_ai.usage.input_tokens"] == 3
    upstream = spans["vgate.upstream"]
    assert upstream.attributes is not None
    assert upstream.attributes["server.address"] == "10.1.2.3"
    assert upstream.attributes["error.type"] == "status"
    assert "secret" not in str(dict(upstream.attributes))
    assert sent.split("-")[2] == f"{upstream.context.span_id:016x}"
    assert root.end_time is not None and root.start_time is not None
    assert root.end_time - root.start_time == pytest.approx(10_000_000, abs=2)
