"""``item_reference`` input items name an item of the conversation a request continues
(``previous_response_id``); they reached the engine unresolved, as items vLLM cannot
render. Now each is replaced by the item it names, and an id the conversation does
not hold is a 400 naming it (``param: "input"``), before anything is charged or sent."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import InvalidRequestError
from gateway.pipeline.results import Answer
from gateway.upstream.fake import FakeRequest
from tests.unit.pipeline.responses_world import (
    KEY,
    MODEL,
    create_answer,
    engine_response,
    responses_world,
)

USER = {"type": "message", "role": "user", "content": "remember 42"}


async def test_references_are_replaced_by_the_items_they_name() -> None:
    world = responses_world()
    first = await create_answer(world, {"model": MODEL, "input": [USER]})
    principal = await world.service.caller(f"Bearer {KEY}")
    listed = await world.service.input_items(first["id"], principal, {})
    user_id = orjson.loads(listed.body)["data"][0]["id"]
    answer_item = first["output"][0]
    follow_up = {
        "model": MODEL,
        "previous_response_id": first["id"],
        "input": [
            {"type": "item_reference", "id": answer_item["id"]},
            {"id": user_id},  # OpenAI's ItemReference may leave its type out
            {"role": "user", "content": "what was it?"},
        ],
    }
    second = await create_answer(world, follow_up)
    sent = world.sent[-1]["input"]
    assert sent == [
        USER,
        answer_item,
        answer_item,
        USER,
        follow_up["input"][2],
    ]  # unfixed: the references
    listed = await world.service.input_items(second["id"], principal, {"order": "asc"})
    page = orjson.loads(listed.body)["data"]
    assert [item["type"] for item in page] == ["message"] * 5
    assert len({item["id"] for item in page}) == 5  # listed anew: no id twice


@pytest.mark.parametrize("continued", [True, False])
async def test_a_reference_to_an_id_not_in_the_conversation_is_a_400(continued: bool) -> None:
    world = responses_world()
    first = await create_answer(world, {"model": MODEL, "input": [USER]})
    unknown = "msg_" + "z" * 100
    body: dict[str, object] = {
        "model": MODEL,
        "input": [{"type": "item_reference", "id": unknown}],
    }
    if continued:
        body["previous_response_id"] = first["id"]
    sent = len(world.sent)
    with pytest.raises(InvalidRequestError) as refused:
        await create_answer(world, body)
    error = orjson.loads(refused.value.body())["error"]
    assert error["param"] == "input" and refused.value.status == 400
    assert f"'{unknown[:64]}…'" in error["message"]  # cut to 64 characters, as ids are
    assert len(world.sent) == sent  # nothing reached the engine (unfixed: it did)


async def test_a_referenced_items_integers_beyond_64_bits_reach_the_engine_exactly() -> None:
    bodies: list[bytes] = []

    def answer(request: FakeRequest) -> dict[str, Any]:
        bodies.append(request.body)
        return engine_response(request)

    world = responses_world(answer)
    principal = await world.service.caller(f"Bearer {KEY}")
    big = b"123456789012345678901234567890"
    call = b'{"type": "function_call_output", "call_id": "c1", "output": "ok", "n": ' + big + b"}"
    first = await world.service.create(
        b'{"model": "m", "input": [' + call + b"]}", principal, "req-1", None
    )
    assert isinstance(first, Answer)
    first_id = orjson.loads(first.body)["id"]
    listed = await world.service.input_items(first_id, principal, {})
    call_id = orjson.loads(listed.body)["data"][0]["id"]
    follow_up = {
        "model": MODEL,
        "previous_response_id": first_id,
        "input": [{"type": "item_reference", "id": call_id}],
    }
    await world.service.create(orjson.dumps(follow_up), principal, "req-2", None)
    assert bodies[-1].count(b'"n":' + big) == 2  # the item, and the one it names
    assert b"e+" not in bodies[-1]


async def test_an_id_referenced_twice_is_a_400_before_the_engine() -> None:
    """Each reference copied its item, so a few bytes of references to one large item
    (an image the text cap does not count) multiplied it up to ``max_messages`` times
    in what was encoded for the engine. An id named twice is now refused, as OpenAI
    refuses an item given twice."""
    world = responses_world()
    first = await create_answer(world, {"model": MODEL, "input": [USER]})
    named = {"type": "item_reference", "id": first["output"][0]["id"]}
    body = {"model": MODEL, "previous_response_id": first["id"], "input": [named, named]}
    sent = len(world.sent)
    with pytest.raises(InvalidRequestError) as refused:
        await create_answer(world, body)
    error = orjson.loads(refused.value.body())["error"]
    assert refused.value.status == 400 and error["param"] == "input"
    assert error["message"] == f"Duplicate item found with id {named['id']!r}."
    assert len(world.sent) == sent  # unfixed: sent, the item in it three times
