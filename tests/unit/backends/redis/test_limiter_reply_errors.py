"""A settlement whose script call fails still frees its concurrency slot once Redis
answers again.

Fault hunt: with Redis full (``maxmemory`` reached under ``noeviction``, the layout
README's deployment section prescribes), the first write of a script call fails with
``OOM`` and the call stops there. A settlement batched behind an admission that failed
so never ran, and nothing remembered it: its slot stayed taken for the whole lease
(``ratelimit.concurrency_lease_s``, 60 s by default), refusing the key's requests long
after Redis had room again. The same for any call that fails once sent (a reset
connection, ``READONLY`` during a failover).

Against a private, real redis-server (its ``maxmemory`` is changed)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import pytest
import redis

from gateway.backends.redis.limiter import RedisLimiter
from gateway.backends.redis.link import RedisLink
from gateway.errors import StoreUnavailable
from gateway.ratelimit.limits import Limits, LimitScope
from tests.helpers.redis_server import run_redis

LEASE_S = 60.0
"""Far longer than the test waits: only a release frees the slot in time."""
SCOPES = [LimitScope("{full}", Limits(max_concurrent=2))]


@pytest.fixture
def private_redis() -> Iterator[tuple[str, redis.Redis]]:
    with run_redis() as url:
        admin = redis.Redis.from_url(url)
        admin.config_set("maxmemory-policy", "noeviction")
        yield url, admin
        admin.close()


@contextlib.contextmanager
def full(admin: redis.Redis) -> Iterator[None]:
    """Redis out of memory: every write that may grow it fails with OOM."""
    admin.config_set("maxmemory", 1)
    try:
        yield
    finally:
        admin.config_set("maxmemory", 0)


async def test_a_settlement_in_a_failed_call_frees_its_slot_once_redis_answers(
    private_redis: tuple[str, redis.Redis],
) -> None:
    url, admin = private_redis
    link = RedisLink(url, timeout_s=2.0, retry_s=0.05)
    prefix = f"test:{uuid.uuid4().hex}:"
    limiter = RedisLimiter(link, prefix=prefix)
    slots = f"{prefix}{{full}}:slots"
    try:
        held = await limiter.admit(SCOPES, "held", 0, LEASE_S)
        assert held.admitted
        with full(admin):
            # One turn, one script call: the admission's ZADD fails with OOM and the
            # call stops before the settlement behind it runs.
            refused = limiter.admit(SCOPES, "newcomer", 0, LEASE_S)
            limiter.settle(SCOPES, "held", 0, 0, held.at)
            with pytest.raises(StoreUnavailable, match="OOM"):
                await refused
        assert admin.zscore(slots, "held") is not None  # the settlement did not run
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            with contextlib.suppress(StoreUnavailable):
                ids = [f"probe-{uuid.uuid4().hex}" for _ in range(2)]
                probes = [await limiter.admit(SCOPES, rid, 0, LEASE_S) for rid in ids]
                for rid, probe in zip(ids, probes, strict=True):
                    if probe.admitted:
                        limiter.settle(SCOPES, rid, 0, 0, probe.at)
                if all(probe.admitted for probe in probes):  # two at once: none held
                    break
            assert asyncio.get_running_loop().time() < deadline, admin.zrange(slots, 0, -1)
            await asyncio.sleep(0.02)
        assert admin.zscore(slots, "held") is None
    finally:
        await limiter.close()  # its release timer first, as the app does
        await link.close()
