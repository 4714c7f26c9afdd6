"""Found by the churn hunt (a Redis pause just as the load stopped): the concurrency
slots of admissions that failed during the pause (one that ran in Redis after its
deadline, one admitted before whose settlement could not be sent) were released only
when a later rate-limit call succeeded. A gateway that got no more limited traffic
(the end of a burst; a replica the balancer stopped sending to) kept them taken for
their whole lease (60 s), and the key's other replicas refused its requests meanwhile.
They are now released once Redis answers again, whether or not anything else asks it.

Against a private, real redis-server that the test pauses with SIGSTOP."""

from __future__ import annotations

import contextlib
import uuid

import pytest
import redis

from gateway.backends.redis.limiter import RedisLimiter
from gateway.backends.redis.link import RedisLink
from gateway.errors import StoreUnavailable
from tests.helpers.waiting import until
from tests.unit.backends.redis.test_limiter_paused import LEASE_S, SCOPES, paused, private_redis

__all__ = ["private_redis"]  # the fixture, used by name


async def test_slots_are_released_with_no_later_limiter_call(
    private_redis: tuple[str, int],
) -> None:
    url, pid = private_redis
    link = RedisLink(url, timeout_s=0.3, retry_s=0.05)
    prefix = f"test:{uuid.uuid4().hex}:"
    limiter = RedisLimiter(link, prefix=prefix)
    slots = f"{prefix}{{paused}}:slots"
    admin = redis.Redis.from_url(url)
    try:
        held = await limiter.admit(SCOPES, "held", 0, LEASE_S)
        assert held.admitted
        with paused(pid):
            with pytest.raises(StoreUnavailable):  # written to Redis, then timed out
                await limiter.admit(SCOPES, "phantom", 0, LEASE_S)
            with pytest.raises(StoreUnavailable):  # the link rests: this one stays here
                limiter.settle(SCOPES, "held", 0, 0, held.at)
        # Redis runs again ("phantom" takes its slot now); nothing else is asked of the
        # limiter: both slots must still be freed, long before their lease would.
        await until(lambda: admin.zcard(slots) == 0, within_s=10.0)
    finally:
        admin.close()
        await limiter.close()
        await link.close()


async def test_a_failed_release_is_tried_again_while_redis_is_away(
    private_redis: tuple[str, int],
) -> None:
    """The release's own check (a PING) fails while Redis is still paused: it is tried
    again until Redis answers, and nothing is lost meanwhile."""
    url, pid = private_redis
    link = RedisLink(url, timeout_s=0.2, retry_s=0.05)
    prefix = f"test:{uuid.uuid4().hex}:"
    limiter = RedisLimiter(link, prefix=prefix)
    slots = f"{prefix}{{paused}}:slots"
    admin = redis.Redis.from_url(url)
    try:
        held = await limiter.admit(SCOPES, "held", 0, LEASE_S)
        assert held.admitted
        with paused(pid):
            with pytest.raises(StoreUnavailable):
                await limiter.admit(SCOPES, "phantom", 0, LEASE_S)
            failures = link.failures
            await until(lambda: link.failures > failures + 1, within_s=10.0)  # retried
            with contextlib.suppress(StoreUnavailable):  # resting, or sent and failing
                limiter.settle(SCOPES, "held", 0, 0, held.at)
        await until(lambda: admin.zcard(slots) == 0, within_s=10.0)
    finally:
        admin.close()
        await limiter.close()
        await link.close()


async def test_no_release_timer_outlives_the_limiter(private_redis: tuple[str, int]) -> None:
    url, pid = private_redis
    link = RedisLink(url, timeout_s=0.2, retry_s=0.05)
    limiter = RedisLimiter(link, prefix=f"test:{uuid.uuid4().hex}:")
    try:
        with paused(pid), pytest.raises(StoreUnavailable):
            await limiter.admit(SCOPES, "phantom", 0, LEASE_S)
        assert limiter.releasing  # "phantom" may hold a slot: a release is due
        await limiter.close()
        assert not limiter.releasing
    finally:
        await link.close()
