"""The in-process cache and Responses store hold about the memory they are configured
for, however small the entries a client makes them keep.

Counting only each entry's bytes, a store of 64-byte entries held seven times its
``memory_max_bytes`` (the key, the dict slots, the tuple and the expiry of each entry
weigh more than such an entry): any key can fill the cache with distinct short
answers, or store many short responses.
"""

from __future__ import annotations

import os
import tracemalloc

from gateway.backends.memory.cache import MemoryEntryStore
from gateway.backends.memory.responses import MemoryResponseStore

BOUND = 2_000_000
SMALL = b"x" * 64
ALLOWED = BOUND * 1.25  # the bookkeeping is an estimate: within a quarter of the bound


def _fresh(data: bytes) -> bytes:
    return bytes(bytearray(data))  # its own object, as each answer is


def test_the_cache_holds_about_its_bound_in_small_entries() -> None:
    tracemalloc.start()
    try:
        store = MemoryEntryStore(BOUND)
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(BOUND // len(SMALL)):  # enough to fill it by the bytes alone
            store.put(os.urandom(32).hex(), _fresh(SMALL), 3600)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held - before < ALLOWED


async def test_the_responses_store_holds_about_its_bound_in_small_records() -> None:
    tracemalloc.start()
    try:
        store = MemoryResponseStore(BOUND)
        before, _ = tracemalloc.get_traced_memory()
        for n in range(BOUND // len(SMALL)):
            response_id = "resp_" + os.urandom(16).hex()  # as new_response_id makes them
            assert await store.put(response_id, _fresh(SMALL), 3600, f"owner{n % 7}", None)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held - before < ALLOWED
