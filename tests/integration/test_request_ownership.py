"""A request's resources are released whichever way it ends, seen from outside: real
gateway, real redis-server, stub engine, the OpenAI SDK.

The regression of issue #12: a single-flight follower whose client gives up while
it waits on the leader used to keep its concurrency slot until the lease expired
(60 s), so the key's next two concurrent requests got ``[200, 429]``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
KEY = "sk-ownership-0123456789"


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


@pytest.fixture(scope="module")
def gateway(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url},
        "auth": {
            "enabled": True,
            "keys": [{"name": f"two-{RUN}", "key": KEY, "max_concurrent": 2}],
        },
        "cache": {"enabled": True, "namespace": f"own-{RUN}"},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("ownership"))


def ask(text: str, ttft_ms: int) -> dict[str, Any]:
    return {
        "model": STUB_MODEL,
        "temperature": 0,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": f"{RUN} {text}"}],
        "extra_body": {"stub": {"ttft_ms": ttft_ms}},
    }


async def statuses(client: openai.AsyncOpenAI, *bodies: dict[str, Any]) -> list[int]:
    async def one(body: dict[str, Any]) -> int:
        try:
            await client.chat.completions.create(**body)
        except openai.APIStatusError as exc:
            return exc.status_code
        return 200

    return list(await asyncio.gather(*(one(b) for b in bodies)))


@pytest.mark.parametrize("stream", [False, True])
def test_a_follower_that_gives_up_frees_its_slot(
    gateway: Gateway, engine: Stub, stream: bool
) -> None:
    tag = f"stream={stream}"

    async def engine_requests() -> int:
        return int((await asyncio.to_thread(engine.stats))["requests"])

    async def scenario() -> list[int]:
        client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)
        impatient = client.with_options(timeout=0.4)
        slow = ask(f"slow leader {tag}", ttft_ms=1500) | {"stream": stream}
        before = await engine_requests()
        leader = asyncio.create_task(client.chat.completions.create(**slow))
        async with asyncio.timeout(10):  # the leader reaches the engine first: it leads
            while await engine_requests() == before:
                pass
        with pytest.raises(openai.APITimeoutError):
            await impatient.chat.completions.create(**slow)
        result = await leader
        if stream:
            assert [c async for c in result]
        # Two fresh misses at once need both of the key's slots.
        deadline = time.monotonic() + 5.0  # far below the 60 s lease that used to free it
        while True:
            got = await statuses(
                client, ask(f"fresh one {tag}", ttft_ms=200), ask(f"fresh two {tag}", ttft_ms=200)
            )
            if got == [200, 200] or time.monotonic() > deadline:
                return got

    assert asyncio.run(scenario()) == [200, 200]
