"""Stored responses in the shared Redis: ``vgate:responses:<id>``, one JSON record per
response with ``SET ... EX`` (the record's TTL), so every gateway replica can retrieve
or continue any response while it lives.

Calls go over the lean request-path client with its deadline (``redis.timeout_s``);
a failure, or Redis known to be down, raises :class:`StoreUnavailable`.
"""

from __future__ import annotations

from typing import Any

from gateway.backends.redis.link import RedisLink
from gateway.backends.redis.resp import ANY, BULK, STATUS
from gateway.errors import StoreUnavailable

PREFIX = "vgate:responses:"


class RedisResponseStore:
    """:class:`gateway.responses.store.ResponseStore` in Redis."""

    def __init__(self, link: RedisLink, prefix: str = PREFIX) -> None:
        self._link = link
        self._prefix = prefix

    async def get(self, response_id: str) -> bytes | None:
        value = await self._call("GET", self._prefix + response_id, accept=BULK)
        return value if isinstance(value, bytes) else None

    async def put(self, response_id: str, record: bytes, ttl_s: int) -> None:
        await self._call("SET", self._prefix + response_id, record, "EX", ttl_s, accept=STATUS)

    async def delete(self, response_id: str) -> bool:
        removed = await self._call("DEL", self._prefix + response_id, accept=ANY)
        return isinstance(removed, int) and removed > 0

    async def _call(self, *args: bytes | str | int, accept: bytes) -> Any:
        self._link.check()
        try:
            reply = await self._link.fast.call(*args, accept=accept)
        except StoreUnavailable as exc:
            self._link.failed(exc)
            raise
        self._link.succeeded()
        return reply
