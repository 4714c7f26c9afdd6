"""Readiness about the gateway itself: can this process serve, whatever the engines do?

A gateway is ready when

* its config is loaded (it is: this object exists only once the app has started),
* Redis answers a ``PING`` within ``redis.timeout_s``, when Redis is configured
  (keys, limits and the registry live there),
* the rate limiter is not refusing every request: under ``ratelimit.on_redis_error:
  fail_closed`` a limiter whose last call failed answers every request 503, and a
  ``PING`` does not see why (a full Redis under ``noeviction`` answers it, and refuses
  every write with ``OOM``). While it fails, readiness asks Redis for one small write
  (:meth:`gateway.backends.redis.link.RedisLink.accepts_writes`): ready again once
  Redis accepts it, or once a request's limiter call succeeds, with no request
  needed (a load balancer that stopped sending any would otherwise never see the
  gateway ready again). Under ``local`` and ``fail_open`` requests are served while
  Redis fails, so the limiter is not part of readiness, and
* at least one engine is *known*: configured by URL, or in the registry in any
  state but ``stopped`` (starting, restarting, draining and failed engines count), and
* not every model it serves has failed for good (:meth:`EnginePool.failed_models`:
  each of its engines failed, or stopped with at least one failed: none will be
  restarted). One dead model of two leaves a
  gateway that serves the other; with every model dead it can only refuse, for good,
  so it leaves the load balancer's rotation and a rolling update that brought broken
  engines stalls instead of replacing gateways that worked.

and it is not draining: from the moment the process begins its graceful shutdown
(:meth:`Readiness.begin_drain`, called by the server when it stops accepting) it is
not ready, for good, so that orchestrators and load balancers stop routing to it
while the requests in progress finish (``server.shutdown_timeout_s``).

Engine *health* is not part of it (a failure for good is not health: nothing
will change it but an operator); it is in the operator's detail. A gateway whose
engines are all restarting still serves cached answers, ``/v1/models`` and quick,
well-formed errors, and every gateway sees the same engines: failing readiness on
engine health would take every gateway out of the Service at once and turn an
engine restart into a full outage (connections refused instead of answers).

The Redis checks cost nothing per probe: their results are kept for ``cache_s``, and
concurrent probes share one call in flight.
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
LimiterState = Literal["ok", "refusing"]

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
    rate_limiter: LimiterState = "ok"
    """``refusing``: the limiter fails closed on every request (see the module docstring)."""
    failed_models: tuple[str, ...] = ()
    """The models whose every engine has failed for good, sorted."""


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
        refusing: Callable[[], bool] | None = None,
        write: Ping | None = None,
    ) -> None:
        """``registered_elsewhere``: engines the registry holds that are not in the pool
        (not routable now, not stopped). ``ping``: one Redis ``PING`` (None: no Redis).
        ``refusing``: whether the rate limiter refuses every request now
        (:attr:`gateway.ratelimit.admission.Admission.refusing`); ``write``: one small
        write to Redis, tried while it does."""
        self._pool = pool
        self._registered_elsewhere = registered_elsewhere
        self._ping = None if ping is None else CachedCheck(ping, timeout_s, cache_s, clock)
        self._refusing = refusing
        self._write = None if write is None else CachedCheck(write, timeout_s, cache_s, clock)
        self._draining = False

    def begin_drain(self) -> None:
        """The graceful shutdown has begun: every later :meth:`check` says not ready."""
        self._draining = True

    async def check(self) -> ReadinessReport:
        known = len(self._pool.urls()) + self._registered_elsewhere()
        redis: RedisState = "not configured"
        if self._ping is not None:
            redis = "reachable" if await self._ping.passes() else "unreachable"
        limiter: LimiterState = "ok"
        if self._refusing is not None and self._refusing():
            accepted = self._write is not None and await self._write.passes()
            limiter = "ok" if accepted else "refusing"
        failed = self._pool.failed_models()
        all_failed = bool(failed) and len(failed) == len(self._pool.models())
        ready = (
            known > 0
            and redis != "unreachable"
            and limiter == "ok"
            and not all_failed
            and not self._draining
        )
        return ReadinessReport(ready, redis, known, self._draining, limiter, tuple(sorted(failed)))


class CachedCheck:
    """One call to Redis as a check: passed or not, kept for ``cache_s``; concurrent
    checks share the call in flight."""

    def __init__(
        self, call: Ping, timeout_s: float, cache_s: float, clock: Callable[[], float]
    ) -> None:
        self._call = call
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._clock = clock
        self._checked_at: float | None = None
        self._passed = False
        self._pending: asyncio.Future[bool] | None = None

    async def passes(self) -> bool:
        checked = self._checked_at
        if checked is not None and self._clock() - checked < self._cache_s:
            return self._passed
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._call_once())
        # Shielded: a probe that gives up (its client hung up) does not cancel the call
        # other probes wait on.
        return await asyncio.shield(self._pending)

    async def _call_once(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._call()
            passed = True
        except Exception:  # any failure: not passed (the link logs Redis outages)
            passed = False
        finally:
            self._pending = None
        self._passed, self._checked_at = passed, self._clock()
        return passed
