"""Priority tiers (issue #17, acceptance 3) with a stub engine saturated by the gateway's
own limit (``max_in_flight: 2``, ~50 ms a request): a high-tier key goes before a
low-tier flood, two keys of one tier share the engine whatever each sends, the engine
receives each request's tier as vLLM's ``priority``, and a client can lower its
request's priority with ``x-vgate-priority`` but never raise it."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

KEYS = {
    "chat": ("sk-tier-chat-0001", "high"),
    "batch": ("sk-tier-batch-001", "low"),
    "tenant-a": ("sk-tier-tenant-a1", "normal"),
    "tenant-b": ("sk-tier-tenant-b1", "normal"),
    "plain": ("sk-tier-plain-001", None),
}
SLOW = {"ttft_ms": 50}


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL, "--scheduling-policy", "priority")


@pytest.fixture(scope="module")
def tiered(engine: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    keys = [
        {"name": name, "key": secret, **({"priority": tier} if tier else {})}
        for name, (secret, tier) in KEYS.items()
    ]
    config = {
        "models": [
            {
                "name": STUB_MODEL,
                "endpoints": [engine.url],
                "overload": {"max_in_flight": 2, "queue_size": 1000, "queue_timeout_s": 60},
            }
        ],
        "auth": {"enabled": True, "keys": keys},
        "upstream": {"read_timeout_s": 60},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("tiers"))


def client(gw: Gateway, key: str, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=gw.base_url, api_key=KEYS[key][0], max_retries=0, timeout=60, **kwargs
    )


async def first_token_s(api: openai.AsyncOpenAI, **extra: Any) -> float:
    """Seconds from sending a streamed request to its first content chunk."""
    started = time.perf_counter()
    stream = await api.chat.completions.create(
        model=STUB_MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body={"stub": SLOW},
        **extra,
    )
    ttft = None
    async for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - started
    assert ttft is not None
    return ttft


def queued(gw: Gateway) -> float:
    for line in gw.metrics().splitlines():
        if line.startswith("vgate_admission_queue_depth{") and STUB_MODEL in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def until_queued(gw: Gateway, depth: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while await asyncio.to_thread(queued, gw) < depth:
        assert time.monotonic() < deadline, f"the queue never reached {depth}"
        await asyncio.sleep(0.05)


def test_a_high_tier_key_goes_before_a_low_tier_flood(tiered: Gateway) -> None:
    async def scenario() -> tuple[list[float], list[float]]:
        stop = asyncio.Event()
        low_ttfts: list[float] = []
        saturated_at: list[float] = []

        async def flood_loop(api: openai.AsyncOpenAI) -> None:
            while not stop.is_set():
                sent = time.perf_counter()
                ttft = await first_token_s(api)
                if saturated_at and sent >= saturated_at[0]:
                    low_ttfts.append(ttft)

        low = client(tiered, "batch")
        flood = [asyncio.create_task(flood_loop(low)) for _ in range(24)]
        await until_queued(tiered, 16)
        saturated_at.append(time.perf_counter())
        high = client(tiered, "chat")
        high_ttfts = [await first_token_s(high) for _ in range(15)]
        while len(low_ttfts) < 15:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*flood)
        return high_ttfts, low_ttfts

    high, low = asyncio.run(scenario())
    high_p50, low_p50 = statistics.median(high), statistics.median(low)
    assert high_p50 < 0.3 * low_p50, (high_p50, low_p50)


def test_a_tenants_flood_leaves_another_of_its_tier_its_share(tiered: Gateway) -> None:
    async def scenario() -> dict[str, int]:
        stop = asyncio.Event()
        admitted = {"tenant-a": 0, "tenant-b": 0}
        counting = asyncio.Event()

        async def loop(key: str, api: openai.AsyncOpenAI) -> None:
            while not stop.is_set():
                await api.chat.completions.create(
                    model=STUB_MODEL,
                    messages=[{"role": "user", "content": "hi"}],
                    extra_body={"stub": SLOW},
                )
                if counting.is_set() and not stop.is_set():
                    admitted[key] += 1

        a, b = client(tiered, "tenant-a"), client(tiered, "tenant-b")
        tasks = [asyncio.create_task(loop("tenant-a", a)) for _ in range(20)]
        tasks += [asyncio.create_task(loop("tenant-b", b)) for _ in range(2)]
        await until_queued(tiered, 15)
        counting.set()
        while sum(admitted.values()) < 80:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
        return admitted

    admitted = asyncio.run(scenario())
    share = admitted["tenant-b"] / sum(admitted.values())
    assert share >= 0.4, admitted


def sent_priority(gw: Gateway, engine: Stub, key: str, **extra: Any) -> object:
    """The ``priority`` the engine received for one request of ``key`` (None: none)."""
    api = openai.OpenAI(base_url=gw.base_url, api_key=KEYS[key][0], max_retries=0)
    api.chat.completions.create(
        model=STUB_MODEL, messages=[{"role": "user", "content": "hi"}], **extra
    )
    body: dict[str, Any] = engine.stats()["last_request"]["body"]
    return body.get("priority")


def test_the_engine_receives_the_tier_and_a_client_can_only_lower_it(
    tiered: Gateway, engine: Stub
) -> None:
    httpx.delete(f"{engine.url}/stub/priorities").raise_for_status()
    assert sent_priority(tiered, engine, "chat") == -10
    assert sent_priority(tiered, engine, "batch") == 10
    assert sent_priority(tiered, engine, "plain") is None  # normal: forwarded untouched
    lowered = {"x-vgate-priority": "low"}
    assert sent_priority(tiered, engine, "chat", extra_headers=lowered) == 10
    assert sent_priority(tiered, engine, "chat", extra_headers={"x-vgate-priority": "3"}) == 3
    raised = {"x-vgate-priority": "high"}
    assert sent_priority(tiered, engine, "batch", extra_headers=raised) == 10
    assert sent_priority(tiered, engine, "batch", extra_body={"priority": -100}) == 10
    assert sent_priority(tiered, engine, "plain", extra_body={"priority": -5}) == 0
    assert sent_priority(tiered, engine, "plain", extra_body={"priority": 7}) == 7
    seen = httpx.get(f"{engine.url}/stub/priorities").json()
    assert seen["policy"] == "priority"
    assert seen["received"] == {"-10": 1, "10": 4, "none": 1, "3": 1, "0": 1, "7": 1}


@pytest.mark.parametrize("value", ["urgent", "1.5", "9" * 30, ""])
def test_an_invalid_priority_header_is_an_openai_400(tiered: Gateway, value: str) -> None:
    api = openai.OpenAI(base_url=tiered.base_url, api_key=KEYS["chat"][0], max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(
            model=STUB_MODEL,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-vgate-priority": value},
        )
    assert refused.value.code == "invalid_priority"
