"""Cache entries in this process's memory (no Redis): a size-bounded LRU with TTLs.

Each entry counts against ``max_bytes`` with its bookkeeping (:data:`ENTRY_OVERHEAD`):
its key, the dict's slot, the tuple and the expiry take about as much again as a
small entry's bytes, so counting the bytes alone let many small entries (distinct
short answers, which any key can ask for) take several times the configured size.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

ENTRY_OVERHEAD = 384
"""Bytes counted for each entry besides its value: its key (64 hex characters), its
slot in the ordered dict, the tuple, the expiry and the value's object header (about
340 measured on CPython 3.11, rounded up)."""


class MemoryEntryStore:
    """Entries in this process's memory: least recently used dropped past ``max_bytes``.

    ``clock`` (seconds, monotonic) decides when an entry's TTL has run out; tests
    pass one they move instead of waiting.
    """

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._clock = clock

    def get(self, key: str) -> asyncio.Future[bytes | None]:
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        found = self._entries.get(key)
        if found is not None and found[0] <= self._clock():
            self._drop(key)
            found = None
        if found is not None:
            self._entries.move_to_end(key)
        future.set_result(found[1] if found is not None else None)
        return future

    def put(self, key: str, value: bytes, ttl_s: int) -> None:
        self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, value)
        self._bytes += len(value) + ENTRY_OVERHEAD
        while self._bytes > self._max_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1]) + ENTRY_OVERHEAD
