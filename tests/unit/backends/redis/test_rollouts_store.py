"""The Redis rollout store: versioned values, compare-and-set, one counter for every
change, and StoreUnavailable (never a hang) when Redis is gone."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.backends.redis.link import redis_py_client
from gateway.backends.redis.rollouts import RedisRolloutStore
from gateway.errors import StoreUnavailable
from tests.helpers.processes import free_port


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis_client = aioredis.Redis.from_url(redis_url)
    yield redis_client
    await redis_client.aclose()


async def test_compare_and_set_and_load(client: aioredis.Redis) -> None:
    store = RedisRolloutStore(client, 2.0, f"test-rollouts-{uuid.uuid4().hex[:8]}")
    before = await store.version()
    assert await store.load(["a", "b"]) == {}
    assert await store.compare_and_set("a", 0, b"one") == 1
    assert await store.compare_and_set("a", 0, b"again") is None
    assert await store.compare_and_set("a", 1, b"two") == 2
    assert await store.compare_and_set("b", 0, b"\x00bytes") == 1
    assert await store.load(["a", "b", "c"]) == {"a": (2, b"two"), "b": (1, b"\x00bytes")}
    assert await store.load([]) == {}
    assert await store.version() != before
    assert int(await store.version()) == 3


async def test_unreachable_redis_raises_store_unavailable() -> None:
    client = redis_py_client(f"redis://127.0.0.1:{free_port()}/0", 0.5)
    store = RedisRolloutStore(client, 0.5)
    try:
        with pytest.raises(StoreUnavailable):
            await store.version()
        with pytest.raises(StoreUnavailable):
            await store.load(["a"])
        with pytest.raises(StoreUnavailable):
            await store.compare_and_set("a", 0, b"x")
    finally:
        await client.aclose()
