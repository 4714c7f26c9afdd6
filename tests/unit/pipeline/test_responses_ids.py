"""Hunt: a 404 echoed the whole requested id (100 KB ids came back whole), and a
response was stored under whatever id the engine put in it, not the one the gateway
made for the request (so an engine could name, and overwrite, any record)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import NotFoundError
from gateway.upstream.fake import FakeRequest
from tests.unit.pipeline.responses_world import (
    KEY,
    MODEL,
    create_answer,
    engine_response,
    responses_world,
)


async def test_a_404_echoes_a_long_id_shortened() -> None:
    world = responses_world()
    principal = await world.service.caller(f"Bearer {KEY}")
    long_id = "resp_" + "a" * 100_000
    with pytest.raises(NotFoundError) as missing:
        await world.service.retrieve(long_id, principal)
    assert missing.value.message == f"Response with id '{long_id[:64]}…' not found."
    with pytest.raises(NotFoundError) as previous:
        await create_answer(world, {"model": MODEL, "input": "x", "previous_response_id": long_id})
    assert len(previous.value.message) < 200
    with pytest.raises(NotFoundError) as short:
        await world.service.retrieve("resp_nope", principal)
    assert "'resp_nope'" in short.value.message


async def test_a_response_is_stored_under_the_gateways_id_only() -> None:
    world = responses_world()
    principal = await world.service.caller(f"Bearer {KEY}")
    made = await create_answer(world, {"model": MODEL, "input": "x"})
    assert made["id"] == world.sent[-1]["request_id"]
    assert (await world.service.retrieve(made["id"], principal)).status == 200


async def test_a_response_the_engine_named_otherwise_is_not_stored() -> None:
    def renamed(request: FakeRequest) -> dict[str, Any]:
        return engine_response(request, id="resp_chosen_by_the_engine")

    world = responses_world(renamed)
    principal = await world.service.caller(f"Bearer {KEY}")
    made = await create_answer(world, {"model": MODEL, "input": "x"})
    assert made["id"] == "resp_chosen_by_the_engine"  # the answer passes as it came
    for name in (made["id"], world.sent[-1]["request_id"]):
        with pytest.raises(NotFoundError):
            await world.service.retrieve(name, principal)
