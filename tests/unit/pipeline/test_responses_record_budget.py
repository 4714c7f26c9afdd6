"""A stored record (up to 8 MiB) decodes to many times its bytes. Follow-ups held their
previous record's decoded conversation for as long as the engine answered (the record
to store kept the items), and nothing bounded decoded records across keys. Now the
conversation is kept encoded once admitted, and every decoded record counts against
a per-worker :class:`ByteBudget` while it is held."""

from __future__ import annotations

import asyncio
import re
import tracemalloc
from typing import Any

import orjson
import pytest

from gateway.pipeline.record_budget import ByteBudget
from gateway.pipeline.results import Answer
from gateway.responses import store as store_module
from gateway.upstream.fake import FakeRequest, Scripted
from tests.helpers.waiting import until
from tests.unit.pipeline.responses_world import KEY, MODEL, create_answer, responses_world

ITEMS = 20_000
IN_FLIGHT = 8


async def test_follow_ups_in_flight_hold_no_decoded_conversation() -> None:
    world = responses_world(max_messages=ITEMS + 10, max_prompt_chars=1 << 24)
    items = [{"type": "message", "role": "user", "content": "hi", "n": n} for n in range(ITEMS)]
    first = await create_answer(world, {"model": MODEL, "input": items})
    principal = await world.service.caller(f"Bearer {KEY}")
    gate = asyncio.Event()
    arrived: list[int] = []

    def held(request: FakeRequest) -> Scripted:  # the body is not decoded here
        arrived.append(1)
        found = re.search(rb'"request_id":"(resp_\w+)"', request.body)
        assert found is not None
        answer: dict[str, Any] = {"id": found.group(1).decode(), "object": "response"}
        return Scripted(body=orjson.dumps(answer), gate=gate)

    world.upstream.handler = held
    body = orjson.dumps({"model": MODEL, "input": "more", "previous_response_id": first["id"]})
    record_bytes = len(orjson.dumps(items))
    tracemalloc.start()
    try:
        follow_ups = [
            asyncio.create_task(world.service.create(body, principal, f"r{n}", None))
            for n in range(IN_FLIGHT)
        ]
        await until(lambda: len(arrived) == IN_FLIGHT)
        held_bytes = tracemalloc.get_traced_memory()[0]
        gate.set()
        results = await asyncio.gather(*follow_ups)
    finally:
        tracemalloc.stop()
    assert all(isinstance(result, Answer) for result in results)
    assert world.service._records.budget.held == 0  # every load gave its bytes back
    # Each in flight holds its engine body and its encoded conversation (about 3-4x the
    # record's bytes); unfixed, its decoded conversation too (measured for 8 follow-ups
    # of a 1.15 MB record: 33.5 MB held, 109 MB unfixed).
    assert held_bytes < IN_FLIGHT * 5 * record_bytes


async def test_the_budget_lets_loads_in_turn_and_forgets_one_that_left() -> None:
    budget = ByteBudget(100)
    assert await budget.acquire(60) == 60
    second = asyncio.create_task(budget.acquire(60))
    third = asyncio.create_task(budget.acquire(10))  # fits, but waits its turn
    leaving = asyncio.create_task(budget.acquire(30))
    await asyncio.sleep(0)
    assert not second.done() and not third.done()
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    budget.release(60)
    assert await second == 60 and await third == 10
    assert budget.held == 70
    budget.release(70)
    assert await budget.acquire(500) == 100  # larger than the whole: all of it, alone


async def test_a_follow_up_in_flight_holds_nothing_decoded_from_its_record() -> None:
    """The ids of the previous record's items, one decoded ``str`` each (1.7 MB for
    20,000 items), and the affinity key's source (the first item's content) were kept
    until the engine answered; now they are kept encoded, or not at all."""
    world = responses_world(max_messages=ITEMS + 10, max_prompt_chars=1 << 24)
    items = [{"type": "message", "role": "user", "content": "hi", "n": n} for n in range(ITEMS)]
    first = await create_answer(world, {"model": MODEL, "input": items})
    principal = await world.service.caller(f"Bearer {KEY}")
    gate = asyncio.Event()
    arrived: list[int] = []

    def held(request: FakeRequest) -> Scripted:
        arrived.append(1)
        found = re.search(rb'"request_id":"(resp_\w+)"', request.body)
        assert found is not None
        answer: dict[str, Any] = {"id": found.group(1).decode(), "object": "response"}
        return Scripted(body=orjson.dumps(answer), gate=gate)

    world.upstream.handler = held
    body = orjson.dumps({"model": MODEL, "input": "more", "previous_response_id": first["id"]})
    tracemalloc.start(64)
    try:
        follow_up = asyncio.create_task(world.service.create(body, principal, "r1", None))
        await until(lambda: len(arrived) == 1, 30)  # tracemalloc (64 frames) is slow
        snapshot = tracemalloc.take_snapshot()
        gate.set()
        assert isinstance(await follow_up, Answer)
    finally:
        tracemalloc.stop()
    decoded = snapshot.filter_traces(
        [tracemalloc.Filter(True, store_module.__file__, all_frames=True)]
    )
    alive = sum(stat.size for stat in decoded.statistics("filename"))
    assert alive < 64 * 1024  # unfixed: ~1.7 MB, the items' ids
