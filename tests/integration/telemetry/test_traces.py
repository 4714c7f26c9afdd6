"""Traces (issue #18, acceptance 1): the span tree and attributes of a request that
failed over once, and the client's ``traceparent`` reaching the engines."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from opentelemetry.trace import SpanKind

from tests.integration.conftest import STUB_MODEL, Stub
from tests.integration.telemetry.conftest import (
    CLIENT_PARENT,
    CLIENT_SPAN,
    CLIENT_TRACE,
    KEY,
    InProcessGateway,
    finished_request,
    root_of,
    traceparents,
    wait_for,
)

# -- traces ----------------------------------------------------------------------------


def test_a_streamed_request_that_failed_over_is_one_span_tree(
    traced: InProcessGateway, bad: Stub, good: Stub
) -> None:
    client = traced.client()
    assert traced.exporter is not None
    for _ in range(10):  # the policy may choose the answering engine first: try again
        traced.exporter.clear()
        stream = client.chat.completions.create(
            model=STUB_MODEL,
            messages=[{"role": "user", "content": "trace me"}],
            stream=True,
            temperature=1.0,
            extra_headers={"traceparent": CLIENT_PARENT},
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text
        spans = wait_for(lambda: finished_request(traced, CLIENT_TRACE), "the request's spans")
        if len([s for s in spans if s.name == "vgate.upstream"]) == 2:
            break
    else:
        pytest.fail("no request was sent to the failing engine first in 10 tries")
    root = root_of(spans)
    assert root is not None and root.parent is not None
    assert root.parent.span_id == int(CLIENT_SPAN, 16)  # the client's trace is continued
    assert root.name == f"chat {STUB_MODEL}"
    attrs: dict[str, Any] = dict(root.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == STUB_MODEL
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["vgate.key.name"] == "team-a"
    assert KEY not in json.dumps({k: str(v) for k, v in attrs.items()})  # never the secret
    good_port = int(good.url.rsplit(":", 1)[1])
    bad_port = int(bad.url.rsplit(":", 1)[1])
    assert (attrs["server.address"], attrs["server.port"]) == ("127.0.0.1", good_port)
    assert attrs["vgate.stream"] is True and attrs["http.response.status_code"] == 200
    assert [e.name for e in root.events] == ["gen_ai.first_token"]
    assert 0 < attrs["gen_ai.server.time_to_first_token"] < 30

    children = sorted((s for s in spans if s is not root), key=lambda s: s.start_time or 0)
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in children)
    names = [s.name for s in children]
    assert names[:3] == ["vgate.auth", "vgate.limit", "vgate.cache"], names
    assert names.count("vgate.queue") == 1 and names.count("vgate.upstream") == 2
    first, second = (s for s in children if s.name == "vgate.upstream")
    assert first.kind is SpanKind.CLIENT and second.kind is SpanKind.CLIENT
    failed: dict[str, Any] = dict(first.attributes or {})
    answered: dict[str, Any] = dict(second.attributes or {})
    assert failed["server.port"] == bad_port and failed["http.response.status_code"] == 500
    assert failed["error.type"] == "status" and failed["vgate.failover"] is True
    assert answered["server.port"] == good_port and "error.type" not in answered
    begun, ended = root.start_time, root.end_time
    assert begun is not None and ended is not None
    for span in children:
        assert span.start_time is not None and span.end_time is not None
        assert begun <= span.start_time <= span.end_time <= ended

    # Each engine got the trace id, with its own attempt's span as the parent.
    assert traceparents(bad)[-1] == f"00-{CLIENT_TRACE}-{first.context.span_id:016x}-01"
    assert traceparents(good)[-1] == f"00-{CLIENT_TRACE}-{second.context.span_id:016x}-01"


@pytest.mark.parametrize(
    "hostile",
    [
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",  # zero trace id
        CLIENT_PARENT.upper(),  # upper-case hex
        CLIENT_PARENT + "-extra",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x" * 4000,
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(
    traced: InProcessGateway, good: Stub, hostile: str
) -> None:
    answer = httpx.post(
        f"{traced.url}/v1/completions",
        headers={"authorization": f"Bearer {KEY}", "traceparent": hostile},
        json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4, "temperature": 1.0},
    )
    assert answer.status_code == 200
    sent = traceparents(good)[-1]
    assert sent is not None and sent != hostile
    version, trace_id, span_id, _flags = sent.split("-")
    assert (version, len(trace_id), len(span_id)) == ("00", 32, 16) and trace_id != "0" * 32
    spans = wait_for(lambda: finished_request(traced, trace_id), "the new trace")
    root = root_of(spans)
    assert root is not None and root.parent is None
    assert dict(root.attributes or {})["gen_ai.operation.name"] == "text_completion"


def test_without_tracing_a_valid_traceparent_goes_to_the_engine_unchanged(
    untraced: InProcessGateway, good: Stub
) -> None:
    def post(traceparent: str) -> None:
        answer = httpx.post(
            f"{untraced.url}/v1/completions",
            headers={"authorization": f"Bearer {KEY}", "traceparent": traceparent},
            json={"model": STUB_MODEL, "prompt": "hi", "max_tokens": 4, "temperature": 1.0},
        )
        assert answer.status_code == 200

    post(CLIENT_PARENT)
    assert traceparents(good)[-1] == CLIENT_PARENT
    post("00-not-a-trace")  # invalid: dropped, not passed on
    assert traceparents(good)[-1] is None
