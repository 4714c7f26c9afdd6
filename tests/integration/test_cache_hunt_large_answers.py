"""Answers larger than ``cache.max_entry_bytes`` are served but never stored; identical
requests in flight meanwhile still share the one engine call (single flight), JSON
answers as well as streams, and each gets the whole answer under its own id."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
KEY = "sk-hunt-large-0123456789"
FOLLOWERS = 8


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
        "auth": {"enabled": True, "keys": [{"name": f"large-{RUN}", "key": KEY}]},
        "cache": {"enabled": True, "namespace": RUN, "max_entry_bytes": 2048},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("hunt-large"))


def calls(engine: Stub) -> int:
    return int(engine.stats()["requests"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_identical_requests_for_a_large_answer_share_one_engine_call(
    gateway: Gateway, engine: Stub, stream: bool
) -> None:
    body: dict[str, Any] = {"model": STUB_MODEL, "temperature": 0, "max_tokens": 600,
            "messages": [{"role": "user", "content": f"{RUN} large {stream}"}],
            "extra_body": {"stub": {"tokens": 600, "ttft_ms": 500}}}  # fmt: skip

    async def one(client: openai.AsyncOpenAI) -> tuple[str, str]:
        if not stream:
            reply = await client.chat.completions.create(**body)
            return reply.id, reply.choices[0].message.content or ""
        chunks = [c async for c in await client.chat.completions.create(**body, stream=True)]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return chunks[0].id, text

    async def burst() -> list[tuple[str, str]]:
        client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)
        return await asyncio.gather(*(one(client) for _ in range(1 + FOLLOWERS)))

    before = calls(engine)
    answers = asyncio.run(burst())
    assert calls(engine) == before + 1  # the leader's; its followers shared it
    texts = {text for _, text in answers}
    assert len(texts) == 1 and len(texts.pop()) > 2048  # larger than an entry may be
    assert len({answer_id for answer_id, _ in answers}) == 1 + FOLLOWERS
    # Too large to store: the next identical request goes to the engine.
    asyncio.run(burst())
    assert calls(engine) == before + 2
