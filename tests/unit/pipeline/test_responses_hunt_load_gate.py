"""Hunt: a follow-up reads its previous record before its admission is decided, so a
key over its ``rpm`` had every one of its requests read and decode a record: 300 at
once on a 1.9 MB record took the gateway from 87 MiB to 760 MiB, 298 of them then
refused 429. Now at most :data:`LOADS_PER_KEY` of one key's follow-ups load at once
(each until its admission is decided); the others wait their turn."""

from __future__ import annotations

import asyncio
import tracemalloc

import orjson
import pytest

from gateway.backends.memory.responses import MemoryResponseStore
from gateway.errors import RateLimitError
from gateway.pipeline.response_records import LOADS_PER_KEY, OwnerGate
from tests.helpers.waiting import until
from tests.unit.pipeline.responses_world import KEY, MODEL, create_answer, responses_world


class HeldStore(MemoryResponseStore):
    """Reads wait for ``release``; counts how many wait at once."""

    def __init__(self) -> None:
        super().__init__(1 << 24)
        self.release = asyncio.Event()
        self.release.set()
        self.reading = 0
        self.most = 0

    async def get(self, response_id: str) -> bytes | None:
        self.reading += 1
        self.most = max(self.most, self.reading)
        try:
            await self.release.wait()
            return await super().get(response_id)
        finally:
            self.reading -= 1


async def test_a_refused_keys_follow_ups_load_a_few_at_a_time() -> None:
    store = HeldStore()
    world = responses_world(key_limits={"rpm": 1}, store=store)
    first = await create_answer(world, {"model": MODEL, "input": "hi"})  # the one request
    principal = await world.service.caller(f"Bearer {KEY}")
    body = orjson.dumps({"model": MODEL, "input": "more", "previous_response_id": first["id"]})
    store.release.clear()
    follow_ups = [
        asyncio.create_task(world.service.create(body, principal, f"req-{n}", None))
        for n in range(20)
    ]
    await until(lambda: store.reading == LOADS_PER_KEY)
    for _ in range(20):  # the others are given every chance to start a read
        await asyncio.sleep(0)
    assert store.most == LOADS_PER_KEY
    store.release.set()
    results = await asyncio.gather(*follow_ups, return_exceptions=True)
    assert all(isinstance(result, RateLimitError) for result in results)
    assert store.most == LOADS_PER_KEY
    assert len(world.sent) == 1


async def test_the_gate_forgets_an_owner_nobody_holds_or_waits_for() -> None:
    gate = OwnerGate(1)
    async with gate.held("alice"):
        waiter = asyncio.create_task(gate.enter("alice"))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert not gate._turns  # nothing kept for alice
    async with gate.held("alice"):  # and she can come back
        pass
    assert not gate._turns


async def test_a_refused_follow_up_keeps_no_record_alive() -> None:
    """A refusal's traceback held the decoded record until its answer was sent: 300
    refused at once (their errors still held, as while their answers are written) kept
    300 records, 595 MB for a 1.9 MB one. Now the refusal carries none of it."""
    world = responses_world(key_limits={"rpm": 1}, max_prompt_chars=1 << 20)
    first = await create_answer(world, {"model": MODEL, "input": "x" * 500_000})
    principal = await world.service.caller(f"Bearer {KEY}")
    body = orjson.dumps({"model": MODEL, "input": "more", "previous_response_id": first["id"]})
    tracemalloc.start()
    try:
        refusals = await asyncio.gather(
            *(world.service.create(body, principal, f"req-{n}", None) for n in range(60)),
            return_exceptions=True,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert all(isinstance(refusal, RateLimitError) for refusal in refusals)
    assert peak < 15 * 500_000  # unfixed: ~100 MB (60 records, their text in several forms)
