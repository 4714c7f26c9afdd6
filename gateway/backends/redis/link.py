"""Redis for the gateway: a lean pipelined client for the request path, redis-py for the
rest, and a short circuit when Redis is down.

Every call has a deadline, ``redis.timeout_s``: on the request path
(:attr:`RedisLink.fast`, see :mod:`gateway.backends.redis.resp`) and in the
redis-py client of the key store and ``vgate keys`` (:func:`redis_py_client`:
connect and read timeouts, one immediate retry for a pooled connection Redis
closed, never redis-py's default of ten retries with backoff, which turns one
unanswered call into seconds). After a failure the link reports "down" without
trying for ``retry_s``, so an unreachable Redis costs requests nothing but a
clock read; the first command after that tries again, and both clients
reconnect on their own, so the gateway recovers with no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from gateway.backends.redis.resp import RespClient
from gateway.backends.redis.resp_wire import RedisReplyError
from gateway.errors import StoreUnavailable

log = logging.getLogger("vgate.redis")

WRITE_PROBE_KEY = "vgate:rl:ready-probe"
"""Written by :meth:`RedisLink.accepts_writes`: under the limiter's prefix, which the
gateway's Redis user may write (``deploy/k8s/base/redis/users.acl``)."""


async def bounded(command: Awaitable[Any], timeout_s: float) -> Any:
    """``command`` (a redis-py call) within ``timeout_s``; its failure or silence as
    :class:`StoreUnavailable`, the one error the stores above report. An error reply
    (``OOM``, ``READONLY``, ...) is a :class:`RedisReplyError`: Redis refused the
    command, so it did not run (after a timeout or a lost connection it may have)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await command
    except TimeoutError:
        raise StoreUnavailable(f"redis did not answer within {timeout_s} s") from None
    except ResponseError as exc:
        raise RedisReplyError(str(exc)) from None
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(str(exc)) from None


def redis_py_client(
    url: str,
    timeout_s: float,
    connect_timeout_s: float | None = None,
    *,
    wait_for_connection: bool = False,
    **options: Any,
) -> aioredis.Redis:
    """A redis-py client that gives up on a call after ``timeout_s`` to read a reply
    (and ``connect_timeout_s``, by default the same, to connect), and retries once at
    once (a pooled connection Redis had closed), with no backoff. Callers that need
    one deadline per call wrap it in ``asyncio.timeout`` too
    (:class:`gateway.backends.redis.keys.RedisKeyStore` does). ``wait_for_connection``:
    a call beyond the pool's ``max_connections`` waits up to ``timeout_s`` for one
    instead of failing at once ("Too many connections")."""
    settings: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s if connect_timeout_s is None else connect_timeout_s,
        "retry": Retry(NoBackoff(), 1),
        "health_check_interval": 0,
        **options,
    }
    if not wait_for_connection:
        return aioredis.Redis.from_url(url, **settings)
    pool = aioredis.BlockingConnectionPool.from_url(url, timeout=timeout_s, **settings)
    client = aioredis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() closes the pool too
    return client


class RedisLink:
    def __init__(self, url: str, timeout_s: float, retry_s: float) -> None:
        self.client = redis_py_client(url, timeout_s, max_connections=512)
        self.fast = RespClient(url, timeout_s)
        self._timeout_s = timeout_s
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

    async def accepts_writes(self) -> None:
        """One small write (a key of the limiter's, gone after a second): raises if Redis
        does not answer or refuses writes (``OOM`` when full under ``noeviction``, a
        read-only replica), which a ``PING`` does not tell. For readiness, only while the
        limiter fails closed (:mod:`gateway.pool.readiness`)."""
        await self.client.set(WRITE_PROBE_KEY, b"1", px=1000)

    async def close(self) -> None:
        """Close both clients; closing the pool's connections waits at most the timeout
        (a paused Redis must not hold a shutdown)."""
        await self.fast.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout_s):
                await self.client.aclose()
