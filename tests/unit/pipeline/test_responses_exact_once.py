"""A Responses create reads its body exactly (the standard library's parser, for
integers beyond 64 bits: :mod:`gateway.protocol.exact_json`) once at most. Before, a
body holding a run of 19 digits whose conversation showed a float of 1e16 or more
(a client's ``1e20``) was read so twice on the event loop: for its items
(:func:`gateway.responses.encoding.encoded_items`) and again for the engine's body
around them (``encoded_exactly``), ~0.5 s each for 20 MB. What the engine gets and
what is stored are unchanged: each such integer as the client wrote it."""

from __future__ import annotations

import gc
from typing import Any

import orjson
import pytest

from gateway.protocol import exact_json
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline import world as chat_world
from tests.unit.pipeline.responses_world import (
    KEY,
    MODEL,
    create_answer,
    engine_response,
    responses_world,
)

BIG = b"98765432109876543210987654321"
"""An integer beyond 64 bits: orjson reads it as a float, written back ``e+``."""
ITEM = b'{"role": "user", "content": "hi", "x_big": %s, "x_float": 1e20}' % BIG
"""An input item holding one, and a float that shows ``e+`` when written."""
TOOLS = b'"tools": [{"type": "function", "name": "f", "parameters": {"maximum": %s}}]' % BIG


def counted_readings(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The sources read exactly from now on (the reader, wrapped where it is looked up)."""
    sources: list[bytes] = []
    reader = exact_json._exact_reading

    def counting(raw: bytes) -> Any:
        sources.append(bytes(raw))
        return reader(raw)

    monkeypatch.setattr(exact_json, "_exact_reading", counting)
    return sources


def recording() -> tuple[list[bytes], Any]:
    """An engine answer that records the raw bodies it got."""
    bodies: list[bytes] = []

    def answer(request: FakeRequest) -> dict[str, Any]:
        bodies.append(request.body)
        response = engine_response(request)
        response["output"][0]["id"] = f"msg_{len(bodies)}"  # one per turn
        return response

    return bodies, answer


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "input": [%s]}' % ITEM,  # the items need it, then the body
        b'{"model": "m", "input": [%s], %s}' % (ITEM, TOOLS),
        b'{"model": "m", "input": [{"role": "user", "content": "%s", "x": 1e20}]}' % BIG,
    ],
)
async def test_a_create_reads_its_body_exactly_once(
    raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies, answer = recording()
    world = responses_world(answer)
    principal = await world.service.caller(f"Bearer {KEY}")
    sources = counted_readings(monkeypatch)
    created = await world.service.create(raw, principal, "req-1", None)
    assert sources.count(raw) == 1
    sent = bodies[0]
    assert b"e+" in sent  # the client's float, as orjson writes it
    assert sent.count(BIG) == raw.count(BIG)  # every big integer exactly as written
    response_id = orjson.loads(created.body)["id"]  # type: ignore[union-attr]
    listed = await world.service.input_items(response_id, principal, {})
    assert listed.body.count(BIG) == raw.count(BIG) - raw.count(TOOLS)  # stored exactly


async def test_a_follow_up_reads_its_body_exactly_once(monkeypatch: pytest.MonkeyPatch) -> None:
    bodies, answer = recording()
    world = responses_world(answer)
    first = await create_answer(world, {"model": MODEL, "input": "hi"})
    principal = await world.service.caller(f"Bearer {KEY}")
    raw = b'{"model": "m", "previous_response_id": "%s", "input": [%s]}' % (
        first["id"].encode(),
        ITEM,
    )
    sources = counted_readings(monkeypatch)
    second = await world.service.create(raw, principal, "req-2", None)
    assert sources.count(raw) == 1
    assert b'"x_big":%s' % BIG in bodies[1]
    second_id = orjson.loads(second.body)["id"]  # type: ignore[union-attr]
    third = b'{"model": "m", "previous_response_id": "%s", "input": "again"}' % second_id.encode()
    await world.service.create(third, principal, "req-3", None)
    assert b'"x_big":%s' % BIG in bodies[2]  # from the stored record, exactly


async def test_a_body_with_no_run_of_19_digits_is_looked_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bodies, answer = recording()
    world = responses_world(answer)
    principal = await world.service.caller(f"Bearer {KEY}")
    sources = counted_readings(monkeypatch)
    raw = b'{"model": "m", "input": [{"role": "user", "content": "hi", "x": 1e20}]}'
    await world.service.create(raw, principal, "req-1", None)
    assert sources.count(raw) == 1  # a pass over its bytes, which finds no run: not parsed
    assert b'"x":1e+20' in bodies[0]


async def test_chat_still_reads_its_body_exactly_once(monkeypatch: pytest.MonkeyPatch) -> None:
    bodies: list[bytes] = []

    def engine(request: FakeRequest) -> Scripted:
        bodies.append(request.body)
        return Scripted(body=chat_world.completion())

    w = chat_world.world(engine)
    sources = counted_readings(monkeypatch)
    raw = chat_world.chat_body(x_float=1e20)[:-1] + b", " + TOOLS + b"}"
    await w.ask(raw)
    assert sources.count(raw) == 1
    assert b":%s" % BIG in bodies[0].replace(b": ", b":")


async def test_a_body_with_no_run_of_19_digits_is_parsed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its items showing ``e+`` (a client's ``1e20``), the items' write took the body's
    ``input`` from a second orjson parse of the whole body (~40 ms for 20 MB)."""
    bodies, answer = recording()
    world = responses_world(answer)
    principal = await world.service.caller(f"Bearer {KEY}")
    parsed: list[bytes] = []
    loads = orjson.loads

    def counting(data: Any) -> Any:
        parsed.append(bytes(data))
        return loads(data)

    monkeypatch.setattr(orjson, "loads", counting)
    raw = b'{"model": "m", "input": [{"role": "user", "content": "hi", "x": 1e20}]}'
    await world.service.create(raw, principal, "req-1", None)
    assert parsed.count(raw) == 1  # read once, as every body is
    assert b'"x":1e+20' in bodies[0]


async def test_the_exact_reading_is_not_kept_while_the_engine_answers() -> None:
    """The reading is the body decoded (~24x its bytes): dropped once the engine's body
    is written, as the decoded conversation is."""
    held: list[int] = []

    def answer(request: FakeRequest) -> dict[str, Any]:
        held.append(sum(isinstance(o, exact_json.ExactSource) for o in gc.get_objects()))
        return engine_response(request)

    world = responses_world(answer)
    principal = await world.service.caller(f"Bearer {KEY}")
    await world.service.create(b'{"model": "m", "input": [%s]}' % ITEM, principal, "r", None)
    assert held == [0]
