"""A hostile tenant against its tokens-per-minute limit, through a real gateway,
redis-server and stub engine: many prompts times ``n`` in one completions request.

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


def fresh_key(name: str) -> tuple[str, dict[str, Any]]:
    """A key of its own (a fresh budget), as a static key of the gateway's config."""
    secret = f"sk-{name}-{RUN}-0123456789"
    return secret, {"name": f"{name}-{RUN}", "key": secret, "tpm": TPM}


@pytest.fixture(scope="module")
def keyed(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, str, str]]:
    fits, fits_key = fresh_key("fits")
    huge, huge_key = fresh_key("huge")
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url},
        "auth": {"enabled": True, "keys": [fits_key, huge_key]},
        "server": {"max_body_bytes": 1024 * 1024},
    }
    for gateway in start_gateway(config, tmp_path_factory.mktemp("evasion-tokens")):
        yield gateway, fits, huge


def test_the_cap_covers_every_prompt_times_n(keyed: tuple[Gateway, str, str], engine: Stub) -> None:
    gateway, secret, _ = keyed
    prompts = 2000  # x 64 = 128,000 sequences
    answer = ask(gateway, secret, prompts)
    assert answer.status_code == 200, answer.text
    sent = engine.stats()["last_request"]["body"]
    assert len(sent["prompt"]) == prompts
    generated = sent["max_tokens"] * prompts * N
    assert generated <= TPM, f"the engine may generate {generated} tokens on a {TPM} tpm key"
    assert int(answer.headers["x-ratelimit-remaining-tokens"]) >= 0


def test_more_sequences_than_the_limit_holds_tokens_is_refused(
    keyed: tuple[Gateway, str, str],
) -> None:
    gateway, _, secret = keyed
    answer = ask(gateway, secret, 10_000)  # x 64 = 640,000 sequences, a token each at least
    assert answer.status_code == 429, answer.text[:300]
    error = answer.json()["error"]
    assert error["type"] == "tokens"
    assert "640000 choices" in error["message"]
