"""The in-memory response store: TTLs on a moved clock, a byte bound, delete, and each
owner's bytes against its quota as records come and go."""

from __future__ import annotations

from gateway.backends.memory.responses import RECORD_OVERHEAD, MemoryResponseStore


async def test_ttl_bound_and_delete() -> None:
    now = [0.0]
    store = MemoryResponseStore(10 + 2 * RECORD_OVERHEAD, clock=lambda: now[0])
    assert await store.put("a", b"12345", 5, "k", None)
    assert await store.get("a") == b"12345"
    now[0] = 5.0
    assert await store.get("a") is None  # expired
    await store.put("a", b"12345", 60, "k", None)
    await store.put("b", b"123456", 60, "k", None)  # over the bound together: "a" goes
    assert await store.get("a") is None and await store.get("b") == b"123456"
    big = b"x" * (11 + RECORD_OVERHEAD)
    assert not await store.put("big", big, 60, "k", None)  # larger than the bound
    assert await store.get("big") is None and await store.get("b") == b"123456"
    assert await store.usage("k") == 6
    assert await store.delete("b", "k") is True and await store.delete("b", "k") is False
    assert await store.usage("k") == 0


async def test_each_owner_is_held_to_its_quota() -> None:
    now = [0.0]
    store = MemoryResponseStore(1000 + 4 * RECORD_OVERHEAD, clock=lambda: now[0])
    assert await store.put("a1", b"x" * 60, 10, "alice", 100)
    assert await store.put("a2", b"x" * 60, 60, "alice", 100)  # under the quota before it
    assert not await store.put("a3", b"x" * 10, 60, "alice", 100)  # 120 >= 100: refused
    assert await store.put("b1", b"x" * 60, 60, "bob", 100)  # another owner's own quota
    assert (await store.usage("alice"), await store.usage("bob")) == (120, 60)
    now[0] = 10.0  # a1 expires: its bytes are alice's no more
    assert await store.usage("alice") == 60
    assert await store.put("a3", b"x" * 10, 60, "alice", 100)
    assert await store.delete("a2", "alice")
    assert await store.usage("alice") == 10
    assert await store.usage("nobody") == 0


async def test_eviction_updates_the_owner_counts() -> None:
    store = MemoryResponseStore(100 + 2 * RECORD_OVERHEAD)
    await store.put("a", b"x" * 60, 60, "alice", None)
    await store.put("b", b"x" * 60, 60, "bob", None)  # evicts alice's
    assert (await store.usage("alice"), await store.usage("bob")) == (0, 60)


async def test_a_key_holding_many_records_is_counted_without_walking_them() -> None:
    """Review: usage() walked every record of the owner on each call (twice per
    request), quadratic in what one key stores; now it looks at the oldest records
    only, as far as they have expired."""
    now = [0.0]
    store = MemoryResponseStore(1 << 30, clock=lambda: now[0])
    for n in range(20_000):
        now[0] = n / 1000  # stored one after another, so they expire in that order
        assert await store.put(f"r{n}", b"x", 60, "many", 1 << 30)
    looked = 0
    original = store._drop

    def counting_drop(response_id: str) -> bool:
        nonlocal looked
        looked += 1
        return original(response_id)

    store._drop = counting_drop  # type: ignore[method-assign]
    assert await store.usage("many") == 20_000
    assert looked == 0  # nothing expired: nothing walked
    now[0] = 60.0 + 0.0995  # the first hundred have expired
    assert await store.usage("many") == 20_000 - 100
    assert looked == 100


async def test_the_owner_holding_the_most_makes_room_bookkeeping_included() -> None:
    """Bug hunt: least recently used first across owners, one key storing a pool's
    worth pushed every other key's records out. The owner holding the most (its
    records' bookkeeping counted: many tiny records are not cheap) gives up its oldest."""
    store = MemoryResponseStore(2000 + 8 * RECORD_OVERHEAD)
    assert await store.put("big", b"x" * 1500, 60, "bob", None)
    for n in range(8):  # 8 bytes of records, but 8 x RECORD_OVERHEAD of bookkeeping
        assert await store.put(f"tiny{n}", b"x", 60, "mallory", None)
    assert await store.get("big") == b"x" * 1500
    assert await store.get("tiny0") is None and await store.get("tiny7") == b"x"
    assert await store.usage("bob") == 1500
