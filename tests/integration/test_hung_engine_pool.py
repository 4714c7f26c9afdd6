"""A hung engine (it takes requests and never answers) must not starve the others: it
holds at most ``upstream.max_connections_per_engine`` of the gateway's pooled
connections, requests to other models still go through at once, and its own requests
beyond the cap fail with a 503 within ``connect_timeout_s`` instead of waiting for
ever (streams included: they have no ttft or total deadline here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.waiting import until
from tests.integration.conftest import Gateway, Stub, start_gateway, start_stub

CAP = 4
CONNECT_S = 1.0


@pytest.fixture(scope="module")
def healthy() -> Iterator[Stub]:
    yield from start_stub("--model", "healthy-model")


@pytest.fixture(scope="module")
def hung() -> Iterator[Stub]:
    yield from start_stub("--model", "hung-model", "--hang")


@pytest.fixture(scope="module")
def gateway(
    healthy: Stub, hung: Stub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = {
        "models": [
            {"name": "healthy-model", "endpoints": [healthy.url]},
            {"name": "hung-model", "endpoints": [hung.url]},
        ],
        "upstream": {
            "max_connections": 2 * CAP,
            "max_connections_per_engine": CAP,
            "connect_timeout_s": CONNECT_S,
            "read_timeout_s": 120,  # the hung requests stay hung for the whole test
            "breaker_failures": 1000,
        },
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("hung-engine"))


def _chat(model: str, *, stream: bool) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


async def test_a_hung_engine_holds_its_cap_and_the_other_model_still_answers(
    gateway: Gateway, hung: Stub
) -> None:
    url = f"{gateway.base_url}/chat/completions"
    async with httpx.AsyncClient(timeout=120) as flood, httpx.AsyncClient(timeout=10) as client:
        start = time.monotonic()
        # As many streams as the whole pool holds: without a per-engine cap they would
        # take every connection, and the healthy model's requests would wait for ever.
        floods = [
            asyncio.create_task(flood.post(url, json=_chat("hung-model", stream=True)))
            for _ in range(2 * CAP)
        ]
        try:
            await until(lambda: sum(task.done() for task in floods) >= CAP, CONNECT_S + 5.0)
            assert time.monotonic() - start < CONNECT_S + 5.0
            done = [task for task in floods if task.done()]
            assert len(done) == CAP, f"{len(done)} of the hung model's requests ended"
            for task in done:
                answer = task.result()
                assert answer.status_code == 503
                error = answer.json()["error"]
                assert set(error) >= {"message", "type", "param", "code"}
                assert "hung-model" in error["message"]
                # busy, not down: overloaded, and the engine's health is left alone
                assert error["code"] == "overloaded" and answer.headers["retry-after"] == "1"
            assert hung.stats()["in_flight"] == CAP

            for stream in (False, True):
                began = time.monotonic()
                reply = await client.post(url, json=_chat("healthy-model", stream=stream))
                assert reply.status_code == 200, reply.text
                assert time.monotonic() - began < 5.0
            assert hung.stats()["in_flight"] == CAP
            metrics = (await client.get(f"{gateway.operator_url}/metrics")).text
            healthy = [line for line in metrics.splitlines()
                       if line.startswith("vgate_engine_healthy") and hung.url in line]  # fmt: skip
            assert healthy and healthy[0].endswith(" 1.0"), healthy
        finally:
            for task in floods:
                task.cancel()
            await asyncio.gather(*floods, return_exceptions=True)
    await until(lambda: hung.stats()["in_flight"] == 0)
