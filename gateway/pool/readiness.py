"""Readiness about the gateway itself: can this process serve, whatever the engines do?

A gateway is ready when

* its config is loaded (it is: this object exists only once the app has started),
* Redis answers a ``PING`` within ``redis.timeout_s``, when Redis is configured
  (keys, limits and the registry live there), and
* at least one engine is *known*: configured by URL, or in the registry in any
  state but ``stopped`` (starting, restarting, draining and failed engines count).

and it is not draining: from the moment the process begins its graceful shutdown
(:meth:`Readiness.begin_drain`, called by the server when it stops accepting) it is
not ready, for good, so that orchestrators and load balancers stop routing to it
while the requests in progress finish (``server.shutdown_timeout_s``).

Engine *health* is not part of it; it is in the operator's detail. A gateway whose
engines are all restarting still serves cached answers, ``/v1/models`` and quick,
well-formed errors, and every gateway sees the same engines: failing readiness on
engine health would take every gateway out of the Service at once and turn an
engine restart into a full outage (connections refused instead of answers).

The Redis check costs nothing per probe: its result is kept for ``cache_s``, and
concurrent probes share one ``PING`` in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from gateway.pool.engine_pool import EnginePool

Ping = Callable[[], Awaitable[object]]
RedisState = Literal["reachable", "unreachable", "not configured"]

DEFAULT_CACHE_S = 1.0


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    ready: bool
    redis: RedisState
    known_engines: int
    """Engines in the pool (configured, or routable in the registry) plus those the
    registry holds in another state (see :class:`Readiness`)."""
    draining: bool = False
    """The process is shutting down (:meth:`Readiness.begin_drain`): never ready again."""


class Readiness:
    """Checks readiness (:meth:`check`) from the pool, the registry's view and Redis."""

    def __init__(
        self,
        pool: EnginePool,
        registered_elsewhere: Callable[[], int],
        ping: Ping | None,
        timeout_s: float,
        *,
        cache_s: float = DEFAULT_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``registered_elsewhere``: engines the registry holds that are not in the pool
        (not routable now, not stopped). ``ping``: one Redis ``PING`` (None: no Redis)."""
        self._pool = pool
        self._registered_elsewhere = registered_elsewhere
        self._ping = ping
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._clock = clock
        self._checked_at: float | None = None
        self._reachable = False
        self._pending: asyncio.Future[bool] | None = None
        self._draining = False

    def begin_drain(self) -> None:
        """The graceful shutdown has begun: every later :meth:`check` says not ready."""
        self._draining = True

    async def check(self) -> ReadinessReport:
        known = len(self._pool.urls()) + self._registered_elsewhere()
        redis: RedisState = "not configured"
        if self._ping is not None:
            redis = "reachable" if await self._redis_reachable() else "unreachable"
        ready = known > 0 and redis != "unreachable" and not self._draining
        return ReadinessReport(ready, redis, known, self._draining)

    async def _redis_reachable(self) -> bool:
        checked = self._checked_at
        if checked is not None and self._clock() - checked < self._cache_s:
            return self._reachable
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._ping_once())
        # Shielded: a probe that gives up (its client hung up) does not cancel the PING
        # other probes wait on.
        return await asyncio.shield(self._pending)

    async def _ping_once(self) -> bool:
        assert self._ping is not None
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._ping()
            reachable = True
        except Exception:  # any failure: unreachable (the link logs Redis outages)
            reachable = False
        finally:
            self._pending = None
        self._reachable, self._checked_at = reachable, self._clock()
        return reachable
