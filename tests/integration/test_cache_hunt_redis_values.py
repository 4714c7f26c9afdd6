"""Hostile values under a cache key in Redis: a value the gateway did not write there
(another program's, an older format, a key of another type) is a miss, served by the
engine and overwritten by its answer; it is never a 500, a wrong answer, or taken for
Redis being down (which would send every other request's rate limits to
``ratelimit.on_redis_error``, here ``fail_closed``: 503s for everyone)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
KEY_A, KEY_B = "sk-hunt-redis-a-0123456789", "sk-hunt-redis-b-0123456789"


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


@pytest.fixture(scope="module")
def gateway(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config: dict[str, Any] = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url, "retry_s": 30},
        "ratelimit": {"on_redis_error": "fail_closed"},
        "auth": {
            "enabled": True,
            "keys": [
                {"name": f"a-{RUN}", "key": KEY_A},  # no limits: no admission in Redis
                {"name": f"b-{RUN}", "key": KEY_B, "rpm": 1000},
            ],
        },
        "cache": {"enabled": True, "namespace": RUN},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("hunt-redis"))


def ask(gateway: Gateway, text: str, key: str = KEY_A) -> httpx.Response:
    body = {"model": STUB_MODEL, "temperature": 0,
            "messages": [{"role": "user", "content": f"{RUN} {text}"}]}  # fmt: skip
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers)


def stored_key(client: redis.Redis, gateway: Gateway, text: str) -> bytes:
    """The Redis key the answer to ``text`` is stored under (the one that appeared)."""
    before = set(client.keys("vgate:cache:*"))
    assert ask(gateway, text).headers["x-cache"] == "MISS"
    holds_soon(lambda: len(set(client.keys("vgate:cache:*")) - before) == 1)
    name = (set(client.keys("vgate:cache:*")) - before).pop()
    assert isinstance(name, bytes)
    return name


@pytest.mark.parametrize("poison", ["hash", "string", "older-format", "bad-meta"])
def test_a_foreign_value_under_a_cache_key_is_a_miss_and_overwritten(
    gateway: Gateway, redis_url: str, poison: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    name = stored_key(client, gateway, f"poison {poison}")
    expected = ask(gateway, f"poison {poison}").json()["choices"]
    client.delete(name)
    if poison == "hash":  # another program's key of another type: GET answers WRONGTYPE
        client.hset(name, "field", "value")
    elif poison == "string":
        client.set(name, b'{"choices": [{"message": {"content": "not the answer"}}]}')
    elif poison == "older-format":
        client.set(name, b"vgate-entry/1\n{}\n{}")
    else:
        client.set(name, b'vgate-entry/2\n{"stream": false, "usage": [5, 1]}\n{}')
    poisoned = ask(gateway, f"poison {poison}")
    assert poisoned.status_code == 200, poisoned.text
    assert poisoned.json()["choices"] == expected  # the engine's answer, not the value's
    # (a key of another type: this request bypasses, Redis deletes it; any other: a miss)
    assert poisoned.headers["x-cache"] == ("BYPASS" if poison == "hash" else "MISS")
    # Not taken for Redis being down: a key with limits (fail_closed) is still served.
    other = ask(gateway, f"poison {poison} other", KEY_B)
    assert other.status_code == 200, other.text
    # The engine's answer replaced the foreign value (a hash: at the next request).
    seen = [ask(gateway, f"poison {poison}") for _ in range(2 if poison == "hash" else 1)]
    assert [r.headers["x-cache"] for r in seen][-1] == "HIT"
    assert all(r.json()["choices"] == expected for r in seen)
