"""Stored responses in this process's memory (no Redis): bounded, least recently used
first out, each for its TTL. Lost on restart and invisible to other processes; with
``redis.url`` set the gateway uses :mod:`gateway.backends.redis.responses` instead."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class MemoryResponseStore:
    """:class:`gateway.responses.store.ResponseStore` in memory, at most ``max_bytes``
    of records. ``clock`` (monotonic seconds) decides expiry; tests move their own."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._records: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._clock = clock

    async def get(self, response_id: str) -> bytes | None:
        found = self._records.get(response_id)
        if found is None:
            return None
        if found[0] <= self._clock():
            self._drop(response_id)
            return None
        self._records.move_to_end(response_id)
        return found[1]

    async def put(self, response_id: str, record: bytes, ttl_s: int) -> None:
        self._drop(response_id)
        if len(record) > self._max_bytes:
            return
        self._records[response_id] = (self._clock() + ttl_s, record)
        self._bytes += len(record)
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._records)))

    async def delete(self, response_id: str) -> bool:
        return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        old = self._records.pop(response_id, None)
        if old is None:
            return False
        self._bytes -= len(old[1])
        return True
