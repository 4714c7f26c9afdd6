"""Readiness about the gateway itself: Redis reachable when configured, one engine known;
engine health never counts; the Redis check is cached and shared between probes."""

from __future__ import annotations

import asyncio
import time

from gateway.pool.engine_pool import EnginePool
from gateway.pool.readiness import Readiness

ENGINE = "http://10.0.0.1:8000"


class Ping:
    """A Redis PING that answers, fails or hangs, and counts its calls."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        if self.mode == "down":
            raise ConnectionError("Error 111 connecting to redis. Connection refused.")
        if self.mode == "paused":
            await asyncio.Event().wait()
        await asyncio.sleep(0)  # a real PING yields to the loop
        return True


async def test_ready_with_a_configured_engine_even_when_it_is_unhealthy() -> None:
    pool = EnginePool({"m": [ENGINE]})
    pool.set_health(ENGINE, False)  # every engine restarting
    report = await Readiness(pool, lambda: 0, None, 0.25).check()
    assert report.ready
    assert (report.redis, report.known_engines) == ("not configured", 1)


async def test_unavailable_with_no_engine_known() -> None:
    report = await Readiness(EnginePool({}), lambda: 0, None, 0.25).check()
    assert not report.ready and report.known_engines == 0


async def test_engines_the_registry_holds_but_does_not_route_count_as_known() -> None:
    unrouted = [0]
    readiness = Readiness(EnginePool({}), lambda: unrouted[0], Ping(), 0.25, cache_s=0)
    assert not (await readiness.check()).ready
    unrouted[0] = 2  # starting or restarting
    report = await readiness.check()
    assert report.ready and report.known_engines == 2 and report.redis == "reachable"


async def test_an_unreachable_redis_makes_the_gateway_unavailable() -> None:
    ping = Ping("down")
    readiness = Readiness(EnginePool({"m": [ENGINE]}), lambda: 0, ping, 0.25, cache_s=0)
    report = await readiness.check()
    assert not report.ready and report.redis == "unreachable"
    ping.mode = "ok"
    assert (await readiness.check()).ready  # no cache: the next probe sees it back


async def test_a_paused_redis_is_unreachable_after_the_timeout_not_later() -> None:
    readiness = Readiness(EnginePool({"m": [ENGINE]}), lambda: 0, Ping("paused"), 0.1)
    started = time.monotonic()
    report = await asyncio.wait_for(readiness.check(), 5)
    assert report.redis == "unreachable" and not report.ready
    assert time.monotonic() - started < 1.0


async def test_the_redis_check_is_cached_and_shared_by_concurrent_probes() -> None:
    now = [0.0]
    ping = Ping()
    readiness = Readiness(
        EnginePool({"m": [ENGINE]}), lambda: 0, ping, 0.25, cache_s=1.0, clock=lambda: now[0]
    )
    reports = await asyncio.gather(*(readiness.check() for _ in range(20)))
    assert all(r.ready for r in reports)
    assert ping.calls == 1  # one PING in flight served every probe
    now[0] = 0.9
    await readiness.check()
    assert ping.calls == 1  # within cache_s
    now[0] = 2.0
    ping.mode = "down"
    assert not (await readiness.check()).ready
    assert ping.calls == 2


async def test_once_the_drain_begins_the_gateway_is_never_ready_again() -> None:
    readiness = Readiness(EnginePool({"m": [ENGINE]}), lambda: 0, Ping(), 0.25, cache_s=0)
    assert (await readiness.check()).ready
    readiness.begin_drain()
    report = await readiness.check()
    assert not report.ready and report.draining
    assert (report.redis, report.known_engines) == ("reachable", 1)  # still reported


async def test_a_limiter_failing_closed_makes_the_gateway_unavailable_until_writes_pass() -> None:
    """``fail_closed`` and the limiter's last call failed (Redis full: its PING passes):
    not ready while Redis refuses the write probe; ready again once it accepts it,
    without a request having to succeed first (none would come)."""
    refusing = [True]
    write = Ping("down")  # OOM: the write is refused
    readiness = Readiness(
        EnginePool({"m": [ENGINE]}), lambda: 0, Ping(), 0.25, cache_s=0,
        refusing=lambda: refusing[0], write=write,
    )  # fmt: skip
    report = await readiness.check()
    assert not report.ready and report.redis == "reachable"
    assert report.rate_limiter == "refusing"
    write.mode = "ok"  # Redis takes writes again
    report = await readiness.check()
    assert report.ready and report.rate_limiter == "ok"
    write.mode = "down"
    refusing[0] = False  # a request's limiter call succeeded
    calls = write.calls
    assert (await readiness.check()).ready
    assert write.calls == calls  # no write probe while the limiter answers


async def test_a_limiter_that_is_not_refusing_is_never_probed() -> None:
    write = Ping("down")
    readiness = Readiness(
        EnginePool({"m": [ENGINE]}), lambda: 0, Ping(), 0.25, refusing=lambda: False, write=write
    )
    assert (await readiness.check()).ready and write.calls == 0
