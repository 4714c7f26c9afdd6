"""The response cache through the gateway, with the OpenAI SDK, a real redis-server and
a stub engine of its own (so its request counter counts only this module's calls)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.helpers.processes import free_port
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
KEY_A, KEY_B = "sk-cache-a-0123456789", "sk-cache-b-0123456789"
LIMITED_KEY = "sk-cache-limited-0123456789"
SHORT = "short-ttl-model"


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


def cache_config(engine: Stub, redis_url: str, **cache: Any) -> dict[str, Any]:
    return {
        "models": [
            {"name": STUB_MODEL, "endpoints": [engine.url]},
            {
                "name": SHORT,
                "endpoints": [engine.url],
                "upstream_model": STUB_MODEL,
                "cache": {"ttl_s": 1},
            },
        ],
        "redis": {"url": redis_url},
        "auth": {
            "enabled": True,
            "keys": [
                {"name": f"a-{RUN}", "key": KEY_A},
                {"name": f"b-{RUN}", "key": KEY_B},
                {"name": f"limited-{RUN}", "key": LIMITED_KEY, "rpm": 3, "tpm": 100000},
            ],
        },
        "cache": {"enabled": True, "namespace": RUN, **cache},
    }


@pytest.fixture(scope="module")
def cached(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    yield from start_gateway(cache_config(engine, redis_url), tmp_path_factory.mktemp("cache"))


def sdk(gateway: Gateway, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": STUB_MODEL, "temperature": 0,
            "messages": [{"role": "user", "content": f"{RUN} {text}"}], **extra}  # fmt: skip


def calls(engine: Stub) -> int:
    return int(engine.stats()["requests"])


def test_identical_requests_hit_and_different_ones_miss(cached: Gateway, engine: Stub) -> None:
    before = calls(engine)
    first = sdk(cached).chat.completions.with_raw_response.create(**ask("identical"))
    second = sdk(cached).chat.completions.with_raw_response.create(**ask("identical"))
    other = sdk(cached).chat.completions.with_raw_response.create(**ask("different"))
    assert [r.headers["x-cache"] for r in (first, second, other)] == ["MISS", "HIT", "MISS"]
    assert calls(engine) == before + 2
    a, b = first.parse(), second.parse()
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage == b.usage and a.choices[0].finish_reason == b.choices[0].finish_reason
    assert a.id != b.id  # a fresh id for the replay
    assert int(second.headers["age"]) >= 0


def test_sampled_requests_are_not_cached(cached: Gateway, engine: Stub) -> None:
    before = calls(engine)
    body = ask("sampled") | {"temperature": 0.7}
    replies = [sdk(cached).chat.completions.with_raw_response.create(**body) for _ in range(2)]
    assert [r.headers["x-cache"] for r in replies] == ["BYPASS", "BYPASS"]
    assert calls(engine) == before + 2
    seeded = [
        sdk(cached).chat.completions.with_raw_response.create(**body, seed=5) for _ in range(2)
    ]
    assert [r.headers["x-cache"] for r in seeded] == ["MISS", "HIT"]


def _stream(client: openai.OpenAI, body: dict[str, Any]) -> tuple[str, str | None, Any]:
    chunks = list(client.chat.completions.create(
        **body, stream=True, stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = next(
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    return text, finish, chunks[-1].usage


def test_a_stream_and_a_json_answer_are_two_entries(cached: Gateway, engine: Stub) -> None:
    """A stream is replayed as a stream, a JSON answer as JSON: each form is its own
    entry (a stream cannot be turned into a JSON body faithfully, nor back)."""
    client = sdk(cached)
    before = calls(engine)
    streamed = _stream(client, ask("both forms", max_tokens=5))
    answered = client.chat.completions.create(**ask("both forms", max_tokens=5))
    assert calls(engine) == before + 2  # the JSON request is no hit of the stream
    assert (answered.choices[0].message.content, answered.choices[0].finish_reason) == streamed[:2]
    assert _stream(client, ask("both forms", max_tokens=5)) == streamed
    assert client.chat.completions.create(**ask("both forms", max_tokens=5)).usage == (
        answered.usage
    )
    assert calls(engine) == before + 2  # both replayed from their own entries


def test_streamed_hit_has_no_usage_chunk_unless_asked(cached: Gateway) -> None:
    client = sdk(cached)
    _stream(client, ask("usage chunk"))  # stored with its usage event
    reply = client.chat.completions.with_raw_response.create(**ask("usage chunk"), stream=True)
    assert reply.headers["x-cache"] == "HIT"
    chunks = list(reply.parse())
    assert chunks and all(c.usage is None and c.choices for c in chunks)


def test_interrupted_streams_are_never_stored(cached: Gateway, engine: Stub) -> None:
    body = ask("interrupted") | {"extra_body": {"stub": {"fault": "drop", "after": 3}}}
    with pytest.raises(openai.APIError):
        list(sdk(cached).chat.completions.create(**body, stream=True))
    before = calls(engine)
    reply = sdk(cached).chat.completions.with_raw_response.create(**ask("interrupted"))
    assert reply.headers["x-cache"] == "MISS" and calls(engine) == before + 1

    # A client that hangs up mid-stream leaves nothing behind either.
    slow = ask("abandoned") | {"extra_body": {"stub": {"tokens": 200, "itl_ms": 10}}}
    stream = sdk(cached).chat.completions.create(**slow, stream=True)
    next(iter(stream))
    stream.close()
    time.sleep(0.2)
    again = sdk(cached).chat.completions.with_raw_response.create(**slow)
    assert again.headers["x-cache"] == "MISS"


def test_cache_control_request_directives(cached: Gateway, engine: Stub) -> None:
    client = sdk(cached)
    client.chat.completions.create(**ask("directives"))

    def get(cache_control: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            **ask("directives"), extra_headers={"Cache-Control": cache_control}
        )
        return raw.headers["x-cache"]  # fmt: skip

    before = calls(engine)
    assert get("no-cache") == "MISS"  # looked past the entry ...
    assert calls(engine) == before + 1
    assert get("max-age=60") == "HIT"
    time.sleep(1.2)
    assert get("max-age=1") == "MISS"  # ... too old for this client
    assert get("no-store") == "BYPASS"
    client.chat.completions.create(
        **ask("never stored"), extra_headers={"Cache-Control": "no-store"}
    )
    raw = client.chat.completions.with_raw_response.create(**ask("never stored"))
    assert raw.headers["x-cache"] == "MISS"


def test_entries_expire_after_their_ttl(cached: Gateway) -> None:
    client = sdk(cached)
    body = ask("ttl") | {"model": SHORT}
    assert client.chat.completions.with_raw_response.create(**body).headers["x-cache"] == "MISS"
    assert client.chat.completions.with_raw_response.create(**body).headers["x-cache"] == "HIT"
    time.sleep(1.5)
    assert client.chat.completions.with_raw_response.create(**body).headers["x-cache"] == "MISS"


def test_by_default_key_b_never_receives_key_a_cached_answer(cached: Gateway, engine: Stub) -> None:
    """Auth and the cache on, ``cache.scope`` left alone: entries are per key."""
    body = ask("tenancy") | {"extra_body": {"stub": {"tokens": 8}}}
    first = sdk(cached, KEY_A).chat.completions.with_raw_response.create(**body)
    before = calls(engine)
    again = sdk(cached, KEY_A).chat.completions.with_raw_response.create(**body)
    other = sdk(cached, KEY_B).chat.completions.with_raw_response.create(**body)
    assert first.headers["x-cache"] == "MISS" and again.headers["x-cache"] == "HIT"
    assert other.headers["x-cache"] == "MISS" and "age" not in other.headers
    assert calls(engine) == before + 1  # B's answer came from the engine, not A's entry


def test_a_shared_cache_serves_every_key_and_tells_none_of_them(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``scope: shared`` on purpose: one entry for all, and no header that says so."""
    config = cache_config(engine, redis_url, scope="shared")
    for gateway in start_gateway(config, tmp_path_factory.mktemp("shared")):
        body = ask("shared scope")
        first = sdk(gateway, KEY_A).chat.completions.with_raw_response.create(**body)
        before = calls(engine)
        other = sdk(gateway, KEY_B).chat.completions.with_raw_response.create(**body)
        assert calls(engine) == before  # served from A's entry
        assert other.parse().choices[0].message.content == first.parse().choices[0].message.content
        for response in (first, other):
            assert "x-cache" not in response.headers and "age" not in response.headers


@pytest.mark.parametrize("first_path", ["/completions", "/chat/completions"])
def test_a_route_is_never_answered_from_the_other_routes_entry(
    cached: Gateway, first_path: str
) -> None:
    """A body both routes accept (``prompt`` and ``messages``) is cached per route."""
    body = {"model": STUB_MODEL, "temperature": 0, "prompt": f"{RUN} both {first_path}",
            "messages": [{"role": "user", "content": f"{RUN} both {first_path}"}]}  # fmt: skip
    headers = {"Authorization": f"Bearer {KEY_A}"}
    paths = [first_path, *({"/completions", "/chat/completions"} - {first_path})]
    seen = []
    for path in [*paths, *paths]:
        reply = httpx.post(f"{cached.base_url}{path}", json=body, headers=headers)
        assert reply.status_code == 200, reply.text
        seen.append((path, reply.headers["x-cache"], reply.json()["object"]))
    objects = {"/chat/completions": "chat.completion", "/completions": "text_completion"}
    assert seen == [(p, c, objects[p]) for c in ("MISS", "HIT") for p in paths]


def test_twenty_identical_concurrent_requests_reach_the_engine_once(
    cached: Gateway, engine: Stub
) -> None:
    body = ask("single flight") | {"extra_body": {"stub": {"ttft_ms": 400, "itl_ms": 5}}}

    async def one(client: openai.AsyncOpenAI, stream: bool) -> str:
        if not stream:
            reply = await client.chat.completions.create(**body)
            return reply.choices[0].message.content or ""
        chunks = [c async for c in await client.chat.completions.create(**body, stream=True)]
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    async def burst() -> list[str]:
        client = openai.AsyncOpenAI(base_url=cached.base_url, api_key=KEY_A, max_retries=0)
        return await asyncio.gather(*(one(client, stream=i % 2 == 0) for i in range(20)))

    before = calls(engine)
    answers = asyncio.run(burst())
    assert calls(engine) == before + 2  # one stream and one JSON answer (two forms)
    assert len(set(answers)) == 1 and answers[0]
    assert "vgate_cache_singleflight_joins_total" in cached.metrics()


def test_hits_pass_auth_and_the_request_limit_but_cost_no_tokens(cached: Gateway) -> None:
    response = httpx.post(f"{cached.base_url}/chat/completions", json=ask("limits"))
    assert response.status_code == 401
    client = sdk(cached, LIMITED_KEY)
    first = client.chat.completions.with_raw_response.create(**ask("limits"))
    hit = client.chat.completions.with_raw_response.create(**ask("limits"))
    assert hit.headers["x-cache"] == "HIT"
    spent = 100000 - int(first.headers["x-ratelimit-remaining-tokens"])
    time.sleep(0.1)
    third = client.chat.completions.with_raw_response.create(**ask("limits"))
    # The miss was charged its usage; the hit nothing (only this request's reservation).
    assert int(third.headers["x-ratelimit-remaining-tokens"]) > 100000 - 2 * spent
    with pytest.raises(openai.RateLimitError):  # the 4th request, cached or not
        client.chat.completions.create(**ask("limits"))


def test_with_redis_down_requests_bypass_the_cache_and_succeed(
    engine: Stub, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config = cache_config(engine, f"redis://127.0.0.1:{free_port()}/0")
    config["auth"] = {"enabled": False}
    for gateway in start_gateway(config, tmp_path_factory.mktemp("cache-down")):
        client = gateway.client()
        replies = [
            client.chat.completions.with_raw_response.create(**ask("down")) for _ in range(3)
        ]
        assert all(r.parse().choices[0].message.content for r in replies)
        assert {r.headers["x-cache"] for r in replies} == {"BYPASS"}
        assert 'vgate_redis_errors_total{component="cache"}' in gateway.metrics()
