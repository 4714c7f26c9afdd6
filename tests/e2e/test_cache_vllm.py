"""The response cache in front of real vLLM engines: an answer stored from vLLM's own
JSON or SSE replays as the engine gave it (every field; only the answer's id is new),
through the OpenAI SDK."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.e2e.conftest import DEFAULT_MODEL, Stack, serve_in_front

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cached_url(
    stack: Stack, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    yield from serve_in_front(
        stack,
        tmp_path_factory.mktemp("e2e-cache"),
        redis={"url": redis_url},
        cache={"enabled": True, "namespace": "e2e"},
    )


def test_vllm_answers_replay_from_the_cache_exactly(cached_url: str) -> None:
    client = openai.OpenAI(base_url=cached_url, api_key="unused", max_retries=0)
    ask = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 24,
        "logprobs": True,
        "extra_body": {"return_token_ids": True},
    }
    first = client.chat.completions.with_raw_response.create(**ask)  # type: ignore[call-overload]
    assert first.headers["x-cache"] == "MISS"
    fresh = first.parse()
    assert "Paris" in (fresh.choices[0].message.content or "")
    hit = client.chat.completions.with_raw_response.create(**ask)  # type: ignore[call-overload]
    assert hit.headers["x-cache"] == "HIT"
    replayed = hit.parse()
    assert replayed.id != fresh.id
    assert replayed.model_dump(exclude={"id"}) == fresh.model_dump(exclude={"id"})
    assert (fresh.choices[0].model_extra or {}).get("token_ids")  # vLLM's own fields survive

    streamed = ask | {"stream": True, "stream_options": {"include_usage": True}}
    miss = client.chat.completions.with_raw_response.create(**streamed)  # type: ignore[call-overload]
    assert miss.headers["x-cache"] == "MISS"
    chunks = [c.model_dump(exclude={"id"}) for c in miss.parse()]
    again = client.chat.completions.with_raw_response.create(**streamed)  # type: ignore[call-overload]
    assert again.headers["x-cache"] == "HIT"
    replayed_chunks = [c.model_dump(exclude={"id"}) for c in again.parse()]
    assert replayed_chunks == chunks  # chunk for chunk, every field
    assert len(chunks) > 3 and chunks[-1]["usage"] == fresh.usage.model_dump()
