"""Streams are relayed as they are produced, and a client leaving aborts the engine's work."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import time

import httpx
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub

MESSAGES = [{"role": "user", "content": "stream please"}]


def test_chunks_arrive_one_by_one_not_at_the_end(gateway: Gateway) -> None:
    body = {
        "model": STUB_MODEL,
        "messages": MESSAGES,
        "stream": True,
        "stub": {"tokens": 6, "itl_ms": 150},
    }
    arrivals: list[float] = []
    started = time.perf_counter()
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.perf_counter() - started)
    total = arrivals[-1]
    # Six tokens 150 ms apart take ~0.75 s; the first chunk must come long before the last.
    assert total > 0.6
    assert arrivals[0] < total / 2
    gaps = [b - a for a, b in itertools.pairwise(arrivals[1:8])]
    assert sum(1 for gap in gaps if gap > 0.08) >= 4


def test_client_disconnect_cancels_the_engine_stream(gateway: Gateway, stub: Stub) -> None:
    before = stub.stats()["streams_cancelled"]
    body = {
        "model": STUB_MODEL,
        "messages": MESSAGES,
        "stream": True,
        "stub": {"tokens": 200, "itl_ms": 100},
    }
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(4)]
    left_at = time.perf_counter()
    assert any(line.startswith("data: ") for line in received)
    while stub.stats()["streams_cancelled"] == before:
        assert time.perf_counter() - left_at < 1.0, "engine did not see the cancellation in 1 s"
        time.sleep(0.02)


def test_stream_in_flight_is_released_after_disconnect(gateway: Gateway, stub: Stub) -> None:
    body = {
        "model": STUB_MODEL,
        "messages": MESSAGES,
        "stream": True,
        "stub": {"tokens": 100, "itl_ms": 50},
    }
    gauge = f'vgate_requests_in_flight{{model="{STUB_MODEL}"}}'
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()  # keep a reference: a dropped iterator closes the stream
        next(lines)
        assert f"{gauge} 1.0" in gateway.metrics()
    deadline = time.perf_counter() + 2
    while f"{gauge} 0.0" not in gateway.metrics():
        assert time.perf_counter() < deadline
        time.sleep(0.05)
    assert stub.stats()["in_flight"] == 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_sees_chunks_one_by_one(gateway: Gateway) -> None:
    body = {
        "model": STUB_MODEL,
        "messages": MESSAGES,
        "stream": True,
        "stub": {"tokens": 5, "itl_ms": 200},
    }
    curl = subprocess.Popen(
        ["curl", "-sN", f"{gateway.base_url}/chat/completions",
         "-H", "Content-Type: application/json", "-d", json.dumps(body)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert curl.stdout is not None
    arrivals = []
    started = time.perf_counter()
    for line in curl.stdout:
        if line.startswith(b"data: "):
            arrivals.append(time.perf_counter() - started)
    assert curl.wait(timeout=10) == 0
    assert len(arrivals) == 8  # role, 5 tokens, finish, [DONE]
    # The stub spaces its 5 tokens 200 ms apart: 0.8 s from the first to the last,
    # nominally. A relay that buffered would deliver them together (a spread near 0);
    # the bound leaves room for a late first read on a loaded machine (seen: 0.7994 s).
    assert arrivals[-1] - arrivals[0] > 0.6
    assert arrivals[2] - arrivals[0] > 0.15


def test_client_leaving_a_non_streaming_request_cancels_it_at_the_engine(
    gateway: Gateway, stub: Stub
) -> None:
    before = stub.stats()["requests_cancelled"]
    body = {"model": STUB_MODEL, "messages": MESSAGES, "stub": {"tokens": 50, "itl_ms": 100}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=0.5)
    left_at = time.perf_counter()
    while stub.stats()["requests_cancelled"] == before:
        assert time.perf_counter() - left_at < 1.0, "engine kept generating for nobody"
        time.sleep(0.02)
    assert httpx.get(f"{gateway.url}/health").status_code == 200
