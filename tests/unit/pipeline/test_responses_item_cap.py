"""A create's input items are capped at ``server.max_messages`` right after the body
is decoded (hunt: a million ``{}`` items had every item given an id and priced before
anything refused, stalling the event loop for seconds), and so is the whole
conversation a follow-up sends."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequestError
from tests.unit.pipeline.responses_world import MODEL, create_answer, responses_world


async def test_more_input_items_than_max_messages_is_a_400_before_the_engine() -> None:
    world = responses_world(max_messages=3)
    await create_answer(world, {"model": MODEL, "input": [{}, {}, {}]})  # at the cap: answered
    with pytest.raises(InvalidRequestError) as refused:
        await create_answer(world, {"model": MODEL, "input": [{}] * 4})
    assert refused.value.param == "input"
    assert refused.value.message == "input: at most 3 input items per request"
    assert len(world.sent) == 1


async def test_a_follow_up_counts_the_previous_conversation() -> None:
    world = responses_world(max_messages=4)
    first = await create_answer(world, {"model": MODEL, "input": [{}, {}]})  # 2 in + 1 out
    follow = {"model": MODEL, "input": [{}], "previous_response_id": first["id"]}
    await create_answer(world, follow)  # 4 items: at the cap
    with pytest.raises(InvalidRequestError) as refused:
        await create_answer(world, {**follow, "input": [{}, {}]})
    assert refused.value.param == "input"
    assert "at most 4 input items" in refused.value.message
    assert "previous response's conversation has 3" in refused.value.message
    assert len(world.sent) == 2


async def test_more_text_than_max_prompt_chars_is_a_400_before_the_engine() -> None:
    """As a chat's messages are (SDK hunt: a 3 MB ``input`` or ``instructions`` was
    accepted where chat got its 400), instructions included."""
    world = responses_world(max_prompt_chars=10)
    await create_answer(world, {"model": MODEL, "input": "x" * 10})  # at the cap: answered
    for body in (
        {"model": MODEL, "input": "x" * 11},
        {"model": MODEL, "input": "x", "instructions": "y" * 10},
        {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_text",
                                                                   "text": "z" * 11}]}]},
    ):  # fmt: skip
        with pytest.raises(InvalidRequestError) as refused:
            await create_answer(world, body)
        assert refused.value.param == "input"
        assert refused.value.message == "request text exceeds 10 characters"
    assert len(world.sent) == 1


async def test_a_follow_ups_text_counts_the_previous_conversation() -> None:
    world = responses_world(max_prompt_chars=200)
    first = await create_answer(world, {"model": MODEL, "input": "x" * 150})
    follow = {"model": MODEL, "input": "y" * 60, "previous_response_id": first["id"]}
    with pytest.raises(InvalidRequestError, match="request text exceeds 200 characters"):
        await create_answer(world, follow)
    assert len(world.sent) == 1


async def test_tools_count_against_max_prompt_chars() -> None:
    """The estimate prices a request's ``tools``; the cap counts what it prices."""
    world = responses_world(max_prompt_chars=100)
    tool = {"type": "function", "name": "f", "description": "d" * 200, "parameters": {}}
    with pytest.raises(InvalidRequestError, match="request text exceeds 100 characters"):
        await create_answer(world, {"model": MODEL, "input": "x", "tools": [tool]})
    assert len(world.sent) == 0
