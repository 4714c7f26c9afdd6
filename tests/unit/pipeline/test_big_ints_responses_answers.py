"""A Responses answer the gateway stores is written anew (the record) and returned
anew (retrieval): integers beyond 64 bits in the engine's response object (the tools
it echoes, with their schemas) come back exactly as the engine wrote them, whether the
answer was streamed or not. Before, the record held orjson's floats
(``1.8446744073709552e+19``)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.pipeline.results import Answer, EventStream
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline import world as chat_world
from tests.unit.pipeline.responses_world import engine_response, responses_world

TOOLS = [
    {
        "type": "function",
        "name": "f",
        "parameters": {
            "type": "object",
            "properties": {
                "n": {
                    "type": "integer",
                    "maximum": orjson.Fragment(b"18446744073709551616"),
                    "minimum": orjson.Fragment(b"-9223372036854775809"),
                }
            },
        },
    }
]


def assert_exact(body: bytes) -> None:
    assert b'"maximum":18446744073709551616' in body
    assert b'"minimum":-9223372036854775809' in body
    assert b"e+" not in body


def answer(request: FakeRequest) -> dict[str, Any]:
    return engine_response(request, tools=TOOLS)


async def test_a_stored_answers_big_integers_are_retrieved_exactly() -> None:
    world = responses_world(answer)
    principal = await world.service.caller(f"Bearer {chat_world.KEY}")
    created = await world.service.create(b'{"model": "m", "input": "hi"}', principal, "r1", None)
    assert isinstance(created, Answer)
    assert_exact(created.body.replace(b": ", b":"))  # the answer itself: the engine's bytes
    stored = await world.service.retrieve(orjson.loads(created.body)["id"], principal)
    assert_exact(stored.body)


async def test_a_streamed_answers_big_integers_are_retrieved_exactly() -> None:
    world = responses_world()

    def streamed(request: FakeRequest) -> Scripted:
        response = answer(request)
        event = {"type": "response.completed", "sequence_number": 0, "response": response}
        data = b"event: response.completed\ndata: " + orjson.dumps(event) + b"\n\n"
        return Scripted(events=[data])

    world.upstream.handler = streamed
    principal = await world.service.caller(f"Bearer {chat_world.KEY}")
    raw = b'{"model": "m", "input": "hi", "stream": true}'
    result = await world.service.create(raw, principal, "r1", None)
    assert isinstance(result, EventStream)
    relayed = await chat_world.drain(result)
    assert_exact(relayed)
    response_id = orjson.loads(relayed.split(b"data: ", 1)[1])["response"]["id"]
    stored = await world.service.retrieve(response_id, principal)
    assert_exact(stored.body)
