"""A hostile tenant against its tokens-per-minute limit, through a real gateway,
redis-server and stub engine: many prompts times ``n`` in one completions request,
and a chat's ``max_completion_tokens: 0``.

The engine generates ``max_tokens`` for every prompt times ``n`` sequences, so the
gateway's cap times that count (plus the prompt) must fit the key's ``tpm``. The
count was clamped at 65,536 sequences: 2,000 prompts x ``n=64`` (128,000) were
granted ``max_tokens: 3`` on a 200,000-token limit, 384,000 tokens for one request,
and 10,000 prompts x 64 (a request no budget can hold: every sequence needs a token)
were admitted too, at 1.9 million."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
TPM = 200_000
N = 64  # the stub's largest n


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


def ask(gateway: Gateway, secret: str, prompts: int) -> httpx.Response:
    body: dict[str, Any] = {
        "model": STUB_MODEL,
        "prompt": ["a"] * prompts,
        "n": N,
        "max_tokens": 1000,
        "stub": {"tokens": 1000},
    }
    return httpx.post(
        f"{gateway.base_url}/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


KEYS = ("fits", "huge", "zero-1", "zero-2")
"""One key per test (each a fresh budget): static keys of the gateway's config."""


def secret_of(name: str) -> str:
    return f"sk-{name}-{RUN}-0123456789"


@pytest.fixture(scope="module")
def gateway(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    keys = [{"name": f"{name}-{RUN}", "key": secret_of(name), "tpm": TPM} for name in KEYS]
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url},
        "auth": {"enabled": True, "keys": keys},
        "server": {"max_body_bytes": 1024 * 1024},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("evasion-tokens"))


def test_the_cap_covers_every_prompt_times_n(gateway: Gateway, engine: Stub) -> None:
    prompts = 2000  # x 64 = 128,000 sequences
    answer = ask(gateway, secret_of("fits"), prompts)
    assert answer.status_code == 200, answer.text
    sent = engine.stats()["last_request"]["body"]
    assert len(sent["prompt"]) == prompts
    generated = sent["max_tokens"] * prompts * N
    assert generated <= TPM, f"the engine may generate {generated} tokens on a {TPM} tpm key"
    assert int(answer.headers["x-ratelimit-remaining-tokens"]) >= 0


def test_more_sequences_than_the_limit_holds_tokens_is_refused(gateway: Gateway) -> None:
    answer = ask(
        gateway, secret_of("huge"), 10_000
    )  # x 64 = 640,000 sequences, a token each at least
    assert answer.status_code == 429, answer.text[:300]
    error = answer.json()["error"]
    assert error["type"] == "tokens"
    assert "640000 choices" in error["message"]


def vllm_length_limit(sent: dict[str, Any]) -> Any:
    """The output limit vLLM reads from a chat body: ``max_completion_tokens or
    max_tokens`` (a 0 asks for nothing; with neither, the context's end)."""
    return sent.get("max_completion_tokens") or sent.get("max_tokens")


@pytest.mark.parametrize(
    "lengths",
    [{"max_completion_tokens": 0}, {"max_completion_tokens": 0, "max_tokens": 500_000}],
)
def test_a_zero_max_completion_tokens_does_not_lift_the_cap(
    gateway: Gateway, engine: Stub, lengths: dict[str, int]
) -> None:
    """vLLM reads a chat's ``max_completion_tokens: 0`` as unset: the engine must still
    get a limit no larger than what was reserved (it got none, or the 500,000 asked
    for past a 200,000 budget, before)."""
    secret = secret_of(f"zero-{len(lengths)}")
    body = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], **lengths}
    answer = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    limit = vllm_length_limit(engine.stats()["last_request"]["body"])
    assert isinstance(limit, int), f"the engine got no output limit: {limit!r}"
    reserved = TPM - int(answer.headers["x-ratelimit-remaining-tokens"])
    assert 0 < limit <= reserved, (limit, reserved)
