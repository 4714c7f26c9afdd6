"""A stored create's rate limits are decided before its key's stored-bytes quota is
read: a key over its ``rpm`` gets the rate limit's 429 without a store call (the quota
was read first: a Redis call per refused request, and the quota's 429 instead), and a
quota refusal after admission settles the admission as nothing used. Of two deletes
of one response at once, one deletes it, the other is a 404."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.backends.memory.responses import MemoryResponseStore
from gateway.errors import QuotaExceededError, RateLimitError
from gateway.pipeline.results import Answer
from gateway.responses.conversation import ResponseNotFoundError
from tests.unit.pipeline.responses_world import KEY, MODEL, create_answer, responses_world


class CountingStore(MemoryResponseStore):
    """The memory store, counting the quota's reads."""

    def __init__(self) -> None:
        super().__init__(1 << 24)
        self.usage_reads = 0

    async def usage(self, owner: str) -> int:
        self.usage_reads += 1
        return await super().usage(owner)


async def test_a_key_over_its_rpm_gets_the_rate_limit_and_no_quota_read() -> None:
    store = CountingStore()
    world = responses_world(key_limits={"rpm": 1}, store=store)
    await create_answer(world, {"model": MODEL, "input": "hi"})
    reads = store.usage_reads  # the quota's check, and the put's
    assert reads > 0
    with pytest.raises(RateLimitError) as refused:
        await create_answer(world, {"model": MODEL, "input": "hi"})
    assert refused.value.status == 429
    assert refused.value.code == "rate_limit_exceeded"
    assert store.usage_reads == reads  # refused by the rate limit: the quota was not read


async def test_a_quota_refusal_after_admission_uses_nothing() -> None:
    tpm = 10_000
    world = responses_world(
        key_limits={"rpm": 100, "tpm": tpm, "max_concurrent": 1},
        responses={"max_bytes_per_key": 1024},
    )
    assert await world.store.put("resp_old", b"x" * 1024, 60, "team", None)  # at the quota
    principal = await world.service.caller(f"Bearer {KEY}")
    body = b'{"model": "m", "input": "hello there", "max_output_tokens": 50}'
    with pytest.raises(QuotaExceededError) as refused:
        await world.service.create(body, principal, "req-1", None)
    headers = refused.value.headers
    after_refusal = int(headers["x-ratelimit-remaining-tokens"])  # admitted, then refused
    reserved = tpm - after_refusal
    assert reserved > 0
    assert world.admission.leased == 0  # its concurrency slot is free again
    assert not world.sent  # nothing reached the engine
    # The same request without storing: admitted (max_concurrent 1: the slot is free),
    # its reservation taken from a budget the refused one gave back whole.
    unstored = body[:-1] + b', "store": false}'
    result = await world.service.create(unstored, principal, "req-2", None)
    assert isinstance(result, Answer)
    shown = dict(result.headers)
    assert int(shown[b"x-ratelimit-remaining-tokens"]) == tpm - reserved
    assert int(shown[b"x-ratelimit-remaining-requests"]) == 100 - 2  # both counted in rpm


class YieldingStore(MemoryResponseStore):
    """The memory store, letting other tasks run while it checks an owner (as a
    Redis round trip does)."""

    async def owns(self, response_id: str, owner: str) -> bool:
        await asyncio.sleep(0)
        return await super().owns(response_id, owner)

    async def get(self, response_id: str) -> bytes | None:
        data = await super().get(response_id)
        await asyncio.sleep(0)  # the reply on its way back
        return data


async def test_of_two_deletes_at_once_one_deletes_and_the_other_is_404() -> None:
    world = responses_world(store=YieldingStore(1 << 24))
    answer = await create_answer(world, {"model": MODEL, "input": "hi"})
    principal = await world.service.caller(f"Bearer {KEY}")
    results = await asyncio.gather(
        world.service.delete(answer["id"], principal),
        world.service.delete(answer["id"], principal),
        return_exceptions=True,
    )
    deleted = [r for r in results if isinstance(r, Answer)]
    missing = [r for r in results if isinstance(r, ResponseNotFoundError)]
    assert (len(deleted), len(missing)) == (1, 1), results
    assert orjson.loads(deleted[0].body)["deleted"] is True
    assert await world.store.usage("team") == 0
