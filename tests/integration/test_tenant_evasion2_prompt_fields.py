"""A hostile tenant against its tokens-per-minute limit, through a real gateway,
redis-server and stub engine: prompt text in the chat fields the limiter did not read.

vLLM hands the chat template more of a message than its content: an assistant
message's ``reasoning`` (copied to ``reasoning_content``, which Qwen3's and DeepSeek's
templates render before the answer), ``name``, ``tool_call_id``; and
``chat_template_kwargs`` overrides what the template gets (``tools``, ``documents``).
Priced at nothing, a key with a 5,000-token budget sent 10,000 tokens of prompt there
and was admitted, every time: the usage settled afterwards is charged, but a key
sending such requests at once has them all admitted before any is settled. The same
text in ``content`` is refused outright (the prompt alone exceeds the limit)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
TPM = 5_000
TEXT = "reasoned at length " * 2_200  # 41,800 characters: about 10,000 tokens


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


PLACES: dict[str, dict[str, Any]] = {
    "content": {"messages": [{"role": "user", "content": TEXT}]},
    "reasoning": {
        "messages": [
            {"role": "user", "content": "go on"},
            {"role": "assistant", "content": "", "reasoning": TEXT},
        ]
    },
    "reasoning_content": {
        "messages": [
            {"role": "user", "content": "go on"},
            {"role": "assistant", "content": "", "reasoning_content": TEXT},
        ]
    },
    "name": {"messages": [{"role": "user", "content": "hi", "name": TEXT}]},
    "template_tools": {
        "messages": [{"role": "user", "content": "hi"}],
        "chat_template_kwargs": {
            "tools": [{"type": "function", "function": {"name": "f", "description": TEXT}}]
        },
    },
}


def secret_of(place: str) -> str:
    return f"sk-{place}-{RUN}-0123456789"


@pytest.fixture(scope="module")
def gateway(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    keys = [{"name": f"{p}-{RUN}", "key": secret_of(p), "tpm": TPM} for p in [*PLACES, "small"]]
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url},
        "auth": {"enabled": True, "keys": keys},
        "server": {"max_body_bytes": 1024 * 1024},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("evasion2-prompt-fields"))


def ask(gateway: Gateway, secret: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": STUB_MODEL, "max_tokens": 8, **body},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


@pytest.mark.parametrize("place", list(PLACES))
def test_a_prompt_over_the_limit_is_refused_wherever_its_text_is(
    gateway: Gateway, engine: Stub, place: str
) -> None:
    before = engine.stats()["requests"]
    answer = ask(gateway, secret_of(place), PLACES[place])
    assert answer.status_code == 429, f"{place}: {answer.status_code} {answer.text[:200]}"
    error = answer.json()["error"]
    assert error["type"] == "tokens"
    assert answer.headers["x-should-retry"] == "false"  # the prompt alone is over the limit
    assert engine.stats()["requests"] == before  # the engine never read it


def test_a_small_reasoning_is_admitted_and_reserved(gateway: Gateway) -> None:
    """Pricing the field refuses nothing that fits: a short ``reasoning`` is served,
    its characters reserved (about a token per 4)."""
    reasoning = "short thought " * 100  # 1,400 characters: about 350 tokens
    body = {
        "messages": [
            {"role": "user", "content": "go on"},
            {"role": "assistant", "content": "", "reasoning": reasoning},
        ]
    }
    answer = ask(gateway, secret_of("small"), body | {"stream": True})
    assert answer.status_code == 200, answer.text
    reserved = TPM - int(answer.headers["x-ratelimit-remaining-tokens"])
    assert reserved >= len(reasoning) // 4, reserved
