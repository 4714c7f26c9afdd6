"""The response cache in front of a real vLLM engine: answers stored from vLLM's own
JSON and SSE formats replay identically, through the OpenAI SDK."""

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


def test_vllm_answers_replay_from_the_cache_in_both_forms(cached_url: str) -> None:
    client = openai.OpenAI(base_url=cached_url, api_key="unused", max_retries=0)
    ask = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 24,
    }
    first = client.chat.completions.with_raw_response.create(**ask)  # type: ignore[call-overload]
    assert first.headers["x-cache"] == "MISS"
    fresh = first.parse()
    assert "Paris" in (fresh.choices[0].message.content or "")

    raw = client.chat.completions.with_raw_response.create(  # type: ignore[call-overload]
        **ask, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["x-cache"] == "HIT"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fresh.choices[0].message.content
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == [fresh.choices[0].finish_reason]
    assert chunks[-1].usage == fresh.usage

    # The other way round: stored from vLLM's stream, replayed as JSON.
    other = ask | {"messages": [{"role": "user", "content": "Name a large ocean."}]}
    streamed = list(client.chat.completions.create(**other, stream=True))  # type: ignore[call-overload]
    streamed_text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    replay = client.chat.completions.with_raw_response.create(**other)  # type: ignore[call-overload]
    assert replay.headers["x-cache"] == "HIT"
    assert replay.parse().choices[0].message.content == streamed_text
