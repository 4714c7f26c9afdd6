"""The limiter's state in Redis is bounded by the window's resolution, not by traffic:
200,000 admissions (settled, as a gateway settles them) leave one small hash per scope
and the script's time per call flat; the hash outlives every bucket still in the
window, and no longer; a scope with only a concurrency limit keeps no counters at all;
an admission whose caller left before the decision is undone.

Against a real redis-server; the admissions are pipelined the way the gateway sends
them (batches of up to 128 operations per script call)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.backends.redis.limiter import RedisLimiter
from gateway.backends.redis.link import RedisLink
from gateway.ratelimit.limits import Limits, LimitScope

LEASE = 30.0
STATE_BOUND = 64 * 1024
"""The most a scope's counters may take in Redis (``MEMORY USAGE``), whatever its
traffic: ~61 buckets of two small integers, the sums and the oldest bucket."""
CHUNK = 2000


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def link(redis_url: str) -> AsyncIterator[RedisLink]:
    redis_link = RedisLink(redis_url, timeout_s=10.0, retry_s=0.1)
    yield redis_link
    await redis_link.close()


async def script_time(admin: aioredis.Redis) -> tuple[int, int]:
    """Script calls so far and the µs Redis spent in them."""
    stats = await admin.info("commandstats")
    calls = usec = 0
    for name in ("cmdstat_evalsha", "cmdstat_eval"):
        entry = stats.get(name)
        if entry:
            calls += int(entry["calls"])
            usec += int(entry["usec"])
    return calls, usec


async def admit_many(limiter: RedisLimiter, scopes: list[LimitScope], count: int) -> None:
    """``count`` admissions, each settled to its real usage as soon as it is decided."""
    for start in range(0, count, CHUNK):
        ids = [uuid.uuid4().hex for _ in range(CHUNK)]
        decisions = await asyncio.gather(
            *(limiter.admit(scopes, rid, 12, LEASE, 100, 1) for rid in ids)
        )
        assert all(d.admitted for d in decisions), start
        for rid, decision in zip(ids, decisions, strict=True):
            limiter.settle(scopes, rid, 12 + decision.granted, 40, decision.at)


@pytest.mark.parametrize(("window_s", "admissions"), [(60.0, 200_000), (1.0, 100_000)])
async def test_state_stays_bounded_and_script_time_flat(
    admin: aioredis.Redis, link: RedisLink, window_s: float, admissions: int
) -> None:
    """With the minute window, every admission is still in the window at the end; with
    a 1 s window (16 ms buckets) buckets are trimmed all along."""
    prefix = f"test:{uuid.uuid4().hex}:"
    limiter = RedisLimiter(link, prefix=prefix, window_s=window_s)
    scopes = [LimitScope("{hot}", Limits(rpm=10**9, tpm=10**12))]

    async def timed(count: int) -> float:
        calls, usec = await script_time(admin)
        await admit_many(limiter, scopes, count)
        await limiter.admit(scopes, "flush", 0, LEASE)  # the last settlements have run
        after_calls, after_usec = await script_time(admin)
        return (after_usec - usec) / (after_calls - calls)

    first = await timed(10_000)
    await admit_many(limiter, scopes, admissions - 20_000)
    last = await timed(10_000)
    assert last <= 3 * first + 50, (first, last)  # µs per script call

    keys = sorted([k.decode() async for k in admin.scan_iter(match=f"{prefix}*")])
    assert keys == [f"{prefix}{{hot}}:win"]  # no lease set: no concurrency limit
    usage = await admin.memory_usage(keys[0])
    assert usage is not None and usage < STATE_BOUND, usage
    buckets = [f for f in await admin.hkeys(keys[0]) if f not in (b"o", b"r", b"t")]
    assert len(buckets) <= 2 * 64, len(buckets)  # requests and tokens per bucket
    probe = await limiter.admit(scopes, "probe", 0, LEASE)
    if window_s == 60.0:  # every admission is still in the window: counted exactly
        assert probe.states[0].requests == admissions + 3  # two "flush" and the probe
        assert probe.states[0].tokens == admissions * 40  # each settled to its usage


async def test_a_concurrency_limit_alone_keeps_no_counters(
    admin: aioredis.Redis, link: RedisLink
) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    limiter = RedisLimiter(link, prefix=prefix)
    scopes = [LimitScope("{c}", Limits(max_concurrent=2))]
    for rid in ("a", "b"):
        assert (await limiter.admit(scopes, rid, 0, LEASE)).admitted
    assert not (await limiter.admit(scopes, "c", 0, LEASE)).admitted
    keys = sorted([k.decode() async for k in admin.scan_iter(match=f"{prefix}*")])
    assert keys == [f"{prefix}{{c}}:slots"]
    for rid in ("a", "b"):
        limiter.settle(scopes, rid, 0, 0)
    assert (await limiter.admit(scopes, "d", 0, LEASE)).admitted
    assert await admin.zcard(f"{prefix}{{c}}:slots") == 1  # only the request in flight


async def test_an_admission_whose_caller_left_is_undone(link: RedisLink) -> None:
    """The client left while Redis decided: its reservation and its slot come back
    (its request still counts, as any request that reached the limiter does)."""
    limiter = RedisLimiter(link, prefix=f"test:{uuid.uuid4().hex}:")
    scopes = [LimitScope("{u}", Limits(rpm=100, tpm=1000, max_concurrent=1))]
    pending = limiter.admit(scopes, "gone", 10, LEASE, 500, 1)
    pending.cancel()
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        probe = await limiter.admit(scopes, uuid.uuid4().hex, 0, LEASE)
        if probe.admitted:
            break
        assert probe.refused == "concurrency"
        assert asyncio.get_running_loop().time() < deadline, "the slot never came back"
        await asyncio.sleep(0.01)
    assert probe.states[0].tokens == 0
    assert probe.states[0].requests >= 2


async def test_the_counters_outlive_the_window_and_expire_after_it(
    admin: aioredis.Redis, link: RedisLink
) -> None:
    """The hash's expiry is set by the first admission of each bucket (16 ms here), not
    by every admission: after any admission it still lasts longer than the window (the
    admission's bucket counts that long) and at most a bucket and a second more."""
    window_ms, bucket_ms = 1000, 16
    prefix = f"test:{uuid.uuid4().hex}:"
    limiter = RedisLimiter(link, prefix=prefix, window_s=window_ms / 1000)
    scopes = [LimitScope("{ttl}", Limits(rpm=10**6, tpm=10**9))]
    key = f"{prefix}{{ttl}}:win"
    started = asyncio.get_running_loop().time()
    lives: list[int] = []
    while asyncio.get_running_loop().time() - started < 0.2:  # a dozen buckets
        decision = await limiter.admit(scopes, uuid.uuid4().hex, 5, LEASE, 10, 1)
        assert decision.admitted
        lives.append(await admin.pttl(key))
    assert len(lives) > 12
    assert all(window_ms < life <= window_ms + bucket_ms + 1000 for life in lives), lives
