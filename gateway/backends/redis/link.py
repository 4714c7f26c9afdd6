"""Redis for the gateway: a lean pipelined client for the request path, redis-py for the
rest, and a short circuit when Redis is down.

Request-path commands (:attr:`RedisLink.fast`) use short timeouts. After a failure the link reports
"down" without trying for ``retry_s``, so an unreachable Redis costs requests
nothing but a clock read; the first command after that tries again, and redis-py
reconnects on its own, so the gateway recovers with no restart.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis

from gateway.backends.redis.resp import RespClient
from gateway.errors import StoreUnavailable

log = logging.getLogger("vgate.redis")


class RedisLink:
    def __init__(self, url: str, timeout_s: float, retry_s: float) -> None:
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            max_connections=512,
            health_check_interval=0,
        )
        self.fast = RespClient(url, timeout_s)
        self._retry_s = retry_s
        self._down_until = 0.0
        self.failures = 0

    def check(self) -> None:
        """Raise :class:`StoreUnavailable` while a recent failure says Redis is down."""
        if self._down_until and time.monotonic() < self._down_until:
            raise StoreUnavailable("redis is unreachable (recent failure)")

    def failed(self, exc: BaseException) -> None:
        """Note a failure: skip Redis for ``retry_s``; log once per outage."""
        self.failures += 1
        if not self._down_until:
            log.warning("redis unreachable, retrying every %.1f s: %s", self._retry_s, exc)
        self._down_until = time.monotonic() + self._retry_s

    def succeeded(self) -> None:
        if self._down_until:
            log.warning("redis reachable again")
            self._down_until = 0.0

    async def close(self) -> None:
        await self.fast.close()
        await self.client.aclose()
