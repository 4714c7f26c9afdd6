"""Stored responses in the shared Redis: ``vgate:responses:<id>``, one JSON record per
response with ``SET ... EX`` (the record's TTL), so every gateway replica can retrieve
or continue any response while it lives.

Each owner's bytes are counted in two keys of its own (one hash slot:
``vgate:responses:owner:{<name>}:size``, a hash of record id to size plus the total in
``#``, and ``...:expiry``, a sorted set of record ids by expiry): a small script
forgets the records that expired, checks the quota and counts the new one, all at
once, so replicas never overshoot together; the record itself is written after it
(another key, perhaps another slot). A record Redis lost some other way still counts
until its expiry: the count errs toward the limit.

Calls go over the lean request-path client with its deadline (``redis.timeout_s``);
a failure, or Redis known to be down, raises :class:`StoreUnavailable`.
"""

from __future__ import annotations

from typing import Any

from gateway.backends.redis.link import RedisLink
from gateway.backends.redis.resp import ANY, BULK, STATUS
from gateway.errors import StoreUnavailable

PREFIX = "vgate:responses:"

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
local keep = tonumber(ARGV[3]) + 60000
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
return 1
"""
)

_UNCOUNT = """
local size = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], '#', -size)
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 0
"""

_USAGE = (
    _FORGET_EXPIRED
    + """
return tonumber(redis.call('HGET', KEYS[1], '#') or '0')
"""
)


class RedisResponseStore:
    """:class:`gateway.responses.store.ResponseStore` in Redis."""

    def __init__(self, link: RedisLink, prefix: str = PREFIX) -> None:
        self._link = link
        self._prefix = prefix

    async def get(self, response_id: str) -> bytes | None:
        value = await self._call("GET", self._prefix + response_id, accept=BULK)
        return value if isinstance(value, bytes) else None

    async def put(
        self, response_id: str, record: bytes, ttl_s: int, owner: str, quota: int | None
    ) -> bool:
        args: list[str | int] = [
            response_id,
            len(record),
            ttl_s * 1000,
            -1 if quota is None else quota,
        ]
        if not await self._script(_COUNT, owner, args):
            return False
        await self._call("SET", self._prefix + response_id, record, "EX", ttl_s, accept=STATUS)
        return True

    async def delete(self, response_id: str, owner: str) -> bool:
        removed = await self._call("DEL", self._prefix + response_id, accept=ANY)
        await self._script(_UNCOUNT, owner, [response_id])
        return isinstance(removed, int) and removed > 0

    async def usage(self, owner: str) -> int:
        total = await self._script(_USAGE, owner, [])
        return total if isinstance(total, int) else 0

    async def _script(self, script: str, owner: str, args: list[str | int]) -> Any:
        base = f"{self._prefix}owner:{{{owner}}}"
        self._link.check()
        try:
            reply = await self._link.fast.evalsha(script, [f"{base}:size", f"{base}:expiry"], args)
        except StoreUnavailable as exc:
            self._link.failed(exc)
            raise
        self._link.succeeded()
        return reply

    async def _call(self, *args: bytes | str | int, accept: bytes) -> Any:
        self._link.check()
        try:
            reply = await self._link.fast.call(*args, accept=accept)
        except StoreUnavailable as exc:
            self._link.failed(exc)
            raise
        self._link.succeeded()
        return reply
