"""Operator actions on the shared state: set re-enables a rolled-back canary and clears
its window on every replica; promote climbs from the current share; rollback marks the
operator; bad input is refused before anything is written."""

from __future__ import annotations

import math
from typing import Any

import pytest

from gateway.backends.memory.rollouts import MemoryRolloutStore
from gateway.errors import GatewayError, NotFoundError
from gateway.rollouts import operations
from tests.unit.rollouts.world import Clock, feed, replica, rollout


def weights(answer: dict[str, Any]) -> dict[str, float]:
    return {v["model"]: v["weight"] for v in answer["variants"]}


async def test_rollback_then_set_rearms_and_clears_windows_everywhere() -> None:
    store, clock = MemoryRolloutStore(), Clock()
    a, b = replica(rollout(), store, clock), replica(rollout(), store, clock)
    await a.step()
    await b.step()
    feed(b, "canary", 10, fail_every=1)  # b's window: 10 failures (below min_requests)
    answer = await operations.rollback(a, "m", None)
    assert weights(answer) == {"stable": 90.0, "canary": 0.0}
    assert answer["last_rollback"]["reason"] == "operator"
    assert answer["variants"][1]["state"] == "rolled_back"
    answer = await operations.set_weights(a, "m", {"weights": {"canary": 5}})
    assert weights(answer) == {"stable": 90.0, "canary": 5.0}
    assert answer["variants"][1]["rolled_back"] is None
    assert answer["last_rollback"]["reason"] == "operator"  # kept for the record
    await b.step()
    assert b.weights("m") == {"stable": 90.0, "canary": 5.0}
    assert b.windows.stats("m", ["canary"], clock.now).requests == 0


async def test_promote_climbs_from_the_current_share() -> None:
    store, clock = MemoryRolloutStore(), Clock()
    control = replica(rollout(), store, clock)
    await control.step()
    answer = await operations.promote(control, "m", {})
    assert weights(answer) == {"stable": 75.0, "canary": 25.0}
    answer = await operations.promote(control, "m", {"variant": "canary"})
    assert weights(answer) == {"stable": 50.0, "canary": 50.0}
    await operations.promote(control, "m", None)
    with pytest.raises(GatewayError) as refused:
        await operations.promote(control, "m", None)
    assert refused.value.code == "no_next_step"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (None, "invalid_request"),
        ({"weights": {"x": 1}}, "unknown_variant"),
        ({"weights": {"canary": float("nan")}}, "invalid_weights"),
        ({"weights": {"canary": float("inf")}}, "invalid_weights"),
        ({"weights": {"canary": None}}, "invalid_request"),
        ({"weights": {"stable": 0, "canary": 0}}, "invalid_weights"),
    ],
)
async def test_bad_weights_are_refused_and_nothing_is_written(body: Any, code: str) -> None:
    store, clock = MemoryRolloutStore(), Clock()
    control = replica(rollout(), store, clock)
    await control.step()
    before = await store.version()
    with pytest.raises(GatewayError) as refused:
        await operations.set_weights(control, "m", body)
    assert refused.value.status == 400 and refused.value.code == code
    assert await store.version() == before


async def test_unknown_rollout_is_404_with_a_bounded_message() -> None:
    control = replica(rollout(), MemoryRolloutStore(), Clock())
    with pytest.raises(NotFoundError) as refused:
        await operations.rollback(control, "x" * 10_000, None)
    assert refused.value.code == "rollout_not_found" and len(refused.value.message) < 200


def test_status_shows_windows_and_configuration() -> None:
    control = replica(rollout(promote={"steps": [25, 100]}), MemoryRolloutStore(), Clock())
    feed(control, "canary", 4, fail_every=2)
    (row,) = operations.status(control)
    canary = row["variants"][1]
    assert canary["window"]["requests"] == 4 and canary["window"]["failures"] == 2
    assert canary["next_step"] == 25.0 and canary["state"] == "starting"
    assert row["slo"]["min_requests"] == 20 and row["version"] == 0


@pytest.mark.parametrize("body", ["canary", ["canary"], 5, True])
async def test_a_rollback_body_that_is_not_an_object_is_refused(body: Any) -> None:
    """A bare name (or any non-object) is a mistake, not "every canary": refused, and
    nothing is rolled back."""
    store, clock = MemoryRolloutStore(), Clock()
    control = replica(rollout(), store, clock)
    await control.step()
    before = await store.version()
    with pytest.raises(GatewayError) as refused:
        await operations.rollback(control, "m", body)
    assert refused.value.status == 400
    assert await store.version() == before
    assert control.weights("m") == {"stable": 90.0, "canary": 10.0}


async def test_a_negative_zero_weight_is_stored_as_zero() -> None:
    control = replica(rollout(), MemoryRolloutStore(), Clock())
    await control.step()
    answer = await operations.set_weights(control, "m", {"weights": {"canary": -0.0}})
    assert math.copysign(1.0, weights(answer)["canary"]) == 1.0
    assert math.copysign(1.0, control.weights("m")["canary"]) == 1.0
