"""What the request-telemetry tests share (issue #18, acceptance 1 and 2): gateways run
in this process (``create_app`` served by uvicorn on a thread), so their spans can go
to the OpenTelemetry SDK's in-memory exporter through ``create_app``'s
``span_processor``: no test-only setting exists in the config. Two stub engines serve
the model: one answers every completion with 500 (so a request sent to it first fails
over), the other answers; each records the ``traceparent`` it received.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

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


@pytest.fixture(scope="module")
def logged(bad: Stub, good: Stub) -> Iterator[InProcessGateway]:
    settings = settings_for(bad, good, traces=False)
    server = settings.server.model_copy(update={"log_format": "json"})
    with InProcessGateway(settings.model_copy(update={"server": server}), None) as gw:
        yield gw
