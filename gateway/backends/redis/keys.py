"""API keys in Redis, shared by every gateway replica and by ``vgate keys``.

Layout: hash ``vgate:keys`` (digest → record JSON), hash ``vgate:keys:names``
(name → digest) and the counter ``vgate:keys:version``, bumped by every change.
Create and revoke are Lua scripts, so a name is never taken twice and the three
structures always agree. Gateways poll the version (one GET) and reload the
whole set only when it changed; that bounds how long a revoked key keeps working.

Records are decoded one by one: one that cannot be decoded (see
:meth:`KeyRecord.decode`) is skipped, logged once and counted, and the others
load; one bad record must not stop every gateway's key refresh (a key revoked
after it would keep working) nor their start-up.

Every call ends within the store's deadline (``redis.timeout_s``, taken from the
client's socket timeout unless given): past it, it fails with
:class:`StoreUnavailable` like any outage, whatever state Redis is in.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis

from gateway.auth.keys import KeyExistsError, KeyRecord
from gateway.backends.redis.link import bounded

log = logging.getLogger("vgate.auth")
_MAX_REPORTED = 1024
_FALLBACK_TIMEOUT_S = 5.0  # a client built without a socket timeout (redis-py's default)

_CREATE = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('INCR', KEYS[3])
return 1
"""
_REVOKE = """
local digest = redis.call('HGET', KEYS[2], ARGV[1])
if not digest then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], digest)
redis.call('INCR', KEYS[3])
return 1
"""


class RedisKeyStore:
    """:class:`gateway.auth.keys.KeyStore` on a shared Redis."""

    def __init__(
        self, client: aioredis.Redis, prefix: str = "vgate:keys", timeout_s: float | None = None
    ) -> None:
        self._client = client
        socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._timeout_s = timeout_s or socket_timeout or _FALLBACK_TIMEOUT_S
        self._keys = (prefix, f"{prefix}:names", f"{prefix}:version")
        self._create = client.register_script(_CREATE)
        self._revoke = client.register_script(_REVOKE)
        self._skipped = 0
        self._reported: set[tuple[bytes, int]] = set()

    async def version(self) -> str:
        raw = await self._run(self._client.get(self._keys[2]))
        return raw.decode() if isinstance(raw, bytes) else "0"

    async def load_all(self) -> list[KeyRecord]:
        raw: dict[bytes, bytes] = await self._run(self._client.hgetall(self._keys[0]))
        decoded = (self._decode(digest, value) for digest, value in raw.items())
        return [record for record in decoded if record is not None]

    async def get(self, digest: str) -> KeyRecord | None:
        raw = await self._run(self._client.hget(self._keys[0], digest))
        return self._decode(digest.encode(), raw) if raw is not None else None

    @property
    def skipped_records(self) -> int:
        return self._skipped

    async def create(self, record: KeyRecord) -> None:
        created = await self._run(
            self._create(keys=self._keys, args=[record.name, record.digest, record.encode()])
        )
        if not created:
            raise KeyExistsError(record.name)

    async def revoke(self, name: str) -> bool:
        return bool(await self._run(self._revoke(keys=self._keys, args=[name])))

    async def close(self) -> None:
        """The client is shared and closed by its owner."""

    def _decode(self, digest: bytes, raw: bytes) -> KeyRecord | None:
        """The record, or None (counted; logged the first time this digest holds this
        value, not at every reload; the memory of what was logged is bounded)."""
        try:
            return KeyRecord.decode(raw)
        except ValueError as exc:
            self._skipped += 1
            seen = (digest, hash(raw))
            if seen not in self._reported:
                if len(self._reported) >= _MAX_REPORTED:
                    self._reported.clear()
                self._reported.add(seen)
                shown = digest[:12].decode(errors="replace")
                log.warning("key store: skipping key record %s... that cannot be decoded: %s",
                            shown, exc)  # fmt: skip
            return None

    async def _run(self, command: Awaitable[Any]) -> Any:
        return await bounded(command, self._timeout_s)
