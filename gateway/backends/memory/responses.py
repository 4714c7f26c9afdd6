"""Stored responses in this process's memory (no Redis): bounded, each for its TTL;
when full, the oldest record of the owner holding the most goes first. Lost on
restart and invisible to other processes; with ``redis.url`` set the gateway uses
:mod:`gateway.backends.redis.responses` instead.

Each owner's bytes are counted as records come and go (expiry, deletion, eviction),
for ``responses.max_bytes_per_key``. An owner's records are kept in the order they
were stored, which is the order they expire in (every record gets the same
``responses.ttl_s``), so forgetting the expired ones takes only as long as there
are expired ones, however many an owner holds.

Each record counts against ``max_bytes`` with its bookkeeping (:data:`RECORD_OVERHEAD`):
its id, its slots in two ordered dicts, the tuple and the expiry take about as much
again as a small record's bytes, so counting the bytes alone let many small records
take several times the configured memory. An owner's quota
(``responses.max_bytes_per_key``) counts the records' bytes alone, as the Redis store
does."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

RECORD_OVERHEAD = 512
"""Bytes counted for each record besides its own: its id, its slots in the records'
and its owner's ordered dicts, the tuple, the expiry and the record's object header
(about 430 measured on CPython 3.11, rounded up)."""


class _Record(NamedTuple):
    expires: float
    data: bytes
    owner: str


class MemoryResponseStore:
    """:class:`gateway.responses.store.ResponseStore` in memory, at most ``max_bytes``
    of records. ``clock`` (monotonic seconds) decides expiry; tests move their own."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._records: dict[str, _Record] = {}
        self._bytes = 0
        self._owned: dict[str, int] = {}  # bytes by owner
        self._ids: dict[str, OrderedDict[str, float]] = {}  # owner's ids, oldest first
        self._max_bytes = max_bytes
        self._clock = clock

    async def get(self, response_id: str) -> bytes | None:
        found = self._records.get(response_id)
        if found is None:
            return None
        if found.expires <= self._clock():
            self._drop(response_id)
            return None
        return found.data

    async def put(
        self, response_id: str, record: bytes, ttl_s: int, owner: str, quota: int | None
    ) -> bool:
        if len(record) + RECORD_OVERHEAD > self._max_bytes:
            return False
        if quota is not None and await self.usage(owner) >= quota:
            return False
        self._drop(response_id)
        expires = self._clock() + ttl_s
        self._records[response_id] = _Record(expires, record, owner)
        self._bytes += len(record) + RECORD_OVERHEAD
        self._owned[owner] = self._owned.get(owner, 0) + len(record)
        self._ids.setdefault(owner, OrderedDict())[response_id] = expires
        while self._bytes > self._max_bytes:
            self._drop(self._evicted())
        return True

    async def owns(self, response_id: str, owner: str) -> bool:
        found = self._records.get(response_id)
        return found is not None and found.owner == owner and found.expires > self._clock()

    async def delete(self, response_id: str, owner: str) -> bool:
        return self._drop(response_id)

    async def usage(self, owner: str) -> int:
        """``owner``'s expired records are dropped first: they take nothing any more."""
        ids = self._ids.get(owner)
        now = self._clock()
        while ids:
            response_id, expires = next(iter(ids.items()))
            if expires > now:
                break
            self._drop(response_id)
            ids = self._ids.get(owner)
        return self._owned.get(owner, 0)

    def _evicted(self) -> str:
        """The record to make room with: the oldest of the owner that holds the most
        (its records' bytes and bookkeeping). Least recently used first across owners,
        one key storing a pool's worth pushed every other key's records out (its quota
        is larger than the pool by default); now it pushes out its own (bug hunt)."""
        owned, ids = self._owned, self._ids
        owner = max(owned, key=lambda name: owned[name] + len(ids[name]) * RECORD_OVERHEAD)
        return next(iter(ids[owner]))

    def _drop(self, response_id: str) -> bool:
        old = self._records.pop(response_id, None)
        if old is None:
            return False
        self._bytes -= len(old.data) + RECORD_OVERHEAD
        ids = self._ids[old.owner]
        del ids[response_id]
        if ids:
            self._owned[old.owner] -= len(old.data)
        else:
            del self._owned[old.owner], self._ids[old.owner]
        return True
