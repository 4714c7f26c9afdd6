"""A busy engine (every connection the pool may open to it streaming, healthy) is not
failing: a request that waits for one of its connections longer than its own deadline
(``ttft_timeout_s`` shorter than ``connect_timeout_s``) gets 503 ``overloaded``, and the
engine's breaker and health are left alone (hunt: 504s, each held against the engine,
until its breaker opened and it answered nobody)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.metrics_text import metric_sum
from tests.helpers.waiting import until
from tests.integration.conftest import Gateway, Stub, start_gateway, start_stub

CAP = 2
MODEL = "m"


@pytest.fixture(scope="module")
def slow() -> Iterator[Stub]:
    """A healthy engine with long answers: a token every 150 ms."""
    yield from start_stub("--model", MODEL, "--itl-ms", "150", "--tokens", "30")


@pytest.fixture(scope="module")
def gateway(slow: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "models": [{"name": MODEL, "endpoints": [slow.url]}],
        "upstream": {
            "max_connections": 2 * CAP,
            "max_connections_per_engine": CAP,
            "connect_timeout_s": 5,
            "ttft_timeout_s": 1,
            "breaker_failures": 2,
            "breaker_cooldown_s": 60,
        },
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("busy-engine"))


def _chat(stream: bool, max_tokens: int = 30) -> dict[str, Any]:
    return {"model": MODEL, "stream": stream, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_waiting_past_its_deadline_for_a_busy_engine_is_overloaded_not_its_failure(
    gateway: Gateway, slow: Stub, stream: bool
) -> None:
    url = f"{gateway.base_url}/chat/completions"
    async with httpx.AsyncClient(timeout=60) as client:

        async def long_stream() -> int:
            async with client.stream("POST", url, json=_chat(True)) as answer:
                async for _ in answer.aiter_bytes():
                    pass
                return answer.status_code

        hogs = [asyncio.create_task(long_stream()) for _ in range(CAP)]
        await until(lambda: slow.stats()["in_flight"] == CAP)
        for _ in range(3):  # more than breaker_failures, had they counted
            answer = await client.post(url, json=_chat(stream))
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "overloaded"
            assert answer.headers["retry-after"] == "1"
        assert await asyncio.gather(*hogs) == [200] * CAP
        metrics = (await client.get(f"{gateway.operator_url}/metrics")).text
        assert metric_sum(metrics, "vgate_engine_breaker_open") == 0
        assert metric_sum(metrics, "vgate_engine_healthy") == 1
        assert metric_sum(metrics, "vgate_upstream_errors_total", kind="timeout") == 0
        answer = await client.post(url, json=_chat(stream, max_tokens=2))  # idle again
        assert answer.status_code == 200, answer.text
