"""Stored responses in the shared Redis: ``vgate:responses:<id>``, one JSON record per
response with ``SET ... EX`` (the record's TTL), so every gateway replica can retrieve
or continue any response while it lives.

Each owner's bytes are counted in two keys of its own (one hash slot:
``vgate:responses:owner:{<name>}:size``, a hash of record id to size plus the total in
``#``, and ``...:expiry``, a sorted set of record ids by expiry): a small script
forgets the records that expired, checks the quota and counts the new one, all at
once, so replicas never overshoot together; the record itself is written after it
(another key, perhaps another slot: too large to pass through a script). A delete
is one script over the three keys (one Redis, as ``redis.url`` is), removing the
record and counting it down at once: as two calls, a failure between them left the
count on the quota, and two clients deleting the same record at once each ran both.

A record whose write Redis refused (full, under
``noeviction``: the count can still pass, as Redis lets a script that has already
written, here forgetting an expired record, finish its writes, and the record's own
write then fails with ``OOM``) is counted down again at once;
without that it took the owner's quota for the record's whole TTL (30 days). A record
Redis lost some other way (a write that timed out may still have run) still counts
until its expiry: the count errs toward the limit.

Calls go over a redis-py connection pool of the store's own, never over the shared
pipelined request-path connection (:attr:`RedisLink.fast`): a record can be 8 MiB
(``responses.max_stored_bytes``), and one queued there would hold every rate-limit
and cache command behind it past their deadline. Each call has a deadline that suits
such a record, :data:`TIMEOUT_S` (5 s; connecting: ``redis.timeout_s``). A failure
raises :class:`StoreUnavailable` (503 ``response_store_unavailable`` to a reader) but
does not mark the shared link down: one slow record is no outage for the limiter
and the cache. When the link already knows Redis is down (their failures), reads
and deletes fail at once (the client may ask again); a write is tried all the same,
within its deadline: the client already has the record's id, and the link's short
deadline (``redis.timeout_s``) marks Redis down for a pause far shorter than this
one (a ``CLIENT PAUSE`` of a second lost every record answered meanwhile). A Redis
that is gone costs such an answer a refused connection or the connect timeout
(``redis.timeout_s``); only a hung one holds it, for the deadline at most.

A call of the store's own that Redis did not answer (its deadline passed, the
connection failed) also makes reads fail at once for :data:`QUIET_S`, until a call
succeeds: follow-ups of one key load their previous record a few at a time
(:class:`gateway.pipeline.response_records.OwnerGate`), and with nothing else marking
Redis down each waited its full deadline in turn: twelve follow-ups at once on a
paused Redis were answered after 5, 10 and 15 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis

from gateway.backends.redis.link import RedisLink, bounded, redis_py_client
from gateway.backends.redis.resp_wire import RedisReplyError
from gateway.errors import StoreUnavailable

PREFIX = "vgate:responses:"
TIMEOUT_S = 5.0
"""The deadline of one call of the store (an 8 MiB record, read while others are)."""
QUIET_S = 1.0
"""After a call of the store's own found Redis silent or gone, reads fail at once for
this long (the 503's ``Retry-After``), as when the shared link knows Redis is down."""

_FORGET_EXPIRED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(gone) do
  local size = tonumber(redis.call('HGET', KEYS[1], id) or '0')
  redis.call('HDEL', KEYS[1], id)
  redis.call('HINCRBY', KEYS[1], '#', -size)
  redis.call('ZREM', KEYS[2], id)
end
"""

_COUNT = (
    _FORGET_EXPIRED
    + """
-- ARGV: record id, size, ttl ms, quota (-1: none). Returns 1 when counted, 0 when the
-- owner's records take the quota or more already.
local total = tonumber(redis.call('HGET', KEYS[1], '#') or '0')
local quota = tonumber(ARGV[4])
if quota >= 0 and total >= quota then return 0 end
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], '#', tonumber(ARGV[2]) - old)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
-- Kept 60 s past the newest record; never shortened (a lower responses.ttl_s must not
-- drop the bookkeeping of older records that still live): NX sets a first expiry, GT
-- only ever extends one (Redis 7).
local keep = tonumber(ARGV[3]) + 60000
for _, key in ipairs(KEYS) do
  redis.call('PEXPIRE', key, keep, 'NX')
  redis.call('PEXPIRE', key, keep, 'GT')
end
return 1
"""
)

_FORGET = """
local size = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], '#', -size)
end
redis.call('ZREM', KEYS[2], ARGV[1])
"""
"""Counts the record ``ARGV[1]`` out of its owner's keys (once: a second run finds
nothing in the hash to count down)."""

_UNCOUNT = _FORGET + "return 0\n"

_DELETE = (
    "local removed = redis.call('DEL', KEYS[3])\n"
    + _FORGET
    + """-- The record (KEYS[3]) and its count go together: a failure or a client's
-- concurrent delete between two calls left the quota counting a deleted record.
return removed
"""
)

_OWNS = (
    _FORGET_EXPIRED
    + """
return redis.call('HGET', KEYS[1], ARGV[1])
"""
)
"""The record's size in its owner's hash, once the records that expired are forgotten
(else one stayed "owned" until the key next stored: a cancel of it was a 400, not 404)."""

_USAGE = (
    _FORGET_EXPIRED
    + """
return tonumber(redis.call('HGET', KEYS[1], '#') or '0')
"""
)


class RedisResponseStore:
    """:class:`gateway.responses.store.ResponseStore` in Redis: ``link`` says whether
    Redis is known to be down; commands go over ``client`` (None: ``link.client``,
    whose deadline is ``link``'s) within ``timeout_s``."""

    def __init__(
        self,
        link: RedisLink,
        prefix: str = PREFIX,
        client: aioredis.Redis | None = None,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._link = link
        self._prefix = prefix
        self._client = link.client if client is None else client
        self._owns_client = client is not None
        self._timeout_s = timeout_s
        self._quiet_until = 0.0
        """Until when reads fail at once (see the module docstring), monotonic."""
        self._writes: set[asyncio.Task[bool]] = set()
        """Record writes under way: each runs to its end whoever awaits it (:meth:`put`)."""
        self._count = self._client.register_script(_COUNT)
        self._uncount = self._client.register_script(_UNCOUNT)
        self._delete = self._client.register_script(_DELETE)
        self._owns = self._client.register_script(_OWNS)
        self._usage = self._client.register_script(_USAGE)

    @classmethod
    def connect(cls, url: str, link: RedisLink, connect_timeout_s: float) -> RedisResponseStore:
        """A store with a connection pool of its own to ``url`` (see the module
        docstring), ``link`` the gateway's shared one."""
        timeout_s = max(TIMEOUT_S, connect_timeout_s)
        client = redis_py_client(
            url, timeout_s, connect_timeout_s, wait_for_connection=True, max_connections=512
        )
        return cls(link, client=client, timeout_s=timeout_s)

    async def close(self) -> None:
        """Let the record writes under way end (their deadline at most), then close the
        store's own pool (if it has one), waiting a second at most."""
        if self._writes:
            await asyncio.wait(self._writes, timeout=self._timeout_s)
        if self._owns_client:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._client.aclose()

    async def get(self, response_id: str) -> bytes | None:
        value = await self._call(self._client.get(self._prefix + response_id))
        return value if isinstance(value, bytes) else None

    async def put(
        self, response_id: str, record: bytes, ttl_s: int, owner: str, quota: int | None
    ) -> bool:
        """Count the record on ``owner``'s quota, then write it: False when the quota
        refused it. The two run to their end in a task of their own even when the
        caller is cancelled (a client that left as its answer was being stored): cut
        between them, the record's bytes stayed on the quota for its whole TTL (30
        days) with no record written."""
        write = asyncio.ensure_future(self._put(response_id, record, ttl_s, owner, quota))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)
        return await asyncio.shield(write)

    async def _put(
        self, response_id: str, record: bytes, ttl_s: int, owner: str, quota: int | None
    ) -> bool:
        args: list[str | int] = [
            response_id,
            len(record),
            ttl_s * 1000,
            -1 if quota is None else quota,
        ]
        # Tried whatever the link says (see the module docstring): the client has this
        # record's id, and a write skipped is a record lost for good.
        keys = self._owner_keys(owner)
        if not await self._bounded(self._count(keys=keys, args=args)):
            return False
        try:
            await self._bounded(self._client.set(self._prefix + response_id, record, ex=ttl_s))
        except RedisReplyError:  # refused (a full Redis: OOM), so never stored
            with contextlib.suppress(StoreUnavailable):
                await bounded(self._uncount(keys=keys, args=[response_id]), self._timeout_s)
            raise
        return True

    async def owns(self, response_id: str, owner: str) -> bool:
        """The record's id in ``owner``'s size hash (counted when stored, forgotten
        when it expires or is deleted): one small script on the caller's own keys."""
        size = await self._script(self._owns, owner, [response_id])
        return size is not None  # HGET, not HEXISTS: the ACL's commands (users.acl)

    async def delete(self, response_id: str, owner: str) -> bool:
        """The record and its count in one script (atomic: of two deletes at once, one
        removes it and counts it down, the other finds nothing)."""
        record = self._prefix + response_id
        removed = await self._script(self._delete, owner, [response_id], record)
        return isinstance(removed, int) and removed > 0

    async def usage(self, owner: str) -> int:
        total = await self._script(self._usage, owner, [])
        return total if isinstance(total, int) else 0

    async def _script(self, script: Any, owner: str, args: list[str | int], *keys: str) -> Any:
        """``script`` (registered: loaded again by redis-py after NOSCRIPT) on the
        owner's two keys, then ``keys``."""
        self._link.check()
        self._check_quiet()
        every = [*self._owner_keys(owner), *keys]
        return await self._bounded(script(keys=every, args=args))

    def _owner_keys(self, owner: str) -> list[str]:
        """``owner``'s size hash and expiry set (one hash slot: the owner's name)."""
        base = f"{self._prefix}owner:{{{owner}}}"
        return [f"{base}:size", f"{base}:expiry"]

    async def _call(self, command: Awaitable[Any]) -> Any:
        """``command`` within the deadline; Redis known down: at once. A failure is
        :class:`StoreUnavailable`, and leaves the shared link's state alone."""
        try:
            self._link.check()
            self._check_quiet()
        except StoreUnavailable:
            if asyncio.iscoroutine(command):
                command.close()  # never awaited: no warning
            raise
        return await self._bounded(command)

    def _check_quiet(self) -> None:
        if self._quiet_until and time.monotonic() < self._quiet_until:
            raise StoreUnavailable("redis did not answer the response store (recent failure)")

    async def _bounded(self, command: Awaitable[Any]) -> Any:
        """:func:`bounded`, noting whether Redis answered (an error reply is an answer)."""
        try:
            result = await bounded(command, self._timeout_s)
        except RedisReplyError:
            self._quiet_until = 0.0
            raise
        except StoreUnavailable:
            self._quiet_until = time.monotonic() + QUIET_S
            raise
        self._quiet_until = 0.0
        return result
