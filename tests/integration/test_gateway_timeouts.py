"""Per-model timeouts: time to first token, idle gap between chunks, total; each aborts the
engine request and answers 504 (or an SSE error event once the stream has begun)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def timed(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    def model(name: str, **timeouts: float) -> dict[str, Any]:
        return {"name": name, "endpoints": [stub.url], "upstream_model": STUB_MODEL,
                "timeouts": timeouts}  # fmt: skip

    config = {
        "models": [
            model("ttft-model", ttft_s=0.4),
            model("idle-model", idle_s=0.4),
            model("total-model", total_s=0.6),
        ],
        "upstream": {"breaker_failures": 1000, "read_timeout_s": 30},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("timeouts"))


def create(gateway: Gateway, model: str, stub: dict[str, float], **extra: Any) -> Any:
    return gateway.client().chat.completions.create(
        model=model, messages=MESSAGES, extra_body={"stub": stub}, **extra
    )


@pytest.mark.parametrize("stream", [True, False])
def test_no_first_token_in_time_is_504(timed: Gateway, stream: bool) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        reply = create(timed, "ttft-model", {"ttft_ms": 3000}, stream=stream)
        list(reply) if stream else None
    assert time.monotonic() - started < 2.0
    assert caught.value.status_code == 504
    error = caught.value.response.json()["error"]
    assert error["code"] == "upstream_timeout" and "ttft_s" in error["message"]


def test_a_prompt_first_token_is_within_the_ttft_limit(timed: Gateway) -> None:
    chunks = list(create(timed, "ttft-model", {"ttft_ms": 50, "tokens": 5}, stream=True))
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) == 5


def test_an_idle_gap_ends_the_stream_with_an_error_event(timed: Gateway, stub: Stub) -> None:
    cancelled = stub.stats()["requests_cancelled"]
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in create(timed, "idle-model", {"itl_ms": 2000, "tokens": 3}, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received  # the stream had begun: the error came as an SSE event
    assert "idle_s" in str(caught.value)
    assert _eventually(lambda: stub.stats()["requests_cancelled"] > cancelled)  # aborted upstream


def test_the_total_limit_cuts_a_long_stream_and_a_slow_answer(timed: Gateway) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIError) as caught:
        list(create(timed, "total-model", {"itl_ms": 50, "tokens": 100}, stream=True))
    assert "total" in str(caught.value)
    assert time.monotonic() - started < 2.0
    with pytest.raises(openai.APIStatusError) as slow:
        create(timed, "total-model", {"ttft_ms": 3000})
    assert slow.value.status_code == 504 and "total_s" in slow.value.response.text


def _eventually(check: Any, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def blackhole() -> Iterator[str]:
    """A port whose listen backlog is full: connections to it hang instead of failing."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(address)
            fillers.append(filler)
        try:
            yield f"http://127.0.0.1:{address[1]}"
        finally:
            for filler in fillers:
                filler.close()


def test_an_engine_that_never_accepts_is_passed_over_after_the_connect_timeout(
    stub: Stub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with blackhole() as hole:
        config = {
            "models": [
                {"name": STUB_MODEL, "endpoints": [hole, stub.url],
                 "routing": {"policy": "round_robin"}, "timeouts": {"connect_s": 0.3}},
                {"name": "hole-only", "endpoints": [hole], "upstream_model": STUB_MODEL,
                 "timeouts": {"connect_s": 0.3}},
            ],
            "upstream": {"retries": 1, "breaker_failures": 1000},
        }  # fmt: skip
        for gateway in start_gateway(config, tmp_path_factory.mktemp("connect")):
            client = gateway.client()
            for _ in range(4):  # half of them try the hole first, then fail over
                reply = client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
                assert reply.choices[0].message.content
            started = time.monotonic()
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model="hole-only", messages=MESSAGES)
            assert caught.value.status_code == 503
            assert time.monotonic() - started < 2.0
            assert 'kind="connect"' in gateway.metrics()
