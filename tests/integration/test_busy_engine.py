"""A busy engine (every connection the pool may open to it streaming, healthy) is not
failing: a request that waits for one of its connections longer than ``connect_s``, or
than its own deadline (``ttft_timeout_s`` shorter than ``connect_timeout_s``), gets 503
``overloaded``, and the engine's breaker and health are left alone (hunt: 504s, each
held against the engine, until its breaker opened and it answered nobody). Both engine
clients: the lean one by its per-engine cap, the aiohttp one by its whole pool (which
answered such waits as the engine being unreachable, or as its 504)."""

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
"""Waits by its deadline: ``ttft_timeout_s`` (1 s) is shorter than ``connect_timeout_s``."""
CONNECT_BOUND = "c"
"""The same engine, waiting by its own ``connect_s`` (0.3 s): its ``ttft_s`` is longer."""


@pytest.fixture(scope="module")
def slow() -> Iterator[Stub]:
    """A healthy engine with long answers: a token every 150 ms."""
    flags = ("--model", MODEL, "--model", CONNECT_BOUND, "--itl-ms", "150", "--tokens", "30")
    yield from start_stub(*flags)


@pytest.fixture(scope="module", params=["lean", "aiohttp"])
def gateway(
    request: pytest.FixtureRequest, slow: Stub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    client: str = request.param
    # The aiohttp client has no per-engine cap: its whole pool is the engine's.
    pool = (
        {"max_connections": 2 * CAP, "max_connections_per_engine": CAP}
        if client == "lean"
        else {"max_connections": CAP}
    )
    config = {
        "models": [
            {"name": MODEL, "endpoints": [slow.url]},
            {
                "name": CONNECT_BOUND,
                "endpoints": [slow.url],
                "timeouts": {"connect_s": 0.3, "ttft_s": 30},
            },
        ],
        "upstream": {
            **pool,
            "client": client,
            "connect_timeout_s": 5,
            "ttft_timeout_s": 1,
            "breaker_failures": 2,
            "breaker_cooldown_s": 60,
        },
    }
    yield from start_gateway(config, tmp_path_factory.mktemp(f"busy-engine-{client}"))


def _chat(stream: bool, model: str = MODEL, max_tokens: int = 30) -> dict[str, Any]:
    return {"model": model, "stream": stream, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip


@pytest.mark.parametrize("model", [MODEL, CONNECT_BOUND], ids=["deadline", "connect"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_waiting_past_its_deadline_for_a_busy_engine_is_overloaded_not_its_failure(
    gateway: Gateway, slow: Stub, stream: bool, model: str
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
            answer = await client.post(url, json=_chat(stream, model))
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "overloaded"
            assert answer.headers["retry-after"] == "1"
        assert await asyncio.gather(*hogs) == [200] * CAP
        metrics = (await client.get(f"{gateway.operator_url}/metrics")).text
        assert metric_sum(metrics, "vgate_engine_breaker_open") == 0
        assert metric_sum(metrics, "vgate_engine_healthy") == 1
        assert metric_sum(metrics, "vgate_upstream_errors_total", kind="timeout") == 0
        assert metric_sum(metrics, "vgate_upstream_errors_total", kind="connect") == 0
        assert metric_sum(metrics, "vgate_upstream_errors_total", kind="busy") > 0
        answer = await client.post(url, json=_chat(stream, model, max_tokens=2))  # idle again
        assert answer.status_code == 200, answer.text
