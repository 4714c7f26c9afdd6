"""vLLM's model-scoped routes against a key's tokens-per-minute limit, through a real
gateway, redis-server and stub engine.

They were free of ``tpm`` ("they generate nothing"), so a key out of tokens embedded
through ``/pooling`` (or scored, reranked, classified) and transcribed audio as much as
its request rate allowed (bug hunt). Now pooling, classify, score and rerank are priced
like an embedding (the body's length, settled to ``usage``), speech to text reserves
``default_max_tokens`` and is settled to its transcript, and tokenizing stays free.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
KEYS = {
    "small": 1000,
    "pooling": 10_000,
    "audio": 10_000,
    "tiny": 5,
    **{f"paired{i}": 1000 for i in range(3)},
}
"""One key per test (a fresh budget each), by its tokens per minute."""


def secret_of(name: str) -> str:
    return f"sk-{name}-{RUN}-0123456789"


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


@pytest.fixture(scope="module")
def gateway(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    keys = [
        {"name": f"{name}-{RUN}", "key": secret_of(name), "tpm": tpm} for name, tpm in KEYS.items()
    ]
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url},
        "auth": {"enabled": True, "keys": keys},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("passthrough-tokens"))


def post(gateway: Gateway, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url.removesuffix('/v1')}{path}",
        json={"model": STUB_MODEL, **body},
        headers={"Authorization": f"Bearer {secret_of(key)}"},
        timeout=30,
    )


def transcribe(gateway: Gateway, key: str, audio: bytes) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/audio/transcriptions",
        data={"model": STUB_MODEL},
        files={"file": ("clip.wav", audio, "audio/wav")},
        headers={"Authorization": f"Bearer {secret_of(key)}"},
        timeout=30,
    )


def remaining(answer: httpx.Response) -> int:
    return int(answer.headers["x-ratelimit-remaining-tokens"])


def test_an_input_larger_than_the_budget_never_reaches_the_engine(
    gateway: Gateway, engine: Stub
) -> None:
    before = engine.stats()["requests"]
    large: list[tuple[str, dict[str, Any]]] = [
        ("/pooling", {"input": "word " * 2000}),  # 10,000 characters: ~2,500 tokens
        ("/v1/score", {"text_1": "q", "text_2": ["word " * 2000]}),
        ("/v1/rerank", {"query": "q", "documents": ["word " * 2000]}),
        ("/classify", {"input": ["word " * 2000]}),
        ("/pooling", {"input": [1] * 1500}),  # ~3,000 characters of JSON, 1,500 tokens
        ("/classify", {"input": [[7] * 800, [8] * 800]}),
    ]
    for path, body in large:
        answer = post(gateway, "small", path, body)
        assert answer.status_code == 429, (path, answer.status_code, answer.text[:200])
        assert answer.json()["error"]["type"] == "tokens", path
    assert engine.stats()["requests"] == before
    tokenized = post(gateway, "small", "/tokenize", {"prompt": "word " * 2000})
    assert tokenized.status_code == 200, tokenized.text[:200]  # no model runs: free


def test_pooling_is_settled_to_its_usage(gateway: Gateway) -> None:
    answer = post(gateway, "pooling", "/pooling", {"input": "one two three"})
    assert answer.status_code == 200, answer.text[:200]
    used = answer.json()["usage"]["total_tokens"]
    assert used == 3  # the stub's usage: a token per word
    # The reservation (the body's length) was given back down to the usage: a request
    # that reserves nothing sees what is left.
    after = post(gateway, "pooling", "/tokenize", {"prompt": "x"})
    assert remaining(after) == KEYS["pooling"] - used


def test_a_transcription_is_charged_its_transcript(gateway: Gateway) -> None:
    answer = transcribe(gateway, "audio", b"RIFF" + b"\0" * 96)
    assert answer.status_code == 200, answer.text[:200]
    text = answer.json()["text"]
    assert text == "stub transcript of 100 bytes"
    after = post(gateway, "audio", "/tokenize", {"prompt": "x"})
    assert remaining(after) == KEYS["audio"] - -(-len(text) // 4)


def test_a_transcript_past_the_budget_is_charged_and_the_next_waits(gateway: Gateway) -> None:
    first = transcribe(gateway, "tiny", b"abc")  # admitted: a token is left to reserve
    assert first.status_code == 200, first.text[:200]
    assert len(first.json()["text"]) > 4 * KEYS["tiny"]  # more than the key's budget
    second = transcribe(gateway, "tiny", b"abc")
    assert second.status_code == 429, second.text[:200]
    assert second.json()["error"]["type"] == "tokens"


@pytest.mark.parametrize(
    ("key", "path", "body"),
    [
        ("paired0", "/v1/rerank", {"query": "word " * 600, "documents": ["a"] * 100}),
        ("paired1", "/v1/score", {"text_1": "word " * 600, "text_2": ["a"] * 100}),
        ("paired2", "/v1/score", {"text_1": ["word " * 600], "text_2": ["a"] * 100}),
    ],
)
def test_a_query_scored_against_many_documents_is_priced_once_per_document(
    gateway: Gateway, engine: Stub, key: str, path: str, body: dict[str, Any]
) -> None:
    """vLLM runs the query with each document (its usage counts it once per pair): a
    3,000-character query against 100 documents is ~75,000 tokens, not the body's ~900.
    Priced by the body's length, a key of 1,000 tpm was admitted, and used 60 times its
    budget in one request (review)."""
    before = engine.stats()["requests"]
    answer = post(gateway, key, path, body)
    assert answer.status_code == 429, (answer.status_code, answer.text[:200])
    assert answer.json()["error"]["type"] == "tokens"
    assert engine.stats()["requests"] == before
