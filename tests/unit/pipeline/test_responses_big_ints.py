"""Integers beyond 64 bits in a Responses body reach the engine exactly as written, as
a chat body's do (its bytes go as they came); before, the Responses body was written
anew with each such integer turned into a float (``1.8446744073709552e+19``), its
precision lost without a word. A ``seed`` beyond a 64-bit signed integer is a 400, as
chat's is; so is any field the gateway reads itself."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import InvalidRequestError
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline import world as chat_world
from tests.unit.pipeline.responses_world import (
    MODEL,
    create_answer,
    engine_response,
    responses_world,
)

HUGE = 2**64  # the first integer orjson reads as a float
LOW = -(2**63) - 1  # the first negative one
TOOLS = (
    b'"tools": [{"type": "function", "name": "f", "parameters": {"type": "object", '
    b'"properties": {"n": {"type": "integer", "maximum": 18446744073709551616, '
    b'"minimum": -9223372036854775809, "multipleOf": 123456789012345678901234567890}}}}]'
)


def recording() -> tuple[list[bytes], Any]:
    """An engine answer that records the raw bodies it got."""
    bodies: list[bytes] = []

    def answer(request: FakeRequest) -> dict[str, Any]:
        bodies.append(request.body)
        response = engine_response(request)
        response["output"][0]["id"] = f"msg_{len(bodies)}"  # one per turn
        return response

    return bodies, answer


def assert_exact(body: bytes) -> None:
    assert b'"maximum":18446744073709551616' in body
    assert b'"minimum":-9223372036854775809' in body
    assert b'"multipleOf":123456789012345678901234567890' in body
    assert b"e+" not in body


async def test_a_tool_schemas_huge_integers_reach_the_engine_exactly() -> None:
    bodies, answer = recording()
    world = responses_world(answer)
    principal = await world.service.caller(f"Bearer {chat_world.KEY}")
    raw = b'{"model": "m", "input": "hi", ' + TOOLS + b"}"
    await world.service.create(raw, principal, "req-1", None)
    assert_exact(bodies[0])


async def test_a_follow_up_sends_the_previous_turns_huge_integers_exactly() -> None:
    bodies, answer = recording()
    world = responses_world(answer)
    first = await create_answer(
        world,
        {"model": MODEL, "input": [{"role": "user", "content": "hi", "x_n": 7}]},
    )
    principal = await world.service.caller(f"Bearer {chat_world.KEY}")
    item = b'{"role": "user", "content": "next", "x_big": 98765432109876543210987654321}'
    raw = b'{"model": "m", "previous_response_id": "%s", "input": [%s]}' % (
        first["id"].encode(),
        item,
    )
    second = await world.service.create(raw, principal, "req-2", None)
    second_id = orjson.loads(second.body)["id"]  # type: ignore[union-attr]
    raw = b'{"model": "m", "previous_response_id": "%s", "input": "again"}' % second_id.encode()
    await world.service.create(raw, principal, "req-3", None)
    assert b'"x_big":98765432109876543210987654321' in bodies[1]
    assert b'"x_big":98765432109876543210987654321' in bodies[2]  # from the stored record


@pytest.mark.parametrize(
    ("field", "value"),
    [("seed", HUGE), ("seed", 2**63), ("seed", LOW), ("max_output_tokens", HUGE)],
)
async def test_a_field_the_gateway_reads_beyond_64_bits_is_a_400(field: str, value: int) -> None:
    world = responses_world()
    principal = await world.service.caller(f"Bearer {chat_world.KEY}")
    raw = b'{"model": "m", "input": "hi", "%s": %d}' % (field.encode(), value)
    with pytest.raises(InvalidRequestError) as refused:
        await world.service.create(raw, principal, "req-1", None)
    assert refused.value.param == field
    assert "out of range" in refused.value.message
    assert not world.sent


async def test_a_seed_within_64_bits_passes() -> None:
    world = responses_world()
    await create_answer(world, {"model": MODEL, "input": "hi", "seed": 2**63 - 1})
    assert world.sent[0]["seed"] == 2**63 - 1


async def test_chat_passes_the_same_integers_exactly_and_refuses_the_same_seed() -> None:
    bodies: list[bytes] = []

    def engine(request: FakeRequest) -> Scripted:
        bodies.append(request.body)
        return Scripted(body=chat_world.completion())

    w = chat_world.world(engine)
    raw = chat_world.chat_body()[:-1] + b", " + TOOLS + b"}"
    await w.ask(raw)
    assert_exact(bodies[0].replace(b": ", b":"))
    with pytest.raises(InvalidRequestError) as refused:
        await w.ask(chat_world.chat_body()[:-1] + b', "seed": 18446744073709551616}')
    assert refused.value.param == "seed"
