"""Operator actions on a rollout with a body field they do not take (bug hunt):
``{"variants": [...]}`` sent to rollback was ignored, so it rolled back *every* canary,
whatever it named; sent to promote it promoted the only canary. Refused with 400 and
nothing written, as unknown variants in ``weights`` are (all of them named)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.backends.memory.rollouts import MemoryRolloutStore
from gateway.errors import GatewayError
from gateway.rollouts import operations
from gateway.rollouts.controller import RolloutController
from tests.unit.rollouts.world import Clock, replica, rollout


def two_canaries(store: MemoryRolloutStore | None = None) -> RolloutController:
    return replica(
        rollout(
            variants=[
                {"model": "stable", "weight": 80},
                {"model": "canary", "weight": 10, "canary": True},
                {"model": "canary-2", "weight": 10, "canary": True},
            ]
        ),
        store or MemoryRolloutStore(),
        Clock(),
    )


@pytest.mark.parametrize(
    ("action", "body", "param"),
    [
        ("rollback", {"variants": ["nope"]}, "variants"),
        ("rollback", {"variants": ["canary"]}, "variants"),
        ("rollback", {"canary": "nope"}, "canary"),
        ("rollback", {"variant": "canary", "variants": ["canary-2"]}, "variants"),
        ("promote", {"variants": ["canary"]}, "variants"),
        ("promote", {"variant": "canary", "step": 50}, "step"),
        ("set_weights", {"weights": {"canary": 5}, "variants": {"nope": 1}}, "variants"),
    ],
)
async def test_a_field_the_action_does_not_take_is_refused_and_nothing_is_written(
    action: str, body: dict[str, Any], param: str
) -> None:
    store = MemoryRolloutStore()
    control = two_canaries(store)
    await control.step()
    before = await store.version()
    with pytest.raises(GatewayError) as refused:
        await getattr(operations, action)(control, "m", body)
    error = refused.value
    assert error.status == 400 and error.param == param
    assert repr(param) in error.message
    assert await store.version() == before
    assert control.weights("m") == {"stable": 80.0, "canary": 10.0, "canary-2": 10.0}


async def test_every_unknown_variant_in_weights_is_named() -> None:
    control = two_canaries()
    await control.step()
    with pytest.raises(GatewayError) as refused:
        await operations.set_weights(control, "m", {"weights": {"nope": 1, "canary": 2, "x": 3}})
    assert refused.value.code == "unknown_variant" and refused.value.param == "weights"
    assert "'nope'" in refused.value.message and "'x'" in refused.value.message


async def test_thousands_of_unknown_names_give_a_bounded_message() -> None:
    control = two_canaries()
    await control.step()
    weights = {f"v{i}" * 50: 1 for i in range(5000)}
    with pytest.raises(GatewayError) as refused:
        await operations.set_weights(control, "m", {"weights": weights})
    assert len(refused.value.message) < 1000 and "4995 more" in refused.value.message
    body = {f"f{i}": 1 for i in range(5000)}
    with pytest.raises(GatewayError) as refused:
        await operations.rollback(control, "m", body)
    assert len(refused.value.message) < 1000


@pytest.mark.parametrize("body", [None, {}, {"variant": None}])
async def test_rollback_of_every_canary_still_works(body: Any) -> None:
    control = two_canaries()
    await control.step()
    answer = await operations.rollback(control, "m", body)
    assert {v["model"]: v["weight"] for v in answer["variants"]} == {
        "stable": 80.0,
        "canary": 0.0,
        "canary-2": 0.0,
    }


async def test_naming_one_canary_still_works() -> None:
    control = two_canaries()
    await control.step()
    await operations.rollback(control, "m", {"variant": "canary-2"})
    answer = await operations.promote(control, "m", {"variant": "canary"})
    weights = {v["model"]: v["weight"] for v in answer["variants"]}
    assert weights["canary-2"] == 0.0 and weights["canary"] > 10.0
    answer = await operations.set_weights(control, "m", {"weights": {"canary-2": 3}})
    assert {v["model"]: v["weight"] for v in answer["variants"]}["canary-2"] == 3.0
