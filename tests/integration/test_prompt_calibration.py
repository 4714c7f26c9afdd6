"""A tenant sending crafted prompts in concurrent bursts, through a real gateway,
redis-server and a stub engine that counts a prompt token per character (as a real
tokenizer counts single-letter words, CJK or emoji, or worse).

The gateway estimates a prompt at 4 characters a token; every request of a burst sent
at once was admitted on that estimate before any settled, so each burst used about 4
times what was reserved, and a key used several times its ``tpm`` a minute. Once a
burst has settled, the key's estimates are calibrated by what the engine counted: the
next burst is admitted only as far as its real prompts fit what is left of the limit.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
TPM = 40_000
CHARS = 2_000
"""A crafted prompt: estimated at (2,000 + 16) / 4 = 504 tokens, counted 2,004."""
REAL = CHARS + 4 + 1  # the stub's 4 a message, and one output token
FIRST_BURST = 4
SECOND_BURST = 40  # on the estimate, 40 x 505 fit; their real prompts, 80,200, do not
SMALL_CHARS = 200
"""A small crafted prompt: estimated at (200 + 16) / 4 = 54 tokens, counted 204."""
SMALL_REAL = SMALL_CHARS + 4 + 1
SMALL_TPM = 5_000


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    # Answers wait a second: a burst is admitted whole before any of it settles.
    yield from start_stub("--model", STUB_MODEL, "--prompt-tokens", "chars", "--ttft-ms", "1000")


KEYS = ("plain", "streamed")


def secret_of(name: str) -> str:
    return f"sk-{name}-{RUN}-0123456789"


@pytest.fixture(scope="module")
def gateway(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    keys = [{"name": f"{name}-{RUN}", "key": secret_of(name), "tpm": TPM} for name in KEYS]
    keys.append({"name": f"small-{RUN}", "key": secret_of("small"), "tpm": SMALL_TPM})
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url},
        "auth": {"enabled": True, "keys": keys},
        "upstream": {"read_timeout_s": 30},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("prompt-calibration"))


async def burst(
    gateway: Gateway, key: str, count: int, stream: bool, chars: int = CHARS
) -> list[httpx.Response]:
    """``count`` crafted requests of ``chars`` characters sent at once."""
    words = ("a " * (chars // 2)).strip() + "a"
    assert len(words) == chars
    body: dict[str, Any] = {
        "model": STUB_MODEL,
        "messages": [{"role": "user", "content": words}],
        "max_tokens": 1,
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {secret_of(key)}"}
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60, limits=limits) as client:
        sends = [client.post("/chat/completions", json=body, headers=headers) for _ in range(count)]
        return list(await asyncio.gather(*sends))


@pytest.mark.parametrize("stream", [False, True], ids=KEYS)
async def test_a_second_burst_of_crafted_prompts_is_admitted_by_their_real_size(
    gateway: Gateway, stream: bool
) -> None:
    key = KEYS[stream]
    first = await burst(gateway, key, FIRST_BURST, stream)
    assert [r.status_code for r in first] == [200] * FIRST_BURST, first[0].text
    used = FIRST_BURST * REAL  # settled: the window holds what the engine counted
    second = await burst(gateway, key, SECOND_BURST, stream)
    admitted = [r for r in second if r.status_code == 200]
    refused = [r for r in second if r.status_code == 429]
    assert len(admitted) + len(refused) == SECOND_BURST
    fits = (TPM - used) // REAL  # 15
    assert fits >= 1
    # Without calibration all 40 were admitted: 88,220 real tokens on a 40,000 limit.
    assert 1 <= len(admitted) <= fits, f"{len(admitted)} admitted, {fits} fit"
    assert used + len(admitted) * REAL <= TPM
    error = refused[0].json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert "tokens per min" in error["message"]
    remaining = int(refused[0].headers["x-ratelimit-remaining-tokens"])
    assert 0 <= remaining < REAL  # the limiter's own count: less than one more request


async def test_small_crafted_prompts_teach_the_estimate_too(gateway: Gateway) -> None:
    """Prompts estimated under 64 tokens taught nothing: a key sending many small crafted
    ones was charged ~4 times less than it used, burst after burst. Pooled, two of them
    teach: (2 x 204 - 2 x 32) / (2 x 54), a factor of 3.19."""
    first = await burst(gateway, "small", FIRST_BURST, False, SMALL_CHARS)
    assert [r.status_code for r in first] == [200] * FIRST_BURST, first[0].text
    used = FIRST_BURST * SMALL_REAL
    second = await burst(gateway, "small", SECOND_BURST, False, SMALL_CHARS)
    admitted = sum(r.status_code == 200 for r in second)
    assert admitted + sum(r.status_code == 429 for r in second) == SECOND_BURST
    # On the raw estimate all 40 were admitted (40 x 55 = 2,200 fit in what was left);
    # calibrated, each reserves 173 (ceil(54 x 3.19) and its output token).
    assert SMALL_TPM - used >= SECOND_BURST * (54 + 1)
    assert 1 <= admitted <= (SMALL_TPM - used) // 173 < SECOND_BURST
