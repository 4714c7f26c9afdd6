"""A hostile tenant against its token budget, through a real gateway, redis-server and
stub engine: text in an embeddings request's ``chat_template_kwargs``.

vLLM's chat form of ``/v1/embeddings`` (``messages`` instead of ``input``) renders the
messages through the chat template, and ``chat_template_kwargs`` overrides what the
template gets (``documents``, ``tools``, ...), as on chat completions, where that field
is priced. The embeddings estimate read ``input`` and ``messages`` alone: a key with a
5,000-token budget sent 10,000 tokens of ``documents`` there and was admitted every
time at a few tokens, and ``server.max_prompt_chars`` did not count them either. The
same text in a message is refused outright (the prompt alone exceeds the limit)."""

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
LONG_TEXT = TEXT * 3  # 125,400 characters
MAX_PROMPT_CHARS = 100_000
LIMITED = f"sk-hunt13-limited-{RUN}-0123456789"
UNLIMITED = f"sk-hunt13-unlimited-{RUN}-0123456789"

PLACES = ("messages", "template_documents", "template_tools")


def body_with(place: str, text: str) -> dict[str, Any]:
    """An embeddings request in vLLM's chat form with ``text`` in ``place``."""
    if place == "messages":
        return {"messages": [{"role": "user", "content": text}]}
    hello = [{"role": "user", "content": "hi"}]
    if place == "template_documents":
        return {"messages": hello, "chat_template_kwargs": {"documents": [{"text": text}]}}
    tool = {"type": "function", "function": {"name": "f", "description": text}}
    return {"messages": hello, "chat_template_kwargs": {"tools": [tool]}}


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
            "keys": [
                {"name": f"limited-{RUN}", "key": LIMITED, "tpm": TPM},
                {"name": f"unlimited-{RUN}", "key": UNLIMITED},
            ],
        },
        "server": {"max_body_bytes": 1024 * 1024, "max_prompt_chars": MAX_PROMPT_CHARS},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("tenant-hunt-s13"))


def embed(gateway: Gateway, secret: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/embeddings",
        json={"model": STUB_MODEL, **body},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


@pytest.mark.parametrize("place", PLACES)
def test_an_embedding_prompt_over_the_limit_is_refused_wherever_its_text_is(
    gateway: Gateway, engine: Stub, place: str
) -> None:
    before = engine.stats()["requests"]
    answer = embed(gateway, LIMITED, body_with(place, TEXT))
    assert answer.status_code == 429, f"{place}: {answer.status_code} {answer.text[:200]}"
    error = answer.json()["error"]
    assert error["type"] == "tokens"
    assert answer.headers["x-should-retry"] == "false"  # the prompt alone is over the limit
    assert engine.stats()["requests"] == before  # the engine never read it


@pytest.mark.parametrize("place", PLACES)
def test_an_embedding_prompt_over_max_prompt_chars_is_a_400_wherever_its_text_is(
    gateway: Gateway, engine: Stub, place: str
) -> None:
    before = engine.stats()["requests"]
    answer = embed(gateway, UNLIMITED, body_with(place, LONG_TEXT))
    assert answer.status_code == 400, f"{place}: {answer.status_code} {answer.text[:200]}"
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"
    assert str(MAX_PROMPT_CHARS) in error["message"]
    assert engine.stats()["requests"] == before


def test_a_small_embedding_is_still_served(gateway: Gateway) -> None:
    """Pricing the template's arguments refuses nothing that fits."""
    body = {"input": "hello", "chat_template_kwargs": {"documents": [{"text": "short"}]}}
    answer = embed(gateway, LIMITED, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["data"][0]["object"] == "embedding"
