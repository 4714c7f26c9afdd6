"""A create's input items are capped at ``server.max_messages`` right after the body
is decoded (hunt: a million ``{}`` items had every item given an id and priced before
anything refused, stalling the event loop for seconds), and so is the whole
conversation a follow-up sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

import gateway
from gateway.errors import InvalidRequestError
from gateway.pipeline.results import Answer
from tests.unit.pipeline.responses_world import KEY, MODEL, responses_world


def test_the_source_under_test_is_this_tree() -> None:
    assert Path(gateway.__file__).is_relative_to(Path(__file__).parents[3])


async def _create(world: Any, body: dict[str, Any]) -> dict[str, Any]:
    principal = await world.service.caller(f"Bearer {KEY}")
    result = await world.service.create(orjson.dumps(body), principal, "req-1", None)
    assert isinstance(result, Answer)
    answer: dict[str, Any] = orjson.loads(result.body)
    return answer


async def test_more_input_items_than_max_messages_is_a_400_before_the_engine() -> None:
    world = responses_world(max_messages=3)
    await _create(world, {"model": MODEL, "input": [{}, {}, {}]})  # at the cap: answered
    with pytest.raises(InvalidRequestError) as refused:
        await _create(world, {"model": MODEL, "input": [{}] * 4})
    assert refused.value.param == "input"
    assert refused.value.message == "input: at most 3 input items per request"
    assert len(world.sent) == 1


async def test_a_follow_up_counts_the_previous_conversation() -> None:
    world = responses_world(max_messages=4)
    first = await _create(world, {"model": MODEL, "input": [{}, {}]})  # 2 in + 1 out
    follow = {"model": MODEL, "input": [{}], "previous_response_id": first["id"]}
    await _create(world, follow)  # 4 items: at the cap
    with pytest.raises(InvalidRequestError) as refused:
        await _create(world, {**follow, "input": [{}, {}]})
    assert refused.value.param == "input"
    assert "at most 4 input items" in refused.value.message
    assert "previous response's conversation has 3" in refused.value.message
    assert len(world.sent) == 2
