"""Seeing every request (issue #18, acceptance 1 and 2): traces, Server-Timing, routing
evidence and the JSON request log, against real stub engines over HTTP.

The gateways run in this process (``create_app`` served by uvicorn on a thread), so
their spans can go to the OpenTelemetry SDK's in-memory exporter through
``create_app``'s ``span_processor``: no test-only setting exists in the config. Two
stub engines serve the model: one answers every completion with 500 (so a request
sent to it first fails over), the other answers; each records the ``traceparent`` it
received.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
import openai
import pytest
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.app import create_app
from gateway.config.settings import Settings
from gateway.observability.logs import JsonFormatter
from tests.helpers.processes import free_port
from tests.integration.conftest import STUB_MODEL, Stub, start_stub

KEY = "sk-telemetry-team-a-0001"
ADMIN = "admin-key-telemetry-000001"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
T = TypeVar("T")


class InProcessGateway:
    """A gateway app served by uvicorn on a thread of the test process."""

    def __init__(self, settings: Settings, exporter: InMemorySpanExporter | None) -> None:
        processor = SimpleSpanProcessor(exporter) if exporter is not None else None
        self.exporter = exporter
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(settings, span_processor=processor)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> InProcessGateway:
        self._thread.start()
        wait_for(lambda: _answers(f"{self.url}/health"), "the gateway to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def settings_for(bad: Stub, good: Stub, *, traces: bool) -> Settings:
    return Settings(
        models=[{"name": STUB_MODEL, "endpoints": [bad.url, good.url]}],
        upstream={"retries": 1, "breaker_failures": 1000, "health_interval_s": 30},
        auth={
            "enabled": True,
            "admin_key": ADMIN,
            "keys": [{"name": "team-a", "key": KEY, "rpm": 100000}],
        },
        cache={"enabled": True},
        telemetry={"traces": traces},
    )


@pytest.fixture(scope="module")
def good() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


@pytest.fixture(scope="module")
def bad() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL, "--fail-status", "500")


@pytest.fixture(scope="module")
def traced(bad: Stub, good: Stub) -> Iterator[InProcessGateway]:
    with InProcessGateway(settings_for(bad, good, traces=True), InMemorySpanExporter()) as gw:
        yield gw


@pytest.fixture(scope="module")
def untraced(bad: Stub, good: Stub) -> Iterator[InProcessGateway]:
    with InProcessGateway(settings_for(bad, good, traces=False), None) as gw:
        yield gw


def traceparents(stub: Stub) -> list[str | None]:
    received: list[str | None] = httpx.get(f"{stub.url}/stub/traceparents").json()["received"]
    return received


def request_spans(gateway: InProcessGateway, trace_id: int) -> list[ReadableSpan]:
    assert gateway.exporter is not None
    return [s for s in gateway.exporter.get_finished_spans() if s.context.trace_id == trace_id]


def root_of(spans: list[ReadableSpan]) -> ReadableSpan | None:
    return next((s for s in spans if s.kind is SpanKind.SERVER), None)


def finished_request(gateway: InProcessGateway, trace_id: str) -> list[ReadableSpan] | None:
    """The spans of the trace once its request span has ended (the last one to)."""
    spans = request_spans(gateway, int(trace_id, 16))
    return spans if root_of(spans) is not None else None


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


# -- Server-Timing ---------------------------------------------------------------------


def timing(headers: httpx.Headers) -> dict[str, float]:
    value = headers["server-timing"]
    entries = [part.strip().split(";dur=") for part in value.split(",")]
    return {name: float(duration) for name, duration in entries}


def test_every_completion_answer_carries_server_timing(untraced: InProcessGateway) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    chat = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "t"}], "max_tokens": 4}
    url = untraced.url
    with httpx.Client(headers=auth, timeout=30) as http:
        json_answer = http.post(f"{url}/v1/chat/completions", json={**chat, "temperature": 1})
        with http.stream(
            "POST", f"{url}/v1/chat/completions", json={**chat, "stream": True, "temperature": 1}
        ) as streamed:
            streamed.read()
        deterministic = {**chat, "temperature": 0, "messages": [{"role": "user", "content": "h"}]}
        miss = http.post(f"{url}/v1/chat/completions", json=deterministic)
        hit = http.post(f"{url}/v1/chat/completions", json=deterministic)
        text = http.post(
            f"{url}/v1/completions", json={"model": STUB_MODEL, "prompt": "p", "max_tokens": 2}
        )
        embedded = http.post(f"{url}/v1/embeddings", json={"model": STUB_MODEL, "input": "e"})
        responded = http.post(f"{url}/v1/responses", json={"model": STUB_MODEL, "input": "r"})
        unknown = http.post(f"{url}/v1/chat/completions", json={**chat, "model": "nope"})
    for answer in (json_answer, streamed, miss, text, embedded, responded):
        assert answer.status_code == 200, answer.text
        stages = timing(answer.headers)
        assert list(stages) == ["auth", "limit", "cache", "queue", "upstream"]
        assert all(0 <= d < 30_000 for d in stages.values())
        assert stages["upstream"] > 0  # the engine took some time
    assert hit.headers["x-cache"] == "HIT"
    assert list(timing(hit.headers)) == ["auth", "limit", "cache"]  # it never went upstream
    assert unknown.status_code == 404
    assert list(timing(unknown.headers)) == ["auth", "limit"]


# -- routing evidence ------------------------------------------------------------------


def test_the_evidence_is_given_only_with_the_admin_key(untraced: InProcessGateway) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    body = {"model": STUB_MODEL, "prompt": "why here", "max_tokens": 4, "temperature": 1}
    url = f"{untraced.url}/v1/completions"
    shown = httpx.post(url, headers={**auth, "x-vgate-explain": ADMIN}, json=body)
    assert shown.status_code == 200
    raw = shown.headers["x-vgate-explain"]
    assert raw.isascii() and len(raw) <= 4096
    evidence = json.loads(raw)
    assert evidence["policy"] == "least_outstanding"
    assert len(evidence["candidates"]) == 2
    assert {"engine", "healthy", "in_flight", "waiting", "kv_cache_usage", "load"} <= set(
        evidence["candidates"][0]
    )
    assert evidence["attempts"][-1]["status"] == 200 and evidence["attempts"][-1]["failure"] is None
    assert evidence["cache"]["status"] == "BYPASS"  # temperature 1 is not cached
    assert "x-ratelimit-remaining-requests" in evidence["limits"]
    assert evidence["affinity"]["policy_uses_affinity"] is False
    assert "http" not in raw  # engine ids, never URLs

    for wrong in ("1", ADMIN + "x", KEY, ""):
        hidden = httpx.post(url, headers={**auth, "x-vgate-explain": wrong}, json=body)
        assert hidden.status_code == 200 and "x-vgate-explain" not in hidden.headers
    plain = httpx.post(url, headers=auth, json=body)
    assert "x-vgate-explain" not in plain.headers


def test_the_operator_asks_with_explain_1_and_the_admin_key_as_bearer(
    untraced: InProcessGateway,
) -> None:
    body = {"model": STUB_MODEL, "prompt": "why here", "max_tokens": 4, "temperature": 1}
    url = f"{untraced.url}/v1/completions"
    admin = {"authorization": f"Bearer {ADMIN}"}
    shown = httpx.post(url, headers={**admin, "x-vgate-explain": "1"}, json=body)
    assert shown.status_code == 200, shown.text
    assert json.loads(shown.headers["x-vgate-explain"])["attempts"][-1]["status"] == 200
    # The admin key is no client key otherwise, and "1" proves nothing with another key.
    assert httpx.post(url, headers=admin, json=body).status_code == 401
    for wrong in (f"Bearer {ADMIN}x", f"Bearer {KEY}", f"Basic {ADMIN}", ADMIN):
        asked = httpx.post(url, headers={"authorization": wrong, "x-vgate-explain": "1"}, json=body)
        assert "x-vgate-explain" not in asked.headers, wrong


def test_a_stream_ends_with_the_evidence_as_a_comment(untraced: InProcessGateway) -> None:
    headers = {"authorization": f"Bearer {KEY}"}
    body = {"model": STUB_MODEL, "prompt": "p", "max_tokens": 4, "stream": True, "temperature": 1}
    url = f"{untraced.url}/v1/completions"
    with httpx.stream("POST", url, headers={**headers, "x-vgate-explain": ADMIN}, json=body) as r:
        text = r.read().decode()
    comment = [line for line in text.splitlines() if line.startswith(": vgate-explain ")]
    assert len(comment) == 1 and "x-vgate-explain" not in r.headers
    assert text.rstrip().endswith(comment[0])  # after the last event
    assert json.loads(comment[0].removeprefix(": vgate-explain "))["attempts"]
    with httpx.stream("POST", url, headers={**headers, "x-vgate-explain": "1"}, json=body) as r:
        assert "vgate-explain" not in r.read().decode()
    # The SDK reads such a stream as usual.
    client = openai.OpenAI(
        base_url=f"{untraced.url}/v1",
        api_key=KEY,
        max_retries=0,
        default_headers={"x-vgate-explain": ADMIN},
    )
    chunks = list(
        client.completions.create(model=STUB_MODEL, prompt="p", max_tokens=4, stream=True)
    )
    assert chunks


# -- the JSON request log --------------------------------------------------------------


def test_text_logs_have_no_request_lines(
    untraced: InProcessGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vgate.request")
    answer = httpx.post(
        f"{untraced.url}/v1/completions",
        headers={"authorization": f"Bearer {KEY}"},
        json={"model": STUB_MODEL, "prompt": "quiet", "max_tokens": 2, "temperature": 1},
    )
    assert answer.status_code == 200  # a JSON answer's request closed before it was sent
    assert not [r for r in caplog.records if r.name == "vgate.request"]


@pytest.fixture(scope="module")
def logged(bad: Stub, good: Stub) -> Iterator[InProcessGateway]:
    settings = settings_for(bad, good, traces=False)
    server = settings.server.model_copy(update={"log_format": "json"})
    with InProcessGateway(settings.model_copy(update={"server": server}), None) as gw:
        yield gw


def test_json_log_lines_name_the_request(
    logged: InProcessGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vgate.request")
    answer = httpx.post(
        f"{logged.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {KEY}", "x-request-id": "log-me-1"},
        json={
            "model": STUB_MODEL,
            "messages": [{"role": "user", "content": "l"}],
            "temperature": 1,
        },
    )
    assert answer.status_code == 200

    def line() -> dict[str, Any] | None:
        for record in caplog.records:
            if record.name == "vgate.request":
                parsed: dict[str, Any] = json.loads(JsonFormatter().format(record))
                return parsed
        return None

    fields = wait_for(line, "the request's log line")
    assert fields["logger"] == "vgate.request" and fields["level"] == "info"
    assert fields["request_id"] == answer.headers["x-request-id"]
    assert fields["key"] == "team-a" and KEY not in json.dumps(fields)
    assert (fields["model"], fields["variant"], fields["status"]) == (STUB_MODEL, None, 200)
    assert fields["engine"] and fields["route"] == "chat_completions"
    assert fields["input_tokens"] > 0 and fields["output_tokens"] > 0
    assert {"total", "auth", "limit", "cache", "queue", "upstream"} <= set(fields["timings_ms"])
