"""A client that leads a single flight and leaves before its answer: the requests that
joined it never hang, and each gets a whole, correct answer (JSON: from its own engine
call; a stream that had received nothing: likewise)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
KEY = "sk-hunt-leaves-0123456789"


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


@pytest.fixture(scope="module")
def gateway(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config: dict[str, Any] = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url},
        "auth": {"enabled": True, "keys": [{"name": f"leaves-{RUN}", "key": KEY}]},
        "cache": {"enabled": True, "namespace": RUN},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("hunt-leaves"))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_followers_of_a_leader_whose_client_left_get_their_answer(
    gateway: Gateway, engine: Stub, stream: bool
) -> None:
    body = {"model": STUB_MODEL, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": f"{RUN} leaves {stream}"}],
            "stub": {"ttft_ms": 600}}  # fmt: skip
    headers = {"Authorization": f"Bearer {KEY}"}
    url = f"{gateway.base_url}/chat/completions"

    async def leader(client: httpx.AsyncClient) -> None:
        with pytest.raises(httpx.ReadTimeout):  # leaves while the engine thinks
            await client.post(url, json=body, headers=headers, timeout=0.3)

    async def follower(client: httpx.AsyncClient) -> tuple[int, str, str]:
        # Joins the leader's flight: once the leader's request is at the engine.
        async with asyncio.timeout(10):
            while (await client.get(f"{engine.url}/stub/stats")).json()["in_flight"] < 1:
                await asyncio.sleep(0.01)
        reply = await client.post(url, json=body, headers=headers, timeout=10)
        return reply.status_code, reply.headers.get("x-cache", ""), reply.text

    async def scene() -> list[tuple[int, str, str]]:
        async with httpx.AsyncClient() as client:
            results = await asyncio.gather(leader(client), *(follower(client) for _ in range(4)))
        return [r for r in results if r is not None]

    answers = asyncio.run(scene())
    assert [status for status, _, _ in answers] == [200] * 4
    for _, _, text in answers:
        if stream:
            assert text.rstrip().endswith("data: [DONE]") and '"finish_reason":"stop"' in text
        else:
            assert '"finish_reason":"stop"' in text
