"""The Redis key store decodes record by record: a key record it cannot decode is skipped
(logged once, counted), and the other keys load; tolerant records load as usual."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.auth.keys import KeyRecord, digest_of, new_key
from gateway.backends.redis.keys import RedisKeyStore


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    redis_client = aioredis.Redis.from_url(redis_url)
    yield redis_client
    await redis_client.aclose()


async def test_undecodable_records_are_skipped_logged_once_and_counted(
    client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "vgate.auth")
    prefix = f"test-keys-{uuid.uuid4().hex[:8]}"  # never the gateways' vgate:keys
    store = RedisKeyStore(client, prefix)
    _, good = new_key("good")
    await store.create(good)
    _, newer = new_key("newer")
    newer_json = orjson.dumps(asdict(newer) | {"scopes": ["chat"], "limits": {"rpd": 9}})
    bad_digest = digest_of("sk-bad")
    await client.hset(prefix, mapping={newer.digest: newer_json, bad_digest: b'{"name": 1}'})
    try:
        loaded = {r.name: r for r in await store.load_all()}
        assert set(loaded) == {"good", "newer"} and loaded["newer"] == newer
        assert await store.get(bad_digest) is None
        assert await store.get(newer.digest) == newer
        await store.load_all()
        assert store.skipped_records == 3  # every read that skipped it
        warnings = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
        assert len(warnings) == 1 and bad_digest[:12] in warnings[0]
        assert "sk-bad" not in warnings[0]
    finally:
        await client.delete(prefix, f"{prefix}:names", f"{prefix}:version")


async def test_a_record_written_by_hand_decodes_like_one_made_here(
    client: aioredis.Redis,
) -> None:
    prefix = f"test-keys-{uuid.uuid4().hex[:8]}"
    store = RedisKeyStore(client, prefix)
    _, record = new_key("plain")
    await client.hset(prefix, record.digest, record.encode())
    try:
        assert await store.get(record.digest) == record
        assert await store.load_all() == [record] and store.skipped_records == 0
    finally:
        await client.delete(prefix)
    assert KeyRecord.decode(record.encode()) == record
