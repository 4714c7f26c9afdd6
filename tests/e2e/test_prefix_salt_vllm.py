"""Keys never share vLLM's prefix cache (``cache.engine_prefix_scope: per_key``, the
default): a real engine reuses the cached blocks of a long shared prompt for the key
that sent it, not for another key sending the same prompt, so no tenant can time its
answers to confirm another's prompt. Read from the engine's own prefix-cache counters."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from engines.stats import parse_prometheus
from tests.e2e.conftest import DEFAULT_MODEL, ENGINE_KEY, Stack, serve_in_front

pytestmark = pytest.mark.e2e
ALICE = "sk-e2e-salt-alice-0123456789"
BOB = "sk-e2e-salt-bob-0123456789ab"
SHARED = " ".join(f"Clause {i}: the tenant's confidential instructions go here." for i in range(40))
"""A prompt of several hundred tokens: many full cache blocks."""


@pytest.fixture(scope="module")
def engine(stack: Stack) -> str:
    """One of the model's engines: every request goes to it, so its cache is the one read."""
    return stack.engine_urls(DEFAULT_MODEL)[0]


@pytest.fixture(scope="module")
def salted_url(
    stack: Stack, engine: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    keys = [{"name": "alice", "key": ALICE}, {"name": "bob", "key": BOB}]
    yield from serve_in_front(
        stack,
        tmp_path_factory.mktemp("e2e-salt"),
        models=[{"name": DEFAULT_MODEL, "endpoints": [engine], "api_key": ENGINE_KEY}],
        auth={"enabled": True, "keys": keys},
    )


def _cached_tokens(engine: str) -> float:
    text = httpx.get(f"{engine}/metrics", timeout=30).text
    return parse_prometheus(text).get("vllm:prefix_cache_hits_total", 0.0)


def _ask(url: str, key: str, question: int) -> None:
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)
    ask = f"{SHARED}\nQuestion {question}: what is clause {question} about?"
    answer = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": ask}], max_tokens=1
    )
    assert answer.choices


def test_a_key_reuses_its_own_cached_prefix_and_not_another_keys(
    engine: str, salted_url: str
) -> None:
    _ask(salted_url, ALICE, 1)  # fills the engine's cache with alice's blocks
    before = _cached_tokens(engine)
    _ask(salted_url, ALICE, 2)  # the same long prefix, alice again: her blocks reused
    reused = _cached_tokens(engine) - before
    assert reused >= 256, f"alice's second request reused {reused} cached tokens"
    before = _cached_tokens(engine)
    _ask(salted_url, BOB, 3)  # the same prefix from bob: none of alice's blocks
    # (the engine's stuck probe may hit a block of its own short prompt meanwhile)
    assert _cached_tokens(engine) - before < 64
