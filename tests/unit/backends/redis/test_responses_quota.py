"""Each key's stored responses in Redis are counted against its quota
(``responses.max_bytes_per_key``) by a script: refused once the key's live records take
the quota, counted down on delete and as records expire, two keys apart. Against a
real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.exceptions

from gateway.backends.redis.link import RedisLink
from gateway.backends.redis.responses import RedisResponseStore
from gateway.errors import StoreUnavailable


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisResponseStore]:
    link = RedisLink(redis_url, timeout_s=5.0, retry_s=0.1)
    yield RedisResponseStore(link, prefix=f"test:{uuid.uuid4().hex}:")
    await link.close()


async def test_a_key_is_refused_at_its_quota_and_freed_by_delete(
    store: RedisResponseStore,
) -> None:
    assert await store.put("r1", b"x" * 600, 60, "alice", 1000)
    assert await store.put("r2", b"x" * 600, 60, "alice", 1000)  # 600 < 1000 before it
    assert not await store.put("r3", b"x" * 10, 60, "alice", 1000)
    assert await store.get("r3") is None  # refused: not written either
    assert await store.put("r4", b"x" * 600, 60, "bob", 1000)  # bob's own count
    assert (await store.usage("alice"), await store.usage("bob")) == (1200, 600)
    assert await store.delete("r1", "alice")
    assert await store.usage("alice") == 600
    assert await store.put("r3", b"x" * 10, 60, "alice", 1000)
    assert await store.get("r3") == b"x" * 10
    assert await store.put("r5", b"y" * 10, 60, "alice", None)  # no quota: always kept


async def test_expired_records_stop_counting(store: RedisResponseStore) -> None:
    assert await store.put("short", b"x" * 900, 1, "carol", 1000)
    assert await store.usage("carol") == 900
    deadline = asyncio.get_running_loop().time() + 5
    while await store.usage("carol"):  # the record's TTL is one second
        assert asyncio.get_running_loop().time() < deadline, "the expired record still counts"
        await asyncio.sleep(0.05)
    # The count forgets it by the expiry it recorded, a moment before Redis's own TTL
    # (set by the write after it) lets the record go: wait for that too.
    while await store.get("short") is not None:
        assert asyncio.get_running_loop().time() < deadline, "the expired record is still there"
        await asyncio.sleep(0.01)
    assert await store.usage("carol") == 0


async def test_storing_the_same_id_again_counts_it_once(store: RedisResponseStore) -> None:
    assert await store.put("same", b"x" * 100, 60, "dave", None)
    assert await store.put("same", b"x" * 300, 60, "dave", None)
    assert await store.usage("dave") == 300


async def test_a_record_is_owned_by_its_key_alone(store: RedisResponseStore) -> None:
    assert await store.put("r1", b"{}", 60, "alice", None)
    assert await store.owns("r1", "alice")
    assert not await store.owns("r1", "bob")  # another key's: as if unknown
    assert not await store.owns("r2", "alice")
    assert await store.delete("r1", "alice")
    assert not await store.owns("r1", "alice")


async def test_an_expired_record_is_no_longer_owned(store: RedisResponseStore) -> None:
    """The owner's bookkeeping forgot an expired record only when the key next stored
    or was counted, so ``owns`` (all a cancel reads: 400 "Cannot cancel" instead of
    404) still said yes, for as long as a later record of the key lived (the memory
    store says no at once)."""
    assert await store.put("old", b"{}", 1, "erin", None)
    assert await store.put("new", b"{}", 60, "erin", None)
    deadline = asyncio.get_running_loop().time() + 5
    while await store.get("old") is not None:  # its TTL is one second
        assert asyncio.get_running_loop().time() < deadline, "the record did not expire"
        await asyncio.sleep(0.05)
    assert not await store.owns("old", "erin")  # unfixed: True
    assert await store.owns("new", "erin")


async def test_a_shorter_ttl_never_shortens_the_owners_bookkeeping(redis_url: str) -> None:
    """A record stored for an hour, then one for a minute (``responses.ttl_s`` lowered):
    the owner's keys must outlive the first record, or it would answer 404 to its own
    key (hunt: their expiry was reset to the newest record's)."""
    prefix = f"test:{uuid.uuid4().hex}:"
    link = RedisLink(redis_url, timeout_s=5.0, retry_s=0.1)
    store = RedisResponseStore(link, prefix=prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        assert await store.put("long", b"{}", 3600, "alice", None)
        assert await store.put("short", b"{}", 60, "alice", None)
        keys = client.keys(f"{prefix}owner:*")
        assert len(keys) == 2
        for key in keys:
            assert client.pttl(key) > 3600 * 1000, key
        assert await store.owns("long", "alice")
    finally:
        client.close()
        await link.close()


class _FullForRecords(redis.asyncio.Redis):
    """A Redis whose record writes are refused as a full one refuses them (the count's
    script still runs: it can, see the module docstring of the store)."""

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        raise redis.exceptions.ResponseError(
            "OOM command not allowed when used memory > 'maxmemory'."
        )


async def test_a_record_redis_refused_to_store_stops_counting(redis_url: str) -> None:
    """Fault hunt: a record whose write failed with OOM after it was counted took its
    owner's quota for its whole TTL (30 days) though nothing was stored."""
    link = RedisLink(redis_url, timeout_s=5.0, retry_s=0.1)
    full = _FullForRecords.from_url(redis_url)
    store = RedisResponseStore(link, prefix=f"test:{uuid.uuid4().hex}:", client=full)
    try:
        with pytest.raises(StoreUnavailable, match="OOM"):
            await store.put("refused", b"x" * 600, 60, "erin", 1000)
        assert await store.usage("erin") == 0
        assert not await store.owns("refused", "erin")
    finally:
        await full.aclose()
        await link.close()


async def test_a_write_whose_caller_left_still_ends(
    store: RedisResponseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller cancelled between the quota's count and the record's write (a client
    that left as its answer was being stored) left the bytes on the key's quota for
    the record's whole TTL with no record written: the write now runs to its end."""
    client: Any = store._client  # the write, held at its start
    real_set = client.set
    entered, release = asyncio.Event(), asyncio.Event()

    async def held_set(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await release.wait()
        return await real_set(*args, **kwargs)

    monkeypatch.setattr(client, "set", held_set)
    put = asyncio.ensure_future(store.put("left", b"x" * 100, 60, "erin", 1000))
    await asyncio.wait_for(entered.wait(), 5)  # counted; the record's write under way
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    release.set()
    deadline = asyncio.get_running_loop().time() + 5
    while await store.get("left") is None:
        assert asyncio.get_running_loop().time() < deadline, "the record was never written"
        await asyncio.sleep(0.01)
    assert await store.usage("erin") == 100
