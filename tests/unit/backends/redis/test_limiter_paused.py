"""Concurrency slots survive no Redis pause: an admission that failed at its deadline
still runs when a paused Redis resumes, and a request admitted in Redis that ended
while Redis was unreachable could not free its slot then. Both slots are released once
Redis answers again, long before their leases would expire.

Against a private, real redis-server that the test pauses with SIGSTOP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator

import pytest
import redis

from gateway.backends.redis.limiter import (
    MAX_UNSETTLED,
    RELEASE_AGAIN_S,
    RedisLimiter,
    _Unsettled,
)
from gateway.backends.redis.limiter_wire import EncodedScopes, encode_scopes
from gateway.backends.redis.link import RedisLink
from gateway.errors import StoreUnavailable
from gateway.ratelimit.limits import Limits, LimitScope
from tests.helpers.redis_server import run_redis

LEASE_S = 60.0
"""Far longer than the test waits: only a release frees the slots in time."""
SCOPES = [LimitScope("{paused}", Limits(max_concurrent=2))]


@pytest.fixture
def private_redis() -> Iterator[tuple[str, int]]:
    with run_redis() as url:
        client = redis.Redis.from_url(url)
        pid = int(client.info("server")["process_id"])
        client.close()
        yield url, pid


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_slots_taken_or_kept_during_a_pause_are_released(
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
        # Once Redis runs again it admits "phantom" (the stale call) and still holds
        # "held": without the release, both slots stay taken for the lease (60 s).
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            with contextlib.suppress(StoreUnavailable):
                first = await limiter.admit(SCOPES, "probe-1", 0, LEASE_S)
                second = await limiter.admit(SCOPES, "probe-2", 0, LEASE_S)
                both = first.admitted and second.admitted
                for rid, decision in (("probe-1", first), ("probe-2", second)):
                    if decision.admitted:
                        limiter.settle(SCOPES, rid, 0, 0, decision.at)
                if both and admin.zscore(slots, "phantom") is None:
                    break
            assert asyncio.get_running_loop().time() < deadline, admin.zrange(slots, 0, -1)
            await asyncio.sleep(0.02)
        assert admin.zscore(slots, "phantom") is None
        assert admin.zscore(slots, "held") is None
    finally:
        admin.close()
        await limiter.close()  # its release timer first, as the app does
        await link.close()


def encoded_scopes() -> EncodedScopes:
    """SCOPES as the limiter encodes them."""
    return encode_scopes("vgate:rl:", SCOPES)


def test_failed_admissions_are_released_twice_then_forgotten() -> None:
    """Released when Redis first answers, again once RELEASE_AGAIN_S has passed (a
    stale call may have run after the first release), then no more; an admission whose
    lease has expired by then needs no release."""
    encoded = encoded_scopes()
    unsettled = _Unsettled()
    unsettled.add("a", encoded, 100.0)
    unsettled.add("b", encoded, 10.5)
    assert [rid for rid, _ in unsettled.due(10.0)] == ["a", "b"]
    assert unsettled.due(10.0 + RELEASE_AGAIN_S / 2) == []
    assert [rid for rid, _ in unsettled.due(10.0 + RELEASE_AGAIN_S)] == ["a"]
    assert unsettled.due(50.0) == []


def test_the_memory_of_failed_admissions_is_bounded() -> None:
    encoded = encoded_scopes()
    unsettled = _Unsettled()
    for n in range(MAX_UNSETTLED + 10):
        unsettled.add(str(n), encoded, 100.0)
    due = unsettled.due(0.0)
    assert len(due) == MAX_UNSETTLED
    assert due[0][0] == "10"  # the oldest were forgotten


def test_second_releases_are_not_put_off_nor_unbounded() -> None:
    """Review: failures less than RELEASE_AGAIN_S apart pushed the second release off
    for ever, and the admissions waiting for it grew without bound."""
    encoded = encoded_scopes()
    unsettled = _Unsettled()
    released_again = 0
    now = 0.0
    for n in range(40):  # a failure and a recovery every half a release interval
        for k in range(MAX_UNSETTLED // 10):
            unsettled.add(f"{n}-{k}", encoded, 1000.0)
        due = unsettled.due(now)
        released_again += sum(1 for rid, _ in due if not rid.startswith(f"{n}-"))
        assert len(unsettled.again) <= MAX_UNSETTLED
        now += RELEASE_AGAIN_S / 2
    assert released_again > 0
