"""Rollout state in Redis, shared by every gateway replica.

Layout: hash ``vgate:rollouts`` (name → record bytes), hash
``vgate:rollouts:versions`` (name → the record's version) and the counter
``vgate:rollouts:version``, bumped by every write. Gateways poll the counter (one
GET every 0.25 s) and read the records only when it moved. A write is a Lua
compare-and-set on the record's version, so two replicas never both apply a change
made from the same state (see :mod:`gateway.rollouts.state`).

Every call ends within the store's deadline (``redis.timeout_s``): past it, or on
any Redis error, it raises :class:`StoreUnavailable`; the gateway keeps its last
copy of the weights meanwhile.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

import redis.asyncio as aioredis

from gateway.backends.redis.link import bounded

_COMPARE_AND_SET = """
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if current ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], current + 1)
redis.call('INCR', KEYS[3])
return current + 1
"""


class RedisRolloutStore:
    """:class:`gateway.rollouts.state.RolloutStore` on a shared Redis."""

    def __init__(
        self, client: aioredis.Redis, timeout_s: float, prefix: str = "vgate:rollouts"
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._keys = (prefix, f"{prefix}:versions", f"{prefix}:version")
        self._compare_and_set = client.register_script(_COMPARE_AND_SET)

    async def version(self) -> str:
        raw = await self._run(self._client.get(self._keys[2]))
        return raw.decode() if isinstance(raw, bytes) else "0"

    async def load(self, names: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        if not names:
            return {}

        async def both() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hmget(self._keys[0], list(names))
                pipe.hmget(self._keys[1], list(names))
                return await pipe.execute()

        values, versions = await self._run(both())
        return {
            name: (int(version), value)
            for name, value, version in zip(names, values, versions, strict=True)
            if value is not None and version is not None
        }

    async def compare_and_set(self, name: str, expected: int, value: bytes) -> int | None:
        stored = await self._run(
            self._compare_and_set(keys=self._keys, args=[name, expected, value])
        )
        return int(stored) or None

    async def _run(self, command: Awaitable[Any]) -> Any:
        return await bounded(command, self._timeout_s)
