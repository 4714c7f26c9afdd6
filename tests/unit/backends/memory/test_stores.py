"""The in-memory backends: the key store (names unique, a version that moves with
every change, lookup by digest) and the entry store (TTLs on an injected clock,
least recently used dropped past its byte budget)."""

from __future__ import annotations

import pytest

from gateway.auth.keys import KeyExistsError, KeyRecord, digest_of
from gateway.backends.memory.cache import ENTRY_OVERHEAD, MemoryEntryStore
from gateway.backends.memory.keys import MemoryKeyStore
from gateway.ratelimit.limits import Limits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(name: str, secret: str) -> KeyRecord:
    return KeyRecord(name=name, digest=digest_of(secret), limits=Limits(rpm=10))


# -- keys -------------------------------------------------------------------------------


async def test_a_created_key_is_found_by_its_digest() -> None:
    store = MemoryKeyStore()
    team = record("team", "sk-team")
    await store.create(team)
    await store.create(record("other", "sk-other"))
    assert await store.get(digest_of("sk-team")) == team
    assert await store.get(digest_of("sk-unknown")) is None
    assert {r.name for r in await store.load_all()} == {"team", "other"}
    assert store.skipped_records == 0


async def test_a_name_is_taken_once() -> None:
    store = MemoryKeyStore()
    await store.create(record("team", "sk-one"))
    before = await store.version()
    with pytest.raises(KeyExistsError):
        await store.create(record("team", "sk-two"))
    assert await store.version() == before
    assert await store.get(digest_of("sk-two")) is None
    assert await store.get(digest_of("sk-one")) is not None


async def test_the_version_moves_with_every_change_and_only_then() -> None:
    store = MemoryKeyStore()
    seen = [await store.version()]
    await store.create(record("team", "sk-team"))
    seen.append(await store.version())
    assert await store.revoke("team")
    seen.append(await store.version())
    assert len(set(seen)) == 3
    assert not await store.revoke("team")  # nothing left to revoke
    assert not await store.revoke("never-made")
    assert await store.version() == seen[-1]


async def test_a_revoked_key_is_gone() -> None:
    store = MemoryKeyStore()
    await store.create(record("team", "sk-team"))
    await store.create(record("other", "sk-other"))
    assert await store.revoke("team")
    assert await store.get(digest_of("sk-team")) is None
    assert [r.name for r in await store.load_all()] == ["other"]
    await store.create(record("team", "sk-again"))  # the name is free again
    assert await store.get(digest_of("sk-again")) is not None


# -- cache entries ----------------------------------------------------------------------


async def test_an_entry_is_there_until_its_ttl_runs_out() -> None:
    clock = Clock()
    store = MemoryEntryStore(1 << 10, clock=clock)
    assert await store.get("k") is None
    store.put("k", b"answer", ttl_s=10)
    assert await store.get("k") == b"answer"
    clock.now += 9.9
    assert await store.get("k") == b"answer"
    clock.now += 0.1
    assert await store.get("k") is None
    clock.now -= 5  # expired entries are dropped, not merely hidden
    assert await store.get("k") is None


async def test_putting_again_replaces_the_value_and_its_ttl() -> None:
    clock = Clock()
    store = MemoryEntryStore(1 << 10, clock=clock)
    store.put("k", b"old", ttl_s=1)
    clock.now += 0.5
    store.put("k", b"new", ttl_s=10)
    clock.now += 5
    assert await store.get("k") == b"new"


async def test_the_least_recently_used_goes_first_past_max_bytes() -> None:
    store = MemoryEntryStore(10 + 2 * ENTRY_OVERHEAD, clock=Clock())
    store.put("a", b"aaaa", ttl_s=60)
    store.put("b", b"bbbb", ttl_s=60)
    assert await store.get("a") == b"aaaa"  # now "b" is the least recently used
    store.put("c", b"cccc", ttl_s=60)  # three entries are more than the bound: one must go
    assert await store.get("b") is None
    assert await store.get("a") == b"aaaa"
    assert await store.get("c") == b"cccc"


async def test_replacing_an_entry_does_not_count_it_twice() -> None:
    store = MemoryEntryStore(10 + 2 * ENTRY_OVERHEAD, clock=Clock())
    store.put("a", b"aaaa", ttl_s=60)
    store.put("b", b"bbbb", ttl_s=60)
    for _ in range(5):
        store.put("b", b"bbbb", ttl_s=60)  # still two entries in all
    assert await store.get("a") == b"aaaa"
    assert await store.get("b") == b"bbbb"


async def test_an_entry_larger_than_the_budget_is_not_kept() -> None:
    store = MemoryEntryStore(10 + 2 * ENTRY_OVERHEAD, clock=Clock())
    store.put("a", b"aaaa", ttl_s=60)
    store.put("huge", b"x" * (11 + 2 * ENTRY_OVERHEAD), ttl_s=60)
    assert await store.get("huge") is None
    assert await store.get("a") is None  # everything older went first
    store.put("b", b"bbbb", ttl_s=60)  # the byte count came back to 0
    store.put("c", b"cccc", ttl_s=60)
    assert await store.get("b") == b"bbbb"
