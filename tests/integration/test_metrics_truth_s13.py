"""The metrics operators bill and alert on tell the truth: a known mix of traffic
through a real gateway (real redis-server, a stub engine that reports exact usage)
moves each family by exactly what happened: requests by status, durations and TTFTs
one per request (stream), tokens charged equal to the usage the clients were shown,
cache outcomes, retries once each, 429s by key and kind, in-flight gauges back to 0."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.helpers.metrics_text import metric_sum
from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
BILLED_KEY, BILLED = "sk-truth-billed-0123456789", f"billed-{RUN}"
TIGHT_KEY, TIGHT = "sk-truth-tight-0123456789", f"tight-{RUN}"
RETRY_MODEL = "retry-model"


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


@pytest.fixture(scope="module")
def failing() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL, "--fail-status", "500")


@pytest.fixture(scope="module")
def truth(
    engine: Stub, failing: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config: dict[str, Any] = {
        "models": [
            {"name": STUB_MODEL, "endpoints": [engine.url]},
            {
                "name": RETRY_MODEL,
                "endpoints": [failing.url, engine.url],
                "upstream_model": STUB_MODEL,
            },
        ],
        "redis": {"url": redis_url},
        "upstream": {"retries": 1, "breaker_failures": 1000, "health_interval_s": 60},
        "auth": {
            "enabled": True,
            "keys": [
                {"name": BILLED, "key": BILLED_KEY, "tpm": 1_000_000},
                {"name": TIGHT, "key": TIGHT_KEY, "rpm": 1},
            ],
        },
        "cache": {"enabled": True, "namespace": RUN},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("truth"))


def _post(
    gateway: Gateway, path: str, body: dict[str, Any], key: str = BILLED_KEY
) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/{path}",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": STUB_MODEL, "messages": [{"role": "user", "content": text}], **extra}


def _unique(**extra: Any) -> dict[str, Any]:
    return _chat(f"truth {uuid.uuid4().hex}", max_tokens=8, **extra)


def _stream_usage(response: httpx.Response) -> int:
    """The usage total of a stream's usage chunk (the client asked for it)."""
    total = 0
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            usage = orjson.loads(line[6:]).get("usage")
            if usage:
                total = usage["total_tokens"]
    assert total > 0, response.text
    return total


class Deltas:
    """The change of each figure between two scrapes."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._before = gateway.metrics()
        self.after = self._before

    def scrape(self) -> None:
        self.after = self._gateway.metrics()

    def __call__(self, name: str, **labels: str) -> float:
        return metric_sum(self.after, name, **labels) - metric_sum(self._before, name, **labels)


def test_a_known_mix_moves_every_figure_by_what_happened(truth: Gateway) -> None:
    deltas = Deltas(truth)
    shown = 0  # the usage totals the billed key's clients were shown
    for _ in range(3):
        answer = _post(truth, "chat/completions", _unique())
        assert answer.status_code == 200, answer.text
        shown += answer.json()["usage"]["total_tokens"]
    for _ in range(2):
        body = _unique(stream=True, stream_options={"include_usage": True})
        answer = _post(truth, "chat/completions", body)
        assert answer.status_code == 200, answer.text
        shown += _stream_usage(answer)
    text = {"model": STUB_MODEL, "prompt": f"truth {uuid.uuid4().hex}", "max_tokens": 5}
    answer = _post(truth, "completions", text)
    assert answer.status_code == 200, answer.text
    shown += answer.json()["usage"]["total_tokens"]
    vectors = {"model": STUB_MODEL, "input": f"truth {uuid.uuid4().hex}"}
    answer = _post(truth, "embeddings", vectors)
    assert answer.status_code == 200, answer.text
    shown += answer.json()["usage"]["total_tokens"]
    # An engine's 400 and 500, and a gateway's own 400 and 404: nothing charged.
    refused = _post(truth, "chat/completions", _unique(stub={"vllm_error": "no", "status": 400}))
    assert refused.status_code == 400, refused.text
    broken = _post(truth, "chat/completions", _unique(stub={"fault": "error", "status": 500}))
    assert broken.status_code >= 500, broken.text
    assert _post(truth, "chat/completions", {"model": STUB_MODEL}).status_code == 400
    assert _post(truth, "chat/completions", _chat("x", model="nope")).status_code == 404
    holds_soon(lambda: _in_flight_zero(truth), message="a request stayed in flight")
    deltas.scrape()

    assert deltas("vgate_tokens_charged_total", key=BILLED) == shown
    chat = {"model": STUB_MODEL, "endpoint": "chat_completions"}
    assert deltas("vgate_requests_total", status="200", **chat) == 5
    assert deltas("vgate_requests_total", status="400", **chat) == 1
    assert deltas("vgate_requests_total", status=str(broken.status_code), **chat) == 1
    assert deltas("vgate_requests_total", status="400", endpoint="chat_completions") == 2
    assert deltas("vgate_requests_total", status="404", endpoint="chat_completions") == 1
    assert deltas("vgate_requests_total", model=STUB_MODEL, endpoint="completions") == 1
    assert deltas("vgate_requests_total", model=STUB_MODEL, endpoint="embeddings") == 1
    assert deltas("vgate_requests_total") == 11
    assert deltas("vgate_request_duration_seconds_count") == 11
    assert deltas("vgate_time_to_first_token_seconds_count", **chat) == 2
    assert deltas("vgate_upstream_errors_total", model=STUB_MODEL, kind="status") == 2
    # Sampled (no temperature 0): not cacheable, each a bypass (deterministic_only).
    assert deltas("vgate_cache_requests_total", model=STUB_MODEL, result="bypass") == 8
    assert deltas("vgate_cache_requests_total", model=STUB_MODEL, result="hit") == 0


def _in_flight_zero(gateway: Gateway) -> bool:
    text = gateway.metrics()
    return metric_sum(text, "vgate_requests_in_flight") == 0


def test_cache_hits_are_counted_and_cost_no_tokens(truth: Gateway) -> None:
    deltas = Deltas(truth)
    body = _chat(f"cached {uuid.uuid4().hex}", max_tokens=8, temperature=0)
    first = _post(truth, "chat/completions", body)
    again = _post(truth, "chat/completions", body)
    assert first.status_code == again.status_code == 200
    assert again.headers.get("x-cache") == "HIT", again.headers
    deltas.scrape()
    assert deltas("vgate_cache_requests_total", model=STUB_MODEL, result="miss") == 1
    assert deltas("vgate_cache_requests_total", model=STUB_MODEL, result="hit") == 1
    chat = {"model": STUB_MODEL, "endpoint": "chat_completions", "status": "200"}
    assert deltas("vgate_requests_total", **chat) == 2
    assert deltas("vgate_request_duration_seconds_count", model=STUB_MODEL) == 2
    # cache.hits_consume_tokens is off by default: a hit costs the key nothing.
    charged = first.json()["usage"]["total_tokens"]
    assert deltas("vgate_tokens_charged_total", key=BILLED) == charged


def test_retries_are_counted_once_each(truth: Gateway) -> None:
    deltas = Deltas(truth)
    for _ in range(6):
        answer = _post(truth, "chat/completions", _unique(model=RETRY_MODEL))
        assert answer.status_code == 200, answer.text
    deltas.scrape()
    failures = deltas("vgate_upstream_errors_total", model=RETRY_MODEL, kind="status")
    assert failures >= 1  # the failing engine is tried first at least once in six
    assert deltas("vgate_retries_total", model=RETRY_MODEL) == failures
    assert deltas("vgate_engine_requests_total") == 6 + failures
    assert deltas("vgate_requests_total", model=RETRY_MODEL, status="200") == 6
    assert deltas("vgate_requests_total", model=RETRY_MODEL) == 6


def test_rate_limited_requests_counted_by_key_and_kind(truth: Gateway) -> None:
    deltas = Deltas(truth)
    statuses = [
        _post(truth, "chat/completions", _unique(), TIGHT_KEY).status_code for _ in range(3)
    ]
    assert statuses == [200, 429, 429]
    deltas.scrape()
    assert deltas("vgate_rate_limited_requests_total", key=TIGHT, kind="requests") == 2
    assert deltas("vgate_requests_total", status="429") == 2
    assert deltas("vgate_request_duration_seconds_count") == 3


def test_streams_cut_by_the_engine_or_left_by_the_client(truth: Gateway) -> None:
    deltas = Deltas(truth)
    dropped = _unique(stream=True, stub={"fault": "drop", "after": 2})
    with httpx.stream(
        "POST",
        f"{truth.base_url}/chat/completions",
        json=dropped,
        headers={"authorization": f"Bearer {BILLED_KEY}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        response.read()
    slow = _chat(f"slow {uuid.uuid4().hex}", max_tokens=50, stream=True, stub={"itl_ms": 200})
    with httpx.stream(
        "POST",
        f"{truth.base_url}/chat/completions",
        json=slow,
        headers={"authorization": f"Bearer {BILLED_KEY}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        next(response.iter_raw())
    holds_soon(lambda: _in_flight_zero(truth), message="a left stream stayed in flight")
    holds_soon(
        lambda: (
            metric_sum(truth.metrics(), "vgate_client_disconnects_total", model=STUB_MODEL)
            > metric_sum(deltas._before, "vgate_client_disconnects_total", model=STUB_MODEL)
        )
    )
    deltas.scrape()
    chat = {"model": STUB_MODEL, "endpoint": "chat_completions"}
    assert deltas("vgate_upstream_errors_total", model=STUB_MODEL, kind="stream_interrupted") == 1
    assert deltas("vgate_client_disconnects_total", model=STUB_MODEL) == 1
    assert deltas("vgate_requests_total", **chat) == 2
    assert deltas("vgate_request_duration_seconds_count", **chat) == 2
    assert deltas("vgate_time_to_first_token_seconds_count", **chat) == 2
