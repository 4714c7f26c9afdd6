"""The in-memory response store: TTLs on a moved clock, a byte bound, delete."""

from __future__ import annotations

import asyncio

from gateway.backends.memory.responses import MemoryResponseStore


def test_ttl_bound_and_delete() -> None:
    async def scenario() -> None:
        now = [0.0]
        store = MemoryResponseStore(10, clock=lambda: now[0])
        await store.put("a", b"12345", 5)
        assert await store.get("a") == b"12345"
        now[0] = 5.0
        assert await store.get("a") is None  # expired
        await store.put("a", b"12345", 60)
        await store.put("b", b"123456", 60)  # over 10 bytes together: "a" goes
        assert await store.get("a") is None and await store.get("b") == b"123456"
        await store.put("big", b"x" * 11, 60)  # larger than the bound: not kept
        assert await store.get("big") is None and await store.get("b") == b"123456"
        assert await store.delete("b") is True and await store.delete("b") is False

    asyncio.run(scenario())
